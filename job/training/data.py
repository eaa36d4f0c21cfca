"""Loading and validating MNIST-format data (IDX files or a Keras-layout .npz).

Where the data comes from, in order: DATA_URI (or WML's DATA_DIR), a `data/<dataset>` folder in
the working directory (what `make data` fills), the copy baked into the image, and last the
Keras download. An explicitly named source never falls back: a wrong DATA_URI is an error, not a
silent download.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

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


def parse_idx(raw: bytes, *, name: str, ndim: int) -> np.ndarray:
    """Decode one IDX (ubyte) array, checking the magic number, rank and exact length."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise DataError(f"{name}: not an IDX ubyte file (bad magic number {raw[:4].hex()!r})")
    if raw[3] != ndim:
        raise DataError(f"{name}: expected an IDX array of rank {ndim}, found rank {raw[3]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: a hostile header cannot overflow
    if len(raw) != expected:
        raise DataError(
            f"{name}: IDX size mismatch: header says {dims} ({expected} bytes), file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


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


def _read(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_idx_dir(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")
        try:
            raw = _read(path)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
        arrays[key] = parse_idx(raw, name=str(path), ndim=3 if key.startswith("x") else 1)
    return arrays


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in IDX_FILES if k not in npz.files]
            if missing:
                raise DataError(f"{path}: .npz lacks arrays {missing} (Keras mnist.npz layout)")
            return {k: npz[k] for k in IDX_FILES}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        # A truncated, empty or corrupt archive fails in np.load or only when an array is read.
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def read_local(path: Path) -> dict[str, np.ndarray]:
    """A folder of IDX files, a folder holding `<dataset>.npz`/`mnist.npz`, or an .npz file."""
    if path.is_file():
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
