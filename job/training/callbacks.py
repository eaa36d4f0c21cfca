"""What runs around each batch and epoch: the shared history, reporting, stopping."""

from __future__ import annotations

import time

import keras

from job import logs
from job.runstore.publish import RunPublisher
from job.training import compat
from job.training.preemption import PreemptionGuard

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Keras names a callback hook's argument `logs`; the module is reached through these.
_draw, _progress_text, _progress_width = logs.progress, logs.progress_text, logs.progress_width


class History:
    """The run's epochs so far: appended by the reporter, saved and restored with checkpoints,
    published in status.json and metrics.json. One object, shared, so nobody edits a copy."""

    def __init__(self) -> None:
        self.entries: list[dict[str, float]] = []

    def restore(self, entries: list[dict]) -> None:
        self.entries = [dict(e) for e in entries]

    def __len__(self) -> int:
        return len(self.entries)

    def train_seconds(self) -> float:
        return sum(e["train_seconds"] for e in self.entries)


class EpochReporter(keras.callbacks.Callback):
    """One structured log event and a status.json heartbeat per epoch.

    Times each epoch's training apart from its validation pass, so throughput figures count
    training alone.
    """

    def __init__(
        self, publisher: RunPublisher, history: History, epochs: int, samples_per_epoch: int
    ) -> None:
        super().__init__()
        self.publisher = publisher
        self.history = history
        self.epochs = epochs
        self.samples_per_epoch = samples_per_epoch
        self.log = logs.get("job.train")
        self._epoch_start = self._test_start = 0.0
        self._test_seconds = 0.0
        self._steps_before = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = time.perf_counter()
        self._test_seconds = 0.0
        self._steps_before = int(self.model.optimizer.iterations.numpy())

    def on_test_begin(self, logs=None) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None) -> None:
        self._test_seconds += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self._epoch_start
        train_seconds = max(seconds - self._test_seconds, 1e-9)
        values = {k: round(float(logs[k]), 6) for k in HISTORY_KEYS if logs and k in logs}
        entry = {
            "epoch": epoch + 1,
            **values,
            "steps": int(self.model.optimizer.iterations.numpy()) - self._steps_before,
            "seconds": round(seconds, 3),
            "train_seconds": round(train_seconds, 3),
        }
        self.history.entries.append(entry)
        self.log.info(
            "epoch",
            epochs=self.epochs,
            samples_per_second=round(self.samples_per_epoch / train_seconds, 1),
            **entry,
        )
        self.publisher.status(
            "running",
            epoch=epoch + 1,
            epochs=self.epochs,
            metrics=values,
            history=self.history.entries,
        )


class ProgressLine(keras.callbacks.Callback):
    """On a terminal, the epoch in progress as one line redrawn in place (job.logs.progress),
    which the epoch's own log line then replaces: each epoch is shown once, in plain words.

    Instead of Keras's bar (fit's `verbose=0`): that one prints its own summary of each epoch,
    repeating the `epoch` event, and writes to stdout while the log lines go to stderr, so
    neither could know where the other left the cursor. Redrawn at most every 0.1 s."""

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps_per_epoch
        self._epoch = 0
        self._start = self._drawn = 0.0
        self._values: dict[str, float] = {}

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch + 1
        self._start = self._drawn = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        now = time.perf_counter()
        done = batch + 1  # Keras passes the last step's index, also for several steps a call
        if now - self._drawn < 0.1 and done < self.steps:
            return
        self._drawn = now
        self._values = {k: float(logs[k]) for k in ("loss", "accuracy") if logs and k in logs}
        self._show(done, now - self._start)

    def on_test_begin(self, logs=None) -> None:
        self._show(self.steps, 0.0, testing=True)  # the test pass: seconds on the full test set

    def _show(self, done: int, seconds: float, testing: bool = False) -> None:
        line = _progress_text(self._epoch, self.epochs, done, self.steps, seconds, self._values,
                              testing=testing, width=_progress_width())  # fmt: skip
        _draw(line)


class StopAtAccuracy(keras.callbacks.Callback):
    """TARGET_ACCURACY: stop once the epoch's test accuracy reaches the target."""

    def __init__(self, target: float) -> None:
        super().__init__()
        self.target = target
        self.reached_at: int | None = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs and logs.get("val_accuracy", 0.0) >= self.target:
            self.reached_at = epoch + 1
            self.model.stop_training = True


class StopOnRequest(keras.callbacks.Callback):
    """Honours a SIGTERM/SIGINT at the next batch or epoch boundary (job.training.preemption)."""

    def __init__(self, guard: PreemptionGuard) -> None:
        super().__init__()
        self.guard = guard

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.guard.check()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.guard.check()


class EvaluateAverage(keras.callbacks.Callback):
    """EMA_MOMENTUM: each epoch's test pass scores the moving average of the weights (the
    weights the run will keep: fit() copies them in at the end), training continues from the
    raw weights. Swapped in place: one copy of the weights, on every replica alike. A test pass
    that raises ends fit() with the average in the model; nothing is saved after that (the last
    checkpoint is the epoch before), and each fit() gets a new instance."""

    def on_test_begin(self, logs=None) -> None:
        self._swap()

    def on_test_end(self, logs=None) -> None:
        self._swap()

    def _swap(self) -> None:
        for weight, average in compat.averaged_weights(self.model):
            raw = weight.numpy()
            weight.assign(average.numpy())
            average.assign(raw)
