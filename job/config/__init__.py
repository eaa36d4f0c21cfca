"""The configuration: every setting declared once, one frozen object built from them.

At the bottom of the package: it imports nothing of the job but `errors` and `logs`, and no
TensorFlow, so a bad value fails in milliseconds with one line naming the variable. URIs are
kept as text here; their schemes are the run layout's business (job.runstore.layout).

- `settings`: the declarations (name, parser and range, default, help, flags). Everything
  else derives from them.
- `parsers`: turning text into values, or a ConfigError naming the variable.
- `recipes`: how the seed network is trained, as data.
- `sections`: the frozen Config and its sections, defaults taken from `settings`.
- `cluster`: TF_CONFIG, or the cluster of a Kubernetes Indexed Job.
- `environment`: the edge: the process environment over `.env`, into a Config; where each
  value came from (`sources`).
- `names`: names that are not the job's variables: near misses (`EPOCH`), unknown `.env` names.
- `docs`: the generated table of docs/configuration.md.

This module names the public surface the rest of the job uses.
"""

from job.config.cluster import Cluster, parse_tf_config
from job.config.docs import markdown_table
from job.config.environment import (
    from_env,
    given,
    load,
    new_run_id,
    read_environment,
    sources,
    with_run_id,
)
from job.config.names import Misspelled, Unknown, is_known, near_misses
from job.config.names import warn as warn_unknown_names
from job.config.parsers import (
    MODEL_NAME_RE,
    RESERVED_RUN_IDS,
    RUN_ID_RE,
    RUN_ID_RULE,
    check_model_name,
    check_run_id,
)
from job.config.recipes import DEFAULT_RECIPE, RECIPES
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
    DATASETS,
    HYPERPARAMETERS,
    MAX_LEASE_SECONDS,
    PRECISIONS,
    SECRET_NAMES,
    VARIABLES,
    Variable,
    default,
)

__all__ = [
    "DATASETS", "DEFAULT_RECIPE", "HYPERPARAMETERS", "MAX_LEASE_SECONDS", "MODEL_NAME_RE",
    "PRECISIONS", "RECIPES", "RESERVED_RUN_IDS", "RUN_ID_RE", "RUN_ID_RULE", "SECRET_NAMES",
    "VARIABLES",
    "Cluster", "Config", "Distribution", "Logging", "Misspelled", "Promotion", "Storage",
    "Training", "Unknown", "Variable", "Wml", "check_model_name", "check_run_id", "default",
    "from_env", "given", "is_known", "load", "markdown_table", "near_misses", "new_run_id",
    "parse_tf_config", "read_environment", "sources", "warn_unknown_names", "with_run_id",
]  # fmt: skip
