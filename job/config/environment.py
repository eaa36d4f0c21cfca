"""Reading the configuration at the edge: the process environment over `.env` (or ENV_FILE),
platform names resolved (WML's TRAINING_ID, DATA_DIR, RESULT_DIR; AWS's for COS), every value
parsed by its declaration, one frozen Config out. Precedence: explicit variables > platform
variables > defaults; a `.env` fills in what the process environment does not set."""

from __future__ import annotations

import io
import os
import secrets
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
from job.config.settings import VARIABLES, default
from job.errors import ConfigError
from job.logs import REDACTED

_T, _S = "training", "storage"


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
    """Build and validate the configuration from a mapping of variables (pure)."""
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
    """The process environment merged over `.env` (or ENV_FILE); the process always wins."""
    environ = dict(os.environ if environ is None else environ)
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    named = environ.get("ENV_FILE", "").strip()
    path = Path(named or str(default("ENV_FILE")))
    if not path.is_file():
        if named:
            raise ConfigError("ENV_FILE", named, "the path of a readable .env file")
        return environ
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
    return {**from_file, **environ}


def load(environ: Mapping[str, str] | None = None) -> Config:
    return from_env(read_environment(environ))
