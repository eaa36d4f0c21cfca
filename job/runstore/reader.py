"""Reading runs back from the store: the other side of job.runstore.publish, for watch and runs.

Everything read here is untrusted: keys become paths only through
job.runstore.layout.safe_key, files are hash-checked before they appear in the destination,
and a corrupt object is an error that names it. Imports nothing heavy: the submitter starts in
well under a second without TensorFlow.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from job.config import RESERVED_RUN_IDS, RUN_ID_RE
from job.errors import DataError, JobError
from job.runstore import objects
from job.runstore.digest import sha256_bytes
from job.runstore.layout import (
    CANCELLED,
    DOWNLOADED,
    FAILURE,
    METRICS,
    STATUS,
    SUCCESS,
    RunFiles,
    safe_key,
)
from job.runstore.local import LocalStore
from job.runstore.store import Store


class RunReader(RunFiles):
    def __init__(self, store: Store, run_id: str) -> None:
        super().__init__(store, run_id)
        self._status_tag: str | None = None
        self.status: dict | None = None

    def poll_status(self) -> bool:
        """Re-read status.json if it changed (cheaply); True when it did."""
        status, self._status_tag = objects.read_if_changed(
            self.store, self.key(STATUS), self._status_tag, objects.STATUS
        )
        if status is None:
            return False
        self.status = status
        return True

    def outcome(self) -> str | None:
        for marker, name in ((SUCCESS, "succeeded"), (FAILURE, "failed"), (CANCELLED, "cancelled")):
            if self.exists(marker):
                return name
        return None

    def heartbeat_age(self, now: datetime | None = None) -> float | None:
        """Seconds since the run's own `updated_at`; None when there is none or it is not a
        time (a clock in the future gives a negative age, which callers must not trust)."""
        updated = (self.status or {}).get("updated_at")
        try:
            when = datetime.fromisoformat(str(updated).replace("Z", "+00:00"))
            return ((now or datetime.now(UTC)) - when).total_seconds()
        except (TypeError, ValueError):
            return None

    def manifest(self) -> list[dict]:
        """The `_SUCCESS` entries, each checked: a safe path, an integer size, a SHA-256."""
        where = self.where(SUCCESS)
        record = self.read_json(SUCCESS)
        if record is None:
            raise DataError(f"{self.location}: not a finished run (no {SUCCESS})")
        files = record.get("files")
        if not isinstance(files, list):
            raise DataError(f"{where}: no list of files")
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise DataError(f"{where}: an entry without path and sha256")
            safe_key(entry.get("path"), where)
        return files

    def listed_bytes(self, entries: list[dict], name: str) -> bytes:
        """`name` as `_SUCCESS` lists it (`entries`, from `manifest`): read, bounded by its
        listed size, and checked against its SHA-256."""
        entry = next((e for e in entries if e["path"] == name), None)
        if entry is None:
            raise DataError(f"{self.where(SUCCESS)}: does not list {name}")
        raw = self.store.get_bytes(self.key(name), limit=objects.artifact_limit(entry["size"]))
        if raw is None or sha256_bytes(raw) != entry["sha256"]:
            raise DataError(f"{self.where(name)}: missing or not the file {SUCCESS} lists")
        return raw

    def listed_metrics(self, entries: list[dict]) -> dict:
        """metrics.json as `_SUCCESS` lists it (`listed_bytes`), decoded with its bounds."""
        raw = self.listed_bytes(entries, METRICS)
        return objects.decode(raw, objects.METRICS, self.where(METRICS))

    def download(self, dest: Path) -> dict[str, bytes]:
        """metrics.json and the images into `dest`, each checked against its `_SUCCESS` hash
        before it is moved in: nothing lands outside `dest` (written as a local store, so never
        through a link planted in it), no bad file is left behind. Returns what was written, by
        key, as verified bytes (metrics.json is required)."""
        saved = LocalStore(dest, "--dest")
        written: dict[str, bytes] = {}
        entries = self.manifest()
        if METRICS not in {e["path"] for e in entries}:
            raise DataError(f"{self.where(SUCCESS)}: does not list {METRICS}")
        for entry in entries:
            name = entry["path"]
            if not name.startswith(DOWNLOADED):
                continue
            raw = self.store.get_bytes(self.key(name), limit=objects.artifact_limit(entry["size"]))
            if raw is None:
                raise DataError(f"{self.where(name)} is listed in {SUCCESS} but missing")
            if sha256_bytes(raw) != entry["sha256"]:
                raise DataError(f"{self.where(name)}: SHA-256 differs from {SUCCESS}")
            try:
                saved.put_bytes(name, raw)
            except JobError as exc:  # `images/a` beside `images/a/b`, a 300-character name
                raise DataError(f"{self.where(name)}: cannot be saved in {dest}: {exc}") from None
            written[name] = raw
        return written


def run_row(store: Store, run_id: str) -> dict:
    """One run as `runs` lists it: state, epoch, test accuracy, last update; a failed run's
    reason (from `_FAILURE`, else its status); a finished run's figures and weights digest
    from its metrics.json as `_SUCCESS` lists it (hash-checked). Strings are as read: the
    caller shows them through job.logs.printable. A run that cannot be read is `unreadable`,
    with the error, and hides no other."""
    reader = RunReader(store, run_id)
    weights = reason = None
    try:
        reader.poll_status()
        status = reader.status or {}
        outcome = reader.outcome()
        state = outcome or str(status.get("state", "unknown"))
        accuracy = (status.get("metrics") or {}).get("test_accuracy")
        if outcome == "succeeded":
            metrics = reader.listed_metrics(reader.manifest())
            accuracy = metrics.get("test_accuracy", accuracy)
            weights = metrics.get("weights_sha256")
        elif outcome == "failed":
            reason = (reader.read_json(FAILURE) or {}).get("reason") or status.get("reason")
    except JobError as exc:  # one corrupt run must not hide the others
        return {"run_id": run_id, "state": "unreadable", "error": str(exc), "updated_at": None}
    updated = status.get("updated_at")
    return {
        "run_id": run_id,
        "state": state,
        "epoch": status.get("epoch"),
        "epochs": status.get("epochs"),
        "test_accuracy": accuracy if isinstance(accuracy, (int, float)) else None,
        "weights_sha256": weights if isinstance(weights, str) else None,
        "reason": reason if isinstance(reason, str) else None,
        "updated_at": updated if isinstance(updated, str) else None,
    }


def list_runs(store: Store, limit: int = 20) -> list[dict]:
    """The last `limit` runs by run id (default run ids begin with their UTC start time, a
    CronJob's runs with their schedule time, so that is newest first), with state and accuracy.

    Cost grows with what is shown, not with what is stored: one delimiter listing of the run
    folders (a request per 1,000 runs), then a status read and marker checks per run shown."""
    run_ids = [r for r in store.children() if RUN_ID_RE.fullmatch(r) and r not in RESERVED_RUN_IDS]
    return [run_row(store, run_id) for run_id in sorted(run_ids, reverse=True)[:limit]]
