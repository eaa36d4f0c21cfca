"""Deletion fenced against champion decisions, by one small object per run: `<run>/_HOLD`.

`prune` must never delete a run that is becoming the champion. Reading champion.json just
before deleting is not enough: a decision can read the candidate, prune can read the champion
(not yet it) and start deleting, and the decision's compare-and-swap then names a run that is
going away. So both sides first change the run's `_HOLD` object by compare-and-swap, and only
one of them can win:
- a decision (promote, rollback, PROMOTE after training) marks the candidate `held` before it
  reads it, and refuses one marked `deleting`;
- prune marks a run `deleting` only when it is not freshly `held` (HOLD_SECONDS; a decision
  takes seconds), then reads the champions again and deletes nothing that one names.
A decision that held a run keeps it safe from prune for HOLD_SECONDS; after that the run is
protected by being named in champion.json, which prune reads after marking it. Proven by
tests/test_fencing.py's prune/promote race through a latency proxy.
"""

from __future__ import annotations

import contextlib
import time

from job.errors import DataError, PreconditionFailed, TransientError
from job.runstore import objects
from job.runstore.layout import HOLD, SUCCESS, RunFiles, to_json
from job.runstore.lease import CLOCK_SKEW_SECONDS
from job.runstore.store import Store

HOLD_SECONDS = 3600
# A prune deletes a run's end markers seconds after marking it; a `deleting` mark this old on a
# run that still has `_SUCCESS` was left by a prune that died: a decision takes it over (prune
# checks its mark is still its own just before deleting).
STALE_SECONDS = 900
ROUNDS = 5


def _read(store: Store, files: RunFiles) -> tuple[dict | None, str | None]:
    return objects.read_if_changed(store, files.key(HOLD), None, objects.HOLD)


def _put(store: Store, files: RunFiles, state: str, etag: str | None) -> str:
    body = to_json({"run_id": files.run_id, "state": state, "at": time.time()})
    if etag is None:
        return store.put_bytes(files.key(HOLD), body, if_none_match=True)
    return store.put_bytes(files.key(HOLD), body, if_match=etag)


def _within(record: dict | None, state: str, seconds: float) -> bool:
    """A `state` mark from the last `seconds` (a mark from the future is nobody's)."""
    if not record or record.get("state") != state or type(record.get("at")) not in (int, float):
        return False
    now = time.time()
    return now - seconds < record["at"] <= now + CLOCK_SKEW_SECONDS


def hold(store: Store, run_id: str) -> str:
    """Mark `run_id` held before a decision may name it, or a retry trains it again; DataError
    if prune is deleting it. Returns the mark's ETag (to take it back if the run turns out not
    to be there)."""
    files = RunFiles(store, run_id)
    for _ in range(ROUNDS):
        try:
            record, etag = _read(store, files)
        except DataError:
            record, etag = None, store.etag(files.key(HOLD))  # unreadable: replaced
        deleting = record is not None and record.get("state") == "deleting"
        if deleting and (_within(record, "deleting", STALE_SECONDS) or not files.exists(SUCCESS)):
            raise DataError(f"{files.location}: being deleted by prune; not a candidate")
        try:
            return _put(store, files, "held", etag)
        except PreconditionFailed:
            continue  # changed meanwhile: look again
    raise TransientError(f"{files.where(HOLD)}: changed {ROUNDS} times in a row; try again")


def let_go(store: Store, run_id: str, etag: str) -> None:
    """Remove a `held` mark this process made on a run that is not there (best effort)."""
    with contextlib.suppress(PreconditionFailed):
        store.delete(RunFiles(store, run_id).key(HOLD), if_match=etag)


def mark_deleting(store: Store, run_id: str) -> str | None:
    """Mark `run_id` as being deleted, unless a decision holds it; the mark's ETag, or None
    when the run is held (or the mark changed meanwhile: left for the next prune)."""
    files = RunFiles(store, run_id)
    try:
        record, etag = _read(store, files)
    except DataError:
        record, etag = None, store.etag(files.key(HOLD))
    if _within(record, "held", HOLD_SECONDS):
        return None
    if record is not None and record.get("state") == "deleting":
        return etag  # a prune that died half way: finish its work
    try:
        return _put(store, files, "deleting", etag)
    except PreconditionFailed:
        return None


def unmark(store: Store, run_id: str, etag: str) -> None:
    """Back to `held` after all (prune found the run protected), unless it changed."""
    with contextlib.suppress(PreconditionFailed):
        _put(store, RunFiles(store, run_id), "held", etag)
