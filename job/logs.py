"""Structured logging: JSON lines in containers and pipes, readable console output on a terminal.

Every event carries `run_id` once `bind_run` is called. TensorFlow's native chatter is kept
out of the logs (see `import_tensorflow_quietly`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
import urllib.parse
import warnings
from collections import deque
from collections.abc import Iterator

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def use_json(log_format: str, stream=None) -> bool:
    stream = stream or sys.stderr
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


# The last events, for the reason written into _FAILURE.
_recent: deque[str] = deque(maxlen=20)
REDACTED = "***"
# A secret at least this long is scrubbed wherever it appears; a shorter one (a development
# server's `test`) only where it stands as a whole token, or a one-character secret would
# garble every line. Shorter secrets are accepted with a warning (job.cli).
MIN_SECRET_LENGTH = 8


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by ***; longest first, so a secret that
    contains another is replaced whole."""
    for secret in sorted(set(secrets) | _quoted_forms(tuple(secrets)), key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, REDACTED)
        elif secret:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", REDACTED, text)
    return text


@functools.lru_cache(maxsize=16)  # scrub runs on every log event, with the same few secrets
def _quoted_forms(secrets: tuple[str, ...]) -> frozenset[str]:
    """How a secret looks once a server or library has quoted it: escaped inside JSON (ASCII
    or not) and percent-encoded in a URL or form, where those differ from it."""
    forms = set()
    for secret in secrets:
        if secret:
            forms |= {
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret),
            }
    return frozenset(forms - set(secrets))


def printable(value: object, width: int) -> str:
    """Text read from a store or a platform, fit for a terminal: no escape sequence, no line
    break (a reason holding CR/LF could print a fake result line), cut to `width`. Every
    string shown from a store goes through here."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[: width * 2])[:width]


def error_line(message: str, secrets: list[str]) -> str:
    """The one line an error ends the process with, whatever the exception's text held."""
    return "error: " + printable(scrub(" ".join(message.split()), secrets), 2000)


def _scrubber(secrets: list[str]):
    def scrub_event(logger, method, event: dict) -> dict:
        if not secrets:
            return event
        return {k: scrub(v, secrets) if isinstance(v, str) else v for k, v in event.items()}

    return scrub_event


def _remember(logger, method, event: dict) -> dict:
    _recent.append(json.dumps(event, default=str)[:500])
    return event


def recent() -> list[str]:
    return list(_recent)


def configure(log_format: str = "auto", level: str = "info", secrets: list[str] = ()) -> None:
    """Set up structlog for this process; logs go to stderr so stdout stays for results.

    Secret values are scrubbed from every event as a last line of defence: nothing is meant to
    log them in the first place."""
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json(log_format)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrubber(list(secrets)),
            _remember,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def bind_run(run_id: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)


def import_tensorflow_quietly(level: str = "info") -> None:
    """Import TensorFlow without its native start-up chatter unless debugging.

    TF_CPP_MIN_LOG_LEVEL no longer silences the absl lines TensorFlow prints while loading its
    native libraries (tensorflow/tensorflow#100442), so file descriptor 2 points at /dev/null for
    the import alone. Python-level import errors still surface as exceptions.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with native_output_silenced(level):
        import tensorflow  # noqa: F401


class _Forward(logging.Handler):
    """A library's log records as the job's debug events, one bounded line each."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger().debug(
            "library_log", logger=record.name, message=printable(record.getMessage(), 500)
        )


@contextlib.contextmanager
def library_chatter(*loggers: str) -> Iterator[None]:
    """Meanwhile, what the named libraries log and warn becomes the job's own events instead of
    raw prose on stderr (which holds JSON lines in a container): their log records at debug
    (the WML clients log each refusal they then raise, which the job reports once as its error
    line), their warnings at warning (a deprecation at debug)."""
    handler = _Forward()
    saved = [(logger, logger.propagate) for logger in map(logging.getLogger, loggers)]
    for logger, _ in saved:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
        log = structlog.get_logger()
        for warning in caught:
            level = log.debug if issubclass(warning.category, DeprecationWarning) else log.warning
            level("library_warning", category=warning.category.__name__,
                  message=printable(warning.message, 500))  # fmt: skip


@contextlib.contextmanager
def native_output_silenced(level: str = "info") -> Iterator[None]:
    """File descriptor 2 on /dev/null meanwhile (not when debugging): for native calls whose
    lines are not log records, such as the CUDA build's `failed call to cuInit` on a host with
    no GPU, which the job reports once as its own `no_gpu` event instead."""
    if level == "debug":
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def get(name: str | None = None):
    return structlog.get_logger(name)
