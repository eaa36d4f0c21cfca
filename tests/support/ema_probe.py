"""Probe of the weight average (EMA_MOMENTUM) on whichever Keras runs it: Keras 3.15 from the
main environment (tests/test_recipes.py); Keras 2.14 from `.venv-tf214` and Keras 3.5 from
`.venv-tf218`, WML's two runtimes (tests/test_runtimes.py, run from the unpacked WML zip).

    python ema_probe.py POLICY...      (float32, mixed_bfloat16, mixed_float16)

Prints one JSON object per policy. Run from a directory where `job` imports (the repository
root or the unpacked model definition): the current directory goes first on sys.path.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.getcwd())

import keras
import numpy as np

from job.training import compat
from job.training.callbacks import EvaluateAverage
from job.training.model import build_model, compile_model


def weights(model) -> list[np.ndarray]:
    return [np.array(w.numpy()) for w in model.trainable_variables]


def averages(model) -> list[np.ndarray]:
    return [np.array(a.numpy()) for _, a in compat.averaged_weights(model)]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


class Probe(keras.callbacks.Callback):
    """After EvaluateAverage in the list: sees the weights at the start, what each test pass
    scores, the weights just before and just after it, and saves a checkpoint at epoch end as
    job.training.checkpoint.Checkpointer does (model.save_weights: weights and optimizer state)."""

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.seen: dict[str, list[np.ndarray]] = {}

    def on_train_begin(self, logs=None):
        self.seen["initial"] = weights(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.seen["before_test"] = weights(self.model)

    def on_test_begin(self, logs=None):
        self.seen["scored"] = weights(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.seen["after_test"] = weights(self.model)
        self.model.save_weights(self.checkpoint)


def probe(policy: str) -> dict:
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    model = build_model()
    compile_model(model, 0.01, ema_momentum=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        probe_cb = Probe(os.path.join(tmp, "ckpt.weights.h5"))
        model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), verbose=0,
                  callbacks=[EvaluateAverage(), probe_cb])  # fmt: skip
        # Restored into a fresh model built the same way, as a resumed run does.
        fresh = build_model()
        compile_model(fresh, 0.01, ema_momentum=0.5)
        fresh.optimizer.build(fresh.trainable_variables)
        fresh.load_weights(probe_cb.checkpoint)
        restored = weights(fresh)
        restored_average = averages(fresh)
    seen, kept, average = probe_cb.seen, weights(model), averages(model)
    return {
        "policy": policy,
        "keras": keras.__version__,
        "pairs": len(average),
        "average_moved": not same(average, seen["initial"]),
        "raw_differs": not same(seen["before_test"], seen["scored"]),
        "scored_is_kept": same(seen["scored"], kept),
        "kept_is_average": same(kept, average),
        "swapped_back": same(seen["before_test"], seen["after_test"]),
        "checkpoint_raw": same(restored, seen["before_test"]),
        "checkpoint_average": same(restored_average, seen["scored"]),
    }


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(json.dumps(probe(name)), flush=True)
