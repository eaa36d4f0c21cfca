"""Reading the configuration at the edge: the process environment over `.env` (or ENV_FILE),
secrets given as files (`<NAME>_FILE`) read in, platform names resolved (WML's TRAINING_ID,
DATA_DIR, RESULT_DIR; AWS's for COS), every value parsed by its declaration, one frozen Config
out. Precedence: explicit variables > platform variables > defaults; a `.env` fills in what the
process environment does not set. Names the job does not read are sorted out on the way in
(job.config.names), and `sources` says where each value came from."""

from __future__ import annotations

import io
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from job.config import names
from job.config.cluster import cluster
from job.config.names import FILE_SUFFIX
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
from job.config.settings import (
    BY_NAME,
    OPTIONAL_FILE_NAMES,
    SECRET_NAMES,
    VARIABLES,
    Variable,
    default,
)
from job.errors import ConfigError
from job.logs import REDACTED, printable

_T, _S = "training", "storage"
# What no environment variable's name can hold (`=` ends the name), nor any shown: spaces and
# control characters.
_BAD_NAME = re.compile(r"[=\s\x00-\x1f\x7f]")
# Keys and tokens are short; a bigger file is the wrong file, not a secret.
MAX_SECRET_FILE_BYTES = 64 * 1024


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique default: UTC timestamp plus a short random suffix."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def given(env: Mapping[str, str]) -> dict[str, str]:
    """The table's variables that are set, fallbacks resolved, values stripped; empty values
    count as unset (templated manifests and .env files often leave them blank)."""
    present = _present(env)
    out: dict[str, str] = {}
    for var in VARIABLES:
        name = _chosen(var, present)
        if name is None:
            continue
        value = present[name]
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(var.name, REDACTED if var.secret else value, "no control characters")
        # WML training ids look like "training-AbC123": run ids are lower-case DNS labels.
        out[var.name] = value.lower() if name == "TRAINING_ID" else value
    return out


def _present(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v.strip() for k, v in env.items() if isinstance(v, str) and v.strip()}


def _chosen(var: Variable, present: Mapping[str, str]) -> str | None:
    """The name `var` is read under: its own, else the first fallback set."""
    return next((n for n in (var.name, *var.fallbacks) if n in present), None)


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
    with the secrets given as files read in (`secrets_from_files`). A name in `.env` one typo
    from a variable is refused (exit 78); the names the job does not read are kept for one
    warning each (job.config.names)."""
    return _read(environ)[0]


def sources(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each variable's value comes from: `environment`, the .env file (as named),
    `recipe` or `default`; a value read under another name says which (`environment
    (TRAINING_ID)`, `.env (COS_SECRET_ACCESS_KEY_FILE)`). Names only, never values."""
    env, origin = _read(environ)
    present = _present(env)
    hidden = dict(names.hidden_now())
    out = {}
    for var in VARIABLES:
        name = _chosen(var, present)
        if name is None:
            out[var.name] = "recipe" if var.from_recipe else "default"
            lost = next((n for n in (var.name, *var.fallbacks) if n in hidden), None)
            if lost:  # said, not silently: the value the user sees in .env is not the one used
                out[var.name] += f" ({lost} is empty in the environment, hiding {hidden[lost]}'s)"
        else:
            via = origin.get(name, names.ENVIRONMENT)
            out[var.name] = via if name == var.name else f"{via} ({name})"
    return out


def _read(environ: Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """The merged variables (`read_environment`), and where each name in them came from."""
    environ = dict(os.environ if environ is None else environ)
    from_file, shown = _env_file(environ)
    hidden = [(name, shown) for name in names.hidden(from_file, environ)]
    names.review(names.unknown(from_file, environ, shown), hidden)
    origin = {**dict.fromkeys(from_file, shown), **dict.fromkeys(environ, names.ENVIRONMENT)}
    merged = {**from_file, **environ}
    out = secrets_from_files(merged)
    for name in SECRET_NAMES:  # a secret read from its file comes from where the path was set
        pointer = name + FILE_SUFFIX
        if merged.get(pointer, "").strip() and name in out and not merged.get(name, "").strip():
            origin[name] = f"{origin[pointer]} ({pointer})"
    return out, origin


def _env_file(environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The variables of `.env` (or ENV_FILE) and the file as named; nothing without one."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    named = environ.get("ENV_FILE", "").strip()
    path = Path(named or str(default("ENV_FILE")))
    if not path.is_file():
        if named:
            raise ConfigError("ENV_FILE", named, "the path of a readable .env file")
        return {}, ""
    shown = named or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("ENV_FILE", shown, f"a readable UTF-8 .env file ({exc})") from None
    # python-dotenv only warns about a line it cannot parse and drops it, so a default would be
    # used without a word: refuse the file instead.
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise ConfigError("ENV_FILE", shown, f"a parseable .env file (line {line} is not)")
        # A quoted key may hold anything ('A=B'=1), but no environment can hold a name with
        # `=`, a control character or a space, nor a NUL in a value: refused here, naming the
        # line, rather than failing where the run's environment is made (submit --backend local).
        key, value = binding.key, binding.value or ""
        if key is not None and (not key or _BAD_NAME.search(key) or "\0" in value):
            bad_name = not key or _BAD_NAME.search(key)
            problem = (
                "a name with `=`, a space or a control character" if bad_name
                else "a value with a NUL character"
            )  # fmt: skip
            raise ConfigError(
                "ENV_FILE", shown,
                f"a .env file of environment variables (line {line}, {printable(key, 100)!r}:"
                f" no environment can hold {problem})",
            )  # fmt: skip
    # Values are taken as written: no ${NAME} expansion, which would let a .env line pull any
    # variable of the process (a secret included) into a value that is printed and logged.
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {k: v for k, v in values.items() if v is not None}, shown


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
