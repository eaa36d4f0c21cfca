"""SIGTERM and SIGINT turned into a clean, resumable stop.

Kubernetes sends SIGTERM on preemption or eviction and SIGKILL after the grace period. The
handler only records the request; training looks at it at batch and epoch boundaries and once
more before publication (job.training.callbacks.StopOnRequest, job.training.train), where
nothing is half-written: a checkpoint upload or a status write in progress always completes.
Training loses at most the epoch in progress; the last epoch's checkpoint is already in the
store. Once publication has begun the run completes and ends as a success. SIGINT is treated
the same with or without a terminal (exit 130), so a supervisor's Ctrl-C equivalent never
leaves a traceback.
"""

from __future__ import annotations

import signal

from job.errors import Preempted


class PreemptionGuard:
    def __init__(self) -> None:
        self.requested: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame) -> None:
        # The first request counts; a burst of signals changes nothing.
        self.requested = self.requested or signal.Signals(signum).name

    def check(self) -> None:
        """Raise Preempted if a stop was requested: call only where stopping is clean."""
        if self.requested:
            raise Preempted(self.requested)
