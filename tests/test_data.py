import gzip

import numpy as np
import pytest

from job.errors import DataError
from job.runstore import layout
from job.training import data

# Figures for real MNIST from DESIGN.md.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx_dir(folder, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        (folder / stem).write_bytes(data.idx_bytes(arrays[key]))


def test_real_mnist_is_the_real_thing(mnist_dir):
    ds = data.load("mnist", str(mnist_dir))
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == TEST_COUNTS
    assert ds.x_train.mean() == pytest.approx(33.318, abs=1e-3)


def test_limited_takes_the_first_examples(mnist_dir):
    ds = data.load("mnist", str(mnist_dir))
    small = ds.limited(100, 20)
    assert len(small.y_train) == 100 and len(small.y_test) == 20
    assert np.array_equal(small.x_train, ds.x_train[:100])


def test_npz_and_gzip_layouts_load_the_same_arrays(mnist_dir, tmp_path):
    ds = data.load("mnist", str(mnist_dir)).limited(50, 10)
    arrays = {k: getattr(ds, k) for k in data.IDX_FILES}
    np.savez(tmp_path / "mnist.npz", **arrays)
    gz = tmp_path / "gz"
    gz.mkdir()
    for key, stem in data.IDX_FILES.items():
        (gz / f"{stem}.gz").write_bytes(gzip.compress(data.idx_bytes(arrays[key])))
    file_uri = layout.parse("DATA_URI", f"file://{gz}").path
    for source in (tmp_path / "mnist.npz", gz, file_uri):
        loaded = data.load("mnist", str(source))
        assert all(np.array_equal(getattr(loaded, k), arrays[k]) for k in data.IDX_FILES)


def test_parse_idx_checks_magic_rank_and_length():
    good = data.idx_bytes(np.zeros((2, 28, 28), np.uint8))
    assert data.parse_idx(good, name="f", ndim=3).shape == (2, 28, 28)
    with pytest.raises(DataError, match="bad magic"):
        data.parse_idx(b"\x00\x00\x0d\x03" + good[4:], name="f", ndim=3)
    with pytest.raises(DataError, match="rank"):
        data.parse_idx(good, name="f", ndim=1)
    with pytest.raises(DataError, match="size mismatch"):
        data.parse_idx(good[:-5], name="f", ndim=3)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.update(y_train=a["y_train"][:-1]), "counts must match"),
        (lambda a: a.update(y_test=np.full_like(a["y_test"], 10)), "out of range"),
        (lambda a: a.update(x_train=np.zeros((5, 32, 32), np.uint8)), r"\(n, 28, 28\)"),
    ],
)
def test_validate_names_the_problem(mutate, message):
    arrays = {
        "x_train": np.zeros((5, 28, 28), np.uint8),
        "y_train": np.arange(5, dtype=np.uint8),
        "x_test": np.zeros((3, 28, 28), np.uint8),
        "y_test": np.arange(3, dtype=np.uint8),
    }
    data.validate(arrays, "src")
    mutate(arrays)
    with pytest.raises(DataError, match=message):
        data.validate(arrays, "src")


def test_explicit_missing_source_never_falls_back(tmp_path):
    with pytest.raises(DataError, match="DATA_URI"):
        data.load("mnist", str(tmp_path / "nowhere"))


def test_missing_idx_file_is_named(tmp_path, mnist_dir):
    write_idx_dir(
        tmp_path,
        {k: getattr(data.load("mnist", str(mnist_dir)).limited(5, 5), k) for k in data.IDX_FILES},
    )
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load("mnist", str(tmp_path))
