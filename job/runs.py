"""Reading runs back from the store: the other side of job.publish, used by watch and runs.

Imports nothing heavy: the submitter must start in well under a second without TensorFlow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from job.digest import sha256_file
from job.errors import JobError
from job.publish import FAILURE, STATUS, SUCCESS, RunFiles
from job.store import Store

CANCELLED = "_CANCELLED"
SUBMISSION = "submission.json"
DOWNLOADED = ("metrics.json", "images/")


class RunReader(RunFiles):
    def __init__(self, store: Store, run_id: str) -> None:
        super().__init__(store, run_id)
        self._status_tag: str | None = None
        self.status: dict | None = None

    def poll_status(self) -> bool:
        """Re-read status.json if it changed (cheaply); True when it did."""
        raw, self._status_tag = self.store.get_if_changed(self.key(STATUS), self._status_tag)
        if raw is None:
            return False
        self.status = json.loads(raw)
        return True

    def outcome(self) -> str | None:
        for marker, name in ((SUCCESS, "succeeded"), (FAILURE, "failed"), (CANCELLED, "cancelled")):
            if self.store.exists(self.key(marker)):
                return name
        return None

    def heartbeat_age(self, now: datetime | None = None) -> float | None:
        if not self.status or "updated_at" not in self.status:
            return None
        updated = datetime.fromisoformat(self.status["updated_at"].replace("Z", "+00:00"))
        return ((now or datetime.now(UTC)) - updated).total_seconds()

    def download(self, dest: Path) -> list[Path]:
        """metrics.json and the images, each checked against its `_SUCCESS` hash."""
        manifest = self.read_json(SUCCESS) or {"files": []}
        written = []
        for entry in manifest["files"]:
            if not entry["path"].startswith(DOWNLOADED):
                continue
            target = dest / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            raw = self.store.get_bytes(self.key(entry["path"]))
            if raw is None:
                raise JobError(f"{entry['path']} is listed in _SUCCESS but missing")
            target.write_bytes(raw)
            if sha256_file(target) != entry["sha256"]:
                raise JobError(f"{entry['path']}: SHA-256 differs from _SUCCESS")
            written.append(target)
        return written


def list_runs(store: Store, limit: int = 20) -> list[dict]:
    """The newest runs first, with their state and accuracy."""
    run_ids = sorted({key.split("/", 1)[0] for key in store.list("") if key.endswith("/" + STATUS)})
    rows = []
    for run_id in run_ids:
        reader = RunReader(store, run_id)
        reader.poll_status()
        status = reader.status or {}
        state = reader.outcome() or status.get("state", "unknown")
        accuracy = (status.get("metrics") or {}).get("test_accuracy")
        rows.append(
            {
                "run_id": run_id,
                "state": state,
                "epoch": status.get("epoch"),
                "epochs": status.get("epochs"),
                "test_accuracy": accuracy,
                "updated_at": status.get("updated_at"),
            }
        )
    rows.sort(key=lambda r: r["updated_at"] or "", reverse=True)
    return rows[:limit]
