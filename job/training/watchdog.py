"""Hang protection for multi-worker training: a lost peer becomes an error, not a hang.

TensorFlow's collective timeout covers the collective operations themselves; this watchdog covers
everything else (a peer that never joins, a stuck input pipeline). Training feeds it on every batch;
if it goes hungry for `timeout` seconds it hands a TransientError to `on_stall`, which records the
failure the same way as any other error (job.training.lifecycle.RunLifecycle.abort: `_FAILURE`, the
one error line, exit 75) and ends the process: the main thread may be blocked inside a collective
that nothing else can interrupt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import keras

from job.errors import TransientError


class Watchdog(keras.callbacks.Callback):
    def __init__(self, timeout: float, on_stall: Callable[[TransientError], None]) -> None:
        super().__init__()
        self.timeout = timeout
        self.on_stall = on_stall
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._paused = False
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def feed(self, *_args, **_kwargs) -> None:
        self._last = time.monotonic()

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = on_epoch_end = feed

    def arm(self) -> None:
        """Start watching now: from before the strategy exists (a peer that never joins blocks
        its creation) until training ends, with a pause (`pause`) for local work such as a
        data download, which may take longer than the peers' timeout."""
        self.feed()
        self._paused = False
        if not self._thread.is_alive():
            self._thread.start()

    def pause(self) -> None:
        self._paused = True

    def on_train_begin(self, logs=None) -> None:
        self.arm()

    def on_train_end(self, logs=None) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if self._paused:
                continue
            idle = time.monotonic() - self._last
            if idle > self.timeout:
                self.on_stall(
                    TransientError(
                        f"no progress for {idle:.0f} s (COLLECTIVE_TIMEOUT="
                        f"{self.timeout:.0f}): a peer worker is probably gone; the last "
                        "checkpoint is saved, restart all workers to resume"
                    )
                )
                return
