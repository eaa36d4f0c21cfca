"""Scale-out on TensorFlow's own engines: which strategy, and a lost peer as a clean error.

DISTRIBUTION=auto picks the default strategy on one device, MirroredStrategy on several local
GPUs and MultiWorkerMirroredStrategy when TF_CONFIG names several workers. The cluster itself
(TF_CONFIG, or one built for a Kubernetes Indexed Job) is parsed once, in job.config.
"""

from __future__ import annotations

import contextlib
import os
import re

from job.config import Cluster, Distribution
from job.errors import TransientError
from job.training import compat


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
        compat.bound_peer_registration(collective_timeout)
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return None


def strategy_for(distribution: Distribution):
    """The strategy (None: the default one), created before any other TensorFlow op.

    MultiWorkerMirroredStrategy configures the collective runtime, which must happen before
    TensorFlow initialises its devices, so the GPU count is looked at only otherwise.
    """
    if distribution.multi_worker:
        # MultiWorkerMirroredStrategy reads the cluster from the environment.
        os.environ["TF_CONFIG"] = distribution.cluster.tf_config()  # type: ignore[union-attr]
        return create_strategy("multi_worker", distribution.collective_timeout)
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    kind = choose(distribution.mode, distribution.cluster, gpus)
    return create_strategy(kind, distribution.collective_timeout)


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
    except tf.errors.UnknownError as exc:
        if "Could not start gRPC server" not in str(exc):
            raise
        raise TransientError(
            f"cannot listen for peers as {cluster.worker_id} (its TF_CONFIG port is taken)"
        ) from None
    except lost as exc:
        detail = " ".join(str(exc.message).split())
        unhealthy = re.search(r"following tasks are unhealthy[^:]*: ([^ ]+)", detail)
        who = f" ({unhealthy.group(1)})" if unhealthy else ""
        raise TransientError(
            f"lost contact with a peer worker{who}: {type(exc).__name__}; the last checkpoint "
            "is saved, restart all workers to resume"
        ) from None
