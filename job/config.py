"""The job's configuration: one frozen object built from the environment, validated at the edge.

Precedence: explicit variables > platform variables (WML's RESULT_DIR, DATA_DIR, TRAINING_ID)
> defaults. A `.env` file in the working directory (or the file named by ENV_FILE) fills in
variables the process environment does not set. Nothing here imports TensorFlow, so a bad value
fails in milliseconds with one line naming the variable.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from job import distribute
from job.errors import ConfigError
from job.precision import PRECISIONS
from job.recipes import DEFAULT_RECIPE, RECIPES

DATASETS = ("mnist", "fashion_mnist")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
RUN_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RUN_ID_RULE = "1-63 characters of [a-z0-9-], starting and ending with a letter or digit"
REDACTED = "***"


@dataclass(frozen=True)
class Config:
    run_id: str
    dataset: str = "mnist"
    data_uri: str | None = None
    output_uri: str = "./runs"
    recipe: str = DEFAULT_RECIPE
    # Unset means "the recipe's value" (see job.recipes); from_env fills them in.
    epochs: int = RECIPES[DEFAULT_RECIPE].epochs
    batch_size: int = RECIPES[DEFAULT_RECIPE].batch_size
    learning_rate: float = RECIPES[DEFAULT_RECIPE].learning_rate
    precision: str = "auto"
    target_accuracy: float | None = None
    seed: int = 42
    train_limit: int | None = None
    test_limit: int | None = None
    log_format: str = "auto"
    log_level: str = "info"
    work_dir: str | None = None
    # Object storage (IBM COS or any S3-compatible store), used for s3:// URIs.
    cos_endpoint: str | None = None
    cos_access_key_id: str | None = field(default=None, repr=False, metadata={"secret": True})
    cos_secret_access_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    cos_region: str = "us-south"
    cos_max_attempts: int = 6  # all attempts of one request, the first included
    # Scale-out (job.distribute): the cluster as canonical TF_CONFIG JSON, None for one process.
    distribution: str = "auto"
    tf_config: str | None = None
    collective_timeout: int = 300

    @property
    def cluster(self) -> distribute.Cluster | None:
        return distribute.parse_tf_config(self.tf_config) if self.tf_config else None

    @property
    def is_chief(self) -> bool:
        cluster = self.cluster
        return cluster is None or cluster.is_chief

    def redacted(self) -> dict[str, object]:
        """The configuration as plain data, safe to print, log or store."""
        values = asdict(self)
        return {
            f.name: REDACTED if f.metadata.get("secret") and values[f.name] else values[f.name]
            for f in fields(self)
        }

    def secrets(self) -> list[str]:
        """The secret values in force, so output can be checked or scrubbed for them."""
        return [
            getattr(self, f.name)
            for f in fields(self)
            if f.metadata.get("secret") and getattr(self, f.name)
        ]


# --- value parsers: each returns the parsed value or raises ConfigError naming the variable ---


def _int(lo: int, hi: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw, 10)
        except ValueError:
            raise ConfigError(name, raw, f"an integer from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ConfigError(name, raw, f"an integer from {lo} to {hi}")
        return value

    return parse


def _float(lo_exclusive: float, hi: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        rule = f"a number greater than {lo_exclusive} and at most {hi}"
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, raw, rule) from None
        if not math.isfinite(value) or not lo_exclusive < value <= hi:
            raise ConfigError(name, raw, rule)
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in options:
            raise ConfigError(name, raw, "one of " + ", ".join(options))
        return value

    return parse


def _run_id(name: str, raw: str) -> str:
    if not RUN_ID_RE.match(raw):
        raise ConfigError(name, raw, RUN_ID_RULE)
    return raw


def _text(name: str, raw: str) -> str:
    return raw


def _secret(name: str, raw: str) -> str:
    # Never echoed back in an error: only its shape is checked.
    if any(c.isspace() for c in raw):
        raise ConfigError(name, REDACTED, "a key without spaces")
    return raw


def _endpoint(name: str, raw: str) -> str:
    if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?$", raw):
        raise ConfigError(name, raw, "an http(s)://host[:port] URL")
    return raw.rstrip("/")


def _region(name: str, raw: str) -> str:
    if not re.match(r"^[a-z0-9-]{2,40}$", raw):
        raise ConfigError(name, raw, "a region name such as us-south")
    return raw


# Variable name -> (field, parser). Order is the order errors are found in.
VARIABLES: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "RUN_ID": ("run_id", _run_id),
    "DATASET": ("dataset", _choice(DATASETS)),
    "DATA_URI": ("data_uri", _text),
    "OUTPUT_URI": ("output_uri", _text),
    "RECIPE": ("recipe", _choice(tuple(RECIPES))),
    "EPOCHS": ("epochs", _int(1, 10_000)),
    "BATCH_SIZE": ("batch_size", _int(1, 65_536)),
    "LEARNING_RATE": ("learning_rate", _float(0.0, 10.0)),
    "PRECISION": ("precision", _choice(PRECISIONS)),
    "TARGET_ACCURACY": ("target_accuracy", _float(0.0, 1.0)),
    "SEED": ("seed", _int(0, 2**31 - 1)),
    "TRAIN_LIMIT": ("train_limit", _int(1, 10_000_000)),
    "TEST_LIMIT": ("test_limit", _int(1, 10_000_000)),
    "LOG_FORMAT": ("log_format", _choice(LOG_FORMATS)),
    "LOG_LEVEL": ("log_level", _choice(LOG_LEVELS)),
    "WORK_DIR": ("work_dir", _text),
    "COS_ENDPOINT": ("cos_endpoint", _endpoint),
    "COS_ACCESS_KEY_ID": ("cos_access_key_id", _secret),
    "COS_SECRET_ACCESS_KEY": ("cos_secret_access_key", _secret),
    "COS_REGION": ("cos_region", _region),
    "COS_MAX_ATTEMPTS": ("cos_max_attempts", _int(1, 20)),
    "DISTRIBUTION": ("distribution", _choice(distribute.DISTRIBUTIONS)),
    "COLLECTIVE_TIMEOUT": ("collective_timeout", _int(5, 86_400)),
}
# Checked here, used only to build TF_CONFIG for an Indexed Job (job.distribute).
CLUSTER_INTS = {
    "WORKERS": _int(1, 4096),
    "WORKER_PORT": _int(1, 65_535),
    "JOB_COMPLETION_INDEX": _int(0, 4095),
}

# Variables used only where the explicit one is unset, in order: WML's platform variables and
# the standard AWS ones.
FALLBACKS = {
    "OUTPUT_URI": ("RESULT_DIR",),
    "DATA_URI": ("DATA_DIR",),
    "RUN_ID": ("TRAINING_ID",),
    "COS_ENDPOINT": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "COS_ACCESS_KEY_ID": ("AWS_ACCESS_KEY_ID",),
    "COS_SECRET_ACCESS_KEY": ("AWS_SECRET_ACCESS_KEY",),
    "COS_REGION": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique default: UTC timestamp plus a short random suffix."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def from_env(env: Mapping[str, str]) -> Config:
    """Build and validate the configuration from a mapping of variables (pure)."""
    # Empty values count as unset: templated manifests and .env files often leave them blank.
    given = {k: v.strip() for k, v in env.items() if v is not None and v.strip()}
    for explicit, alternatives in FALLBACKS.items():
        fallback = next((given[a] for a in alternatives if a in given), None)
        if explicit not in given and fallback is not None:
            # WML training ids look like "training-AbC123": run ids are lower-case DNS labels.
            given[explicit] = fallback.lower() if explicit == "RUN_ID" else fallback
    values: dict[str, object] = {}
    for name, (attr, parse) in VARIABLES.items():
        if name in given:
            values[attr] = parse(name, given[name])
    values.setdefault("run_id", new_run_id())
    recipe = RECIPES[values.get("recipe", DEFAULT_RECIPE)]  # type: ignore[index]
    values.setdefault("epochs", recipe.epochs)
    values.setdefault("batch_size", recipe.batch_size)
    values.setdefault("learning_rate", recipe.learning_rate)
    values.setdefault("precision", recipe.precision)
    values["tf_config"] = _cluster_json(given, values.get("distribution", "auto"))  # type: ignore[arg-type]
    cfg = Config(**values)  # type: ignore[arg-type]
    _check_storage(cfg)
    return cfg


def _cluster_json(given: dict[str, str], distribution: str) -> str | None:
    for name, parse in CLUSTER_INTS.items():
        if name in given:
            parse(name, given[name])
    cluster = distribute.cluster_from_env(given)
    if distribution == "multi_worker" and cluster is None:
        raise ConfigError("DISTRIBUTION", distribution, "a TF_CONFIG or WORKERS > 1 with it")
    if distribution in ("none", "mirrored") and cluster and cluster.n_workers > 1:
        raise ConfigError(
            "DISTRIBUTION", distribution, "auto or multi_worker when TF_CONFIG has several workers"
        )
    return cluster.tf_config() if cluster else None


def _check_storage(cfg: Config) -> None:
    """s3:// URIs must be well formed and come with keys; checked before anything runs."""
    uses_bucket = False
    for variable, uri in (("OUTPUT_URI", cfg.output_uri), ("DATA_URI", cfg.data_uri)):
        if uri and "://" in uri:
            scheme = uri.split("://", 1)[0]
            if scheme == "s3":
                parse_s3_uri(variable, uri)
                uses_bucket = True
            elif scheme != "file":
                raise ConfigError(variable, uri, "a local path, file:// or s3://BUCKET[/PREFIX]")
    if uses_bucket:
        for variable, value in (
            ("COS_ACCESS_KEY_ID", cfg.cos_access_key_id),
            ("COS_SECRET_ACCESS_KEY", cfg.cos_secret_access_key),
        ):
            if not value:
                raise ConfigError(variable, "", "set (HMAC keys) when a URI is s3://")


BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_s3_uri(variable: str, uri: str) -> tuple[str, str]:
    """s3://BUCKET[/PREFIX] -> (bucket, prefix without slashes at either end)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_RE.match(bucket) or ".." in bucket or "//" in prefix:
        raise ConfigError(variable, uri, "s3://BUCKET[/PREFIX] with a valid bucket name")
    return bucket, prefix.strip("/")  # type: ignore[arg-type]


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment merged over `.env` (or ENV_FILE); the process always wins."""
    environ = dict(os.environ if environ is None else environ)
    from dotenv import dotenv_values

    named = environ.get("ENV_FILE", "").strip()
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError("ENV_FILE", named, "the path of a readable .env file")
    else:
        path = Path(".env")
        if not path.is_file():
            return environ
    from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {**from_file, **environ}


def load(environ: Mapping[str, str] | None = None) -> Config:
    return from_env(read_environment(environ))
