"""What every backend is, and what they share: a `Backend` (submit, cancel, status, validate a
handle), the settings a container of the run gets (`forwarded`), the run's submission record,
and running the backend's command-line tool.

Handles read back from a store are untrusted: `valid_handle` is asked before one becomes a
process id or a command argument. The registry of backends is job.launch.submit.BACKENDS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from job import config as config_mod
from job.config import Config
from job.errors import ConfigError, JobError, TransientError
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


def run_tool(cmd: list[str], *, stdin: str | None = None) -> str:
    """Run a backend's tool (docker, kubectl); its stdout, or the error its first line names."""
    tool = shutil.which(cmd[0])
    if tool is None:
        raise ConfigError("PATH", cmd[0], f"a {cmd[0]} binary on PATH for this backend")
    proc = subprocess.run(
        [tool, *cmd[1:]], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        # The first line says what went wrong; the last is often usage help ("See 'docker
        # run --help'.").
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        said = next((line for line in lines if not line.startswith("See '")), "no output")
        error = TransientError if UNREACHABLE.search(said) else JobError
        raise error(f"{cmd[0]} {cmd[1]} failed (exit {proc.returncode}): {said[:300]}")
    return proc.stdout


def record(store: Store, run_id: str, backend: str, handle: str, **extra: object) -> None:
    body = {"run_id": run_id, "backend": backend, "handle": handle, "submitted_at": now_iso()}
    RunFiles(store, run_id).put_json(SUBMISSION, {**body, **extra})
