"""Per-epoch reporting: one structured log event and a status.json heartbeat each epoch."""

from __future__ import annotations

import time

import keras

from job import logs
from job.publish import RunPublisher

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


class EpochReporter(keras.callbacks.Callback):
    def __init__(self, publisher: RunPublisher, epochs: int, n_train: int) -> None:
        super().__init__()
        self.publisher = publisher
        self.epochs = epochs
        self.n_train = n_train
        self.history: list[dict[str, float]] = []
        self.log = logs.get("job.train")
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self._started
        values = {k: round(float(logs[k]), 6) for k in HISTORY_KEYS if logs and k in logs}
        entry = {"epoch": epoch + 1, **values, "seconds": round(seconds, 3)}
        self.history.append(entry)
        self.log.info(
            "epoch",
            epochs=self.epochs,
            samples_per_second=round(self.n_train / seconds, 1) if seconds else None,
            **entry,
        )
        self.publisher.status("running", epoch=epoch + 1, epochs=self.epochs, metrics=values)
