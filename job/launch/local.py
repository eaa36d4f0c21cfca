"""The local backend: `python -m job train` as a child process of the submitter."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from job import logs as job_logs
from job.config import Config, is_known
from job.errors import ConfigError, DataError
from job.launch.backend import MAX_LOG_LINE, Backend, Options, Started, record
from job.launch.watch import RunNotFound
from job.logs import printable
from job.runstore import layout
from job.runstore.layout import SUBMISSION
from job.runstore.store import Store


class Local(Backend):
    name = "local"

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        log = private_log(cfg.run_id)
        with os.fdopen(os.open(log, LOG_FLAGS, 0o600), "ab") as out:
            # The child gets this process's own environment, not `env`: it runs in the same
            # folder and reads the same .env, and a secret given as a file (COS_..._FILE) stays a
            # file instead of becoming a value in /proc/<pid>/environ. The .env names the job
            # does not read (TF_*, OMP_*...) are for the libraries of the run: they get them,
            # as `docker run --env-file` would give them.
            child = subprocess.Popen(
                [sys.executable, "-m", "job", "train"],
                env={**not_the_jobs(env), **os.environ, "RUN_ID": cfg.run_id},
                stdout=out,
                stderr=out,
                start_new_session=True,  # outlives the submitter unless --wait
            )
        try:
            record(store, cfg.run_id, "local", str(child.pid), log=str(log))
        except BaseException:
            child.terminate()  # no record, no orphan: nothing could cancel or find it
            child.wait(timeout=60)  # it stops at its first check (job.training.preemption)
            raise
        return Started(f"local process {child.pid}, log {log}", lambda: _child_state(child))

    def cancel(self, handle: str, cfg: Config) -> None:
        if not _our_process(int(handle), cfg.run_id):
            raise ConfigError(
                "RUN_ID", cfg.run_id, f"a running local run (process {handle} is not it)"
            )
        os.kill(int(handle), signal.SIGTERM)  # the job checkpoints and exits 143

    def valid_handle(self, handle: str, run_id: str) -> bool:
        return handle.isascii() and handle.isdigit() and int(handle) > 1

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
        """The child's log file, as the submission record names it (checked: `own_log`); with
        `follow`, polled every `interval` seconds until the child has ended."""
        run_id = cfg.run_id
        where = f"{layout.run_uri(cfg.output_uri, run_id)}/{SUBMISSION}"
        alive = (lambda: _our_process(int(handle), run_id)) if follow else None
        try:
            path = own_log(submitted.get("log"), run_id, where)
            fd = open_log(path, run_id)
            try:
                print_log(fd, path, out, alive=alive, interval=interval)
            finally:
                os.close(fd)
        except PermissionError as exc:  # a log in a folder this user may not enter
            raise DataError(
                f"the log of run {run_id} cannot be read by this user: "
                f"{printable(exc.filename or '', 300)}: {exc.strerror}"
            ) from None


def not_the_jobs(env: dict[str, str]) -> dict[str, str]:
    """The names of `env` (the environment over .env) set only in .env that the job does not
    read itself: a library's (TF_*, OMP_*), or unknown (warned about when read)."""
    return {k: v for k, v in env.items() if k not in os.environ and not is_known(k)}


# Created, never opened if it exists, never through a link: the child's output may hold
# anything the job logs, and a predictable path in a shared temp folder could be planted.
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def private_log(run_id: str) -> Path:
    """A new file for the child's output in a new folder only this user can enter (0700, an
    unpredictable name); the submission record names it."""
    return Path(tempfile.mkdtemp(prefix=f"mnist-job-{run_id}-")) / "train.log"


# What `logs` prints of a local run's log at most: its last 4 MiB (a full run writes a few
# hundred KB; a run printing without end must not fill a terminal or memory).
MAX_LOG_SHOWN = 4 * 1024 * 1024
# `private_log`'s folder, as tempfile.mkdtemp names it: the prefix, then 8 of [a-z0-9_].
LOG_FOLDER_SUFFIX = re.compile(r"[a-z0-9_]{8}")


def own_log(value: object, run_id: str, where: str) -> Path:
    """The log a submission record names, checked before it is opened: a store may hold
    anything, and a record naming ~/.ssh/id_rsa must not make `logs` print it. So: an absolute,
    normalised path of the shape `private_log` makes for this run (.../mnist-job-<run id>-
    XXXXXXXX/train.log), in a folder (not a link) of this user that no one else may enter."""
    expected = f"the train.log `submit` created for run {run_id}"
    if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
        raise DataError(f"{where}: no log path ({expected})")
    path, prefix = Path(value), f"mnist-job-{run_id}-"
    shaped = (
        path.is_absolute()
        and os.path.normpath(value) == value
        and path.name == "train.log"
        and path.parent.name.startswith(prefix)
        and LOG_FOLDER_SUFFIX.fullmatch(path.parent.name.removeprefix(prefix)) is not None
    )
    if not shaped:
        raise DataError(f"{where}: log {printable(value, 200)!r} is not {expected}")
    try:
        folder = os.lstat(path.parent)
    except FileNotFoundError:
        raise _log_gone(path, run_id) from None
    if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != os.getuid() or folder.st_mode & 0o077:
        raise DataError(f"{where}: {path.parent} is not a folder only this user may enter (0700)")
    return path


def _log_gone(path: Path, run_id: str) -> RunNotFound:
    return RunNotFound(
        f"the log of run {run_id}, {path}, is not on this machine: a local run's log stays on "
        "the machine that submitted it, and its temporary folder may have been cleaned"
    )


def open_log(path: Path, run_id: str) -> int:
    """A descriptor of the log: a regular file of this user, never opened through a link (a
    FIFO planted there must not block the open: O_NONBLOCK)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _log_gone(path, run_id) from None
    except OSError as exc:  # a link (ELOOP), no permission
        raise DataError(f"{path}: cannot be read as a log ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise DataError(f"{path}: not a regular file of this user")
    return fd


def print_log(
    fd: int,
    path: Path,
    out: Callable[[str], None],
    *,
    alive: Callable[[], bool] | None,
    interval: float,
) -> None:
    """Pass the log's lines to `out`, made printable: its last MAX_LOG_SHOWN bytes, then, while
    `alive()` (None: not following), what is added, polled every `interval` seconds; once the
    writer has ended, the rest. A line longer than MAX_LOG_LINE bytes comes in pieces."""
    size = os.fstat(fd).st_size
    start = max(0, size - MAX_LOG_SHOWN)
    if start:
        job_logs.get("job.logs").warning(
            "log_cut", shown_bytes=size - start, log_bytes=size, log=str(path)
        )
        os.lseek(fd, start, os.SEEK_SET)
    cut_line = start > 0  # the first line read is the tail of one cut in two: not shown
    pending, ended = b"", False
    while True:
        chunk = os.read(fd, 64 * 1024)
        if chunk:
            *lines, pending = (pending + chunk).split(b"\n")
            if cut_line and lines:
                lines, cut_line = lines[1:], False
            for line in lines:
                for piece in range(0, max(len(line), 1), MAX_LOG_LINE):
                    out(_shown(line[piece : piece + MAX_LOG_LINE]))
            while len(pending) > MAX_LOG_LINE:  # a line without end: shown as it comes
                if not cut_line:
                    out(_shown(pending[:MAX_LOG_LINE]))
                pending = pending[MAX_LOG_LINE:]
            continue
        if alive is None or ended:
            break
        if alive():
            time.sleep(interval)
        else:
            ended = True  # read once more: what it wrote just before it ended
    if pending and not cut_line:
        out(_shown(pending))


def _shown(raw: bytes) -> str:
    return printable(raw.decode("utf-8", "replace").rstrip("\r"), MAX_LOG_LINE)


def _child_state(child: subprocess.Popen) -> tuple[str, str | None]:
    """The local backend's view of the run, for `submit --wait`: a child that died without a
    marker is a failure `watch` reports at once instead of waiting for the stall limit."""
    code = child.poll()
    if code is None:
        return "running", None
    return ("completed", None) if code == 0 else ("failed", f"the job exited with {code}")


def _our_process(pid: int, run_id: str) -> bool:
    """True when `pid` is a live `python -m job train` of this run, as `submit` starts it: a
    PID read from a store may be stale (reused by another process) or hostile, so the command
    line must be exactly that (not merely mention `job` and `train`) and RUN_ID this run's."""
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    python = os.path.basename(cmdline[0]).startswith(b"python")
    return (
        python
        and cmdline[1:] == [b"-m", b"job", b"train"]
        and (f"RUN_ID={run_id}".encode() in environ)
    )
