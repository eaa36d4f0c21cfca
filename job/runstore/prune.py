"""Deleting old runs (`python -m job prune`): never a champion, never a run that may still change.

Lives apart from the reader and the champion registry because it needs both: what a run is
(the reader) and which runs a model still names (the registry). `champions` answers the second
question for `runs` too (its champion column), so it has one home.
"""

from __future__ import annotations

from dataclasses import dataclass

from job import logs
from job.config import MODEL_NAME_RE, RESERVED_RUN_IDS, RUN_ID_RE
from job.errors import DataError, JobError
from job.runstore import champion, hold
from job.runstore.layout import CANCELLED, FAILURE, HOLD, MODELS, STATUS, SUCCESS
from job.runstore.lease import Lease
from job.runstore.reader import RunReader
from job.runstore.store import Store


@dataclass(frozen=True)
class Pruned:
    """What prune did with one run: deleted (with `dry_run`: would delete), or kept and why."""

    run_id: str
    deleted: bool
    kept_by: tuple[str, ...] = ()  # what protected a kept run, in words


def _names(store: Store) -> list[str]:
    # A folder under models/ that no MODEL_NAME can name is not this job's: nothing it names counts.
    return [n for n in store.children(MODELS) if MODEL_NAME_RE.fullmatch(n)]


def named_runs(store: Store) -> dict[str, list[str]]:
    """Every run a model's champion record names, with how: `champion of NAME` or `earlier
    champion of NAME (a rollback target)`. An unreadable record is its DataError (65)."""
    named: dict[str, list[str]] = {}
    for name in _names(store):
        record, _ = champion.read(store, name)
        if record is None:
            continue
        named.setdefault(record["run_id"], []).append(f"champion of {name}")
        for run_id in record["previous"]:
            how = f"earlier champion of {name} (a rollback target)"
            if how not in named.setdefault(run_id, []):
                named[run_id].append(how)
    return named


def protected_runs(store: Store) -> set[str]:
    """Every model's champion and the champions before it (rollback targets)."""
    return set(named_runs(store))


def champions(store: Store) -> tuple[dict[str, list[str]], list[str]]:
    """For listings: run id -> the models it is the champion of now, and the errors of the
    records that could not be read (one corrupt model must not hide the others' champions,
    nor the runs themselves)."""
    found: dict[str, list[str]] = {}
    errors: list[str] = []
    for name in _names(store):
        try:
            record, _ = champion.read(store, name)
        except DataError as exc:
            errors.append(str(exc))
            continue
        if record is not None:
            found.setdefault(record["run_id"], []).append(name)
    return found, errors


def prune(store: Store, keep: int, older_than_hours: float, dry_run: bool) -> list[Pruned]:
    """Delete finished runs beyond the last `keep` (by run id, as `runs` lists them) whose
    status is older than `older_than_hours`; never a champion or an earlier champion, never a
    run without an end marker or with a live owner lease (running, or being retried), never a
    run a champion decision holds (job.runstore.hold). Returns every run, newest first: those
    deleted (or, with `dry_run`, that would be) and those kept, each with what kept it."""
    run_ids = sorted(
        (r for r in store.children() if RUN_ID_RE.fullmatch(r) and r not in RESERVED_RUN_IDS),
        reverse=True,
    )
    newest = f"one of the newest {keep} (--keep {keep})"
    result = [Pruned(run_id, False, (newest,)) for run_id in run_ids[:keep]]
    # Read once to say why a run is kept; read again after a run is marked (below), which is
    # what keeps a champion safe from a promotion that lands meanwhile.
    named = named_runs(store) if run_ids[keep:] else {}
    for run_id in run_ids[keep:]:
        reader = RunReader(store, run_id)
        try:
            kept_by = _not_finished_long_ago(reader, older_than_hours)
        except JobError as exc:
            kept_by = [f"unreadable, left for a person to look at: {logs.printable(exc, 300)}"]
        kept_by = [*named.get(run_id, []), *kept_by]
        if kept_by:
            result.append(Pruned(run_id, False, tuple(kept_by)))
            continue
        if dry_run:
            result.append(Pruned(run_id, True))
            continue
        result.append(_delete(store, reader))
    if dry_run or not any(r.deleted for r in result):
        return result
    # One listing for all of them: something this job never deletes (a link, a file being
    # written) keeps a folder, and that run is not reported deleted.
    left = set(store.children()) & {r.run_id for r in result if r.deleted}
    for run_id in sorted(left):
        logs.get("job.prune").warning("run_not_removed", run_id=run_id, files="deleted")
    stuck = ("something in its folder was not deleted (run_not_removed)",)
    return [Pruned(r.run_id, False, stuck) if r.run_id in left else r for r in result]


def _delete(store: Store, reader: RunReader) -> Pruned:
    run_id = reader.run_id
    mark = hold.mark_deleting(store, run_id)
    if mark is None:
        return Pruned(run_id, False, ("held by a champion decision (_HOLD)",))
    # Read after the mark, not once: a run promoted meanwhile is a champion now, and a
    # retry that took the lease meanwhile trains it (it checks the mark after its lease).
    named = named_runs(store).get(run_id)
    if named or Lease(reader, 0).live_holder():
        hold.unmark(store, run_id, mark)
        return Pruned(run_id, False, tuple(named or ["owned by a live process"]))
    if store.etag(reader.key(HOLD)) != mark:
        # A decision took the run over a stale mark: it is not ours to delete.
        return Pruned(run_id, False, ("held by a champion decision (_HOLD)",))
    # The end markers first: a run half deleted is never one that looks finished; the
    # hold mark last: until it goes, no decision takes the run.
    keys = store.list(run_id + "/")
    first = [reader.key(m) for m in (SUCCESS, FAILURE, CANCELLED)]
    last = [reader.key(HOLD)]
    middle = [k for k in keys if k not in first and k not in last]
    for key in [k for k in first if k in keys] + middle + last:
        store.delete(key)
    return Pruned(run_id, True)


def _not_finished_long_ago(reader: RunReader, older_than_hours: float) -> list[str]:
    """Why the run may still change or is too recent to delete; nothing when it is neither:
    no live lease, and an end marker with a heartbeat older than the limit, or no end marker
    left by a deletion that a prune began and did not finish."""
    # A live lease: a process owns the run (a retry of a failed run resumes under the old
    # _FAILURE). A dead one (a SIGKILL right after _SUCCESS) is debris, deleted with the run.
    if Lease(reader, 0).live_holder():
        return ["owned by a live process (running, or a retry)"]
    if reader.outcome() is None:  # running, or half deleted
        if (reader.read_json(HOLD) or {}).get("state") == "deleting":
            return []
        return [f"running: no end marker ({SUCCESS}, {FAILURE}, {CANCELLED})"]
    reader.poll_status()
    age = reader.heartbeat_age()
    if age is None:
        return [f"no time in its {STATUS} to judge its age by"]
    if age < older_than_hours * 3600:
        return [f"last updated {max(age, 0) / 3600:.1f} h ago, within --older-than-hours "
                f"{older_than_hours:g}"]  # fmt: skip
    return []
