"""SIGTERM (and SIGINT on a terminal) turned into a clean, resumable stop.

Kubernetes sends SIGTERM on preemption or eviction and SIGKILL after the grace period. The
handler raises `Preempted` at once, except inside a critical section (a checkpoint upload, the
final publication), where it waits for the section to end so nothing is left half-written.
Training loses at most the epoch in progress; the last epoch's checkpoint is already in the
store.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from job.errors import JobError


class Preempted(JobError):
    def __init__(self, signame: str) -> None:
        self.signame = signame
        self.exit_code = 128 + signal.Signals[signame].value
        super().__init__(f"stopped by {signame}; the last checkpoint is saved, rerun to resume")


class PreemptionGuard:
    def __init__(self) -> None:
        self.requested: str | None = None
        self._depth = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        if sys.stdin is not None and sys.stdin.isatty():
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.requested = signal.Signals(signum).name
        if self._depth == 0:
            raise Preempted(self.requested)

    @contextlib.contextmanager
    def critical(self, *, stop_after: bool = True):
        """Defer a stop request until the block is done; then stop, or (stop_after=False) carry
        on, for a block that completes the run anyway."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.requested:
            if stop_after:
                raise Preempted(self.requested)
            self.requested = None
