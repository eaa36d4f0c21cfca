"""The local backend: `python -m job train` as a child process of the submitter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from job.config import Config
from job.errors import ConfigError
from job.launch.backend import Backend, Options, Started, record
from job.runstore.store import Store


class Local(Backend):
    name = "local"

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        log = private_log(cfg.run_id)
        with os.fdopen(os.open(log, LOG_FLAGS, 0o600), "ab") as out:
            # The child gets this process's own environment, not `env`: it runs in the same
            # folder and reads the same .env, and a secret given as a file (COS_..._FILE) stays a
            # file instead of becoming a value in /proc/<pid>/environ.
            child = subprocess.Popen(
                [sys.executable, "-m", "job", "train"],
                env={**os.environ, "RUN_ID": cfg.run_id},
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


# Created, never opened if it exists, never through a link: the child's output may hold
# anything the job logs, and a predictable path in a shared temp folder could be planted.
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def private_log(run_id: str) -> Path:
    """A new file for the child's output in a new folder only this user can enter (0700, an
    unpredictable name); the submission record names it."""
    return Path(tempfile.mkdtemp(prefix=f"mnist-job-{run_id}-")) / "train.log"


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
