"""Champions: per model name, the finished run whose model is the one to use, kept in the run
store itself (no other service).

`<OUTPUT_URI>/models/<name>/champion.json` names the champion (run id, model location and
SHA-256, test accuracy and loss, dataset, test-set digest, code version, when and why it was
promoted, the champions before it for `rollback`) and counts the decisions taken so far;
`models/<name>/history/<seq>-<run id>.json` holds every decision, promoted or not, numbered
1, 2, 3... without gaps.

Smoke runs (trained or scored on less than the dataset's full splits, `smoke`) are never
candidates: only `promote --force` makes one champion, and a full run replaces a smoke champion
under `if-better` whatever its accuracy (a figure from 300 test digits is no bar). What changes
nothing new is answered but not recorded: a run that is already the champion, a refusal
identical to the last decision (the same run, reason and champion: a nightly retry or a
repeated `promote` must not fill the history with copies), and any refusal while there is no
champion (the history hangs off its record). A smoke run's first refusal is recorded, so a
nightly run left on a slice of the data shows in `models`.

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
from job.config import DATASETS, RUN_ID_RE
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
# What a smoke refusal tells the person (kept short: history reasons are shown in 200 characters).
SMOKE_REMEDY = "`promote --force` promotes it anyway, or retrain on the full training and test sets"


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
    n_train: int | None = None  # digits trained on and scored on, as metrics.json says
    n_test: int | None = None
    smoke: str | None = "not recorded"  # why it is a smoke run (`smoke`); None: a full run


@dataclass(frozen=True)
class Decision:
    model_name: str
    run_id: str
    action: str  # promote | rollback
    promoted: bool
    reason: str
    champion: str | None  # the champion's run id after this decision (None: none yet)
    sequence: int | None  # its history number; not recorded: the one it repeats, else None
    recorded: bool = True  # False: changed nothing, so no history entry (see the module doc)

    def summary(self) -> dict:
        keys = ("model_name", "promoted", "reason", "champion", "sequence", "recorded")
        return {k: getattr(self, k) for k in keys}


def smoke(metrics: dict) -> str | None:
    """Why a run whose metrics.json says `metrics` is a smoke run (trained on fewer digits than
    its dataset's full training split, or scored on fewer than the full test split); None for
    a full run. A limit at or above the full size is no smoke run: the counts are what was
    used (a count above the full size is not the dataset as published: a smoke run too).
    Metrics that do not say (no known dataset, no counts) make a smoke run: a store is
    untrusted, and only a run that shows it is full may become champion on its own."""
    dataset = metrics.get("dataset")
    full = DATASETS.get(dataset) if isinstance(dataset, str) else None
    if full is None:
        shown = logs.printable(dataset, 40) if isinstance(dataset, str) else "not recorded"
        return f"dataset {shown}: no known full size"
    counts = (metrics.get("n_train"), metrics.get("n_test"))
    if not all(type(n) is int and n >= 0 for n in counts):
        return f"{METRICS} records no n_train and n_test"
    # More than the full set is not this dataset as published (a forged or foreign count):
    # no fairer a bar than fewer.
    short = [f"{n:,} of {whole:,} {split}" for n, whole, split
             in zip(counts, full, ("training", "test"), strict=True) if n != whole]  # fmt: skip
    return f"{' and '.join(short)} digits" if short else None


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
    metrics = files.listed_metrics(entries)
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
        n_train=_count(metrics.get("n_train")),
        n_test=_count(metrics.get("n_test")),
        smoke=smoke(metrics),
    )


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None  # type: ignore[return-value]


def was_smoke(store: Store, record: dict) -> str | None:
    """Why the champion in `record` (from `read`) is a smoke run; None when it is a full run.
    Records written before smoke runs were told apart do not say: then its run's metrics.json,
    as its `_SUCCESS` lists it, does (a champion's run is kept by prune). A record or run that
    cannot tell makes a smoke champion, which a full run may replace."""
    if "smoke" in record:
        value = record["smoke"]
        return None if value is None else _text(value) or "the champion record does not say"
    try:
        files = RunReader(store, record["run_id"])
        return smoke(files.listed_metrics(files.manifest()))
    except DataError as exc:
        return logs.printable(f"its run cannot tell ({exc})", 200)


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
    """Whether `cand` replaces `champion` (its `smoke` filled in: `consider`), and why (pure).
    The reasons go into the history and status.json: a refusal says what would do it."""
    if champion is not None and champion["run_id"] == cand.run_id:
        return False, "already the champion"
    if force:
        said = f": a smoke run, {cand.smoke}" if cand.smoke else ""  # says what it overrides
        return True, f"forced (promote --force){said}"
    if cand.smoke:
        return False, f"a smoke run ({cand.smoke}), never a candidate: {SMOKE_REMEDY}"
    if policy == "always":
        return True, "PROMOTE=always"
    if champion is None:
        return True, "first champion"
    held = f"champion {champion['run_id']}'s {champion['test_accuracy']:.4f}"
    if champion.get("smoke") and cand.dataset == champion.get("dataset"):
        # Its figure came from a slice of the data (or cannot be told): no bar for a full run.
        return True, f"replaces {held}, a smoke run ({champion['smoke']})"[:200]
    if not cand.test_set_sha256 or cand.test_set_sha256 != champion.get("test_set_sha256"):
        return False, (
            f"not comparable: evaluated on another test set than {held}; "
            "`promote --force` promotes it anyway"
        )
    bar = f"{held} + margin {margin:g}"
    if cand.test_accuracy > champion["test_accuracy"] + margin:
        return True, f"test accuracy {cand.test_accuracy:.4f} above {bar}"
    return False, f"test accuracy {cand.test_accuracy:.4f} not above {bar}"


def consider(
    store: Store, name: str, cand: Candidate, *, policy: str, margin: float, force: bool = False
) -> Decision:
    """Decide on `cand` against the champion of `name` and record the decision, unless it
    changes nothing (the module doc): then the answer only."""
    smoke_of: dict[str, str | None] = {}  # per champion run id, across lost swaps

    def change(current: dict | None) -> tuple[dict | None, bool, str]:
        if current is not None:
            if current["run_id"] not in smoke_of:
                smoke_of[current["run_id"]] = was_smoke(store, current)
            current = {**current, "smoke": smoke_of[current["run_id"]]}
        promoted, reason = decide(cand, current, policy, margin, force=force)
        if promoted:
            lineage = [*current["previous"], current["run_id"]] if current else []
            base = {**asdict(cand), "promoted_at": now_iso(), "reason": reason}
            return {**base, "previous": lineage[-MAX_LINEAGE:]}, True, reason
        if current is None or current["run_id"] == cand.run_id:
            # Nothing to record it in (a history hangs off a champion), or nothing changes.
            return None, False, reason
        last = current["last_decision"]
        repeated = (last.get("action"), last.get("run_id"), last.get("promoted"),
                    last.get("reason"), last.get("champion"))  # fmt: skip
        if repeated == ("promote", cand.run_id, False, reason, current["run_id"]):
            return None, False, reason
        return current, False, reason

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
        if target.smoke:  # allowed (it was champion before), and said
            reason = f"{reason} to a smoke run, {target.smoke}"[:200]
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
        if record is None:  # changes nothing: answered, not recorded
            return _unrecorded(name, run_id or "", action, reason, current)
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


def _unrecorded(name: str, run_id: str, action: str, reason: str, current: dict | None) -> Decision:
    last = (current or {}).get("last_decision") or {}
    repeats = last.get("run_id") == run_id and last.get("reason") == reason
    sequence = current["decisions"] if current and repeats else None
    champion = current["run_id"] if current else None
    decision = Decision(name, run_id, action, False, reason, champion, sequence, recorded=False)
    logs.get("job.champion").info("champion_decision", **decision.summary(), run=run_id)
    return decision


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
