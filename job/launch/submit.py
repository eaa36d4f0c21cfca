"""`python -m job submit`: start a run on a backend, record how, and optionally follow it.

Every backend gets the job's own environment contract (the variables job.config's table marks
as forwarded), the run id fixed up front, and `<run>/submission.json` in the run's store saying
which backend started it and its handle, so `cancel` and `watch` work whoever launched the run.
The record is written only once the backend has accepted the run. Handles read back from the
store are untrusted: each backend checks its own before acting on it. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import time

from job.config import Config
from job.errors import ConfigError, DataError, PreconditionFailed, TransientError
from job.launch.backend import Backend, Options, Started
from job.launch.docker import Docker
from job.launch.k8s import Kubernetes
from job.launch.local import Local
from job.launch.wml import WatsonML
from job.runstore.layout import CANCELLED, FAILURE, SUBMISSION, SUCCESS, RunFiles, to_json
from job.runstore.lease import Lease, RunOwned
from job.runstore.publish import now_iso
from job.runstore.store import Store

BACKENDS: dict[str, Backend] = {b.name: b for b in (Local(), Docker(), Kubernetes(), WatsonML())}


def submit(cfg: Config, env: dict[str, str], store: Store, backend: str, opts: Options) -> Started:
    """Start `cfg.run_id` on `backend`, unless it has finished or a live process owns it."""
    check_new(cfg, store)
    return BACKENDS[backend].submit(cfg, env, store, opts)


def run_store(cfg: Config, store: Store, submitted: dict | None) -> Store:
    """Where the run's own files are, as the backend that started it says (the record was
    checked by `submission`: a known backend and its handle)."""
    if not submitted:
        return store
    return BACKENDS[submitted["backend"]].run_store(cfg, store, submitted["handle"])


def check_new(cfg: Config, store: Store) -> None:
    """A run id whose run has finished is never started again (nor its records changed), and
    one that a live process owns is not started twice."""
    run_id = cfg.run_id
    files = RunFiles(run_store(cfg, store, submission(store, run_id)), run_id)
    if files.exists(SUCCESS):
        raise ConfigError("RUN_ID", run_id, f"a run id that has not finished (it has {SUCCESS})")
    holder = Lease(files, cfg.lease_seconds).live_holder()
    if holder:
        raise RunOwned(f"run {run_id} is running ({str(holder.get('host'))[:64]}); not submitted")


def submission(store: Store, run_id: str) -> dict | None:
    """The record `submit` left, checked: a known backend and that backend's handle."""
    files = RunFiles(store, run_id)
    submitted = files.read_json(SUBMISSION)
    if submitted is None:
        return None
    backend, handle = submitted.get("backend"), submitted.get("handle")
    if backend not in BACKENDS or not isinstance(handle, str):
        raise DataError(f"{files.where(SUBMISSION)}: no known backend and handle")
    if not BACKENDS[backend].valid_handle(handle, run_id):
        raise DataError(f"{files.where(SUBMISSION)}: {handle[:80]!r} is not a {backend} handle")
    return submitted


# How long past its lease a stopped job may take to let go of the run: it stops at the next
# batch boundary and writes its status (job.training.preemption).
CANCEL_GRACE_SECONDS = 30
POLL_SECONDS = 0.5


def cancel(store: Store, cfg: Config) -> str:
    """Stop `cfg.run_id` through the backend that started it (the run id was validated like
    RUN_ID: it becomes part of keys and handles), wait until its process has let go of the run,
    then mark it cancelled. Returns what to tell the person.

    A finished run is left as it is ("already finished"), and `_CANCELLED` never lands beside
    `_SUCCESS`: the job may publish while it is being stopped (it is past its last stop check),
    so the marker is written only once no live process holds the run's lease. One that still
    does after its lease plus a grace is a TransientError (75), with no marker."""
    run_id = cfg.run_id
    submitted = submission(store, run_id)
    if submitted is None:
        raise ConfigError("RUN_ID", run_id, "a run started by `python -m job submit`")
    files = RunFiles(run_store(cfg, store, submitted), run_id)
    if files.exists(SUCCESS):
        return f"Run {run_id} already finished; nothing to cancel"
    lease = Lease(files, cfg.lease_seconds)
    # A failed run may be retried under its old _FAILURE (a Kubernetes Job's next pod): ended
    # only when no live process holds it.
    for marker, ended in ((FAILURE, "failed"), (CANCELLED, "cancelled")):
        if files.exists(marker) and not lease.live_holder():
            return f"Run {run_id} already {ended}; nothing to cancel"
    BACKENDS[submitted["backend"]].cancel(submitted["handle"], cfg)
    stopped = f"{submitted['backend']} {submitted['handle']}"
    deadline = time.monotonic() + cfg.lease_seconds + CANCEL_GRACE_SECONDS
    while lease.live_holder() and not files.exists(SUCCESS):
        if time.monotonic() > deadline:
            raise TransientError(
                f"run {run_id} still holds its lease {cfg.lease_seconds + CANCEL_GRACE_SECONDS}"
                f" s after the stop request to {stopped}; not marked cancelled (cancel again)"
            )
        time.sleep(POLL_SECONDS)
    if files.exists(SUCCESS):
        return f"Run {run_id} finished before it could be stopped; its results stand"
    body = to_json({"run_id": run_id, "cancelled_at": now_iso()})
    with contextlib.suppress(PreconditionFailed):  # cancelled before: one marker is enough
        store.put_bytes(files.key(CANCELLED), body, if_none_match=True)
    return f"Cancelled {run_id}: stopped {stopped}"
