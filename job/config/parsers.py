"""Value parsers: each turns a variable's text into its value or raises ConfigError naming the
variable, the value (a secret's never) and what is allowed. Pure: no environment, no I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from job.errors import ConfigError
from job.logs import REDACTED

RUN_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RUN_ID_RULE = "1-63 characters of [a-z0-9-], starting and ending with a letter or digit"
# Top-level names under OUTPUT_URI that are not runs (job.runstore.layout.MODELS: the champions).
RESERVED_RUN_IDS = ("models",)

Parser = Callable[[str, str], object]
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def integer(lo: int, hi: int) -> Parser:
    def parse(name: str, raw: str) -> int:
        # ASCII digits only: int() would also take "1_0" and other scripts' digits.
        if not _INT.fullmatch(raw) or not lo <= int(raw) <= hi:
            raise ConfigError(name, raw, f"an integer from {lo} to {hi}")
        return int(raw)

    return parse


def number(lo: float, hi: float, *, lo_inclusive: bool = True) -> Parser:
    def parse(name: str, raw: str) -> float:
        above = "at least" if lo_inclusive else "greater than"
        rule = f"a number {above} {lo:g} and at most {hi:g}"
        value = float(raw) if _FLOAT.fullmatch(raw) else math.nan
        low_ok = value >= lo if lo_inclusive else value > lo
        if not math.isfinite(value) or not low_ok or value > hi:
            raise ConfigError(name, raw, rule)
        return value

    return parse


def choice(*options: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in options:
            raise ConfigError(name, raw, "one of " + ", ".join(options))
        return value

    return parse


def pattern(regex: re.Pattern[str], rule: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        if not regex.fullmatch(raw):
            raise ConfigError(name, raw, rule)
        return raw

    return parse


def text(name: str, raw: str) -> str:
    return raw


def secret(name: str, raw: str) -> str:
    # Never echoed back in an error: only its shape is checked. Any length is accepted (a
    # development server's `test`); a short one is warned about (job.cli) and scrubbed from
    # output only as a whole token (job.logs.scrub).
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise ConfigError(name, REDACTED, "a key without spaces or control characters")
    return raw


# RFC 3986's characters: a URL as written, never one a person must still percent-encode.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def webhook_url(name: str, raw: str) -> str:
    """An http(s) URL with a host and no user:password@: a webhook's. Its path or query often
    is the credential (Slack's, Teams'), so the value is never echoed back in an error."""
    try:
        url = urlsplit(raw)
        url.port  # noqa: B018 (a port out of range or not a number raises here)
    except ValueError:
        url = None
    if (
        url is None
        or not _URL_CHARS.fullmatch(raw)
        or url.scheme not in ("http", "https")
        or not url.hostname
        or url.username is not None
    ):
        raise ConfigError(name, REDACTED, "an http:// or https:// URL with a host")
    return raw


def check_run_id(name: str, raw: str) -> str:
    if not RUN_ID_RE.fullmatch(raw) or raw in RESERVED_RUN_IDS:
        raise ConfigError(name, raw, f"{RUN_ID_RULE}, other than {', '.join(RESERVED_RUN_IDS)}")
    return raw


# A model name: like a run id, but `_` allowed too, so a dataset's name (fashion_mnist) is one.
MODEL_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
check_model_name = pattern(
    MODEL_NAME_RE, "1-63 characters of [a-z0-9_-], alphanumeric at both ends"
)
dns_label = pattern(RUN_ID_RE, "a DNS label: 1-63 of [a-z0-9-], alphanumeric at both ends")
endpoint = pattern(
    re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?"), "an http(s)://host[:port] URL"
)
https_url = pattern(
    re.compile(r"https://[A-Za-z0-9.\-\[\]:]+(:\d+)?(/[\w./-]*)?"), "an https:// URL"
)
region = pattern(re.compile(r"[a-z0-9-]{2,40}"), "a region name such as us-south")
cpd_version = pattern(re.compile(r"\d{1,2}\.\d{1,2}"), "a Cloud Pak for Data version such as 5.2")
# A Cloud Pak user name: what its identity providers allow, less spaces and control characters.
username = pattern(re.compile(r"[\w.@+-]{1,256}"), "a user name of letters, digits and ._@+-")
spec_name = pattern(re.compile(r"[A-Za-z0-9_.-]{1,100}"), "a name of [A-Za-z0-9_.-]")
