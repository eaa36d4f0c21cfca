"""Hang protection for multi-worker training: a lost peer becomes an error, not a hang.

TensorFlow's collective timeout covers the collective operations themselves; this watchdog
covers everything else (a peer that never joins, a stuck input pipeline). Training feeds it on
every batch; if it goes hungry for `timeout` seconds it prints one error line and ends the
process with exit 75 (transient: a retry resumes from the last checkpoint, already in the store).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import keras

from job import logs
from job.errors import EXIT_TRANSIENT


class Watchdog(keras.callbacks.Callback):
    def __init__(self, timeout: float, what: str = "a training step") -> None:
        super().__init__()
        self.timeout = timeout
        self.what = what
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def feed(self, *_args, **_kwargs) -> None:
        self._last = time.monotonic()

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = on_epoch_end = feed

    def on_train_begin(self, logs=None) -> None:
        self.feed()
        self._thread.start()

    def on_train_end(self, logs=None) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            idle = time.monotonic() - self._last
            if idle > self.timeout:
                logs.get("job.watchdog").error("worker_stalled", idle_seconds=round(idle, 1))
                print(
                    f"error: no progress in {self.what} for {idle:.0f} s (COLLECTIVE_TIMEOUT="
                    f"{self.timeout:.0f}): a peer worker is probably gone",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_TRANSIENT)
