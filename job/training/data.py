"""Loading and validating MNIST-format data (IDX files or a Keras-layout .npz).

Where the data comes from, in order: DATA_URI (or WML's DATA_DIR), a `data/<dataset>` folder in
the working directory (what `make data` fills), the copy baked into the image, and last the
Keras download. An explicitly named source never falls back: a wrong DATA_URI is an error, not a
silent download.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from job.errors import DataError, TransientError
from job.runstore import layout
from job.runstore.layout import Location
from job.runstore.s3 import download_data

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
IDX_UBYTE = 0x08
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# Where the Docker image keeps its copy (docker/Dockerfile copies data/ here).
BAKED_DATA_ROOT = Path("/opt/mnist-job/data")
# The most bytes one array may hold: 16 times MNIST's training images (60,000 x 28 x 28, 47 MB).
# Larger sets in MNIST's format fit (EMNIST's largest split, 698k digits, is 547 MB); a header
# claiming more is corrupt or hostile, and is refused before anything that size is allocated or
# inflated (a 13 MB gzip file can inflate to 13 GB).
MAX_DATA_BYTES = 16 * 60_000 * 28 * 28
# An .npy member's own header (numpy's default limit for reading one) on top of its array.
MAX_NPY_HEADER = 10_000
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip
GZIP_MAGIC = b"\x1f\x8b"
# What people give in place of the data, by its first bytes: said, instead of a format error
# that points the wrong way.
OTHER_FILES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF-", "a PDF document"),
    (b"\x93NUMPY", "a single .npy array (an .npz holds the four arrays)"),
    (GZIP_MAGIC, "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file"),
)
HEAD_BYTES = 64  # enough to tell the formats above, and text
FOLDER_ENTRIES_SHOWN = 1000  # a folder's other entries are counted up to this
FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    x_train: np.ndarray  # uint8 (n, 28, 28)
    y_train: np.ndarray  # uint8 (n,)
    x_test: np.ndarray
    y_test: np.ndarray

    def limited(self, train_limit: int | None, test_limit: int | None) -> Dataset:
        """The first N examples of each split (smoke runs and tests)."""
        tr, te = slice(train_limit), slice(test_limit)
        return Dataset(
            self.name,
            self.source,
            self.x_train[tr],
            self.y_train[tr],
            self.x_test[te],
            self.y_test[te],
        )


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (a link to one is fine: data folders
    are often mounted links); anything else is a DataError naming it. Every data file the job
    reads is opened here.

    Opening a FIFO for reading waits for a writer (forever, when none comes) and a device may
    never end, so the open must not block: O_NONBLOCK makes it return at once, and fstat then
    tells what was opened (the file itself, not a name that could change in between)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        dangling = exc.errno == errno.ENOENT and os.path.islink(path)
        why = "a link to a missing file" if dangling else exc.strerror
        raise DataError(f"{path}: unreadable ({why})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in FILE_KINDS if test(mode)), "a special file")
            raise DataError(f"{path}: not a regular file ({kind})")
        os.set_blocking(fd, True)  # meaningless for a regular file; reads as usual from here
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_exactly(stream: BinaryIO, size: int, mismatch: str) -> bytes:
    """`size` bytes, reading one more to tell a longer stream: never more than that, since a
    compressed stream may inflate without end. `mismatch` begins the error otherwise."""
    body = stream.read(size + 1)
    if len(body) != size:
        found = "more" if len(body) > size else f"{len(body)} bytes"
        raise DataError(f"{mismatch}, the data has {found}")
    return body


def read_idx(stream: BinaryIO, *, name: str, ndim: int, file_size: int | None = None) -> np.ndarray:
    """Decode one IDX (ubyte) array from `stream`, checking the magic number, rank and exact
    length. The size the header claims is checked (against `file_size` when known, and against
    MAX_DATA_BYTES) before the body is read, so a hostile header costs nothing."""
    dims, claimed = _idx_header(stream, name=name, ndim=ndim, file_size=file_size)
    body = _read_exactly(stream, math.prod(dims), f"{name}: IDX size mismatch: {claimed}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_header(
    stream: BinaryIO, *, name: str, ndim: int, file_size: int | None
) -> tuple[tuple[int, ...], str]:
    """An IDX header's dimensions, checked as read_idx says, and what it claims (for errors)."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != IDX_UBYTE:
        raise DataError(f"{name}: not an IDX ubyte file (bad magic number {magic.hex()!r})")
    if magic[3] != ndim:
        raise DataError(f"{name}: expected an IDX array of rank {ndim}, found rank {magic[3]}")
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(raw_dims[4 * i : 4 + 4 * i], "big") for i in range(ndim))
    header = 4 + 4 * ndim
    size = math.prod(dims)  # Python ints: a hostile header cannot overflow
    claimed = f"header says {dims} ({header + size} bytes)"
    if file_size is not None and file_size != header + size:
        raise DataError(f"{name}: IDX size mismatch: {claimed}, file has {file_size}")
    # Labels are one byte per image: a label file may claim no more labels than images fit.
    most = MAX_DATA_BYTES if ndim > 1 else MAX_DATA_BYTES // math.prod(IMAGE_SHAPE)
    if size > most:
        raise DataError(f"{name}: {claimed}, more than a data file may hold ({most} bytes)")
    return dims, claimed


def parse_idx(raw: bytes, *, name: str, ndim: int) -> np.ndarray:
    """Decode one IDX (ubyte) array held in memory (see read_idx)."""
    return read_idx(io.BytesIO(raw), name=name, ndim=ndim, file_size=len(raw))


def validate(arrays: dict[str, np.ndarray], source: str) -> None:
    """Shapes, dtype, label range and matching counts; raises DataError naming the culprit."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataError(f"{source}: {split} arrays must be uint8, got {x.dtype}/{y.dtype}")
        if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{source}: {split} images must be (n, 28, 28), got {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{source}: {split} labels must be one-dimensional, got {y.shape}")
        if len(x) != len(y):
            raise DataError(
                f"{source}: {split} has {len(x)} images but {len(y)} labels (counts must match)"
            )
        if len(y) == 0:
            raise DataError(f"{source}: {split} split is empty")
        if int(y.max()) >= N_CLASSES:
            raise DataError(
                f"{source}: {split} label {int(y.max())} out of range (expected 0-{N_CLASSES - 1})"
            )


@contextlib.contextmanager
def _idx_stream(path: Path) -> Iterator[tuple[BinaryIO, int | None]]:
    """An IDX file's bytes as a stream (inflated for `.gz`) and its size, when known; a read
    that fails in it (a truncated or corrupt gzip stream) is a DataError naming the file."""
    try:
        with open_regular(path) as fh:
            if path.suffix != ".gz":
                yield fh, os.fstat(fh.fileno()).st_size
                return
            with gzip.GzipFile(fileobj=fh, mode="rb") as inflated:
                yield inflated, None  # known only once inflated: read_idx bounds it instead
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _idx_files(folder: Path, idx: list[Path]) -> Iterator[tuple[str, Path, int]]:
    """Each array's key, the IDX file it is read from (of `idx`, the folder's IDX files as
    _data_files lists them: plain before .gz) and its rank, in IDX_FILES order; a missing one is
    a DataError when its turn comes, so the loader and in_place fail on the same file first."""
    names = {p.name for p in idx}
    for key, stem in IDX_FILES.items():
        name = next((n for n in (stem, f"{stem}.gz") if n in names), None)
        if name is None:
            raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")
        yield key, folder / name, 3 if key.startswith("x") else 1


def read_idx_dir(folder: Path, idx: list[Path] | None = None) -> dict[str, np.ndarray]:
    """The four arrays of a folder of IDX files (`idx`: its IDX files, when already listed)."""
    arrays = {}
    for key, path, ndim in _idx_files(folder, _data_files(folder)[1] if idx is None else idx):
        with _idx_stream(path) as (stream, size):
            arrays[key] = read_idx(stream, name=str(path), ndim=ndim, file_size=size)
    return arrays


def _npz_key(member: str) -> str:
    return member.removesuffix(".npy")  # np.savez's names, as np.load lists them


def _npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """One .npy array of an .npz: its header read and checked (uint8, the size it claims
    against MAX_DATA_BYTES and against the size the zip declares) before its data is read.
    np.load would allocate whatever a header claims, and unpickle object arrays."""
    if info.file_size > MAX_NPY_HEADER + MAX_DATA_BYTES:
        raise DataError(f"{name}: the archive declares {info.file_size} bytes, more than a data "
                        f"file may hold ({MAX_DATA_BYTES} bytes)")  # fmt: skip
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member, MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member, MAX_NPY_HEADER)
        else:
            raise DataError(f"{name}: .npy format version {version} is not supported")
        if dtype != np.uint8:
            raise DataError(f"{name}: holds {dtype} data, expected uint8")
        if any(d < 0 for d in shape):  # numpy's header parser lets them through
            raise DataError(f"{name}: header says shape {shape}")
        size = math.prod(shape)
        claimed = f"header says shape {shape} ({size} bytes)"
        if size > MAX_DATA_BYTES:
            raise DataError(f"{name}: {claimed}, more than a data file may hold "
                            f"({MAX_DATA_BYTES} bytes)")  # fmt: skip
        if info.file_size != member.tell() + size:
            raise DataError(f"{name}: size mismatch: {claimed}, the archive declares "
                            f"{info.file_size - member.tell()} bytes of data")  # fmt: skip
        body = _read_exactly(member, size, f"{name}: size mismatch: {claimed}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")


WANTED = (
    f"a folder of IDX files ({', '.join(IDX_FILES.values())}, each optionally .gz) "
    "or an .npz archive in Keras's mnist.npz layout"
)


def _check_head(path: Path, fh: BinaryIO) -> None:
    """`fh` (at its start) begins as an .npz archive does; otherwise a DataError saying what the
    file is instead (an image, one IDX file, text...) and what DATA_URI should name."""
    head = fh.read(HEAD_BYTES)
    if head[:4] in ZIP_MAGICS:
        return
    idx = bytes([0, 0, IDX_UBYTE])
    if head.startswith(idx) or (head.startswith(GZIP_MAGIC) and _gzipped(fh, idx)):
        raise DataError(
            f"{path}: one IDX file is not a data set: DATA_URI names the folder holding "
            f"all four ({', '.join(IDX_FILES.values())}), or an .npz archive"
        )
    kind = next((name for magic, name in OTHER_FILES if head.startswith(magic)), None)
    if kind is None and len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        kind = "a Python pickle"  # protocol 2 and later: np.save's object arrays, torch files
    if kind is None and head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        kind = "a text file"
    if kind is None:
        kind = f"begins {head[:4].hex()!r}" if head else "empty"
        raise DataError(f"{path}: not an .npz archive or IDX file ({kind}); expected {WANTED}")
    raise DataError(f"{path}: not an .npz archive or IDX file: {kind}; expected {WANTED}")


def _gzipped(fh: BinaryIO, magic: bytes) -> bool:
    """A gzip stream whose content begins with `magic` (a few bytes inflated, no more)."""
    fh.seek(0)
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as inflated:
            return inflated.read(len(magic)) == magic
    except (OSError, EOFError, zlib.error):
        return False


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A Keras-layout .npz (x_train, y_train, x_test, y_test), read member by member."""
    with open_regular(path) as fh:
        _check_head(path, fh)
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as archive:
                members = {_npz_key(i.filename): i for i in archive.infolist()}
                missing = [k for k in IDX_FILES if k not in members]
                if missing:
                    raise DataError(f"{path}: .npz lacks arrays {missing} (Keras mnist.npz layout)")
                return {k: _npy_member(archive, members[k], f"{path}: {k}") for k in IDX_FILES}
        except (
            OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, zlib.error,
        ) as exc:  # fmt: skip
            # A truncated, corrupt or encrypted archive fails in ZipFile or only when a member
            # is read (its CRC is checked at its end).
            raise DataError(
                f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})"
            ) from None


def read_local(path: Path) -> dict[str, np.ndarray]:
    """A folder of IDX files, a folder holding `<dataset>.npz`/`mnist.npz`, or an .npz file."""
    if not path.is_dir():  # a FIFO or device too: read_npz says what it is
        return read_npz(path)
    npz, idx, _ = _data_files(path)
    if npz and not idx:
        return read_npz(npz[0])
    return read_idx_dir(path, idx)


def _data_files(folder: Path) -> tuple[list[Path], list[Path], int]:
    """The .npz archives and the IDX files (plain or .gz) in `folder`, by name only (a link,
    FIFO or folder of such a name is listed: opening it says what it is), sorted, and how many
    other entries it holds, counted up to FOLDER_ENTRIES_SHOWN + 1. A folder that cannot be
    listed is a DataError naming it."""
    wanted = {n for s in IDX_FILES.values() for n in (s, f"{s}.gz")}
    npz, idx, others = [], [], 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in wanted:
                    idx.append(folder / entry.name)
                elif entry.name.endswith(".npz") and not entry.name.startswith("."):
                    npz.append(folder / entry.name)  # as glob("*.npz") did: no hidden files
                else:
                    others = min(others + 1, FOLDER_ENTRIES_SHOWN + 1)
    except OSError as exc:
        raise DataError(f"{folder}: unreadable folder ({exc.strerror})") from None
    return sorted(npz), sorted(idx), others


def in_place(path: Path) -> str:
    """What `load` reads at `path` is there and of the right kind, told without reading the
    data: the file(s) the loader would read are opened as it opens them (regular files, a link
    to one is fine) and their heads checked as it checks them (an .npz archive's first bytes;
    each of the four IDX files' header, magic number, rank and, uncompressed, size), with the
    loader's messages. Costs a folder listing, four opens and a few bytes read from each:
    `train` runs it before TensorFlow loads and before any run folder is written
    (job.check.before_training). A DataError (65) names what was looked for, or what is
    there instead."""
    try:
        is_folder = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.lexists(path):
            raise DataError(f"DATA_URI={str(path)!r}: no such file or folder") from None
        is_folder = False  # a dangling link, or a folder above it not entered: open_regular says
    if not is_folder:
        _npz_head(path)
        return f"{path}: an .npz archive"
    npz, idx, others = _data_files(path)
    if npz and not idx:
        _npz_head(npz[0])
        return f"{path}: {npz[0].name}"
    if not idx:
        shown = f"over {FOLDER_ENTRIES_SHOWN}" if others > FOLDER_ENTRIES_SHOWN else str(others)
        holds = f"it holds {shown} other entries" if others else "it is empty"
        raise DataError(f"{path}: no MNIST-format file ({holds}): looked for {WANTED}")
    for _, file, ndim in _idx_files(path, idx):
        with _idx_stream(file) as (stream, size):
            _idx_header(stream, name=str(file), ndim=ndim, file_size=size)
    return f"{path}: {len(IDX_FILES)} IDX files"


def _npz_head(path: Path) -> None:
    """`path` is a regular file beginning as an .npz archive does (else read_npz's DataError)."""
    with open_regular(path) as fh:
        _check_head(path, fh)


def _keras_download(dataset: str) -> dict[str, np.ndarray]:
    import keras

    loader = getattr(keras.datasets, dataset)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as exc:  # the Keras loader raises whatever urllib raised: the network
        raise TransientError(
            f"no local {dataset} data (set DATA_URI or run `make data`) and the Keras download "
            f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def local_candidates(dataset: str) -> list[Path]:
    return [Path("data") / dataset, BAKED_DATA_ROOT / dataset]


def locate(dataset: str, data_uri: str | None) -> Location | Path | None:
    """Where a run reads its data, decided here only: DATA_URI (a bucket prefix, or a local
    file or folder, which never falls back), else the first of `local_candidates` that exists,
    else None: the Keras download."""
    if data_uri:
        location = layout.parse("DATA_URI", data_uri)
        return location if location.is_bucket else Path(location.path)
    return next((p for p in local_candidates(dataset) if p.exists()), None)


def load(dataset: str, path: Path | str | None) -> Dataset:
    """Read and validate the dataset at `path` (a file or folder; None: the Keras download);
    raises DataError with the file and the problem."""
    if path is None:
        arrays, source = _keras_download(dataset), f"keras.datasets.{dataset}"
    else:
        path = Path(path)
        in_place(path)
        arrays, source = read_local(path), str(path)
    validate(arrays, source)
    return Dataset(dataset, source, **arrays)


def configured(config, scratch: Path) -> Dataset:
    """The dataset a run of `config` trains on (job.config.Config), from where `locate` says;
    a DATA_URI in a bucket is copied to `scratch` first."""
    where = locate(config.training.dataset, config.data_uri)
    if not isinstance(where, Location):
        return load(config.training.dataset, where)
    local = download_data(config.storage, where, scratch / "data")
    try:
        return replace(load(config.training.dataset, local), source=where.uri)
    except DataError as exc:  # name the object, not the scratch copy
        raise DataError(str(exc).replace(str(local), where.uri)) from None


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` as an IDX ubyte file (the inverse of parse_idx)."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, IDX_UBYTE, array.ndim]) + dims + array.astype(np.uint8).tobytes()


# --- digests of the data, each for its own question ---
# arrays_sha256: did a resumed run train on the same data (the checkpoint's DATA_SHA256)?
# test_set_sha256: are two runs' accuracies comparable (champions)?
# idx_sha256: is this the original file (`check`, against job.training.fetch.SHA256)?
# They stay separate because each is recorded in runs already published: changing one would
# make every earlier run look different.


def arrays_sha256(*arrays: np.ndarray) -> str:
    """One digest of the arrays' bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def test_set_sha256(ds: Dataset) -> str:
    """A digest of the test split as evaluated (images, then labels): two runs' accuracies are
    comparable only when theirs agree (job.runstore.champion)."""
    return arrays_sha256(ds.x_test, ds.y_test)


def idx_sha256(array: np.ndarray) -> str:
    """SHA-256 of `array` written as an IDX ubyte file: the digest of the original file,
    whatever form (IDX, .gz, .npz, a bucket copy) it was read from."""
    return hashlib.sha256(idx_bytes(array)).hexdigest()
