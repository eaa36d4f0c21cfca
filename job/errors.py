"""Error types and the exit codes they map to (sysexits style).

Kubernetes `podFailurePolicy` and cron wrappers key on these numbers, so they are part of the
public contract: change them only together with k8s/ and the README.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DATA = 65  # EX_DATAERR: input data missing, corrupt or inconsistent
EXIT_SOFTWARE = 70  # EX_SOFTWARE: anything unexpected
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: storage/network trouble; retrying may help
EXIT_CONFIG = 78  # EX_CONFIG: bad configuration; retrying will not help
EXIT_PREEMPTED = 143  # 128 + SIGTERM, after the checkpoint is safe


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
