"""Where a run's files go: one small interface over a local folder or a bucket (job.bucket).

Keys are '/'-separated paths relative to the store's root (OUTPUT_URI). Every write is atomic:
a reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from job.errors import TransientError


class Store(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def get_if_changed(self, key: str, tag: str | None) -> tuple[bytes | None, str | None]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class LocalStore:
    """A folder on local disk (or a mounted bucket folder, as WML's RESULT_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split("/"))
        # Keys come from job.layout; this is the last line of defence for the file system.
        if ".." in key.split("/") or not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} leaves {self.root}")
        return path

    def _atomic(self, key: str, write) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TransientError(f"cannot write {target}: {exc.strerror or exc}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path) -> None:
        def copy(fh) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, fh)

        self._atomic(key, copy)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_if_changed(self, key: str, tag: str | None) -> tuple[bytes | None, str | None]:
        """(content, tag) when the object changed since `tag`, (None, tag) when it did not."""
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            return None, None
        current = f"{stat.st_mtime_ns}-{stat.st_size}"
        if current == tag:
            return None, tag
        return self.get_bytes(key), current

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Folders exist only through their files, as in a bucket: drop the emptied ones.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
