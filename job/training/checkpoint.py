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
import numpy as np

from job import logs
from job.errors import ConfigError, DataError
from job.runstore import objects
from job.runstore.digest import sha256_bytes, sha256_file
from job.runstore.layout import CHECKPOINTS, LATEST_CHECKPOINT, RunFiles, checkpoint_key
from job.runstore.publish import RunPublisher, now_iso
from job.training import compat
from job.training.callbacks import History

# Settings that checkpoints written before they existed were trained with: such a checkpoint
# resumes where the value is the same and is refused, naming it, where not (an optimizer with a
# weight average cannot take a checkpoint without one: Keras would skip its whole state).
SETTINGS_ADDED_LATER = {"EMA_MOMENTUM": 0.0}


class Checkpointer(keras.callbacks.Callback):
    """Saves after each epoch, after the reporter has added the epoch to `history`."""

    def __init__(
        self, source: RunFiles, target: RunPublisher, local_dir: Path, history: History
    ) -> None:
        """Restores from `source` (the shared store), saves to `target` (the same store for
        the chief, scratch space for other workers)."""
        super().__init__()
        self.source = source
        self.target = target
        self.local = local_dir / "ckpt.weights.h5"
        self.history = history
        self.settings: dict = {}
        self.log = logs.get("job.checkpoint")

    def restore(self, model, settings: dict, *, discard: bool = False) -> int:
        """Load the latest checkpoint into `model` and the history; returns its epoch count.

        `settings` shape training (job.training.train.resume_settings); a checkpoint written under
        other settings is refused (ConfigError naming them) unless `discard`, which starts over."""
        self.settings = settings
        meta = self.source.read_json(LATEST_CHECKPOINT)
        if not meta:
            return 0
        if discard:
            self.log.warning("checkpoint_discarded", epoch=meta.get("epoch"), reason="RESUME")
            return 0
        where = self.source.where(LATEST_CHECKPOINT)
        epoch, digest, history = meta.get("epoch"), meta.get("sha256"), meta.get("history")
        entries_ok = isinstance(history, list) and all(
            isinstance(h, dict) and isinstance(h.get("train_seconds"), (int, float))
            for h in history
        )
        if type(epoch) is not int or epoch < 1 or not entries_ok:
            raise DataError(
                f"{where}: not a checkpoint pointer (epoch, sha256, history); "
                "RESUME=discard starts the run over"
            )
        saved = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        saved = {**SETTINGS_ADDED_LATER, **saved}
        differ = sorted(
            k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k)
        )
        if differ:
            raise ConfigError(
                differ[0],
                settings.get(differ[0]),
                f"{saved.get(differ[0])!r} as when {where} was written, to resume (differing: "
                f"{', '.join(differ)}); RESUME=discard starts the run over",
            )
        raw = self.source.store.get_bytes(
            self.source.key(checkpoint_key(epoch)), limit=objects.MAX_ARTIFACT
        )
        if raw is None or sha256_bytes(raw) != digest:
            self.log.warning("checkpoint_unusable", epoch=epoch, action="start afresh")
            return 0
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.local.write_bytes(raw)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(self.local)
        self.restore_random_states(model, meta.get("random_streams"), where)
        self.history.restore(history)
        self.log.info("resumed", from_epoch=epoch, next_epoch=epoch + 1)
        return epoch

    def restore_random_states(self, model, saved: object, where: str) -> None:
        """The model's random streams where the checkpoint left them. A checkpoint written
        before they were kept resumes with a warning: its run will not be bit-identical to an
        uninterrupted one, which is better at 3 a.m. than a run that cannot go on."""
        states = compat.random_states(model)
        if saved is None:
            if states:
                self.log.warning("checkpoint_without_random_streams", checkpoint=where,
                                 effect="the resumed run is not bit-identical to an "
                                 "uninterrupted one")  # fmt: skip
            return
        pairs = saved if isinstance(saved, list) else []

        def fits(pair: object, variable) -> bool:  # [seed, count] in the state's own integers
            bounds = np.iinfo(np.dtype(variable.dtype))
            return (
                isinstance(pair, list)
                and len(pair) == 2
                and all(type(i) is int and bounds.min <= i <= bounds.max for i in pair)
            )

        if len(pairs) != len(states) or not all(map(fits, pairs, states)):
            raise DataError(
                f"{where}: random_streams is not {len(states)} [seed, count] pairs; "
                "RESUME=discard starts the run over"
            )
        for variable, value in zip(states, pairs, strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        started = time.perf_counter()
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(self.local)
        done = epoch + 1
        self.target.create(checkpoint_key(done), self.local)
        meta = {
            "epoch": done,
            "sha256": sha256_file(self.local),
            "size": self.local.stat().st_size,
            "history": self.history.entries,
            "settings": self.settings,
            "random_streams": [
                [int(i) for i in np.asarray(v.numpy())] for v in compat.random_states(self.model)
            ],
            "saved_at": now_iso(),
        }
        self.target.put_json(LATEST_CHECKPOINT, meta)
        if done > 1:
            self.target.delete(checkpoint_key(done - 1))
        self.log.debug("checkpoint_saved", epoch=done, seconds=time.perf_counter() - started)

    def clear(self) -> None:
        for key in self.target.store.list(self.target.key(CHECKPOINTS)):
            self.target.delete(key.split("/", 1)[1])
