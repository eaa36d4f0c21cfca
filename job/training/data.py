"""Loading and validating MNIST-format data (IDX files or a Keras-layout .npz).

Where the data comes from, in order: DATA_URI (or WML's DATA_DIR), a `data/<dataset>` folder in
the working directory (what `make data` fills), the copy baked into the image, and last the
Keras download. An explicitly named source never falls back: a wrong DATA_URI is an error, not a
silent download.
"""

from __future__ import annotations

import contextlib
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
        raise DataError(f"{path}: unreadable ({exc.strerror})") from None
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
    body = _read_exactly(stream, size, f"{name}: IDX size mismatch: {claimed}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


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
    """An IDX file's bytes as a stream (inflated for `.gz`) and its size, when known."""
    with open_regular(path) as fh:
        if path.suffix != ".gz":
            yield fh, os.fstat(fh.fileno()).st_size
            return
        with gzip.GzipFile(fileobj=fh, mode="rb") as inflated:
            yield inflated, None  # known only once inflated: read_idx bounds it instead


def read_idx_dir(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        # exists(), not is_file(): a FIFO or folder of that name is reported as what it is.
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")
        ndim = 3 if key.startswith("x") else 1
        try:
            with _idx_stream(path) as (stream, size):
                arrays[key] = read_idx(stream, name=str(path), ndim=ndim, file_size=size)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
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


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A Keras-layout .npz (x_train, y_train, x_test, y_test), read member by member."""
    with open_regular(path) as fh:
        head = fh.read(4)
        if head.startswith(bytes([0, 0, IDX_UBYTE])):
            raise DataError(
                f"{path}: one IDX file is not a data set: DATA_URI names the folder holding "
                f"all four ({', '.join(IDX_FILES.values())}), or an .npz archive"
            )
        if head not in ZIP_MAGICS:
            begins = f"begins {head.hex()!r}" if head else "empty"
            raise DataError(f"{path}: not an .npz archive or IDX file ({begins})")
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
    npz = sorted(path.glob("*.npz"))
    has_idx = any((path / s).exists() or (path / f"{s}.gz").exists() for s in IDX_FILES.values())
    if npz and not has_idx:
        return read_npz(npz[0])
    return read_idx_dir(path)


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
        if not path.exists():
            raise DataError(f"DATA_URI={str(path)!r}: no such file or folder")
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
