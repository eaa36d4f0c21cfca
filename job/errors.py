"""Every exit code, the error classes they stand for, and the one way an error ends a process.

A part's own errors subclass these (job.runstore.lease.RunOwned is a TransientError), so their
exit class is decided here. Exit codes are a public contract (sysexits style): Kubernetes
`podFailurePolicy` (k8s/), cron wrappers and `watch`'s callers key on them. Change them only
together with k8s/ and the docs. An error becomes an exit code in one place, `report`: the
entry point (job.cli) calls it for the main thread, and `end_process` for a thread that must
end a process whose main thread may be stuck (the multi-worker watchdog).
"""

from __future__ import annotations

import os
import signal
import sys

from job import logs

EXIT_OK = 0
EXIT_USAGE = 2  # argparse: a command line it cannot parse
EXIT_DATA = 65  # EX_DATAERR: input data missing, corrupt or inconsistent
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug in the job, nothing else
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage/network trouble; retrying may help
EXIT_CONFIG = 78  # EX_CONFIG: bad configuration; retrying will not help
EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143, after the checkpoint is safe
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130

# `watch`: how the run it followed ended (0 is success, as for every command).
WATCH_EXIT = {"succeeded": EXIT_OK, "failed": 1, "stalled": 3, "cancelled": 4, "not_found": 5}


class JobError(Exception):
    """Base of the errors the entry point reports as one line with a known exit code."""

    exit_code = EXIT_SOFTWARE


class ConfigError(JobError):
    """A variable (or .env entry) is missing, malformed or not allowed."""

    exit_code = EXIT_CONFIG

    def __init__(self, variable: str, value: object, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r} is invalid: expected {expected}")


class DataError(JobError):
    """Training data could not be found or failed validation."""

    exit_code = EXIT_DATA


class TransientError(JobError):
    """Storage or network trouble that may go away on retry."""

    exit_code = EXIT_TRANSIENT


class PreconditionFailed(TransientError):
    """A conditional write lost: the object changed (If-Match) or exists (If-None-Match) since
    this process last saw it. Someone else writes into the same run: job.runstore.lease."""


class Preempted(JobError):
    """A stop was requested (SIGTERM, SIGINT) and honoured where stopping is clean."""

    def __init__(self, signame: str) -> None:
        self.signame = signame
        self.exit_code = 128 + signal.Signals[signame].value
        super().__init__(f"stopped by {signame}; the last checkpoint is saved, rerun to resume")


def classify(exc: BaseException) -> tuple[str, int]:
    """The message and exit code of an exception: its own for a JobError, else a bug (70)."""
    if isinstance(exc, JobError):
        return str(exc), exc.exit_code
    return f"unexpected {type(exc).__name__}: {exc}", EXIT_SOFTWARE


def report(exc: BaseException, secrets: list[str]) -> int:
    """Print the one error line (secrets scrubbed) to stderr; return the exit code."""
    message, code = classify(exc)
    print(logs.error_line(message, secrets), file=sys.stderr, flush=True)
    return code


def end_process(exc: BaseException, secrets: list[str]) -> None:
    """`report`, then end the process at once from any thread: the main thread may be blocked
    in a collective that nothing else interrupts, so no clean-up runs (os._exit)."""
    os._exit(report(exc, secrets))
