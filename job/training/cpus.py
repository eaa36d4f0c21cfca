"""How many CPUs this process may really use, for TensorFlow's thread pools.

TensorFlow sizes its pools from the host's cores, not from a container's CPU limit: a pod
limited to 2 CPUs on a 64-core node would start 64-thread pools and spend its quota switching
between them. The figure is the smaller of the cgroup quota (`cpu.max` in cgroup v2,
`cpu.cfs_quota_us`/`cpu.cfs_period_us` in v1; a fractional quota rounds up) and the affinity
mask; THREADS overrides both. Pure functions over a cgroup folder, so tests use fake files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs allowed by the cgroup (None: no limit, or no cgroup to read)."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max":
            return None
        try:
            return int(quota) / int(period or 100_000)
        except (ValueError, ZeroDivisionError):
            return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            q, p = int(quota), int(period)
        except ValueError:
            return None
        return None if q <= 0 or p <= 0 else q / p
    return None


def affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def before_tensorflow(threads: int) -> None:
    """Environment TensorFlow and oneDNN read once, at load time; a value the user set wins.
    oneDNN is on by default only on CPUs with AVX512-VNNI/BF16 or AMX; elsewhere (AVX2 cloud
    VMs) its kernels were about 2x faster in a probe here, so the job turns it on."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def size_pools(threads: int) -> None:
    """TensorFlow's own pools; must run before its runtime starts (any op or device query)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def usable(threads: int | None, root: Path = CGROUP, cpus: int | None = None) -> tuple[int, str]:
    """(threads to use, where the figure came from)."""
    if threads:
        return threads, "THREADS"
    cpus = cpus if cpus is not None else affinity()
    quota = cgroup_quota(root)
    if quota is not None and math.ceil(quota) < cpus:
        return max(1, math.ceil(quota)), "cgroup quota"
    return cpus, "affinity mask"
