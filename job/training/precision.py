"""Choosing the compute precision from the hardware: pure rules plus a small probe at the edge.

bfloat16 runs fast on CPUs with AMX or AVX512-BF16 and on GPUs of compute capability 8.0 and
newer; float16 only on older GPUs (7.x) with tensor cores. float16 is never chosen, nor allowed, on
a CPU: there it is emulated and far slower than float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from job import logs
from job.errors import ConfigError

KERAS_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CPU_BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


def choose(requested: str, gpu_capabilities: list[tuple[int, int]], cpu_flags: set[str]) -> str:
    """The precision to train in; raises ConfigError for an explicit choice the host can't run."""
    if requested == "float16" and not gpu_capabilities:
        raise ConfigError(
            "PRECISION", requested, "float32 or bfloat16 on a CPU (float16 needs a GPU)"
        )
    if requested != "auto":
        return requested
    if gpu_capabilities:
        oldest = min(gpu_capabilities)
        if oldest >= (8, 0):
            return "bfloat16"
        return "float16" if oldest >= (7, 0) else "float32"
    return "bfloat16" if cpu_flags & CPU_BF16_FLAGS else "float32"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def gpu_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        caps.append(tuple(details.get("compute_capability", (0, 0))))
    return caps


def find_gpus(level: str = "info") -> list[tuple[int, int]]:
    """The GPUs TensorFlow sees, looked for once before training. The GPU image's TensorFlow
    (a CUDA build) on a host without a GPU prints native errors while looking (`failed call to
    cuInit`); those are kept off the log stream and said once, as the `no_gpu` event."""
    import tensorflow as tf

    with logs.native_output_silenced(level):
        found = gpu_capabilities()
    log = logs.get("job.devices")
    if found:
        log.info("gpus", count=len(found), compute_capabilities=found)
    elif tf.test.is_built_with_cuda():
        log.warning("no_gpu", detail="this TensorFlow is built for CUDA but sees no GPU: "
                    "training on the CPU")  # fmt: skip
    return found


def detect(requested: str) -> str:
    return choose(requested, gpu_capabilities(), cpu_flags())


@contextlib.contextmanager
def policy(requested: str) -> Iterator[str]:
    """Train under the precision chosen for `requested` (yields it); Keras' global policy is
    put back afterwards, so one run in a process does not leak into the next."""
    import keras

    chosen = detect(requested)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(KERAS_POLICY[chosen])
    try:
        yield chosen
    finally:
        keras.mixed_precision.set_global_policy(previous)
