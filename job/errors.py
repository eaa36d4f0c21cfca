"""Every exit code, the error classes they stand for, and the one way an error ends a process.

A part's own errors subclass these (job.runstore.lease.RunOwned is a TransientError), so their
exit class is decided here. Exit codes are a public contract (sysexits style): Kubernetes
`podFailurePolicy` (k8s/), cron wrappers and `watch`'s callers key on them. Change them only
together with k8s/ and the docs. An error becomes an exit code in one place, `report`: the
entry point (job.cli) calls it for the main thread, and `end_process` for a thread that must
end a process whose main thread may be stuck (the multi-worker watchdog).
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from job import logs

EXIT_OK = 0
EXIT_USAGE = 2  # argparse: a command line it cannot parse
EXIT_DATA = 65  # EX_DATAERR: input data missing, corrupt or inconsistent
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug in the job, nothing else
EXIT_OUT_OF_MEMORY = 71  # EX_OSERR: out of memory (host or accelerator); same settings, same end
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage/network trouble; retrying may help
EXIT_CONFIG = 78  # EX_CONFIG: bad configuration; retrying will not help
EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143, after the checkpoint is safe
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: stdout's reader went away (`runs | head`)
# Each exit code's class by name (`data`, `transient`, ...), as notifications and `show` say it.
EXIT_CLASSES = {
    code: name.removeprefix("EXIT_").lower()
    for name, code in dict(globals()).items()
    if name.startswith("EXIT_") and isinstance(code, int)
}

# `watch`: how the run it followed ended (0 is success, as for every command).
WATCH_EXIT = {"succeeded": EXIT_OK, "failed": 1, "stalled": 3, "cancelled": 4, "not_found": 5}
# `verify`: 0 and 1 as `cmp` answers; 6 when the answer cannot be had here (another TensorFlow,
# Keras or CPU features than the run's, or a run that recorded no digest).
VERIFY_EXIT = {"identical": EXIT_OK, "different": 1, "incomparable": 6}


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
        super().__init__(
            f"stopped by {signame}; rerun to resume (from the last checkpoint, if any)"
        )


# OS errors that are the machine's or the network's trouble of the moment: retrying may help.
TRANSIENT_ERRNOS = {
    errno.ENOSPC, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE, errno.EAGAIN,
}  # fmt: skip
# Libraries whose exceptions are, when they escape the code that should have translated them,
# a network fault (connection dropped, endpoint unreachable, timeout), never a bug in the job.
NETWORK_MODULES = ("botocore", "urllib3", "requests", "httpx", "httpcore", "http", "ssl", "socket")


def classify(exc: BaseException) -> tuple[str, int]:
    """The message and exit code of an exception: its own for a JobError. The parts translate
    what they call into JobErrors where it arises; this is the last net, so that 70 means a
    bug and nothing else: out of memory is 71, a network or disk fault of the moment 75."""
    if isinstance(exc, JobError):
        return str(exc), exc.exit_code
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "ResourceExhaustedError":  # TensorFlow's OOM
        return (
            f"out of memory ({name}): lower BATCH_SIZE or TRAIN_LIMIT, or give the job more "
            "memory", EXIT_OUT_OF_MEMORY,
        )  # fmt: skip
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or name}{where}; retrying may help", EXIT_TRANSIENT
    if type(exc).__module__.split(".")[0] in NETWORK_MODULES or isinstance(
        exc, (ConnectionError, TimeoutError)
    ):
        return f"network trouble: {name}: {exc}", EXIT_TRANSIENT
    return f"unexpected {name}: {exc}", EXIT_SOFTWARE


def report(exc: BaseException, secrets: list[str]) -> int:
    """Print the one error line (secrets scrubbed) to stderr; return the exit code."""
    message, code = classify(exc)
    print(logs.error_line(message, secrets), file=sys.stderr, flush=True)
    return code


def end_process(exc: BaseException, secrets: list[str]) -> None:
    """`report`, then end the process at once from any thread: the main thread may be blocked
    in a collective that nothing else interrupts, so no clean-up runs (os._exit)."""
    os._exit(report(exc, secrets))
