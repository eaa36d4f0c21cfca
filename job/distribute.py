"""Scale-out on TensorFlow's own engines: which strategy, which cluster, who is chief.

DISTRIBUTION=auto picks the default strategy on one device, MirroredStrategy on several local
GPUs and MultiWorkerMirroredStrategy when TF_CONFIG names several workers. TF_CONFIG comes from
the platform, or is built here for a Kubernetes Indexed Job from JOB_COMPLETION_INDEX, WORKERS,
WORKER_SERVICE, WORKER_PORT and JOB_NAME (pod `<job>-<i>` behind the headless Service
`<service>`). Everything but `create_strategy` is pure, so it is tested without TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from job.errors import ConfigError, TransientError

DISTRIBUTIONS = ("auto", "none", "mirrored", "multi_worker")
DEFAULT_PORT = 2222


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
    if len(spec.get("chief", [])) > 1:
        raise bad("at most one chief")
    task = data.get("task")
    if not isinstance(task, dict) or task.get("type") not in spec:
        raise bad("task.type must name a role of the cluster")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(spec[task["type"]]):
        raise bad(f"task.index {index!r} out of range")
    return Cluster({k: list(v) for k, v in spec.items()}, task["type"], index)


def build_cluster(job_name: str, service: str, port: int, workers: int, index: int) -> Cluster:
    """An Indexed Job's TF_CONFIG: worker i is `<job>-<i>.<service>:<port>`."""
    if not 0 <= index < workers:
        raise ConfigError(
            "JOB_COMPLETION_INDEX", index, f"an index below WORKERS={workers} (0-{workers - 1})"
        )
    hosts = [f"{job_name}-{i}.{service}:{port}" for i in range(workers)]
    return Cluster({"worker": hosts}, "worker", index)


def cluster_from_env(env: Mapping[str, str]) -> Cluster | None:
    """TF_CONFIG if given, else one built for an Indexed Job, else None (one process)."""
    if env.get("TF_CONFIG"):
        return parse_tf_config(env["TF_CONFIG"])
    workers = int(env.get("WORKERS") or 1)
    if workers <= 1:
        return None
    if "JOB_COMPLETION_INDEX" not in env:
        raise ConfigError("JOB_COMPLETION_INDEX", "", "set (by an Indexed Job) when WORKERS > 1")
    missing = [v for v in ("WORKER_SERVICE", "JOB_NAME") if not env.get(v)]
    if missing:
        raise ConfigError(missing[0], "", "set when WORKERS > 1 and TF_CONFIG is not")
    return build_cluster(
        env["JOB_NAME"],
        env["WORKER_SERVICE"],
        int(env.get("WORKER_PORT") or DEFAULT_PORT),
        workers,
        int(env["JOB_COMPLETION_INDEX"]),
    )


def choose(requested: str, cluster: Cluster | None, local_gpus: int) -> str:
    """none | mirrored | multi_worker, from DISTRIBUTION and what this process can see
    (job.config has already rejected inconsistent combinations)."""
    if requested == "auto":
        if cluster is not None and cluster.n_workers > 1:
            return "multi_worker"
        return "mirrored" if local_gpus > 1 else "none"
    return requested


def create_strategy(kind: str, collective_timeout: int):
    """The tf.distribute strategy; must run before any other TensorFlow op in the process."""
    import tensorflow as tf

    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return None


def strategy_for(distribution: str, cluster: Cluster | None, collective_timeout: int):
    """The strategy (None: the default one), created before any other TensorFlow op.

    MultiWorkerMirroredStrategy configures the collective runtime, which must happen before
    TensorFlow initialises its devices, so the GPU count is looked at only otherwise.
    """
    if cluster is not None and cluster.n_workers > 1:
        return create_strategy("multi_worker", collective_timeout)
    import tensorflow as tf

    kind = choose(distribution, cluster, len(tf.config.list_physical_devices("GPU")))
    return create_strategy(kind, collective_timeout)


@contextlib.contextmanager
def peer_errors(cluster: Cluster | None):
    """A lost peer surfaces in TensorFlow as an aborted or unavailable collective: make it one
    short TransientError (exit 75), so the Job retries and the run resumes from its checkpoint."""
    if cluster is None or cluster.n_workers <= 1:
        yield
        return
    import tensorflow as tf

    lost = (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )
    try:
        yield
    except lost as exc:
        detail = " ".join(str(exc.message).split())
        unhealthy = re.search(r"following tasks are unhealthy[^:]*: ([^ ]+)", detail)
        who = f" ({unhealthy.group(1)})" if unhealthy else ""
        raise TransientError(
            f"lost contact with a peer worker{who}: {type(exc).__name__}; the last checkpoint "
            "is saved, restart all workers to resume"
        ) from None
