"""A trained model's identity: a digest of its weights, and what bit-identity depends on.

Two runs with the same inputs (the data, the settings, SEED, the code version, the replica
count) end with the same `weights_sha256` when what `conditions` records is also the same: the
TensorFlow and Keras versions, the precision, the CPU features that choose kernels (oneDNN picks
AVX-512 or AMX code paths where the CPU has them, and their sums round differently) and the
thread count (a reduction split over other threads adds in another order). `verify` compares
both (job.training.verify).
"""

from __future__ import annotations

import hashlib

import numpy as np

from job.training import precision

# CPU feature flags (/proc/cpuinfo) whose presence changes which kernels run.
KERNEL_FLAG_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx")


def weights_sha256(weights: list[np.ndarray]) -> str:
    """SHA-256 over the weights in the model's own order: each one's dtype, shape and bytes
    (little-endian, C order), so a reshaped or retyped weight differs too."""
    digest = hashlib.sha256()
    for weight in weights:
        array = np.ascontiguousarray(weight)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        digest.update(f"{dtype.str}{array.shape};".encode())
        digest.update(array.astype(dtype, copy=False).tobytes())
    return digest.hexdigest()


def model_sha256(model) -> str:
    return weights_sha256([np.asarray(w) for w in model.get_weights()])


def kernel_flags(flags: set[str]) -> list[str]:
    return sorted(f for f in flags if f.startswith(KERNEL_FLAG_PREFIXES))


def conditions(chosen_precision: str, threads: int, deterministic: str) -> dict[str, object]:
    """What, beside the inputs, the weights' bits depend on (with DETERMINISTIC=off they may
    differ anyway)."""
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "precision": chosen_precision,
        "cpu_features": kernel_flags(precision.cpu_flags()),
        "threads": threads,
        "deterministic": deterministic,
    }


def differences(recorded: dict, current: dict) -> list[str]:
    """The conditions that differ, as `name: recorded -> current`."""
    keys = sorted(recorded.keys() | current.keys())
    return [
        f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]
