"""The job's configuration: one declarative table of variables, one frozen object built from it.

`VARIABLES` is the single list of every variable the job and the submitter read: its type and
range, default, whether it is a secret, which side reads it and whether the submitter forwards
it to a container. Everything else is derived from it: the README's table (`markdown_table`,
checked by a test), the variables the submitter forwards, WML's hyperparameters and the secret
list. Precedence: explicit variables > platform variables (WML's RESULT_DIR, DATA_DIR,
TRAINING_ID; the AWS names of the COS ones) > defaults. A `.env` file in the working directory
(or the file named by ENV_FILE) fills in variables the process environment does not set.

This module sits at the bottom of the package: it imports nothing of the job but `errors`, and
no TensorFlow, so a bad value fails in milliseconds with one line naming the variable. URIs are
kept as text here; their schemes are the run layout's business (job.layout).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from job.errors import ConfigError

REDACTED = "***"
RUN_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RUN_ID_RULE = "1-63 characters of [a-z0-9-], starting and ending with a letter or digit"
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
PROMOTE_POLICIES = ("never", "if-better", "always")
DEFAULT_WORKER_PORT = 2222
MIN_SECRET_LENGTH = 8

# --- recipes: how the seed network is trained, never what the network is ---
# `seed` is the notebook exactly. `fast` (the default) trains the same network faster and to a
# higher accuracy: a tf.data pipeline with light random affine augmentation, batches of 512,
# mixed precision where the hardware has it, a one-epoch warm-up to 5e-3 then cosine decay. The
# figures behind these choices come from `make bench` (README, Performance). EPOCHS, BATCH_SIZE,
# LEARNING_RATE, EMA_MOMENTUM and PRECISION override a recipe's value; the rest is the recipe's.
RECIPES: dict[str, dict[str, object]] = {
    "seed": {
        "epochs": 12,
        "batch_size": 128,
        "learning_rate": 0.001,
        "precision": "float32",
        "schedule": "constant",  # or "warmup_cosine"
        "warmup_epochs": 0,
        "augment": False,  # random rotation, scale and shift per training image
        "label_smoothing": 0.0,
        "ema_momentum": 0.0,  # no weight averaging
        "pipeline": "numpy",  # arrays into fit, as the notebook; or "tfdata"
        "max_steps_per_execution": 1,
    },
    "fast": {
        "epochs": 20,
        "batch_size": 512,
        # The peak of the schedule. 5e-3 over 3e-3: chosen on a held-out split of the training
        # set (`make bench-heldout`), never on the test set; README, Performance.
        "learning_rate": 0.005,
        "precision": "auto",
        "schedule": "warmup_cosine",
        "warmup_epochs": 1,
        "augment": True,
        "label_smoothing": 0.0,
        # Test accuracy (and the model kept) from an exponential moving average of the weights,
        # about the last 50 steps: it reaches 99% one or two epochs sooner (README).
        "ema_momentum": 0.98,
        "pipeline": "tfdata",
        "max_steps_per_execution": 16,
    },
}
DEFAULT_RECIPE = "fast"


# --- the sections of the configuration ---


@dataclass(frozen=True)
class Training:
    """What shapes training: the recipe with the explicit variables already applied."""

    recipe: str
    epochs: int
    batch_size: int
    learning_rate: float
    precision: str
    schedule: str
    warmup_epochs: int
    augment: bool
    label_smoothing: float
    ema_momentum: float
    pipeline: str
    max_steps_per_execution: int
    dataset: str = "mnist"
    target_accuracy: float | None = None
    seed: int = 42
    train_limit: int | None = None
    test_limit: int | None = None

    @classmethod
    def from_recipe(cls, name: str = DEFAULT_RECIPE, **overrides: object) -> Training:
        return cls(recipe=name, **{**RECIPES[name], **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Storage:
    """The object store's endpoint and HMAC keys: all that bucket code is given."""

    endpoint: str | None = None
    access_key_id: str | None = field(default=None, repr=False, metadata={"secret": True})
    secret_access_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    region: str = "us-south"
    max_attempts: int = 6  # all attempts of one request, the first included


@dataclass(frozen=True)
class Cluster:
    """The parsed TF_CONFIG: every task's address and this process's place in it."""

    spec: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def n_workers(self) -> int:
        return len(self.spec.get("chief", [])) + len(self.spec.get("worker", []))

    @property
    def is_chief(self) -> bool:
        """A task of type `chief` if the cluster has one, else worker 0."""
        if "chief" in self.spec:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def worker_id(self) -> str:
        return f"{self.task_type}-{self.task_index}"

    def tf_config(self) -> str:
        return json.dumps(
            {"cluster": self.spec, "task": {"type": self.task_type, "index": self.task_index}},
            sort_keys=True,
        )


@dataclass(frozen=True)
class Distribution:
    mode: str = "auto"
    collective_timeout: int = 300
    cluster: Cluster | None = None  # None: one process

    @property
    def multi_worker(self) -> bool:
        return self.cluster is not None and self.cluster.n_workers > 1


@dataclass(frozen=True)
class Logging:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class Promotion:
    """Whether a successful run may become its model's champion (job.champion)."""

    policy: str = "never"
    margin: float = 0.0
    model_name: str | None = None  # None: the dataset's name


@dataclass(frozen=True)
class Wml:
    """Watson Machine Learning, read by the submitter only (job.wml)."""

    url: str | None = None
    apikey: str | None = field(default=None, repr=False, metadata={"secret": True})
    token: str | None = field(default=None, repr=False, metadata={"secret": True})
    space_id: str | None = None
    hardware_spec: str = "K80"
    software_spec: str | None = None  # None: the newest TensorFlow runtime WML offers (job.wml)
    nodes: int = 1


@dataclass(frozen=True)
class Config:
    run_id: str
    training: Training = field(default_factory=Training.from_recipe)
    output_uri: str = "./runs"
    data_uri: str | None = None
    work_dir: str | None = None
    lease_seconds: int = 60
    resume: str = "auto"
    threads: int | None = None
    storage: Storage = field(default_factory=Storage)
    distribution: Distribution = field(default_factory=Distribution)
    logging: Logging = field(default_factory=Logging)
    promotion: Promotion = field(default_factory=Promotion)
    wml: Wml = field(default_factory=Wml)

    @property
    def model_name(self) -> str:
        return self.promotion.model_name or self.training.dataset

    @property
    def cluster(self) -> Cluster | None:
        return self.distribution.cluster

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    def redacted(self) -> dict[str, object]:
        """The configuration as plain data, safe to print, log or store."""
        return _redact(self)

    def secrets(self) -> list[str]:
        """The secret values in force, so output can be checked or scrubbed for them."""
        return [v for v in (getattr(s, f.name) for s, f in _secret_fields(self)) if v]


def _secret_fields(obj: object):
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.metadata.get("secret"):
            yield obj, f
        elif hasattr(value, "__dataclass_fields__"):
            yield from _secret_fields(value)


def _redact(obj: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.metadata.get("secret"):
            out[f.name] = REDACTED if value else value
        elif isinstance(value, Cluster):
            out[f.name] = asdict(value)
        elif hasattr(value, "__dataclass_fields__"):
            out[f.name] = _redact(value)
        else:
            out[f.name] = value
    return out


# --- value parsers: each returns the parsed value or raises ConfigError naming the variable ---
Parser = Callable[[str, str], object]
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _int(lo: int, hi: int) -> Parser:
    def parse(name: str, raw: str) -> int:
        # ASCII digits only: int() would also take "1_0" and other scripts' digits.
        if not _INT.fullmatch(raw) or not lo <= int(raw) <= hi:
            raise ConfigError(name, raw, f"an integer from {lo} to {hi}")
        return int(raw)

    return parse


def _float(lo: float, hi: float, *, lo_inclusive: bool = True) -> Parser:
    def parse(name: str, raw: str) -> float:
        above = "at least" if lo_inclusive else "greater than"
        rule = f"a number {above} {lo:g} and at most {hi:g}"
        value = float(raw) if _FLOAT.fullmatch(raw) else math.nan
        low_ok = value >= lo if lo_inclusive else value > lo
        if not math.isfinite(value) or not low_ok or value > hi:
            raise ConfigError(name, raw, rule)
        return value

    return parse


def _choice(*options: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in options:
            raise ConfigError(name, raw, "one of " + ", ".join(options))
        return value

    return parse


def _pattern(regex: re.Pattern[str], rule: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        if not regex.fullmatch(raw):
            raise ConfigError(name, raw, rule)
        return raw

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _secret(name: str, raw: str) -> str:
    # Never echoed back in an error: only its shape is checked. A very short secret would also
    # make scrubbing it out of error lines mangle ordinary words.
    if len(raw) < MIN_SECRET_LENGTH or any(c.isspace() for c in raw):
        raise ConfigError(name, REDACTED, f"a key of at least {MIN_SECRET_LENGTH} characters")
    return raw


def check_run_id(name: str, raw: str) -> str:
    if not RUN_ID_RE.fullmatch(raw) or raw in RESERVED_RUN_IDS:
        raise ConfigError(name, raw, f"{RUN_ID_RULE}, other than {', '.join(RESERVED_RUN_IDS)}")
    return raw


# A model name: like a run id, but `_` allowed too, so a dataset's name (fashion_mnist) is one.
MODEL_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
check_model_name = _pattern(
    MODEL_NAME_RE, "1-63 characters of [a-z0-9_-], alphanumeric at both ends"
)
# Top-level names under OUTPUT_URI that are not runs (job.layout.MODELS: the champions).
RESERVED_RUN_IDS = ("models",)
_dns_label = _pattern(RUN_ID_RE, "a DNS label: 1-63 of [a-z0-9-], alphanumeric at both ends")
_endpoint = _pattern(
    re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?"), "an http(s)://host[:port] URL"
)
_https = _pattern(re.compile(r"https://[A-Za-z0-9.\-\[\]:]+(:\d+)?(/[\w./-]*)?"), "an https:// URL")
_region = _pattern(re.compile(r"[a-z0-9-]{2,40}"), "a region name such as us-south")
_spec_name = _pattern(re.compile(r"[A-Za-z0-9_.-]{1,100}"), "a name of [A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Variable:
    """One row of the table.

    `section`/`attr` say where the value lands in Config (section "" is Config itself; attr None:
    read by the code named in `meaning`). `side`: who reads it (job, submitter, both).
    `forward`: what the submitter does with it when it starts a container: "yes", "no", or
    "remote" (only a value that names a bucket; a host path means nothing inside a container).
    """

    name: str
    parse: Parser
    default: str
    meaning: str
    section: str = ""
    attr: str | None = None
    side: str = "job"
    secret: bool = False
    forward: str = "yes"
    fallbacks: tuple[str, ...] = ()


_T, _S = "training", "storage"
VARIABLES: tuple[Variable, ...] = (
    Variable("RUN_ID", check_run_id, "UTC time + random suffix, e.g. `20261128-183557-4daaf1`",
             "run folder name; " + RUN_ID_RULE + ". A finished run is never changed: reusing "
             "its id does nothing and exits 0", attr="run_id", side="both",
             fallbacks=("TRAINING_ID",)),
    Variable("DATASET", _choice("mnist", "fashion_mnist"), "`mnist`",
             "`mnist` or `fashion_mnist` (same file formats)", _T, "dataset"),
    Variable("DATA_URI", _text, "see below",
             "folder of IDX files (optionally `.gz`), a Keras-layout `.npz`, or a folder holding "
             "one; or the same in a bucket: `s3://BUCKET/PREFIX` or `s3://BUCKET/KEY.npz`",
             attr="data_uri", side="both", forward="remote", fallbacks=("DATA_DIR",)),
    Variable("OUTPUT_URI", _text, "`./runs`",
             "where run folders go: a local path, `file://` URI or `s3://BUCKET[/PREFIX]`",
             attr="output_uri", side="both", forward="remote", fallbacks=("RESULT_DIR",)),
    Variable("RECIPE", _choice(*RECIPES), "`fast`",
             "how the (unchanged) seed network is trained: `fast` or `seed` (the notebook)",
             _T, "recipe"),
    Variable("EPOCHS", _int(1, 10_000), "recipe's: 20 / 12", "1-10000", _T, "epochs"),
    Variable("BATCH_SIZE", _int(1, 65_536), "recipe's: 512 / 128",
             "1-65536, per replica", _T, "batch_size"),
    Variable("LEARNING_RATE", _float(1e-7, 10.0), "recipe's: 0.005 / 0.001",
             "RMSprop (peak) learning rate, 1e-7 to 10, per replica", _T, "learning_rate"),
    Variable("EMA_MOMENTUM", _float(0.0, 0.9999), "recipe's: 0.98 / 0",
             "momentum per step of a moving average of the weights, which each epoch's test "
             "pass scores and the run keeps (spans at most half an epoch); 0 turns it off",
             _T, "ema_momentum"),
    Variable("PRECISION", _choice(*PRECISIONS), "recipe's: `auto` / `float32`",
             "`auto`, `float32`, `bfloat16`, `float16` (GPU only)", _T, "precision"),
    Variable("TARGET_ACCURACY", _float(0.0, 1.0, lo_inclusive=False), "unset",
             "stop after the first epoch whose test accuracy reaches this (0-1)",
             _T, "target_accuracy"),
    Variable("SEED", _int(0, 2**31 - 1), "`42`", "seeds Python, NumPy and TensorFlow",
             _T, "seed"),
    Variable("TRAIN_LIMIT", _int(1, 10_000_000), "all",
             "use only the first N training examples (smoke runs, tests)", _T, "train_limit"),
    Variable("TEST_LIMIT", _int(1, 10_000_000), "all",
             "use only the first N test examples", _T, "test_limit"),
    Variable("LOG_FORMAT", _choice("auto", "json", "console"), "`auto`",
             "`json` (one object per line), `console`, or `auto`: JSON unless stderr is a "
             "terminal", "logging", "format", side="both"),
    Variable("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "`info`",
             "`debug` also shows tracebacks and TensorFlow's native logs", "logging", "level",
             side="both"),
    Variable("PROMOTE", _choice(*PROMOTE_POLICIES), "`never`",
             "after `_SUCCESS`, make the run its model's champion: `never`, `if-better` (higher "
             "test accuracy on the same test set; the CronJob's setting) or `always`",
             "promotion", "policy"),
    Variable("PROMOTE_MARGIN", _float(0.0, 1.0), "`0`",
             "`if-better` needs test accuracy above the champion's plus this (0-1)",
             "promotion", "margin"),
    Variable("MODEL_NAME", check_model_name, "the dataset's name",
             "the model whose champion the run may become: `<OUTPUT_URI>/models/<MODEL_NAME>/`",
             "promotion", "model_name"),
    Variable("WORK_DIR", _text, "system temp",
             "local scratch for checkpoints and artifacts before they are published",
             attr="work_dir", forward="no"),
    Variable("LEASE_SECONDS", _int(10, 3600), "`60`",
             "how long a run's owner lease lasts unrenewed; a second process with the same "
             "RUN_ID exits 75 while it lives, and takes the run over once it has expired",
             attr="lease_seconds"),
    Variable("RESUME", _choice("auto", "discard"), "`auto`",
             "`auto`: a rerun of a RUN_ID continues from its checkpoint if it was trained with "
             "the same settings and data (else exit 78 naming what differs); `discard`: start "
             "the run over", attr="resume"),
    Variable("THREADS", _int(1, 1024), "CPUs it may use",
             "TensorFlow's thread pools; unset: the smaller of the cgroup CPU quota and the "
             "affinity mask (logged with its source)", attr="threads"),
    Variable("ENV_FILE", _text, "`.env`", "another file of variables (read before the rest)",
             side="both", forward="no"),
    Variable("COS_ENDPOINT", _endpoint, "AWS's",
             "S3 endpoint URL, e.g. `https://s3.us-south.cloud-object-storage.appdomain.cloud`",
             _S, "endpoint", side="both", fallbacks=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
    Variable("COS_ACCESS_KEY_ID", _secret, "-",
             "HMAC access key id, required for `s3://` URIs; never printed, logged or stored",
             _S, "access_key_id", side="both", secret=True, fallbacks=("AWS_ACCESS_KEY_ID",)),
    Variable("COS_SECRET_ACCESS_KEY", _secret, "-",
             "HMAC secret access key, required for `s3://` URIs; never printed, logged or stored",
             _S, "secret_access_key", side="both", secret=True,
             fallbacks=("AWS_SECRET_ACCESS_KEY",)),
    Variable("COS_REGION", _region, "`us-south`", "the bucket's region", _S, "region",
             side="both", fallbacks=("AWS_REGION", "AWS_DEFAULT_REGION")),
    Variable("COS_MAX_ATTEMPTS", _int(1, 20), "`6`",
             "attempts per storage request, the first included (exponential back-off)",
             _S, "max_attempts", side="both"),
    Variable("DISTRIBUTION", _choice(*DISTRIBUTIONS), "`auto`",
             "`auto`, `none`, `mirrored` (several local GPUs), `multi_worker` (see Scale-out)",
             "distribution", "mode"),
    Variable("COLLECTIVE_TIMEOUT", _int(5, 86_400), "`300`",
             "seconds a worker waits on its peers before giving up (exit 75)",
             "distribution", "collective_timeout"),
    Variable("TF_CONFIG", _text, "-",  # parsed with the other cluster inputs: _cluster_from
             "TensorFlow's cluster description; built from the next five when unset",
             "cluster", forward="no"),
    Variable("WORKERS", _int(1, 4096), "`1`", "an Indexed Job's number of workers", "cluster"),
    Variable("WORKER_SERVICE", _dns_label, "-", "the Indexed Job's headless Service",
             "cluster"),
    Variable("WORKER_PORT", _int(1, 65_535), "`2222`", "the workers' port", "cluster"),
    Variable("JOB_NAME", _dns_label, "-", "the Indexed Job's name (pods `<JOB_NAME>-<i>`)",
             "cluster"),
    Variable("JOB_COMPLETION_INDEX", _int(0, 4095), "-",
             "set by Kubernetes in an Indexed Job: this worker's index", "cluster",
             forward="no"),
    Variable("WML_URL", _https, "-", "the WML service's https:// URL", "wml", "url",
             side="submitter", forward="no"),
    Variable("WML_APIKEY", _secret, "-", "an IBM Cloud API key", "wml", "apikey",
             side="submitter", secret=True, forward="no"),
    Variable("WML_TOKEN", _secret, "-", "a bearer token instead of WML_APIKEY (Cloud Pak)",
             "wml", "token", side="submitter", secret=True, forward="no"),
    Variable("WML_SPACE_ID", _spec_name, "-", "the deployment space to train in", "wml",
             "space_id", side="submitter", forward="no"),
    Variable("WML_HARDWARE_SPEC", _spec_name, "`K80`",
             "WML hardware specification (one NVIDIA K80, as IBM's TensorFlow samples use); "
             "checked against WML's list before anything is stored", "wml", "hardware_spec",
             side="submitter", forward="no"),
    Variable("WML_SOFTWARE_SPEC", _spec_name, "newest `tensorflow_rt<N>-py3.<M>` offered",
             "WML software specification; unset, the TensorFlow runtime WML lists with the "
             "highest runtime version, then Python version", "wml", "software_spec",
             side="submitter", forward="no"),
    Variable("WML_NODES", _int(1, 64), "`1`", "WML nodes for the training", "wml", "nodes",
             side="submitter", forward="no"),
)  # fmt: skip
SECRET_NAMES = frozenset(n for v in VARIABLES if v.secret for n in (v.name, *v.fallbacks))
# Hyperparameters: what WML shows for a training run. The training section, by construction.
HYPERPARAMETERS = tuple(v.name for v in VARIABLES if v.section == _T)


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
            cluster=_cluster(values, str(distribution.get("mode", "auto"))),
        ),
        logging=Logging(**sections.get("logging", {})),  # type: ignore[arg-type]
        promotion=Promotion(**sections.get("promotion", {})),  # type: ignore[arg-type]
        wml=Wml(**sections.get("wml", {})),  # type: ignore[arg-type]
        **top,  # type: ignore[arg-type]
    )


def with_run_id(cfg: Config, run_id: str) -> Config:
    return replace(cfg, run_id=check_run_id("RUN_ID", run_id))  # type: ignore[arg-type]


# --- the cluster: TF_CONFIG, or one built for a Kubernetes Indexed Job ---


def parse_tf_config(raw: str) -> Cluster:
    def bad(why: str) -> ConfigError:
        return ConfigError("TF_CONFIG", raw[:200], f"JSON with cluster and task ({why})")

    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise bad("not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict):
        raise bad("no cluster object")
    spec = data["cluster"]
    for role, addresses in spec.items():
        if role not in ("chief", "worker", "ps", "evaluator"):
            raise bad(f"unknown task type {role!r}")
        if not isinstance(addresses, list) or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses
        ):
            raise bad(f"{role} must be a list of host:port")
    if "ps" in spec:
        raise bad("parameter servers are not supported; use workers")
    if not spec.get("chief") and not spec.get("worker"):
        raise bad("no chief or worker task: nobody would train and publish")
    if len(spec.get("chief", [])) > 1:
        raise bad("at most one chief")
    task = data.get("task")
    if not isinstance(task, dict) or task.get("type") not in spec:
        raise bad("task.type must name a role of the cluster")
    if task["type"] == "evaluator":
        raise bad("evaluator tasks are not supported: the chief evaluates")
    index = task.get("index", 0)
    if type(index) is not int or not 0 <= index < len(spec[task["type"]]):
        raise bad(f"task.index {index!r} out of range")
    return Cluster({k: list(v) for k, v in spec.items()}, task["type"], index)


def _cluster(values: Mapping[str, str], mode: str) -> Cluster | None:
    cluster = _cluster_from(values)
    if mode == "multi_worker" and cluster is None:
        raise ConfigError("DISTRIBUTION", mode, "a TF_CONFIG or WORKERS > 1 with it")
    if mode in ("none", "mirrored") and cluster and cluster.n_workers > 1:
        raise ConfigError(
            "DISTRIBUTION", mode, "auto or multi_worker when TF_CONFIG has several workers"
        )
    return cluster


def _cluster_from(values: Mapping[str, str]) -> Cluster | None:
    """TF_CONFIG if given, else one built for an Indexed Job, else None (one process): worker i
    is `<JOB_NAME>-<i>.<WORKER_SERVICE>:<WORKER_PORT>`."""
    if values.get("TF_CONFIG"):
        return parse_tf_config(values["TF_CONFIG"])
    workers = int(values.get("WORKERS") or 1)  # already parsed: ASCII digits in range
    if workers <= 1:
        return None
    if "JOB_COMPLETION_INDEX" not in values:
        raise ConfigError("JOB_COMPLETION_INDEX", "", "set (by an Indexed Job) when WORKERS > 1")
    missing = [v for v in ("WORKER_SERVICE", "JOB_NAME") if not values.get(v)]
    if missing:
        raise ConfigError(missing[0], "", "set when WORKERS > 1 and TF_CONFIG is not")
    index = int(values["JOB_COMPLETION_INDEX"])
    if index >= workers:
        raise ConfigError(
            "JOB_COMPLETION_INDEX", index, f"an index below WORKERS={workers} (0-{workers - 1})"
        )
    port = int(values.get("WORKER_PORT") or DEFAULT_WORKER_PORT)
    job, service = values["JOB_NAME"], values["WORKER_SERVICE"]
    return Cluster(
        {"worker": [f"{job}-{i}.{service}:{port}" for i in range(workers)]}, "worker", index
    )


# --- reading the environment (the edge) and documenting the table ---


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment merged over `.env` (or ENV_FILE); the process always wins."""
    environ = dict(os.environ if environ is None else environ)
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    named = environ.get("ENV_FILE", "").strip()
    path = Path(named or ".env")
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
    values = dotenv_values(stream=io.StringIO(text))
    from_file = {k: v for k, v in values.items() if v is not None}
    return {**from_file, **environ}


def load(environ: Mapping[str, str] | None = None) -> Config:
    return from_env(read_environment(environ))


def markdown_table() -> str:
    """The README's variable table, derived from VARIABLES (a test keeps them equal)."""
    rows = ["| variable | default | read by | meaning |", "| --- | --- | --- | --- |"]
    for var in VARIABLES:
        also = f" (fallback {', '.join(f'`{n}`' for n in var.fallbacks)})" if var.fallbacks else ""
        rows.append(f"| `{var.name}` | {var.default} | {var.side} | {var.meaning}{also} |")
    return "\n".join(rows) + "\n"
