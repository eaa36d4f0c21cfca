"""Data files are regular files, read within bounds (issue 21, mechanism 3).

Every data file the job reads (IDX, gzipped IDX, a Keras-layout .npz, predict's images) is
checked to be a regular file without blocking, and no header can make the job allocate or
inflate more than job.training.data.MAX_DATA_BYTES: anything else is exit 65 naming the file.
The claims about hangs and memory run the job in a subprocess, whose timeout is only a guard
against a hang; the rest call job.training.data directly.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from job.errors import EXIT_DATA, DataError
from job.training import data
from tests.support.jobs import job_env, run_job
from tests.test_data import TEST_COUNTS, TRAIN_COUNTS, write_idx_dir

HANG_GUARD = 300  # seconds: only a test that would otherwise hang for ever ever reaches it
FIFO_MESSAGE = "not a regular file (a FIFO)"


def small_arrays(mnist_dir: Path, n_train: int = 50, n_test: int = 10) -> dict[str, np.ndarray]:
    ds = data.load("mnist", mnist_dir).limited(n_train, n_test)
    return {k: getattr(ds, k) for k in data.IDX_FILES}


# --- regular files only --------------------------------------------------------------------------


def fifo_npz_file(folder: Path, arrays) -> tuple[Path, Path]:
    """DATA_URI names a FIFO called mnist.npz."""
    os.mkfifo(folder / "mnist.npz")
    return folder / "mnist.npz", folder / "mnist.npz"


def fifo_npz_in_folder(folder: Path, arrays) -> tuple[Path, Path]:
    """A FIFO named mnist.npz in the data folder (finding H4: `train` and `check` hung)."""
    os.mkfifo(folder / "mnist.npz")
    return folder, folder / "mnist.npz"


def fifo_idx_in_folder(folder: Path, arrays) -> tuple[Path, Path]:
    """Three IDX files and a FIFO in place of the fourth."""
    write_idx_dir(folder, arrays)
    labels = folder / data.IDX_FILES["y_test"]
    labels.unlink()
    os.mkfifo(labels)
    return folder, labels


def fifo_gz_in_folder(folder: Path, arrays) -> tuple[Path, Path]:
    write_idx_dir(folder, arrays)
    images = folder / data.IDX_FILES["x_train"]
    images.unlink()
    os.mkfifo(images.with_name(images.name + ".gz"))
    return folder, images.with_name(images.name + ".gz")


FIFO_CASES = [
    ("check", fifo_npz_in_folder),
    ("check", fifo_npz_file),
    ("check", fifo_idx_in_folder),
    ("check", fifo_gz_in_folder),
    ("train", fifo_npz_in_folder),
    ("train", fifo_npz_file),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "layout"), FIFO_CASES, ids=[f"{c}-{f.__name__}" for c, f in FIFO_CASES]
)
def test_a_fifo_among_the_data_is_a_data_error_not_a_hang(command, layout, tmp_path, mnist_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    data_uri, fifo = layout(folder, small_arrays(mnist_dir))
    env = job_env(
        DATA_URI=str(data_uri), OUTPUT_URI=str(tmp_path / "out"), RUN_ID="fifo", EPOCHS="1"
    )
    proc = run_job(command, env=env, cwd=tmp_path, timeout=HANG_GUARD)
    assert proc.returncode == EXIT_DATA, proc.stdout + proc.stderr[-2000:]
    if command == "check":
        rows = {row["check"]: row for row in map(json.loads, proc.stdout.splitlines())}
        assert f"{fifo}: {FIFO_MESSAGE}" in rows["data"]["detail"], rows
    else:
        assert f"error: {fifo}: {FIFO_MESSAGE}" in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "out").exists(), "found before any run folder is written"


@pytest.mark.slow
def test_a_fifo_image_is_a_data_error_for_predict_not_a_hang(tmp_path):
    """The images are read before the model: the garbage model file is never reached."""
    (tmp_path / "m.keras").write_text("never read")
    os.mkfifo(tmp_path / "digit.png")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    proc = run_job(
        "predict", str(tmp_path / "m.keras"), str(tmp_path / "digit.png"),
        env=env, cwd=tmp_path, timeout=HANG_GUARD,
    )  # fmt: skip
    assert proc.returncode == EXIT_DATA, proc.stderr[-2000:]
    assert f"error: {tmp_path / 'digit.png'}: {FIFO_MESSAGE}" in proc.stderr, proc.stderr[-2000:]


def test_a_folder_or_device_in_place_of_a_data_file_is_named(tmp_path, mnist_dir):
    write_idx_dir(tmp_path / "idx", small_arrays(mnist_dir))
    labels = tmp_path / "idx" / data.IDX_FILES["y_train"]
    labels.unlink()
    labels.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{labels}: not a regular file (a folder)")):
        data.load("mnist", tmp_path / "idx")
    with pytest.raises(DataError, match="/dev/zero: not a regular file \\(a character device\\)"):
        data.load("mnist", "/dev/zero")


def test_make_data_names_a_fifo_where_a_data_file_belongs(tmp_path, mnist_dir):
    """`make data` checks what is there before fetching: a FIFO would block the check and
    cannot be replaced by the verified file."""
    from job.training import fetch

    for stem in data.IDX_FILES.values():
        (tmp_path / stem).symlink_to(mnist_dir / stem)
    assert fetch.verified(tmp_path), "linked files verify like the files"
    (tmp_path / data.IDX_FILES["x_test"]).unlink()
    os.mkfifo(tmp_path / data.IDX_FILES["x_test"])
    with pytest.raises(DataError, match=re.escape(f"{data.IDX_FILES['x_test']}: {FIFO_MESSAGE}")):
        fetch.verified(tmp_path)


def test_links_to_regular_files_are_data_like_the_files(tmp_path, mnist_dir):
    """Data folders are often mounted links: a linked folder, a linked .npz, linked IDX files."""
    arrays = small_arrays(mnist_dir)
    np.savez(tmp_path / "real.npz", **arrays)
    (tmp_path / "mnist.npz").symlink_to(tmp_path / "real.npz")
    (tmp_path / "linked").symlink_to(mnist_dir, target_is_directory=True)
    files = tmp_path / "files"
    files.mkdir()
    for stem in data.IDX_FILES.values():
        (files / stem).symlink_to(mnist_dir / stem)
    npz = data.load("mnist", tmp_path / "mnist.npz")
    assert all(np.array_equal(getattr(npz, k), arrays[k]) for k in data.IDX_FILES)
    for folder in (tmp_path / "linked", files):
        assert len(data.load("mnist", folder).y_train) == 60000


# --- bounded reading -----------------------------------------------------------------------------


def gzip_bomb(header_dims: tuple[int, ...], inflated_gib: int) -> bytes:
    """An IDX image file's header, then `inflated_gib` GiB of zeros, gzipped to about 1/1000:
    gzip members concatenated are one stream, so one compressed 64 MiB repeated makes it."""
    header = struct.pack(">BBBB", 0, 0, data.IDX_UBYTE, len(header_dims))
    header += b"".join(struct.pack(">I", d) for d in header_dims)
    chunk = gzip.compress(b"\0" * 2**26, compresslevel=9)
    return gzip.compress(header, compresslevel=9) + chunk * (16 * inflated_gib)


def _limit_memory() -> None:  # in the child: a bomb read whole fails at 3 GiB, not the machine
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dims", "message"),
    [((60000, 28, 28), "IDX size mismatch"), ((10**6, 28, 28), "more than a data file may hold")],
    ids=["claims-mnist-size", "claims-too-much"],
)
def test_a_gzip_bomb_posing_as_idx_is_a_data_error_in_bounded_memory(
    dims, message, tmp_path, mnist_dir
):
    """13 MB that inflate to 13 GiB: refused after reading at most the claimed size (or
    nothing, when the claim itself is too large), under a 3 GiB address-space limit that
    reading it whole would break (MemoryError, exit 70)."""
    folder = tmp_path / "data"
    write_idx_dir(folder, small_arrays(mnist_dir))
    images = folder / data.IDX_FILES["x_train"]
    images.unlink()
    bomb = images.with_name(images.name + ".gz")
    bomb.write_bytes(gzip_bomb(dims, 13))
    assert bomb.stat().st_size < 16 * 2**20
    env = job_env(DATA_URI=str(folder), OUTPUT_URI=str(tmp_path / "out"))
    proc = subprocess.run(
        [sys.executable, "-m", "job", "check"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=HANG_GUARD, preexec_fn=_limit_memory, check=False,
    )  # fmt: skip
    assert proc.returncode == EXIT_DATA, proc.stdout + proc.stderr[-2000:]
    rows = {row["check"]: row for row in map(json.loads, proc.stdout.splitlines())}
    detail = rows["data"]["detail"]
    assert detail.startswith(f"{bomb}: ") and message in detail, detail


def npy_bytes(shape: tuple[int, ...], body: bytes, descr: str = "|u1") -> bytes:
    """An .npy file whose header says `shape`, followed by `body` (whatever its length)."""
    import io

    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + body


def npz_with(path: Path, arrays: dict[str, np.ndarray], **forged: bytes) -> Path:
    """An .npz of `arrays`, with the members named in `forged` replaced by those raw bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            if key in forged:
                archive.writestr(f"{key}.npy", forged[key])
            else:
                archive.writestr(f"{key}.npy", npy_bytes(array.shape, array.tobytes()))
    return path


def test_an_npz_member_claiming_a_huge_shape_is_refused_before_allocating(tmp_path, mnist_dir):
    """np.load would allocate the 784 GB the header claims (MemoryError, exit 70)."""
    arrays = small_arrays(mnist_dir)
    path = npz_with(tmp_path / "mnist.npz", arrays, x_train=npy_bytes((10**9, 28, 28), b"\0" * 99))
    with pytest.raises(DataError, match=r"x_train: header says shape \(1000000000, 28, 28\)") as e:
        data.load("mnist", path)
    assert "more than a data file may hold" in str(e.value) and str(path) in str(e.value)


def test_an_npz_member_shorter_than_its_header_says_is_refused(tmp_path, mnist_dir):
    arrays = small_arrays(mnist_dir)
    short = npy_bytes((3, 28, 28), b"\0" * (2 * 28 * 28))
    path = npz_with(tmp_path / "mnist.npz", arrays, x_test=short)
    with pytest.raises(DataError, match=r"x_test: size mismatch: header says shape \(3, 28, 28\)"):
        data.load("mnist", path)


def test_an_npz_member_whose_zip_size_is_forged_is_refused(tmp_path, mnist_dir):
    """The central directory says 4 GB for y_train: refused before it is opened."""
    path = npz_with(tmp_path / "mnist.npz", small_arrays(mnist_dir))
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")  # the central directory's entries, one per member
    while raw[entry + 46 : entry + 46 + len(b"y_train.npy")] != b"y_train.npy":
        entry = raw.index(b"PK\x01\x02", entry + 4)
    raw[entry + 24 : entry + 28] = struct.pack("<I", 0xFFFF_FFF0)  # its uncompressed size
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"y_train: the archive declares 4294967280 bytes"):
        data.load("mnist", path)


def test_an_npz_of_pickled_objects_is_refused_by_its_dtype(tmp_path, mnist_dir):
    arrays = small_arrays(mnist_dir)
    np.savez(tmp_path / "mnist.npz", **{**arrays, "y_test": np.array([1, "a"], dtype=object)})
    with pytest.raises(DataError, match="y_test: holds object data, expected uint8"):
        data.load("mnist", tmp_path / "mnist.npz")


def test_a_png_as_data_uri_is_named_for_what_it_is_not(tmp_path):
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    with pytest.raises(DataError, match=r"digit\.png: not an \.npz archive or IDX file") as err:
        data.load("mnist", tmp_path / "digit.png")
    assert "pickle" not in str(err.value)


def test_one_idx_file_as_data_uri_points_at_its_folder(mnist_dir):
    with pytest.raises(DataError, match="one IDX file is not a data set: DATA_URI names the fold"):
        data.load("mnist", mnist_dir / data.IDX_FILES["y_test"])


# --- real data still loads -----------------------------------------------------------------------


def test_real_mnist_loads_whole_from_idx_gzip_and_npz(tmp_path, mnist_dir):
    """The bounds leave room for the real thing, in every layout, read the same."""
    idx = data.load("mnist", mnist_dir)
    arrays = {k: getattr(idx, k) for k in data.IDX_FILES}
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)
    gz = tmp_path / "gz"
    gz.mkdir()
    for key, stem in data.IDX_FILES.items():
        (gz / f"{stem}.gz").write_bytes(gzip.compress(data.idx_bytes(arrays[key]), 1))
    for source in (mnist_dir, tmp_path / "mnist.npz", gz):
        ds = data.load("mnist", source)
        assert all(np.array_equal(getattr(ds, k), arrays[k]) for k in data.IDX_FILES), source
        assert np.bincount(ds.y_train).tolist() == TRAIN_COUNTS
        assert np.bincount(ds.y_test).tolist() == TEST_COUNTS


# --- DATA_URI checked before TensorFlow loads and before any run folder (issue 24, item 6) -----

# `train` in a new process, exit 99 if it loaded TensorFlow before it stopped.
TRAIN_WITHOUT_TENSORFLOW = (
    "import sys; from job.cli import main; code = main(['train']); "
    "sys.exit(99 if 'tensorflow' in sys.modules else code)"
)


def a_png(path: Path) -> Path:
    from PIL import Image

    Image.new("L", (28, 28), 255).save(path)
    return path


def an_empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


def holding(entry: str, make) -> object:
    """A folder `data` holding `entry` made by make(path): what DATA_URI then names."""

    def folder(tmp: Path) -> Path:
        (tmp / "data").mkdir()
        make(tmp / "data" / entry)
        return tmp / "data"

    return folder


def with_mode(path: Path, mode: int) -> Path:
    path.chmod(mode)
    return path


def locked(tmp: Path) -> Path:
    """A folder with an .npz in it that the job's user may not list (mode 000)."""
    (tmp / "locked").mkdir()
    np.savez(tmp / "locked" / "mnist.npz", x=np.zeros(1, np.uint8))
    return with_mode(tmp / "locked", 0)


def not_enterable(tmp: Path) -> Path:
    """A folder the job's user may list but not enter (mode 444): its mnist.npz is seen, not
    opened."""
    (tmp / "nox").mkdir()
    np.savez(tmp / "nox" / "mnist.npz", x=np.zeros(1, np.uint8))
    return with_mode(tmp / "nox", 0o444)


IMAGES, LABELS = data.IDX_FILES["x_train"], data.IDX_FILES["y_train"]
# (id, DATA_URI made in a folder, its error line, run as a user other than root). The files are
# of the right names but not what the loader can read: each was found only after TensorFlow had
# loaded and a failed run folder was written (review findings [data] 1a and 2).
EARLY_CASES = [
    ("missing", lambda tmp: tmp / "mnits", "DATA_URI='{uri}': no such file or folder", False),
    ("empty-folder", lambda tmp: an_empty_folder(tmp / "empty"),
     "{uri}: no MNIST-format file (it is empty): looked for a folder of IDX files "
     "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
     "t10k-labels-idx1-ubyte, each optionally .gz) or an .npz archive", False),
    ("png", lambda tmp: a_png(tmp / "digit.png"),
     "{uri}: not an .npz archive or IDX file: a PNG image; expected a folder of IDX files", False),
    ("npz-link-to-device", holding("mnist.npz", lambda p: p.symlink_to("/dev/zero")),
     "{uri}/mnist.npz: not a regular file (a character device)", False),
    ("npz-dangling-link", holding("mnist.npz", lambda p: p.symlink_to(p.with_name("gone"))),
     "{uri}/mnist.npz: unreadable (a link to a missing file)", False),
    ("npz-fifo", holding("mnist.npz", os.mkfifo), "{uri}/mnist.npz: not a regular file (a FIFO)",
     False),
    ("npz-folder", holding("mnist.npz", Path.mkdir),
     "{uri}/mnist.npz: not a regular file (a folder)", False),
    ("npz-text", holding("mnist.npz", lambda p: p.write_text("x_train\n")),
     "{uri}/mnist.npz: not an .npz archive or IDX file: a text file", False),
    ("idx-empty", holding(IMAGES, Path.touch),
     f"{{uri}}/{IMAGES}: not an IDX ubyte file (bad magic number '')", False),
    ("idx-one-of-four", holding(IMAGES, lambda p: p.write_bytes(data.idx_bytes(
        np.zeros((2, 28, 28), np.uint8)))),
     f"{{uri}}: missing IDX file {LABELS} (or {LABELS}.gz)", False),
    ("idx-dangling-link", holding(IMAGES, lambda p: p.symlink_to(p.with_name("gone"))),
     f"{{uri}}/{IMAGES}: unreadable (a link to a missing file)", False),
    ("idx-gz-truncated", holding(f"{IMAGES}.gz", lambda p: p.write_bytes(gzip.compress(
        data.idx_bytes(np.zeros((2, 28, 28), np.uint8)))[:12])),
     f"{{uri}}/{IMAGES}.gz: unreadable (EOFError: ", False),
    ("unreadable-folder", locked, "{uri}: unreadable folder (Permission denied)", True),
    ("not-enterable-folder", not_enterable, "{uri}/mnist.npz: unreadable (Permission denied)",
     True),
    ("file-in-not-enterable-folder", lambda tmp: not_enterable(tmp) / "mnist.npz",
     "{uri}: unreadable (Permission denied)", True),
]  # fmt: skip


def as_another_user() -> tuple[list[str], object]:
    """The command prefix and preexec_fn that run a child as uid/gid 65534 (nobody) with no
    groups when this process is root: root reads any file whatever its mode, so a permission
    test run as root would pass without testing anything. Not root: the child runs as this
    user, whom the modes used here (000, 444) already refuse."""
    if os.geteuid() != 0:
        return [], None
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], None

    def drop() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    return [], drop


@pytest.fixture
def shared_tmp(tmp_path):
    """A folder another user may write in: pytest's own (under /tmp/pytest-of-root, mode 700)
    cannot be entered by nobody."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-job-test-"))
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    yield folder
    for sub in folder.iterdir():  # give back what the cases took away, for the removal
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    folder.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize(
    ("case", "make", "text", "other_user"), EARLY_CASES, ids=[c[0] for c in EARLY_CASES]
)
def test_a_wrong_data_uri_fails_before_tensorflow_and_leaves_no_run_folder(
    case, make, text, other_user, request
):
    base = request.getfixturevalue("shared_tmp" if other_user else "tmp_path")
    prefix, preexec = as_another_user() if other_user else ([], None)
    if other_user:  # the child really is refused what root would be allowed
        whoami = [*prefix, sys.executable, "-c", "import os; print(os.geteuid())"]
        uid = subprocess.run(whoami, capture_output=True, text=True, preexec_fn=preexec, check=True)
        assert int(uid.stdout) != 0
    uri = make(base)
    out = base / "out"
    env = job_env(DATA_URI=str(uri), OUTPUT_URI=str(out), RUN_ID="early", EPOCHS="1")
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", TRAIN_WITHOUT_TENSORFLOW], env=env, cwd=base,
        capture_output=True, text=True, timeout=HANG_GUARD, preexec_fn=preexec, check=False,
    )  # fmt: skip
    assert proc.returncode == EXIT_DATA, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: " + text.format(uri=uri)), line
    assert "pickle" not in line
    assert not out.exists(), "nothing is written to OUTPUT_URI: no run folder to list"


def test_what_a_data_uri_is_instead_is_said(tmp_path, mnist_dir):
    """The loader and the early check say the same (one home): what the file is, what was
    expected; the first 64 bytes tell, nothing is read whole."""
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(500))
    (tmp_path / "notes.txt").write_text("train-images-idx3-ubyte is in the other folder\n")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    np.save(tmp_path / "x_train.npy", np.zeros((2, 28, 28), np.uint8))
    gz = tmp_path / f"{data.IDX_FILES['x_test']}.gz"
    gz.write_bytes(gzip.compress((mnist_dir / data.IDX_FILES["x_test"]).read_bytes()[:2000]))
    said = {
        "photo.jpg": "a JPEG image",
        "notes.txt": "a text file",
        "model.pkl": "a Python pickle",
        "x_train.npy": "a single .npy array (an .npz holds the four arrays)",
    }
    for name, kind in said.items():
        for read in (data.in_place, lambda p: data.load("mnist", p)):
            with pytest.raises(DataError) as err:
                read(tmp_path / name)
            assert str(err.value).startswith(
                f"{tmp_path / name}: not an .npz archive or IDX file: {kind}; expected a folder"
            ), str(err.value)
            assert err.value.exit_code == EXIT_DATA
    with pytest.raises(DataError, match="one IDX file is not a data set: DATA_URI names the fold"):
        data.in_place(gz)


def test_a_folder_without_mnist_files_is_named_with_what_it_holds(tmp_path, mnist_dir):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        a_png(folder / f"{i}.png")
    with pytest.raises(
        DataError,
        match=r"pictures: no MNIST-format file \(it holds 3 other "
        r"entries\): looked for a folder of IDX files \(train-images-idx3-ubyte",
    ):
        data.load("mnist", folder)  # fmt: skip
    # One file of the four: the early check names the first missing one, as the loader does.
    (folder / data.IDX_FILES["y_test"]).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    for read in (data.in_place, lambda p: data.load("mnist", p)):
        with pytest.raises(DataError, match="missing IDX file train-images-idx3-ubyte"):
            read(folder)
    assert data.in_place(mnist_dir) == f"{mnist_dir}: 4 IDX files"


PERMISSION_CASES = [c for c in EARLY_CASES if c[3]]


@pytest.mark.parametrize(
    ("case", "make", "text", "other_user"), PERMISSION_CASES, ids=[c[0] for c in PERMISSION_CASES]
)
def test_check_names_data_its_user_may_not_read(case, make, text, other_user, shared_tmp):
    """`check` reports the same line for its data row, exit 65 (was 70: PermissionError)."""
    prefix, preexec = as_another_user()
    uri = make(shared_tmp)
    env = job_env(DATA_URI=str(uri), OUTPUT_URI=str(shared_tmp / "out"))
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "job", "check"], env=env, cwd=shared_tmp,
        capture_output=True, text=True, timeout=HANG_GUARD, preexec_fn=preexec, check=False,
    )  # fmt: skip
    assert proc.returncode == EXIT_DATA, proc.stdout + proc.stderr[-2000:]
    rows = {row["check"]: row for row in map(json.loads, proc.stdout.splitlines())}
    assert rows["data"]["detail"].startswith(text.format(uri=uri)), rows["data"]
