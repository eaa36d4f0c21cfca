"""A run store in a local folder (or a mounted bucket folder, as WML's RESULT_DIR)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from job.errors import ConfigError, JobError, PreconditionFailed, TransientError

# errno values a retry cannot fix: the folder is wrong, not busy.
PERMANENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
    errno.ENOENT, errno.EEXIST, errno.EINVAL, errno.ELOOP,
}  # fmt: skip


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore:
    """A folder on local disk (or a mounted bucket folder, as WML's RESULT_DIR).

    Writes are atomic (a temporary file renamed into place) and serialised per folder with an
    advisory lock on the folder itself, so a conditional write compares and replaces in one
    step. ETags are the content's MD5, as S3's for a single-part upload.
    """

    def __init__(self, root: Path, variable: str = "OUTPUT_URI") -> None:
        self.root = root
        self.uri = str(root)
        self.variable = variable

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split("/"))
        # Keys come from job.runstore.layout; this is the last line of defence for the file system.
        if ".." in key.split("/") or not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} leaves {self.root}")
        return path

    @contextlib.contextmanager
    def _locked(self, folder: Path):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, key: str, data: bytes, if_match: str | None, if_none_match: bool) -> str:
        # A concurrent delete removes a folder it empties (as a bucket has no empty folders):
        # between our mkdir and our lock the folder can vanish. That is a race, not a wrong
        # OUTPUT_URI: try again.
        missing: FileNotFoundError | None = None
        for _ in range(5):
            try:
                return self._write_once(key, data, if_match, if_none_match)
            except FileNotFoundError as exc:
                missing = exc
        path = self._path(key)
        if path.parent.is_dir() and missing is not None:
            # The folder is there and still no file can be made in it (/proc/self): the path
            # is wrong, not busy.
            raise self._os_error("write", path, missing) from None
        raise TransientError(f"cannot write {path}: its folder keeps disappearing")

    def _write_once(self, key: str, data: bytes, if_match: str | None, if_none_match: bool) -> str:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a folder that cannot be made: the path is wrong (/proc/...)
            raise self._os_error("write", target, exc) from None
        try:
            with self._locked(target.parent):
                # Read the current version only when a condition needs it: most writes are new
                # files, and an old checkpoint need not be hashed to be replaced.
                conditional = if_none_match or if_match is not None
                current = self.etag(key) if conditional else None
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"{target} exists (If-None-Match)")
                if if_match is not None and current != if_match:
                    raise PreconditionFailed(f"{target} changed (If-Match)")
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._os_error("write", target, exc) from None
        return _md5(data)

    def _os_error(self, action: str, path: Path, exc: OSError) -> JobError:
        why = exc.strerror or str(exc)
        if exc.errno in PERMANENT_ERRNOS:
            return ConfigError(self.variable, self.uri, f"a folder this job can {action} ({why})")
        return TransientError(f"cannot {action} {path}: {why}")

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        return self._write(key, data, if_match, if_none_match)

    def put_file(
        self, key: str, path: Path, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        return self._write(key, path.read_bytes(), if_match, if_none_match)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._os_error("read", self._path(key), exc) from None

    def etag(self, key: str) -> str | None:
        raw = self.get_bytes(key)
        return None if raw is None else _md5(raw)

    def get_if_changed(self, key: str, tag: str | None) -> tuple[bytes | None, str | None]:
        """(content, tag) when the object changed since `tag`, (None, tag) when it did not."""
        raw = self.get_bytes(key)
        if raw is None:
            return None, None
        current = _md5(raw)
        return (None, tag) if current == tag else (raw, current)

    def exists(self, key: str) -> bool:
        return self.etag(key) is not None

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        try:
            if if_match is None:
                path.unlink(missing_ok=True)
            else:
                with self._locked(path.parent):
                    if self.etag(key) != if_match:
                        raise PreconditionFailed(f"{path} changed (If-Match)")
                    path.unlink()
        except FileNotFoundError:
            if if_match is not None:
                raise PreconditionFailed(f"{path} is gone (If-Match)") from None
        except OSError as exc:
            raise self._os_error("delete", path, exc) from None
        # Folders exist only through their files, as in a bucket: drop the emptied ones.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def _listed(self, prefix: str, entries) -> list[str]:
        """`entries(base)` of the folder at `prefix` (the root when empty), sorted; nothing when
        the folder does not exist yet. A root that is a file is a wrong OUTPUT_URI, not an
        empty store."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            if self.root.exists() and not self.root.is_dir():
                raise ConfigError(self.variable, self.uri, "a folder (this is a file)")
            return sorted(entries(base)) if base.is_dir() else []
        except OSError as exc:
            raise self._os_error("list", base, exc) from None

    def list(self, prefix: str) -> list[str]:
        return self._listed(prefix, lambda base: (
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")  # a write in progress
        ))  # fmt: skip

    def children(self, prefix: str = "") -> list[str]:
        """The names of the folders directly under `prefix` (the run ids, at the root)."""
        # A symlinked folder is not a run of this store (prune must never follow one out).
        return self._listed(prefix, lambda base: (
            p.name
            for p in base.iterdir()
            if p.is_dir() and not p.is_symlink() and p.name[:1] != "."
        ))  # fmt: skip
