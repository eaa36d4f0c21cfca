"""Champions: per model name, the finished run whose model is the one to use, kept in the run
store itself (no other service).

`<OUTPUT_URI>/models/<name>/champion.json` names the champion (run id, model location and
SHA-256, test accuracy and loss, dataset, test-set digest, code version, when and why it was
promoted, the champions before it for `rollback`) and counts the decisions taken so far;
`models/<name>/history/<seq>-<run id>.json` holds every decision, promoted or not, numbered
1, 2, 3... without gaps.

Every decision is one compare-and-swap of champion.json: `If-Match` on the ETag it was decided
against (`If-None-Match: *` for the first), which also claims the next sequence number; its
history entry is then created (`If-None-Match`). A writer that loses the swap reads again and
decides again against what won, so of two runs that beat the champion at the same moment the
better one ends as champion, both decisions are in the history, and nothing is torn (each write
is one whole object). champion.json carries its last decision, so an entry lost to a crash
between the two writes is written by the next decision. Re-creating the entry just written must
fail: a store that lets it through ignores conditional writes (logged as
`conditional_writes_ignored`; then overlapping promotions can lose an update, and only the
CronJob's `concurrencyPolicy: Forbid` keeps scheduled runs apart).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from job import logs
from job.config import RUN_ID_RE
from job.errors import ConfigError, DataError, JobError, PreconditionFailed, TransientError
from job.runstore import hold, objects
from job.runstore.layout import (
    METRICS,
    MODEL_FILE,
    SUCCESS,
    champion_key,
    history_key,
    history_prefix,
    parse_history_key,
    to_json,
)
from job.runstore.publish import now_iso
from job.runstore.reader import RunReader
from job.runstore.store import Store

MAX_ROUNDS = 50  # lost swaps in a row before giving up (exit 75): far beyond real contention
MAX_LINEAGE = 100  # earlier champions kept for rollback
MAX_DECISIONS = 99_999_999  # history numbers have eight digits (job.runstore.layout.history_key)
SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Candidate:
    """What a finished run offers, read from its published, hash-checked files."""

    run_id: str
    model: str  # model/model.keras of the run, relative to OUTPUT_URI
    model_sha256: str
    test_accuracy: float
    test_loss: float
    dataset: str
    test_set_sha256: str | None
    code_version: str | None
    weights_sha256: str | None = None  # the run's weights digest, where it recorded one


@dataclass(frozen=True)
class Decision:
    model_name: str
    run_id: str
    action: str  # promote | rollback
    promoted: bool
    reason: str
    champion: str  # the champion's run id after this decision
    sequence: int

    def summary(self) -> dict:
        keys = ("model_name", "promoted", "reason", "champion", "sequence")
        return {k: getattr(self, k) for k in keys}


def candidate(store: Store, run_id: str) -> Candidate:
    """The run `run_id` as a candidate: held against prune first (job.runstore.hold), then
    checked: it must have `_SUCCESS`, and its metrics.json and model must match the hashes
    listed there (a store is untrusted input)."""
    mark = hold.hold(store, run_id)
    try:
        return _checked_candidate(store, run_id)
    except DataError:
        if not RunReader(store, run_id).exists(SUCCESS):
            hold.let_go(store, run_id, mark)  # no run there: leave no folder behind
        raise


def _checked_candidate(store: Store, run_id: str) -> Candidate:
    files = RunReader(store, run_id)
    entries = files.manifest()  # each entry checked there
    listed = {e["path"]: e for e in entries}
    for name in (METRICS, MODEL_FILE):  # both listed before either is read
        if name not in listed:
            raise DataError(f"{files.where(SUCCESS)}: does not list {name}")
    metrics = objects.decode(files.listed_bytes(entries, METRICS), objects.METRICS,
                             files.where(METRICS))  # fmt: skip
    accuracy, loss = metrics.get("test_accuracy"), metrics.get("test_loss")
    if not (_number(accuracy) and 0 <= accuracy <= 1 and _number(loss)):
        raise DataError(f"{files.where(METRICS)}: no test_accuracy in [0, 1] and test_loss")
    # The model itself, as listed: a champion whose file is missing or altered serves nothing.
    files.listed_bytes(entries, MODEL_FILE)
    return Candidate(
        run_id=run_id,
        model=files.key(MODEL_FILE),
        model_sha256=listed[MODEL_FILE]["sha256"],
        test_accuracy=float(accuracy),
        test_loss=float(loss),
        dataset=_text(metrics.get("dataset")) or "unknown",
        test_set_sha256=_hex(metrics.get("test_set_sha256")),
        code_version=_text(metrics.get("code_version")),
        weights_sha256=_hex(metrics.get("weights_sha256")),
    )


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _text(value: object) -> str | None:
    ok = isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()
    return value if ok else None  # type: ignore[return-value]


def _hex(value: object) -> str | None:
    return value if isinstance(value, str) and SHA256_RE.fullmatch(value) else None


def read(store: Store, name: str) -> tuple[dict | None, str | None]:
    """The champion record (checked) and its ETag; (None, None) when there is none yet."""
    raw, etag = store.get_if_changed(champion_key(name), None, limit=objects.CHAMPION.max_bytes)
    if raw is None:
        return None, None
    where = f"{store.uri.rstrip('/')}/{champion_key(name)}"
    record = objects.decode(raw, objects.CHAMPION, where)
    lineage = record.get("previous")
    fine = (
        isinstance(record.get("run_id"), str)
        and RUN_ID_RE.fullmatch(record["run_id"])
        and _number(record.get("test_accuracy"))
        and 0 <= record["test_accuracy"] <= 1
        and type(record.get("decisions")) is int
        and 1 <= record["decisions"] < MAX_DECISIONS
        and isinstance(lineage, list)
        and all(isinstance(r, str) and RUN_ID_RE.fullmatch(r) for r in lineage)
        and isinstance(record.get("last_decision"), dict)
        and record.get("model") == f"{record['run_id']}/{MODEL_FILE}"
        and _hex(record.get("model_sha256")) is not None
    )
    if not fine:
        raise DataError(f"{where}: not a champion record (run_id, model, test_accuracy, ...)")
    return {**record, "previous": lineage[-MAX_LINEAGE:]}, etag


def decide(
    cand: Candidate, champion: dict | None, policy: str, margin: float, *, force: bool = False
) -> tuple[bool, str]:
    """Whether `cand` replaces `champion`, and why (pure)."""
    if champion is not None and champion["run_id"] == cand.run_id:
        return False, "already the champion"
    if force:
        return True, "forced (promote --force)"
    if policy == "always":
        return True, "PROMOTE=always"
    if champion is None:
        return True, "first champion"
    held = f"champion {champion['run_id']}'s {champion['test_accuracy']:.4f}"
    if not cand.test_set_sha256 or cand.test_set_sha256 != champion.get("test_set_sha256"):
        return False, f"not comparable: evaluated on another test set than {held}"
    bar = f"{held} + margin {margin:g}"
    if cand.test_accuracy > champion["test_accuracy"] + margin:
        return True, f"test accuracy {cand.test_accuracy:.4f} above {bar}"
    return False, f"test accuracy {cand.test_accuracy:.4f} not above {bar}"


def consider(
    store: Store, name: str, cand: Candidate, *, policy: str, margin: float, force: bool = False
) -> Decision:
    """Decide on `cand` against the champion of `name` and record the decision."""

    def change(current: dict | None) -> tuple[dict, bool, str]:
        promoted, reason = decide(cand, current, policy, margin, force=force)
        if promoted:
            lineage = [*current["previous"], current["run_id"]] if current else []
            base = {**asdict(cand), "promoted_at": now_iso(), "reason": reason}
            return {**base, "previous": lineage[-MAX_LINEAGE:]}, True, reason
        return dict(current or {}), False, reason

    return _swap(store, name, cand.run_id, "promote", change)


def rollback(store: Store, name: str) -> Decision:
    """Make the champion before the current one the champion again (recorded as a decision)."""

    def change(current: dict | None) -> tuple[dict, bool, str]:
        if current is None or not current["previous"]:
            raise ConfigError(
                "MODEL_NAME", name, "a model with an earlier champion to roll back to"
            )
        target = candidate(store, current["previous"][-1])  # still finished and intact
        reason = f"rollback from {current['run_id']}"
        base = {**asdict(target), "promoted_at": now_iso(), "reason": reason}
        return {**base, "previous": current["previous"][:-1]}, True, reason

    return _swap(store, name, None, "rollback", change)


def _swap(store: Store, name: str, run_id: str | None, action: str, change) -> Decision:
    key = champion_key(name)
    for _ in range(MAX_ROUNDS):
        current, etag = read(store, name)
        if current is not None:
            _restore_entry(store, name, current)
        record, promoted, reason = change(current)
        sequence = (current["decisions"] if current else 0) + 1
        decided = run_id or record["run_id"]
        entry = {
            "sequence": sequence, "action": action, "model_name": name, "run_id": decided,
            "promoted": promoted, "reason": reason, "champion": record["run_id"],
            "decided_at": now_iso(),
        }  # fmt: skip
        record = {**record, "model_name": name, "decisions": sequence, "last_decision": entry}
        condition = {"if_match": etag} if current is not None else {"if_none_match": True}
        try:
            store.put_bytes(key, to_json(record), **condition)
        except PreconditionFailed:
            continue  # another decision won; decide again against it
        try:
            _create_entry(store, name, entry)
        except JobError as exc:  # decided: the champion record holds it, the next one repairs
            logs.get("job.champion").warning("history_entry_deferred", error=str(exc))
        decision = Decision(name, decided, action, promoted, reason, record["run_id"], sequence)
        logs.get("job.champion").info("champion_decision", **decision.summary(), run=decided)
        return decision
    raise TransientError(f"{store.uri}/{key}: changed {MAX_ROUNDS} times in a row; try again")


def _create_entry(store: Store, name: str, entry: dict) -> None:
    key = history_key(name, entry["sequence"], entry["run_id"])
    body = to_json(entry)
    try:
        store.put_bytes(key, body, if_none_match=True)
    except PreconditionFailed:
        if (
            store.get_bytes(key, limit=objects.HISTORY_ENTRY.max_bytes) != body
        ):  # not ours: the history already says otherwise
            logs.get("job.champion").warning("history_entry_conflict", key=key)
        return
    # A create that must fail, with other bytes (a store may take the same bytes again as a
    # retried request): a store that lets it through ignores conditional writes.
    try:
        store.put_bytes(key, to_json({**entry, "probe": True}), if_none_match=True)
    except PreconditionFailed:
        return
    store.put_bytes(key, body)  # put the entry back
    logs.get("job.champion").warning(
        "conditional_writes_ignored",
        store=store.uri,
        consequence="overlapping promotions can lose an update; only the CronJob's "
        "concurrencyPolicy: Forbid keeps scheduled runs apart",
    )


def _restore_entry(store: Store, name: str, current: dict) -> None:
    """The history entry of the champion record's last decision, if a crash lost it. Only an
    entry consistent with the record (its number, a run id) is written, with its known fields."""
    last = current["last_decision"]
    if last.get("sequence") != current["decisions"] or not isinstance(last.get("run_id"), str):
        return
    if not RUN_ID_RE.fullmatch(last["run_id"]):
        return
    if store.exists(history_key(name, current["decisions"], last["run_id"])):
        return
    entry = {
        "sequence": current["decisions"], "action": _text(last.get("action")),
        "model_name": name, "run_id": last["run_id"], "promoted": last.get("promoted") is True,
        "reason": _text(last.get("reason")), "champion": current["run_id"],
        "decided_at": _text(last.get("decided_at")), "restored": True,
    }  # fmt: skip
    _create_entry(store, name, entry)


def history(store: Store, name: str, limit: int | None = None) -> list[dict]:
    """The decisions on `name`, newest first (the newest `limit`); an unreadable entry is
    shown as such, without hiding the others."""
    numbered = [(parse_history_key(name, k), k) for k in store.list(history_prefix(name))]
    keys = sorted(((n[0], k) for n, k in numbered if n), reverse=True)
    entries = []
    for sequence, key in keys[:limit]:
        try:
            raw = store.get_bytes(key, limit=objects.HISTORY_ENTRY.max_bytes)
            entry = objects.decode(raw or b"", objects.HISTORY_ENTRY, objects.where(store, key))
        except DataError as exc:
            entry = {"sequence": sequence, "action": "unreadable", "reason": str(exc)}
        entries.append(entry)
    return entries
