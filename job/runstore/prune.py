"""Deleting old runs (`python -m job prune`): never a champion, never a run that may still change.

Lives apart from the reader and the champion registry because it needs both: what a run is
(the reader) and which runs a model still names (the registry).
"""

from __future__ import annotations

from job.config import MODEL_NAME_RE, RESERVED_RUN_IDS, RUN_ID_RE
from job.errors import JobError
from job.runstore import champion
from job.runstore.layout import CANCELLED, FAILURE, MODELS, OWNER, SUCCESS
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
    run without an end marker or with an owner lease (running, or being retried). Returns the
    run ids deleted (or, with `dry_run`, that would be)."""
    run_ids = sorted(
        (r for r in store.children() if RUN_ID_RE.fullmatch(r) and r not in RESERVED_RUN_IDS),
        reverse=True,
    )
    pruned = []
    for run_id in run_ids[keep:]:
        reader = RunReader(store, run_id)
        if reader.outcome() is None or reader.exists(OWNER):
            # No end marker: running. A lease: a process owns it (a retry of a failed run
            # resumes under the old _FAILURE), or one died holding it: a person decides.
            continue
        try:
            reader.poll_status()
        except JobError:
            continue  # unreadable: left for a person to look at
        age = reader.heartbeat_age()
        if age is None or age < older_than_hours * 3600:
            continue
        # Read just before deleting, not once: a run promoted meanwhile is a champion now.
        if run_id in protected_runs(store):
            continue
        if not dry_run:
            # The end markers first: a run half deleted is never one that looks finished.
            keys = store.list(run_id + "/")
            markers = [reader.key(m) for m in (SUCCESS, FAILURE, CANCELLED)]
            for key in [k for k in markers if k in keys] + [k for k in keys if k not in markers]:
                store.delete(key)
        pruned.append(run_id)
    return pruned
