"""The configuration object: frozen sections built once from the environment (job.config.load).

Field defaults come from the settings table (job.config.settings.default), never written here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from job.config.cluster import Cluster
from job.config.recipes import DEFAULT_RECIPE, RECIPES
from job.config.settings import VARIABLES, default
from job.logs import MIN_SECRET_LENGTH, REDACTED

# (section, attribute) of each secret setting: the section is Config's field ("" for Config's own).
SECRET_ATTRS = {v.name: (v.section, v.attr) for v in VARIABLES if v.secret and v.attr}


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
    dataset: str = default("DATASET")
    target_accuracy: float | None = None
    seed: int = default("SEED")
    train_limit: int | None = None
    test_limit: int | None = None

    @classmethod
    def from_recipe(cls, name: str = DEFAULT_RECIPE, **overrides: object) -> Training:
        return cls(recipe=name, **{**RECIPES[name], **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Storage:
    """The object store's endpoint and HMAC keys: all that bucket code is given."""

    endpoint: str | None = None
    access_key_id: str | None = field(default=None, repr=False)  # secret: the table says so
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = default("COS_REGION")
    max_attempts: int = default("COS_MAX_ATTEMPTS")  # all attempts, the first included


@dataclass(frozen=True)
class Distribution:
    mode: str = default("DISTRIBUTION")
    collective_timeout: int = default("COLLECTIVE_TIMEOUT")
    cluster: Cluster | None = None  # None: one process

    @property
    def multi_worker(self) -> bool:
        return self.cluster is not None and self.cluster.n_workers > 1


@dataclass(frozen=True)
class Logging:
    format: str = default("LOG_FORMAT")
    level: str = default("LOG_LEVEL")


@dataclass(frozen=True)
class Promotion:
    """Whether a successful run may become its model's champion (job.runstore.champion)."""

    policy: str = default("PROMOTE")
    margin: float = default("PROMOTE_MARGIN")
    model_name: str | None = None  # None: the dataset's name


@dataclass(frozen=True)
class Wml:
    """Watson Machine Learning, read by the submitter only (job.launch.wml)."""

    url: str | None = None
    apikey: str | None = field(default=None, repr=False)  # secret: the table says so
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    instance_id: str | None = None  # None: computed (job.launch.wml)
    cpd_version: str | None = None
    ca_bundle: str | None = None
    auth_url: str | None = None
    connection_id: str | None = None
    space_id: str | None = None
    hardware_spec: str | None = None  # None: computed (job.launch.wml)
    software_spec: str | None = None  # None: computed (job.launch.wml)
    nodes: int = default("WML_NODES")


@dataclass(frozen=True)
class Config:
    run_id: str
    training: Training = field(default_factory=Training.from_recipe)
    output_uri: str = default("OUTPUT_URI")
    data_uri: str | None = None
    work_dir: str | None = None
    lease_seconds: int = default("LEASE_SECONDS")
    resume: str = default("RESUME")
    deterministic: str = default("DETERMINISTIC")
    threads: int | None = None
    storage: Storage = field(default_factory=Storage)
    distribution: Distribution = field(default_factory=Distribution)
    logging: Logging = field(default_factory=Logging)
    promotion: Promotion = field(default_factory=Promotion)
    wml: Wml = field(default_factory=Wml)
    notify_url: str | None = field(default=None, repr=False)  # secret: the table says so

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

    def _secret_values(self) -> list[tuple[str, str]]:
        return [
            (name, value)
            for name, (section, attr) in SECRET_ATTRS.items()
            if (value := getattr(getattr(self, section) if section else self, attr))
        ]

    def secrets(self) -> list[str]:
        """The secret values in force, so output can be checked or scrubbed for them."""
        return [value for _, value in self._secret_values()]

    def short_secrets(self) -> list[str]:
        """The variables holding a secret short enough to be scrubbed only as a whole token."""
        return [name for name, value in self._secret_values() if len(value) < MIN_SECRET_LENGTH]


def _redact(obj: object, section: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if (section, f.name) in SECRET_ATTRS.values():
            out[f.name] = REDACTED if value else value
        elif isinstance(value, Cluster):
            out[f.name] = asdict(value)
        elif hasattr(value, "__dataclass_fields__"):
            out[f.name] = _redact(value, f.name)
        else:
            out[f.name] = value
    return out
