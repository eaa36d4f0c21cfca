"""Reading the configuration at the edge: the process environment over `.env` (or ENV_FILE),
secrets given as files (`<NAME>_FILE`) read in, platform names resolved (WML's TRAINING_ID,
DATA_DIR, RESULT_DIR; AWS's for COS), every value parsed by its declaration, one frozen Config
out. Precedence: explicit variables > platform variables > defaults; a `.env` fills in what the
process environment does not set."""

from __future__ import annotations

import io
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from job.config.cluster import cluster
from job.config.parsers import check_run_id
from job.config.recipes import DEFAULT_RECIPE
from job.config.sections import (
    Config,
    Distribution,
    Logging,
    Promotion,
    Storage,
    Training,
    Wml,
)
from job.config.settings import BY_NAME, OPTIONAL_FILE_NAMES, SECRET_NAMES, VARIABLES, default
from job.errors import ConfigError
from job.logs import REDACTED

_T, _S = "training", "storage"
# A secret may be given as the path of a file holding it (`COS_SECRET_ACCESS_KEY_FILE`), the
# convention of Docker and Kubernetes secrets mounted as files, for every name a secret is read
# under (SECRET_NAMES: the table's secret variables and their fallbacks).
FILE_SUFFIX = "_FILE"
# Keys and tokens are short; a bigger file is the wrong file, not a secret.
MAX_SECRET_FILE_BYTES = 64 * 1024


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique default: UTC timestamp plus a short random suffix."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def given(env: Mapping[str, str]) -> dict[str, str]:
    """The table's variables that are set, fallbacks resolved, values stripped; empty values
    count as unset (templated manifests and .env files often leave them blank)."""
    present = {k: v.strip() for k, v in env.items() if isinstance(v, str) and v.strip()}
    out: dict[str, str] = {}
    for var in VARIABLES:
        name = next((n for n in (var.name, *var.fallbacks) if n in present), None)
        if name is None:
            continue
        value = present[name]
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(var.name, REDACTED if var.secret else value, "no control characters")
        # WML training ids look like "training-AbC123": run ids are lower-case DNS labels.
        out[var.name] = value.lower() if name == "TRAINING_ID" else value
    return out


def from_env(env: Mapping[str, str]) -> Config:
    """Build and validate the configuration from a mapping of variables (pure: `<NAME>_FILE`
    secrets are read by `read_environment`, at the edge, not here)."""
    values = given(env)
    sections: dict[str, dict[str, object]] = {}
    for var in VARIABLES:
        if var.name in values:
            parsed = var.parse(var.name, values[var.name])
            if var.attr is not None:
                sections.setdefault(var.section, {})[var.attr] = parsed
    top = sections.pop("", {})
    training = sections.get(_T, {})
    distribution = sections.get("distribution", {})
    return Config(
        run_id=top.pop("run_id", None) or new_run_id(),  # type: ignore[arg-type]
        training=Training.from_recipe(str(training.pop("recipe", DEFAULT_RECIPE)), **training),
        storage=Storage(**sections.get(_S, {})),  # type: ignore[arg-type]
        distribution=Distribution(
            **distribution,  # type: ignore[arg-type]
            cluster=cluster(values, str(distribution.get("mode", "auto"))),
        ),
        logging=Logging(**sections.get("logging", {})),  # type: ignore[arg-type]
        promotion=Promotion(**sections.get("promotion", {})),  # type: ignore[arg-type]
        wml=Wml(**sections.get("wml", {})),  # type: ignore[arg-type]
        **top,  # type: ignore[arg-type]
    )


def with_run_id(cfg: Config, run_id: str) -> Config:
    return replace(cfg, run_id=check_run_id("RUN_ID", run_id))  # type: ignore[arg-type]


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment merged over `.env` (or ENV_FILE), the process always winning,
    with the secrets given as files read in (`secrets_from_files`)."""
    environ = dict(os.environ if environ is None else environ)
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    named = environ.get("ENV_FILE", "").strip()
    path = Path(named or str(default("ENV_FILE")))
    if not path.is_file():
        if named:
            raise ConfigError("ENV_FILE", named, "the path of a readable .env file")
        return secrets_from_files(environ)
    shown = named or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("ENV_FILE", shown, f"a readable UTF-8 .env file ({exc})") from None
    # python-dotenv only warns about a line it cannot parse and drops it, so a default would be
    # used without a word: refuse the file instead.
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            raise ConfigError("ENV_FILE", shown, f"a parseable .env file (line {line} is not)")
    # Values are taken as written: no ${NAME} expansion, which would let a .env line pull any
    # variable of the process (a secret included) into a value that is printed and logged.
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    from_file = {k: v for k, v in values.items() if v is not None}
    return secrets_from_files({**from_file, **environ})


def secrets_from_files(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with each secret given as `<NAME>_FILE` replaced by `<NAME>` holding the file's
    content, checked by NAME's own parser; `<NAME>` and `<NAME>_FILE` together are refused.
    Empty values count as unset, as everywhere, and so does a missing file for a setting
    declared `optional_file`."""
    out = dict(env)
    for name in sorted(SECRET_NAMES):
        pointer = name + FILE_SUFFIX
        path = out.pop(pointer, "").strip()
        if not path:
            continue
        if out.get(name, "").strip():
            raise ConfigError(pointer, path, f"unset when {name} is set (give one of the two)")
        if name in OPTIONAL_FILE_NAMES and not os.path.exists(path):
            continue  # an optional Kubernetes Secret that does not exist mounts as no file
        value = _read_secret_file(pointer, path)
        try:
            # The same checks as the variable itself, but the error names the file's variable:
            # that is the one the operator set.
            (var_name, checked), *_ = given({name: value}).items()
            BY_NAME[var_name].parse(var_name, checked)
        except ConfigError as exc:
            raise ConfigError(pointer, path, f"a file holding {exc.expected}") from None
        out[name] = value
    return out


def _read_secret_file(variable: str, path: str) -> str:
    """The content of a secret's file, without its trailing newline: one open, checked on the
    open descriptor (no race with a swapped file), one bounded read. Symbolic links are
    followed: Kubernetes mounts each key of a Secret volume as a link into a timestamped
    folder. The content never appears in an error."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(variable, path, f"a readable file ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(variable, path, "a regular file (not a FIFO, device or folder)")
        chunks, size = [], 0
        while size <= MAX_SECRET_FILE_BYTES:
            chunk = os.read(fd, MAX_SECRET_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(variable, path, f"a readable file ({exc.strerror})") from None
    finally:
        os.close(fd)
    if size > MAX_SECRET_FILE_BYTES:
        raise ConfigError(variable, path, f"a file of at most {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(variable, path, "a UTF-8 text file") from None
    # `echo key > file` and most editors end the file with a newline; it is not the key's.
    value = text.removesuffix("\n").removesuffix("\r")
    if not value.strip():
        raise ConfigError(variable, path, "a file holding the value (it is empty)")
    return value


def load(environ: Mapping[str, str] | None = None) -> Config:
    return from_env(read_environment(environ))
