"""What every backend is, and what they share: a `Backend` (submit, cancel, status, logs,
validate a handle), the settings a container of the run gets (`forwarded`), the run's submission
record, and running the backend's command-line tool (`run_tool`; `stream_tool` for a log).

Handles read back from a store are untrusted: `valid_handle` is asked before one becomes a
process id or a command argument. The registry of backends is job.launch.submit.BACKENDS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from job import config as config_mod
from job.config import Config
from job.errors import EXIT_CONFIG, ConfigError, JobError, TransientError
from job.launch.watch import RunNotFound
from job.logs import printable
from job.runstore import layout
from job.runstore.layout import SUBMISSION, RunFiles
from job.runstore.publish import now_iso
from job.runstore.store import Store

IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
State = tuple[str, "str | None"]


@dataclass(frozen=True)
class Options:
    """The command line's choices for a backend (`submit --image/--gpus/--overlay`)."""

    image: str | None = None
    gpus: bool = False
    overlay: str = "gpu"


@dataclass(frozen=True)
class Started:
    """What a backend says once it has accepted a run: where, and optionally how to ask it for
    the run's state while `submit --wait` follows the run."""

    where: str
    platform_state: Callable[[], State] | None = field(default=None)


class Backend(Protocol):
    """A way to start the job. The backends subclass it, so the two defaults below hold for
    those that need nothing else."""

    name: str

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        """Start the run; record it (`record`) only once the backend has accepted it."""
        ...

    def cancel(self, handle: str, cfg: Config) -> None:
        """Ask the backend to stop the run (the job checkpoints and exits 143)."""
        ...

    def valid_handle(self, handle: str, run_id: str) -> bool:
        """Whether a handle read back from the store can be this backend's, for this run."""
        ...

    def status(self, handle: str, cfg: Config) -> Callable[[], State] | None:
        """How to ask the backend for the run's state while `watch` follows it; None when
        the store is the only witness."""
        return None

    def run_store(self, cfg: Config, store: Store, handle: str) -> Store:
        """Where the run's own files are: beside its submission record, unless the platform
        puts them elsewhere."""
        return store

    def logs(
        self,
        handle: str,
        cfg: Config,
        submitted: dict,
        *,
        follow: bool,
        interval: float,
        out: Callable[[str], None],
    ) -> None:
        """Pass the run's log to `out` a line at a time, each made printable (a log holds
        whatever the run printed); with `follow`, until the run's process ends. `submitted` is
        the checked submission record (job.launch.submit.submission): other fields in it are
        as hostile as the store."""
        raise JobError(f"the {self.name} backend keeps no log of its runs")


class NotSubmitted(JobError):
    """A command that acts through the backend that started a run (`logs`), given a run that
    `submit` did not start: exit 78, as `cancel` answers the same case."""

    exit_code = EXIT_CONFIG


def forwarded(cfg: Config, env: dict[str, str], *, secrets: bool) -> dict[str, str]:
    """The settings a container of this run gets, by the table's `forward` column: canonical
    names (fallbacks resolved), host-only paths left out, URIs only when they name a bucket."""
    values = config_mod.given(env)
    out = {}
    for var in config_mod.VARIABLES:
        if var.name not in values or var.side == "submitter" or var.forward == "no":
            continue
        if var.secret and not secrets:
            continue
        if var.forward == "remote" and not layout.parse(var.name, values[var.name]).is_bucket:
            continue
        out[var.name] = values[var.name]
    out["RUN_ID"] = cfg.run_id
    return out


# What docker and kubectl say when their daemon or API server cannot be reached: a retry (once
# it is up) helps, so exit 75 rather than 70.
UNREACHABLE = re.compile(
    r"cannot connect|connection refused|unable to connect to the server|dial tcp|"
    r"no such host|i/o timeout|is the docker daemon running",
    re.IGNORECASE,
)


def _tool(name: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        raise ConfigError("PATH", name, f"a {name} binary on PATH for this backend")
    return tool


def _said(lines: list[str]) -> str:
    """The first line of `lines` that says something other than where the usage help is."""
    shown = (line.strip() for line in lines)
    return next((line for line in shown if line and not line.startswith("See '")), "")


def _tool_failed(cmd: list[str], returncode: int, lines: list[str]) -> JobError:
    """The error a tool's failure is: the first line that says what went wrong (the last is
    often usage help: "See 'docker run --help'.")."""
    said = _said(lines)
    error = TransientError if UNREACHABLE.search(said) else JobError
    return error(f"{cmd[0]} {cmd[1]} failed (exit {returncode}): {said[:300] or 'no output'}")


def run_tool(cmd: list[str], *, stdin: str | None = None) -> str:
    """Run a backend's tool (docker, kubectl); its stdout, or the error its first line names."""
    proc = subprocess.run(
        [_tool(cmd[0]), *cmd[1:]], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise _tool_failed(cmd, proc.returncode, proc.stderr.splitlines())
    return proc.stdout


# One line of a log as shown: a longer one is cut into pieces of this many bytes, so a run that
# prints megabytes without a newline costs no memory.
MAX_LOG_LINE = 16 * 1024
# What docker and kubectl say when the container or Job is gone (removed, or deleted after its
# TTL): the log went with it, which `logs` answers as not found (exit 5).
GONE = re.compile(r"no such container|no container with name|\(NotFound\)", re.IGNORECASE)
# What they say when this user may not read the log (a role without pods/log, an expired
# kubeconfig, no access to docker's socket): another context or credentials help, a retry does
# not (exit 78).
REFUSED = re.compile(
    r"\(Forbidden\)|\(Unauthorized\)|is forbidden|must be logged in|"
    r"permission denied while trying to connect",
    re.IGNORECASE,
)
# What kubectl says of a run whose pod has not started yet: its log is still to come (exit 75).
PENDING = re.compile(
    r"waiting to start|ContainerCreating|PodInitializing|is not running|"
    r"timed out waiting for the condition|no (running )?pods? found",
    re.IGNORECASE,
)
# How the tools' own error lines begin: held back from the log until it is known whether the
# tool failed (then the line is the error, on stderr) or more log follows (then it was a line
# of the log).
TOOL_ERROR = re.compile(r"^(Error from server|error: |Error response from daemon|Error: |See ')")


class Refused(JobError):
    """The platform refuses this user the run's log (rights, credentials): exit 78."""

    exit_code = EXIT_CONFIG


def stream_tool(cmd: list[str], out: Callable[[str], None]) -> None:
    """Run a tool whose output is a run's log (`docker logs`, `kubectl logs`), passing each line
    to `out` as it comes, made printable: stdout and stderr merged, in the order the platform
    gives them (the job logs to stderr). A failure is the tool's own last lines' error
    (`log_failed`), never shown as a line of the log."""
    last: deque[str] = deque(maxlen=5)  # the failure's message is among the last lines
    held: list[str] = []  # lines shaped like the tool's errors, not yet shown (TOOL_ERROR)

    def show(lines: list[str]) -> None:
        for line in lines:
            out(printable(line, MAX_LOG_LINE))
        lines.clear()

    with subprocess.Popen(
        [_tool(cmd[0]), *cmd[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:  # fmt: skip
        for raw in iter(lambda: proc.stdout.readline(MAX_LOG_LINE), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            last.append(line)
            if TOOL_ERROR.match(line):
                held.append(line)
                if len(held) > last.maxlen:  # a log of such lines: shown, a few lines late
                    out(printable(held.pop(0), MAX_LOG_LINE))
                continue
            show(held)
            out(printable(line, MAX_LOG_LINE))
    if proc.returncode == 0:
        show(held)
        return
    lines = list(last)[::-1]
    # The log's own lines among those held (the job's `error: ...` line before a failing
    # kubectl) are still shown; the tool's error line is the error alone.
    said = _said(lines)
    show([line for line in held if line.strip() != said and not line.startswith("See '")])
    raise log_failed(cmd, proc.returncode, lines)


def log_failed(cmd: list[str], returncode: int, lines: list[str]) -> JobError:
    """The error of a log tool's failure, by what it says: the run or its log gone (5), this
    user refused (78), anything else (not started yet, unreachable, the tool's own trouble) 75:
    a log not read now may be read later, and 70 is kept for bugs in the job."""
    said = printable(str(_tool_failed(cmd, returncode, lines)), 400)
    if REFUSED.search(said):
        return Refused(f"{said}: this user may not read the run's log (kubeconfig context, role "
                       "with pods/log, or docker access)")  # fmt: skip
    if GONE.search(said):
        return RunNotFound(f"{said}: the log went with it")
    if PENDING.search(said):
        return TransientError(f"{said}: the run has not started yet; its log comes once it has")
    return TransientError(f"{said}; retrying may help")


def record(store: Store, run_id: str, backend: str, handle: str, **extra: object) -> None:
    body = {"run_id": run_id, "backend": backend, "handle": handle, "submitted_at": now_iso()}
    RunFiles(store, run_id).put_json(SUBMISSION, {**body, **extra})
