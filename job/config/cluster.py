"""The cluster a multi-worker run trains in: TF_CONFIG as given, or one built for a Kubernetes
Indexed Job from WORKERS, JOB_NAME, WORKER_SERVICE, WORKER_PORT and JOB_COMPLETION_INDEX."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from job.config.settings import default
from job.errors import ConfigError


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
    except (json.JSONDecodeError, RecursionError):
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


def cluster(values: Mapping[str, str], mode: str) -> Cluster | None:
    cluster = cluster_from(values)
    if mode == "multi_worker" and cluster is None:
        raise ConfigError("DISTRIBUTION", mode, "a TF_CONFIG or WORKERS > 1 with it")
    if mode in ("none", "mirrored") and cluster and cluster.n_workers > 1:
        raise ConfigError(
            "DISTRIBUTION", mode, "auto or multi_worker when TF_CONFIG has several workers"
        )
    return cluster


def cluster_from(values: Mapping[str, str]) -> Cluster | None:
    """TF_CONFIG if given, else one built for an Indexed Job, else None (one process): worker i
    is `<JOB_NAME>-<i>.<WORKER_SERVICE>:<WORKER_PORT>`."""
    if values.get("TF_CONFIG"):
        return parse_tf_config(values["TF_CONFIG"])
    workers = int(
        values.get("WORKERS") or default("WORKERS")
    )  # already parsed: ASCII digits in range
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
    port = int(values.get("WORKER_PORT") or default("WORKER_PORT"))
    job, service = values["JOB_NAME"], values["WORKER_SERVICE"]
    return Cluster(
        {"worker": [f"{job}-{i}.{service}:{port}" for i in range(workers)]}, "worker", index
    )
