"""Where a run's files go: one small interface over a local folder or a bucket (job.runstore.s3).

Keys are '/'-separated paths relative to the store's root (OUTPUT_URI). Every write is atomic:
a reader sees the old object or the new one, never half of one; and it can be conditional, which
is how a run keeps a single writer (job.runstore.lease).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from job.config import Storage
from job.runstore.layout import parse
from job.runstore.local import LocalStore
from job.runstore.s3 import S3Store


class Store(Protocol):
    """Keys are '/'-separated, relative to the store's root. Writes return the new object's
    ETag; `if_match` (replace only that version) and `if_none_match` (create only) make them
    conditional, raising PreconditionFailed when the condition does not hold."""

    uri: str

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str: ...
    def put_file(
        self, key: str, path: Path, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def get_if_changed(self, key: str, tag: str | None) -> tuple[bytes | None, str | None]: ...
    def etag(self, key: str) -> str | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str, *, if_match: str | None = None) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def children(self, prefix: str = "") -> list[str]: ...


def open_store(uri: str, storage: Storage, variable: str = "OUTPUT_URI") -> Store:
    """The store for a URI: a local folder or a bucket prefix (boto3 loads only for a bucket)."""
    location = parse(variable, uri)
    if location.is_bucket:
        return S3Store(storage, location, variable)
    return LocalStore(Path(location.path), variable)
