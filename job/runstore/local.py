"""A run store in a local folder (or a mounted bucket folder, as WML's RESULT_DIR).

The folder is as untrusted as a bucket: anyone who can write to it can plant a link. So below
the root nothing is ever reached through a link: every path is walked one component at a time
from a descriptor of the root, each folder opened with O_NOFOLLOW, each file opened, created,
renamed and removed relative to its folder's descriptor. A link where a folder or file of the
store should be is refused (DataError, 65, naming it) for reads, writes and deletes; listings
skip it with a warning. The root itself may be a link (a mounted volume often is): it is
resolved once, when the store is opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from job import logs
from job.errors import ConfigError, DataError, JobError, PreconditionFailed, TransientError

# errno values a retry cannot fix: the folder is wrong, not busy.
PERMANENT_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
    errno.ENOENT, errno.EEXIST, errno.EINVAL, errno.ELOOP,
}  # fmt: skip
# Published results hold no secret (config is redacted before it is written), and the person
# who ran `docker run -v "$PWD/runs:/runs"` must be able to read them without root.
FILE_MODE, FOLDER_MODE = 0o644, 0o755
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks


class _Vanished(Exception):
    """The folder being written was removed (emptied by a concurrent delete) under us."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore:
    """A folder on local disk (or a mounted bucket folder, as WML's RESULT_DIR).

    Writes are atomic (a temporary file renamed into place) and serialised per folder with an
    advisory lock on the folder itself, so a conditional write compares and replaces in one
    step. ETags are the content's MD5, as S3's for a single-part upload.
    """

    def __init__(self, root: Path, variable: str = "OUTPUT_URI") -> None:
        self.uri = str(root)
        self.root = Path(os.path.realpath(root))  # the root may be a link: resolved once
        self.variable = variable
        self.log = logs.get("job.store")

    # --- walking without links ---

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        # Keys come from job.runstore.layout; this is the last line of defence for the file system.
        if any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise ValueError(f"key {key!r} leaves {self.root}")
        return parts

    def _linked(self, path: Path, action: str) -> DataError:
        return DataError(f"{path}: a link inside the store; refusing to {action} through it")

    def _open_root(self, create: bool) -> int | None:
        if create:
            try:
                os.makedirs(self.root, mode=FOLDER_MODE, exist_ok=True)
            except OSError as exc:
                raise self._os_error("write", self.root, exc) from None
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise ConfigError(self.variable, self.uri, "a folder (this is a file)") from None
        except OSError as exc:
            raise self._os_error("open", self.root, exc) from None

    @contextlib.contextmanager
    def _folder(self, parts: list[str], action: str, create: bool = False) -> Iterator[int | None]:
        """A descriptor of the folder `parts` below the root, reached without following a link;
        None when it does not exist (and `create` is false). Folders made are 0755."""
        fd = self._open_root(create)
        path = self.root
        try:
            for part in parts:
                if fd is None:
                    break
                path = path / part
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        fd = None
                        break
                    with contextlib.suppress(FileExistsError):  # made meanwhile: fine
                        os.mkdir(part, FOLDER_MODE, dir_fd=fd)
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and self._is_link(fd, part):
                        raise self._linked(path, action) from None
                    if exc.errno == errno.ENOTDIR and not create:  # a file where a folder was
                        os.close(fd)
                        fd = None
                        break
                    raise
                os.close(fd)
                fd = child
            yield fd
        except OSError as exc:
            raise self._os_error(action, path, exc) from None
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _is_link(dir_fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    # --- reading ---

    def _open(self, key: str) -> tuple[BinaryIO, int] | None:
        """The object at `key` open for reading, with its size; None when there is none. A
        link is refused, and so is anything but a regular file (a FIFO never blocks)."""
        *folder, name = self._parts(key)
        path = self._path(key)
        with self._folder(folder, "read") as fd:
            if fd is None:
                return None
            try:
                file = os.open(name, READ_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._linked(path, "read") from None
                raise self._os_error("read", path, exc) from None
        fh = os.fdopen(file, "rb")
        info = os.fstat(file)
        if stat.S_ISREG(info.st_mode):
            return fh, info.st_size
        fh.close()
        if stat.S_ISDIR(info.st_mode):
            return None  # a folder is not an object (as in a bucket)
        raise DataError(f"{path}: not a regular file")

    def _read(self, key: str, limit: int) -> bytes | None:
        opened = self._open(key)
        if opened is None:
            return None
        fh, size = opened
        with fh:
            if size > limit:
                raise DataError(f"{self._path(key)}: {size} bytes, more than the {limit} expected")
            data = fh.read(limit + 1)
        if len(data) > limit:  # grew while read
            raise DataError(f"{self._path(key)}: more than the {limit} bytes expected")
        return data

    def get_bytes(self, key: str, *, limit: int) -> bytes | None:
        return self._read(key, limit)

    def etag(self, key: str) -> str | None:
        """The content's MD5, streamed: any size costs no memory (a huge planted lease is
        still replaced, not a reason to stop)."""
        opened = self._open(key)
        if opened is None:
            return None
        with opened[0] as fh:
            return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()

    def get_if_changed(
        self, key: str, tag: str | None, *, limit: int
    ) -> tuple[bytes | None, str | None]:
        """(content, tag) when the object changed since `tag`, (None, tag) when it did not."""
        raw = self._read(key, limit)
        if raw is None:
            return None, None
        current = _md5(raw)
        return (None, tag) if current == tag else (raw, current)

    def exists(self, key: str) -> bool:
        *folder, name = self._parts(key)
        with self._folder(folder, "read") as fd:
            if fd is None:
                return False
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return False
        if stat.S_ISLNK(info.st_mode):
            raise self._linked(self._path(key), "read")
        return stat.S_ISREG(info.st_mode)

    # --- writing ---

    @contextlib.contextmanager
    def _locked(self, fd: int):
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        yield

    def _write(self, key: str, data: bytes, if_match: str | None, if_none_match: bool) -> str:
        # A concurrent delete removes a folder it empties (as a bucket has no empty folders):
        # between our mkdir and our write the folder can vanish. That is a race, not a wrong
        # OUTPUT_URI: try again.
        for _ in range(5):
            try:
                return self._write_once(key, data, if_match, if_none_match)
            except _Vanished:
                continue
        path = self._path(key)
        if path.parent.is_dir():
            # The folder is there and still no file can be made in it (/proc/self): the path
            # is wrong, not busy.
            raise ConfigError(self.variable, self.uri, "a folder this job can write")
        raise TransientError(f"cannot write {path}: its folder keeps disappearing")

    def _write_once(self, key: str, data: bytes, if_match: str | None, if_none_match: bool) -> str:
        *folder, name = self._parts(key)
        path = self._path(key)
        with self._folder(folder, "write", create=True) as fd, self._locked(fd):  # type: ignore[arg-type]
            try:
                if self._is_link(fd, name):  # type: ignore[arg-type]
                    raise self._linked(path, "write")
                # Read the current version only when a condition needs it: most writes are new
                # files, and an old checkpoint need not be hashed to be replaced.
                if if_none_match or if_match is not None:
                    current = self.etag(key)
                    if if_none_match and current is not None:
                        raise PreconditionFailed(f"{path} exists (If-None-Match)")
                    if if_match is not None and current != if_match:
                        raise PreconditionFailed(f"{path} changed (If-Match)")
                tmp = f".{name}.{secrets.token_hex(6)}"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    out = os.open(tmp, flags, FILE_MODE, dir_fd=fd)
                except FileNotFoundError:
                    raise _Vanished from None
                try:
                    with os.fdopen(out, "wb") as fh:
                        fh.write(data)
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=fd)
                    raise
            except OSError as exc:
                raise self._os_error("write", path, exc) from None
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

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        *folder, name = self._parts(key)
        path = self._path(key)
        with self._folder(folder, "delete") as fd:
            if fd is None:
                if if_match is not None:
                    raise PreconditionFailed(f"{path} is gone (If-Match)")
                return
            with self._locked(fd):
                if self._is_link(fd, name):
                    raise self._linked(path, "delete")
                if if_match is not None and self.etag(key) != if_match:
                    raise PreconditionFailed(f"{path} changed or is gone (If-Match)")
                try:
                    os.unlink(name, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    if if_match is not None:
                        raise PreconditionFailed(f"{path} is gone (If-Match)") from None
                except OSError as exc:
                    raise self._os_error("delete", path, exc) from None
        # Folders exist only through their files, as in a bucket: drop the emptied ones, from
        # the deepest up, each relative to its parent's descriptor; never the root.
        for depth in range(len(folder), 0, -1):
            with self._folder(folder[: depth - 1], "delete") as parent:
                if parent is None:
                    return
                try:
                    os.rmdir(folder[depth - 1], dir_fd=parent)
                except OSError:
                    return  # not empty (or a link, which rmdir never follows)

    # --- listing ---

    def _entries(self, fd: int, path: Path) -> Iterator[tuple[str, os.DirEntry]]:
        for entry in os.scandir(fd):
            if entry.name.startswith("."):
                continue  # a write in progress, a probe
            if entry.is_symlink():
                self.log.warning("link_skipped", path=str(path / entry.name))
                continue
            yield entry.name, entry

    def _walk(self, fd: int, path: Path, prefix: str) -> Iterator[str]:
        for name, entry in self._entries(fd, path):
            if entry.is_file(follow_symlinks=False):
                yield prefix + name
            elif entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # replaced or removed since the scan
                try:
                    yield from self._walk(child, path / name, f"{prefix}{name}/")
                finally:
                    os.close(child)

    def _listed(self, prefix: str, entries) -> list[str]:
        """`entries(fd, path, prefix)` of the folder at `prefix` (the root when empty), sorted;
        nothing when the folder does not exist yet."""
        parts = self._parts(prefix.rstrip("/")) if prefix.strip("/") else []
        with self._folder(parts, "list") as fd:
            if fd is None:
                return []
            path = self.root.joinpath(*parts)
            key_prefix = "/".join(parts) + "/" if parts else ""
            try:
                return sorted(entries(fd, path, key_prefix))
            except OSError as exc:
                raise self._os_error("list", path, exc) from None

    def list(self, prefix: str) -> list[str]:
        return self._listed(prefix, self._walk)

    def children(self, prefix: str = "") -> list[str]:
        """The names of the folders directly under `prefix` (the run ids, at the root)."""
        return self._listed(prefix, lambda fd, path, _: (
            name for name, entry in self._entries(fd, path) if entry.is_dir(follow_symlinks=False)
        ))  # fmt: skip
