"""The run publication contract: everything under `<run_id>/`, the completion marker last.

Order of writes: `run.json` (start record) and `status.json` first; `status.json` again after
every epoch (the heartbeat); the artifacts; then `_SUCCESS`, listing every artifact with its
size and SHA-256; last the final `status.json`. A failed run gets `_FAILURE` instead and never a
`_SUCCESS`. Readers trust a run only when `_SUCCESS` is there. `status.json` is the mutable
heartbeat, so it is not listed in `_SUCCESS`. Key names: job.runstore.layout.

Every write is fenced, so a process that has lost the run (job.runstore.lease) cannot change it:
the records an attempt rewrites (run.json, status.json, the checkpoint pointer, _FAILURE) only
replace the version this attempt saw or wrote last (If-Match), and files are created, never
overwritten (If-None-Match), except the debris of an earlier failed attempt, which only the
lease holder replaces. `_SUCCESS` is created once, ever.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from job.errors import PreconditionFailed, TransientError
from job.runstore.digest import sha256_bytes, sha256_file
from job.runstore.layout import (
    FAILURE,
    KINDS,
    LATEST_CHECKPOINT,
    RUN_RECORD,
    STATUS,
    SUCCESS,
    RunFiles,
    safe_key,
    to_json,
)
from job.runstore.lease import Lease
from job.runstore.store import Store

MAX_REASON = 1000
REWRITTEN = (RUN_RECORD, STATUS, LATEST_CHECKPOINT, FAILURE)


class FinishedElsewhere(TransientError):
    """Another process published this run while this one trained: its result stands."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunPublisher(RunFiles):
    """The writing side of the contract (see the module docstring)."""

    def __init__(self, store: Store, run_id: str, lease: Lease | None = None) -> None:
        super().__init__(store, run_id)
        self.lease = lease
        self.published = False  # _SUCCESS is ours: from here on, nothing may mark a failure
        self._seen: dict[str, str | None] = {}

    def succeeded(self) -> bool:
        return self.exists(SUCCESS)

    def adopt(self) -> None:
        """Once the run is ours: the versions of the records this attempt may replace."""
        self._seen = {name: self.store.etag(self.key(name)) for name in REWRITTEN}

    def _unless_published(self) -> None:
        if self.succeeded():
            raise FinishedElsewhere(f"{self.location} was published by another process")

    def _guard(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def put_json(self, name: str, data: object) -> None:
        """Replace one of the REWRITTEN records, only in the version this attempt knows."""
        self._guard()
        seen = self._seen.get(name)
        try:
            self._seen[name] = self.store.put_bytes(
                self.key(name), to_json(data), if_match=seen, if_none_match=seen is None
            )
        except PreconditionFailed:
            self._unless_published()
            raise

    def create(self, name: str, path: Path) -> None:
        """A file of this attempt: created, or replacing the debris of a failed attempt."""
        self._guard()
        if self.lease is not None:
            self.lease.verify()  # a new key has no version to fence on: ask the lease
        try:
            self.store.put_file(self.key(name), path, if_none_match=True)
        except PreconditionFailed:
            self._unless_published()
            if self.lease is not None:
                self.lease.verify()
            current = self.store.etag(self.key(name))
            self.store.put_file(self.key(name), path, if_match=current, if_none_match=not current)

    def delete(self, name: str) -> None:
        self._guard()
        self.store.delete(self.key(name))

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
            name = safe_key(path.relative_to(folder).as_posix(), str(folder))
            self.create(name, path)
            files.append({"path": name, "size": path.stat().st_size, "sha256": sha256_file(path)})
        record = self.store.get_bytes(self.key(RUN_RECORD), limit=KINDS[RUN_RECORD].max_bytes)
        record = record or b""
        files.append({"path": RUN_RECORD, "size": len(record), "sha256": sha256_bytes(record)})
        manifest = {"run_id": self.run_id, "completed_at": now_iso(), "files": files}
        if self.lease is not None:
            self.lease.verify()
        # A marker from an earlier failed attempt must not linger beside success.
        if self.store.exists(self.key(FAILURE)):
            self.delete(FAILURE)
        try:
            self.store.put_bytes(self.key(SUCCESS), to_json(manifest), if_none_match=True)
        except PreconditionFailed:
            self._unless_published()
            raise
        self.published = True
        self.status("succeeded", **final_status)
        return manifest

    def fail(self, reason: str, **fields: object) -> None:
        reason = reason[:MAX_REASON]
        self.put_json(
            FAILURE, {"run_id": self.run_id, "failed_at": now_iso(), "reason": reason, **fields}
        )
        self.status("failed", reason=reason)
