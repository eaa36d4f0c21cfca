"""Per-epoch checkpoints in the run's store, and automatic resume from them.

Each epoch the model's weights and optimizer state (one Keras .weights.h5 file, which includes
the optimizer's step count, so the learning-rate schedule continues where it was) go to
`checkpoints/epoch-NNNN/`, then `checkpoints/latest.json` is pointed at them, then the previous
epoch's file is deleted. The pointer is one atomic object, so a reader always finds a complete
checkpoint. A run whose id has a pointer resumes from the epoch after it, with no flag to set.
Checkpoints are deleted once the run has published `_SUCCESS`: the published model is the
result, and a finished run is never trained again.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

from job import logs
from job.callbacks import EpochReporter
from job.digest import sha256_bytes, sha256_file
from job.preemption import PreemptionGuard
from job.publish import RunPublisher, now_iso

LATEST = "checkpoints/latest.json"
WEIGHTS = "ckpt.weights.h5"


def weights_key(epoch: int) -> str:
    return f"checkpoints/epoch-{epoch:04d}/{WEIGHTS}"


class Checkpointer(keras.callbacks.Callback):
    def __init__(
        self,
        source: RunPublisher,
        publisher: RunPublisher,
        local_dir: Path,
        reporter: EpochReporter,
        guard: PreemptionGuard,
    ) -> None:
        """Restores from `source` (the shared store), saves to `publisher` (the same store for
        the chief, scratch space for other workers)."""
        super().__init__()
        self.source = source
        self.publisher = publisher
        self.local = local_dir / WEIGHTS
        self.reporter = reporter
        self.guard = guard
        self.log = logs.get("job.checkpoint")

    def restore(self, model) -> int:
        """Load the latest checkpoint into `model`; returns the number of epochs it holds."""
        meta = self.source.read_json(LATEST)
        if not meta:
            return 0
        raw = self.source.store.get_bytes(self.source.key(weights_key(meta["epoch"])))
        if raw is None or sha256_bytes(raw) != meta["sha256"]:
            self.log.warning("checkpoint_unusable", epoch=meta["epoch"], action="start afresh")
            return 0
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.local.write_bytes(raw)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(self.local)
        self.reporter.history = list(meta["history"])
        self.log.info("resumed", from_epoch=meta["epoch"], next_epoch=meta["epoch"] + 1)
        return int(meta["epoch"])

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        started = time.perf_counter()
        with self.guard.critical():
            self.local.parent.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(self.local)
            done = epoch + 1
            self.publisher.store.put_file(self.publisher.key(weights_key(done)), self.local)
            meta = {
                "epoch": done,
                "sha256": sha256_file(self.local),
                "size": self.local.stat().st_size,
                "history": self.reporter.history,
                "saved_at": now_iso(),
            }
            self.publisher.put_json(LATEST, meta)
            if done > 1:
                self.publisher.store.delete(self.publisher.key(weights_key(done - 1)))
        self.log.debug("checkpoint_saved", epoch=done, seconds=time.perf_counter() - started)

    def clear(self) -> None:
        for key in self.publisher.store.list(self.publisher.key("checkpoints")):
            self.publisher.store.delete(key)
