"""Deleting old runs (`python -m job prune`): never a champion, never a run that may still change.

Lives apart from the reader and the champion registry because it needs both: what a run is
(the reader) and which runs a model still names (the registry).
"""

from __future__ import annotations

from job import logs
from job.config import MODEL_NAME_RE, RESERVED_RUN_IDS, RUN_ID_RE
from job.errors import JobError
from job.runstore import champion, hold
from job.runstore.layout import CANCELLED, FAILURE, HOLD, MODELS, SUCCESS
from job.runstore.lease import Lease
from job.runstore.reader import RunReader
from job.runstore.store import Store


def protected_runs(store: Store) -> set[str]:
    """Every model's champion and the champions before it (rollback targets)."""
    kept: set[str] = set()
    for name in store.children(MODELS):
        if not MODEL_NAME_RE.fullmatch(name):
            continue  # not a folder this job made: nothing it names is protected
        record, _ = champion.read(store, name)
        if record is not None:
            kept.update([record["run_id"], *record["previous"]])
    return kept


def prune(store: Store, keep: int, older_than_hours: float, dry_run: bool) -> list[str]:
    """Delete finished runs beyond the last `keep` (by run id, as `runs` lists them) whose
    status is older than `older_than_hours`; never a champion or an earlier champion, never a
    run without an end marker or with a live owner lease (running, or being retried), never a
    run a champion decision holds (job.runstore.hold). Returns the run ids deleted (or, with
    `dry_run`, that would be)."""
    run_ids = sorted(
        (r for r in store.children() if RUN_ID_RE.fullmatch(r) and r not in RESERVED_RUN_IDS),
        reverse=True,
    )
    pruned = []
    for run_id in run_ids[keep:]:
        reader = RunReader(store, run_id)
        try:
            if not _finished_long_ago(reader, older_than_hours):
                continue
        except JobError:
            continue  # unreadable: left for a person to look at
        if run_id in protected_runs(store):
            continue
        if dry_run:
            pruned.append(run_id)
            continue
        mark = hold.mark_deleting(store, run_id)
        if mark is None:
            continue  # a champion decision holds it
        # Read after the mark, not once: a run promoted meanwhile is a champion now, and a
        # retry that took the lease meanwhile trains it (it checks the mark after its lease).
        if run_id in protected_runs(store) or Lease(reader, 0).live_holder():
            hold.unmark(store, run_id, mark)
            continue
        if store.etag(reader.key(HOLD)) != mark:
            continue  # a decision took the run over a stale mark: it is not ours to delete
        # The end markers first: a run half deleted is never one that looks finished; the
        # hold mark last: until it goes, no decision takes the run.
        keys = store.list(run_id + "/")
        first = [reader.key(m) for m in (SUCCESS, FAILURE, CANCELLED)]
        last = [reader.key(HOLD)]
        middle = [k for k in keys if k not in first and k not in last]
        for key in [k for k in first if k in keys] + middle + last:
            store.delete(key)
        pruned.append(run_id)
    if dry_run or not pruned:
        return pruned
    # One listing for all of them: something this job never deletes (a link, a file being
    # written) keeps a folder, and that run is not reported deleted.
    left = set(store.children()) & set(pruned)
    for run_id in sorted(left):
        logs.get("job.prune").warning("run_not_removed", run_id=run_id, files="deleted")
    return [r for r in pruned if r not in left]


def _finished_long_ago(reader: RunReader, older_than_hours: float) -> bool:
    """No live lease, and an end marker with a heartbeat older than the limit, or no end marker
    left by a deletion that a prune began and did not finish."""
    # A live lease: a process owns the run (a retry of a failed run resumes under the old
    # _FAILURE). A dead one (a SIGKILL right after _SUCCESS) is debris, deleted with the run.
    if Lease(reader, 0).live_holder():
        return False
    if reader.outcome() is None:  # running, or half deleted
        return (reader.read_json(HOLD) or {}).get("state") == "deleting"
    reader.poll_status()
    age = reader.heartbeat_age()
    return age is not None and age >= older_than_hours * 3600
