"""Every setting, declared once: its name, parser and range, default, help and flags.

`VARIABLES` is the single list of the variables the job and the submitter read. Everything else
derives from it: the configuration's defaults (job.config.sections), the documentation table
(job.config.docs, docs/configuration.md), the variables the submitter forwards to a container,
the secret list, and WML's hyperparameters (the training section). A default is one of:

- a value (`default=60`), the effective default, rendered into the docs;
- `RECIPE`: the recipe's value (job.config.recipes), rendered as each recipe's;
- `computed("rule")`: worked out when the job runs (a time-based run id, the CPUs it may use);
  the rule is the documentation;
- None with `unset` saying what no value means ("all", "AWS's").
"""

from __future__ import annotations

from dataclasses import dataclass

from job.config import parsers as p
from job.config.recipes import DEFAULT_RECIPE, RECIPES


@dataclass(frozen=True)
class Computed:
    """A default worked out at run time; `rule` says how (and is what the docs show)."""

    rule: str


def computed(rule: str) -> Computed:
    return Computed(rule)


RECIPE = computed("the recipe's")  # the recipe's value: see `Variable.documented_default`


@dataclass(frozen=True)
class Variable:
    """One setting.

    `section`/`attr` say where the value lands in Config (section "" is Config itself; attr None:
    read where `meaning` says). `side`: who reads it (job, submitter, both). `forward`: what the
    submitter does with it when it starts a container: "yes", "no", or "remote" (only a value
    that names a bucket; a host path means nothing inside a container). `fallbacks`: other
    names read when this one is unset (the platform's: WML's, AWS's). `optional_file`, for a
    secret: a `<NAME>_FILE` naming no file counts as unset, as Kubernetes mounts an optional
    Secret that does not exist (an empty folder), instead of exit 78.
    """

    name: str
    parse: p.Parser
    default: object
    meaning: str
    section: str = ""
    attr: str | None = None
    side: str = "job"
    secret: bool = False
    forward: str = "yes"
    fallbacks: tuple[str, ...] = ()
    unset: str = "-"  # what a None default means, in the docs
    optional_file: bool = False

    @property
    def from_recipe(self) -> bool:
        return self.default is RECIPE

    @property
    def is_computed(self) -> bool:
        return isinstance(self.default, Computed) and not self.from_recipe

    def documented_default(self) -> str:
        """The default as the docs show it, derived from `default` (a test checks they agree
        with the configuration's effective defaults)."""
        if self.from_recipe:
            order = [DEFAULT_RECIPE, *sorted(r for r in RECIPES if r != DEFAULT_RECIPE)]
            shown = " / ".join(_shown(RECIPES[r][self.attr or ""]) for r in order)
            return f"recipe's ({' / '.join(order)}): {shown}"
        if isinstance(self.default, Computed):
            return self.default.rule
        if self.default is None:
            return self.unset
        return _shown(self.default)


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


PRECISIONS = ("auto", "float32", "bfloat16", "float16")
MAX_LEASE_SECONDS = 3600  # a lease record claiming longer is corrupt (job.runstore.lease)
_T, _S = "training", "storage"
# The datasets and their full (training, test) sizes: a run on fewer digits is a smoke run, never
# a champion candidate (job.runstore.champion). tests/test_champion.py checks mnist's against
# the real files.
DATASETS: dict[str, tuple[int, int]] = {
    "mnist": (60_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
}

VARIABLES: tuple[Variable, ...] = (
    Variable("RUN_ID", p.check_run_id,
             computed("UTC time + random suffix, e.g. `20261128-183557-4daaf1`"),
             "run folder name; " + p.RUN_ID_RULE + ". A finished run is never changed: reusing "
             "its id does nothing and exits 0", attr="run_id", side="both",
             fallbacks=("TRAINING_ID",)),
    Variable("DATASET", p.choice(*DATASETS), "mnist",
             "`mnist` or `fashion_mnist` (same file formats)", _T, "dataset"),
    Variable("DATA_URI", p.text, None,
             "folder of IDX files (optionally `.gz`), a Keras-layout `.npz`, or a folder holding "
             "one; or the same in a bucket: `s3://BUCKET/PREFIX` or `s3://BUCKET/KEY.npz`",
             attr="data_uri", side="both", forward="remote", fallbacks=("DATA_DIR",),
             unset="`./data/<DATASET>` if present, else the image's copy, else the Keras download"),
    Variable("OUTPUT_URI", p.text, "./runs",
             "where run folders go: a local path, `file://` URI or `s3://BUCKET[/PREFIX]`",
             attr="output_uri", side="both", forward="remote", fallbacks=("RESULT_DIR",)),
    Variable("RECIPE", p.choice(*RECIPES), DEFAULT_RECIPE,
             "how the (unchanged) seed network is trained: `fast` or `seed` (the notebook)",
             _T, "recipe"),
    Variable("EPOCHS", p.integer(1, 10_000), RECIPE, "1-10000", _T, "epochs"),
    Variable("BATCH_SIZE", p.integer(1, 65_536), RECIPE,
             "1-65536, per replica", _T, "batch_size"),
    Variable("LEARNING_RATE", p.number(1e-7, 10.0), RECIPE,
             "RMSprop (peak) learning rate, 1e-7 to 10, per replica", _T, "learning_rate"),
    Variable("EMA_MOMENTUM", p.number(0.0, 0.9999), RECIPE,
             "momentum per step of a moving average of the weights, which each epoch's test "
             "pass scores and the run keeps (spans at most half an epoch); 0 turns it off",
             _T, "ema_momentum"),
    Variable("PRECISION", p.choice(*PRECISIONS), RECIPE,
             "`auto`, `float32`, `bfloat16`, `float16` (GPU only)", _T, "precision"),
    Variable("TARGET_ACCURACY", p.number(0.0, 1.0, lo_inclusive=False), None,
             "stop after the first epoch whose test accuracy reaches this (0-1)",
             _T, "target_accuracy", unset="unset"),
    Variable("SEED", p.integer(0, 2**31 - 1), 42, "seeds Python, NumPy and TensorFlow",
             _T, "seed"),
    Variable("TRAIN_LIMIT", p.integer(1, 10_000_000), None,
             "use only the first N training examples (smoke runs, tests)", _T, "train_limit",
             unset="all"),
    Variable("TEST_LIMIT", p.integer(1, 10_000_000), None,
             "use only the first N test examples", _T, "test_limit", unset="all"),
    Variable("LOG_FORMAT", p.choice("auto", "json", "console"), "auto",
             "`json` (one object per line), `console`, or `auto`: JSON unless stderr is a "
             "terminal", "logging", "format", side="both"),
    Variable("LOG_LEVEL", p.choice("debug", "info", "warning", "error"), "info",
             "`debug` also shows tracebacks and TensorFlow's native logs", "logging", "level",
             side="both"),
    Variable("PROMOTE", p.choice("never", "if-better", "always"), "never",
             "after `_SUCCESS`, make the run its model's champion: `never`, `if-better` (higher "
             "test accuracy on the same test set; the CronJob's setting) or `always`",
             "promotion", "policy"),
    Variable("PROMOTE_MARGIN", p.number(0.0, 1.0), 0.0,
             "`if-better` needs test accuracy above the champion's plus this (0-1)",
             "promotion", "margin"),
    Variable("MODEL_NAME", p.check_model_name, computed("the dataset's name"),
             "the model whose champion the run may become: `<OUTPUT_URI>/models/<MODEL_NAME>/`",
             "promotion", "model_name"),
    Variable("NOTIFY_URL", p.webhook_url, None,
             "an http(s) webhook (Slack, Teams, any JSON receiver) that gets one POST when a "
             "`train` attempt ends: succeeded, failed or preempted ([notifications]"
             "(operations.md#notifications)). A secret: its URL holds the credential. "
             "`NOTIFY_URL_FILE` naming no file counts as unset (an optional Secret)",
             attr="notify_url", secret=True, optional_file=True, unset="no notifications"),
    Variable("WORK_DIR", p.text, None,
             "local scratch for checkpoints and artifacts before they are published",
             attr="work_dir", forward="no", unset="system temp"),
    Variable("LEASE_SECONDS", p.integer(10, MAX_LEASE_SECONDS), 60,
             "how long a run's owner lease lasts unrenewed; a second process with the same "
             "RUN_ID exits 75 while it lives, and takes the run over once it has expired",
             attr="lease_seconds"),
    Variable("RESUME", p.choice("auto", "discard"), "auto",
             "`auto`: a rerun of a RUN_ID continues from its checkpoint if it was trained with "
             "the same settings and data (else exit 78 naming what differs); `discard`: start "
             "the run over", attr="resume"),
    Variable("DETERMINISTIC", p.choice("on", "off"), "on",
             "`on`: TensorFlow's op determinism, so the same inputs give bit-identical weights "
             "on the same machine and software (`weights_sha256` in metrics.json, `verify`); "
             "`off`: kernels may reduce in any order (see performance.md for the cost)",
             attr="deterministic"),
    Variable("THREADS", p.integer(1, 1024),
             computed("the smaller of the cgroup CPU quota and the affinity mask"),
             "TensorFlow's thread pools (the CPUs used and their source are logged)",
             attr="threads"),
    Variable("ENV_FILE", p.text, ".env", "another file of variables (read before the rest)",
             side="both", forward="no"),
    Variable("COS_ENDPOINT", p.endpoint, None,
             "S3 endpoint URL, e.g. `https://s3.us-south.cloud-object-storage.appdomain.cloud`",
             _S, "endpoint", side="both", fallbacks=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
             unset="AWS's"),
    Variable("COS_ACCESS_KEY_ID", p.secret, None,
             "HMAC access key id, required for `s3://` URIs; never printed, logged or stored",
             _S, "access_key_id", side="both", secret=True, fallbacks=("AWS_ACCESS_KEY_ID",)),
    Variable("COS_SECRET_ACCESS_KEY", p.secret, None,
             "HMAC secret access key, required for `s3://` URIs; never printed, logged or stored",
             _S, "secret_access_key", side="both", secret=True,
             fallbacks=("AWS_SECRET_ACCESS_KEY",)),
    Variable("COS_REGION", p.region, "us-south", "the bucket's region", _S, "region",
             side="both", fallbacks=("AWS_REGION", "AWS_DEFAULT_REGION")),
    Variable("COS_MAX_ATTEMPTS", p.integer(1, 20), 6,
             "attempts per storage request, the first included (exponential back-off)",
             _S, "max_attempts", side="both"),
    Variable("DISTRIBUTION", p.choice("auto", "none", "mirrored", "multi_worker"), "auto",
             "`auto`, `none`, `mirrored` (several local GPUs), `multi_worker` (see "
             "scale-out.md)", "distribution", "mode"),
    Variable("COLLECTIVE_TIMEOUT", p.integer(5, 86_400), 300,
             "seconds a worker waits on its peers before giving up (exit 75)",
             "distribution", "collective_timeout"),
    Variable("TF_CONFIG", p.text, None,  # parsed with the other cluster inputs: job.config.cluster
             "TensorFlow's cluster description; built from the next five when unset",
             "cluster", forward="no"),
    Variable("WORKERS", p.integer(1, 4096), 1, "an Indexed Job's number of workers", "cluster"),
    Variable("WORKER_SERVICE", p.dns_label, None, "the Indexed Job's headless Service",
             "cluster"),
    Variable("WORKER_PORT", p.integer(1, 65_535), 2222, "the workers' port", "cluster"),
    Variable("JOB_NAME", p.dns_label, None, "the Indexed Job's name (pods `<JOB_NAME>-<i>`)",
             "cluster"),
    Variable("JOB_COMPLETION_INDEX", p.integer(0, 4095), None,
             "set by Kubernetes in an Indexed Job: this worker's index", "cluster",
             forward="no"),
    Variable("WML_URL", p.https_url, None,
             "the WML service's https:// URL: an IBM Cloud region's "
             "(`https://us-south.ml.cloud.ibm.com`) or a Cloud Pak for Data cluster's",
             "wml", "url", side="submitter", forward="no"),
    Variable("WML_APIKEY", p.secret, None,
             "an IBM Cloud API key; on Cloud Pak for Data, the user's API key (with WML_USERNAME)",
             "wml", "apikey", side="submitter", secret=True, forward="no"),
    Variable("WML_TOKEN", p.secret, None, "a bearer token instead of a key or password",
             "wml", "token", side="submitter", secret=True, forward="no"),
    Variable("WML_USERNAME", p.username, None,
             "Cloud Pak for Data: the user to sign in as, with WML_APIKEY or WML_PASSWORD",
             "wml", "username", side="submitter", forward="no"),
    Variable("WML_PASSWORD", p.secret, None,
             "Cloud Pak for Data: the user's password instead of an API key (any length; no "
             "spaces or control characters)", "wml", "password", side="submitter", secret=True,
             forward="no"),
    Variable("WML_INSTANCE_ID", p.spec_name, computed("`openshift` when WML_USERNAME is set"),
             "Cloud Pak for Data's instance id (read by the deprecated client only: "
             "ibm-watsonx-ai tells the platform from WML_URL)", "wml", "instance_id",
             side="submitter", forward="no"),
    Variable("WML_CPD_VERSION", p.cpd_version, None,
             "Cloud Pak for Data's version, e.g. `5.2`", "wml", "cpd_version",
             side="submitter", forward="no", unset="asked of the cluster"),
    Variable("WML_CA_BUNDLE", p.text, None,
             "a PEM file of the certificates to trust for WML_URL (a cluster with its own CA)",
             "wml", "ca_bundle", side="submitter", forward="no", unset="the system's"),
    Variable("WML_AUTH_URL", p.https_url, None,
             "the sign-in endpoint, where it is not the platform's own (IBM Cloud's IAM, "
             "Cloud Pak for Data's `/icp4d-api/v1/authorize`)", "wml", "auth_url",
             side="submitter", forward="no", unset="the platform's"),
    Variable("WML_CONNECTION_ID", p.spec_name, None,
             "a connection asset of the space for the bucket: WML reads the data and writes "
             "the results through it, and no HMAC key travels with the training (Cloud Pak for "
             "Data)", "wml", "connection_id", side="submitter", forward="no",
             unset="the COS_* keys in the request"),
    Variable("WML_SPACE_ID", p.spec_name, None, "the deployment space to train in", "wml",
             "space_id", side="submitter", forward="no"),
    Variable("WML_HARDWARE_SPEC", p.spec_name,
             computed("the newest one-GPU specification offered: H100, A100, L40S, L4, V100, "
                      "then K80"),
             "WML hardware specification; checked against WML's list before anything is "
             "stored", "wml", "hardware_spec", side="submitter", forward="no"),
    Variable("WML_SOFTWARE_SPEC", p.spec_name,
             computed("newest TensorFlow runtime offered: `runtime-<N>-py3.<M>` (25.1 on) or "
                      "`tensorflow_rt<N>-py3.<M>`"),
             "WML software specification; unset, the TensorFlow runtime WML lists with the "
             "highest runtime version, then Python version", "wml", "software_spec",
             side="submitter", forward="no"),
    Variable("WML_NODES", p.integer(1, 64), 1, "WML nodes for the training", "wml", "nodes",
             side="submitter", forward="no"),
)  # fmt: skip
BY_NAME = {v.name: v for v in VARIABLES}
SECRET_NAMES = frozenset(n for v in VARIABLES if v.secret for n in (v.name, *v.fallbacks))
OPTIONAL_FILE_NAMES = frozenset(
    n for v in VARIABLES if v.secret and v.optional_file for n in (v.name, *v.fallbacks)
)
# Hyperparameters: what WML shows for a training run. The training section, by construction.
HYPERPARAMETERS = tuple(v.name for v in VARIABLES if v.section == _T)


def default(name: str) -> object:
    """A setting's declared default value; None for a computed, recipe or unset one."""
    value = BY_NAME[name].default
    return None if isinstance(value, Computed) else value
