"""The run publication contract: everything under `<run_id>/`, the completion marker last.

Order of writes: `run.json` (start record) and `status.json` first; `status.json` again after
every epoch (the heartbeat); the artifacts; then `_SUCCESS`, listing every artifact with its
size and SHA-256; last the final `status.json`. A failed run gets `_FAILURE` instead and never a
`_SUCCESS`. Readers trust a run only when `_SUCCESS` is there. `status.json` is the mutable
heartbeat, so it is not listed in `_SUCCESS`. Key names: job.layout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from job.digest import sha256_bytes, sha256_file
from job.layout import FAILURE, RUN_RECORD, STATUS, SUCCESS, RunFiles

MAX_REASON = 1000


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunPublisher(RunFiles):
    """The writing side of the contract (see the module docstring)."""

    def succeeded(self) -> bool:
        return self.exists(SUCCESS)

    def start(self, record: dict) -> None:
        self.put_json(RUN_RECORD, record)
        self.status("starting")

    def status(self, state: str, **fields: object) -> None:
        self.put_json(
            STATUS, {"run_id": self.run_id, "state": state, "updated_at": now_iso(), **fields}
        )

    def publish(self, folder: Path, **final_status: object) -> dict:
        """Upload every file under `folder`, then `_SUCCESS` listing them with their hashes."""
        files = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            self.store.put_file(self.key(name), path)
            files.append({"path": name, "size": path.stat().st_size, "sha256": sha256_file(path)})
        record = self.store.get_bytes(self.key(RUN_RECORD)) or b""
        files.append({"path": RUN_RECORD, "size": len(record), "sha256": sha256_bytes(record)})
        manifest = {"run_id": self.run_id, "completed_at": now_iso(), "files": files}
        self.put_json(SUCCESS, manifest)
        # A marker from an earlier failed attempt of this run id must not linger beside success.
        self.store.delete(self.key(FAILURE))
        self.status("succeeded", **final_status)
        return manifest

    def fail(self, reason: str, **fields: object) -> None:
        reason = reason[:MAX_REASON]
        self.put_json(
            FAILURE, {"run_id": self.run_id, "failed_at": now_iso(), "reason": reason, **fields}
        )
        self.status("failed", reason=reason)
