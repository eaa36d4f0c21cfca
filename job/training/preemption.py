"""SIGTERM and SIGINT turned into a prompt, clean stop: at once during setup, at a clean point
once training has begun.

Kubernetes sends SIGTERM on preemption or eviction and SIGKILL after the grace period. The
guard has two modes.

Setup (`immediate`, how a guard starts): opening the store, the checks, loading TensorFlow,
claiming the run, reading the data (from a bucket that may not answer for minutes), restoring
the checkpoint. Nothing is trained yet, so nothing is lost by stopping: the handler raises
StopNow at once. Python runs the handler in the main thread, and an exception it raises ends a
blocking system call (a socket read, a sleep between retries) instead of waiting for it. StopNow
is a SystemExit, not an Exception, because libraries catch Exception on the way: botocore turns
any Exception raised while it sends a request into a retryable HTTPClientError and tries again,
for minutes. `stopped_as_preempted` (around job.training.train.run) turns it into Preempted, the
error the entry point reports; where nothing turns it, it still exits with the same code. A
claimed run is ended as any preemption is (job.training.context: the `preempted` status, the
lease released).

Stopping anywhere in setup is safe because setup writes nothing that a half-done step could
corrupt: each store write is atomic (a temporary file renamed into place locally, one PUT in a
bucket), so a write cut short either happened or did not. At worst this process does not learn
that it happened (an owner record or status written, its answer not yet read): then the end
record that follows is refused by its fence and the lease lapses by itself, as after SIGKILL,
and a rerun adopts what is there. Once the run is being ended (the context's exit), the guard
is deferred, so a second signal cannot cut the end record or the lease's release short.

Training (`deferred`, from `defer()`, which job.training.train calls just before fit): the
handler only records the request; training looks at it at batch and epoch boundaries and once
more before publication (job.training.callbacks.StopOnRequest, job.training.train), where
nothing is half-written: a checkpoint upload or a status write in progress always completes.
Training loses at most the epoch in progress; the last epoch's checkpoint is already in the
store. Once publication has begun the run completes and ends as a success.

Either way the exit code is 143 for SIGTERM and 130 for SIGINT (job.errors.Preempted), with
or without a terminal, so a supervisor's Ctrl-C equivalent never leaves a traceback. The first
request counts; a burst of signals changes nothing.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from job.errors import Preempted


class StopNow(SystemExit):
    """A stop request during setup, raised where the main thread is (see the module docstring:
    why a SystemExit). Its code is the exit code; `preempted` is the error it stands for."""

    def __init__(self, signame: str) -> None:
        self.preempted = Preempted(signame)
        super().__init__(self.preempted.exit_code)


@contextlib.contextmanager
def stopped_as_preempted() -> Iterator[None]:
    """StopNow from within becomes Preempted: one error line, the same exit code."""
    try:
        yield
    except StopNow as stop:
        raise stop.preempted from None


class PreemptionGuard:
    def __init__(self) -> None:
        self.requested: str | None = None
        self.immediate = True  # setup: a request stops the process at once

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def defer(self) -> None:
        """From here on a request is only recorded, and honoured where `check` is called."""
        self.immediate = False

    def _handle(self, signum: int, frame) -> None:
        first = self.requested is None
        self.requested = self.requested or signal.Signals(signum).name
        # Raised once only: a second signal must not interrupt the way out of the first.
        if first and self.immediate:
            raise StopNow(self.requested)

    def check(self) -> None:
        """Raise Preempted if a stop was requested: call only where stopping is clean."""
        if self.requested:
            raise Preempted(self.requested)
