"""`python -m job check`, and the checks `train` and `submit` run before they spend anything:
each check failing alone gives its exit class and a line naming the culprit; all passing, 0."""

from __future__ import annotations

import json
import shutil

import pytest

from job.errors import EXIT_CONFIG, EXIT_DATA, EXIT_TRANSIENT
from tests.support.jobs import cli, job_env, run_job
from tests.support.s3 import cos_env
from tests.test_storage import upload_slice


@pytest.fixture
def good(s3_endpoint, bucket, mnist_dir, tmp_path) -> dict:
    """Everything in order: a bucket for the output, the real MNIST files, a scratch folder."""
    return job_env(
        **cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs", DATA_URI=str(mnist_dir),
        WORK_DIR=str(tmp_path), RUN_ID="checked",
    )  # fmt: skip


def check(env: dict, cwd, *args: str) -> tuple[int, dict[str, dict]]:
    proc = cli("check", *args, env=env, cwd=cwd)
    rows = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        rows[row["check"]] = row
    return proc.returncode, rows


def test_all_pass(good, tmp_path, s3_endpoint, bucket):
    from tests.support.s3 import all_objects

    code, rows = check(good, tmp_path)
    assert code == 0, rows
    assert list(rows) == ["config", "output", "data", "work_dir", "peers"]
    assert all(r["passed"] for r in rows.values())
    assert "SHA-256 of all four files match mnist's" in rows["data"]["detail"]
    assert not all_objects(s3_endpoint, bucket), "the probe object is deleted again"


def copied(mnist_dir, tmp_path, edit) -> str:
    folder = tmp_path / "copy"
    shutil.copytree(mnist_dir, folder)
    raw = (folder / "t10k-labels-idx1-ubyte").read_bytes()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(edit(raw))
    return str(folder)


def truncated(mnist_dir, tmp_path) -> str:
    return copied(mnist_dir, tmp_path, lambda raw: raw[:-1])


@pytest.mark.parametrize("form", ["relabelled", "a-slice-in-a-bucket"])
def test_data_other_than_mnist_is_named_but_passes(good, tmp_path, mnist_dir, s3_endpoint,
                                                    bucket, form):  # fmt: skip
    if form == "relabelled":
        uri, named = (
            copied(mnist_dir, tmp_path, lambda r: r[:-1] + bytes([(r[-1] + 1) % 10])),
            ("t10k-labels-idx1-ubyte"),
        )
    else:
        uri, named = a_slice(s3_endpoint, bucket, mnist_dir), "train-images-idx3-ubyte"
    code, rows = check({**good, "DATA_URI": uri}, tmp_path)
    assert code == 0 and rows["data"]["passed"]
    assert f"SHA-256 of {named}" in rows["data"]["detail"]
    assert "not mnist's: not the original data" in rows["data"]["detail"]


def a_slice(s3_endpoint, bucket, mnist_dir) -> str:
    from job.training import data

    ds = data.load("mnist", str(mnist_dir)).limited(1000, 100)
    return upload_slice(s3_endpoint, bucket, {k: getattr(ds, k) for k in data.IDX_FILES})


CASES = [
    # (id, what to change, failing check, exit class, text the line must hold)
    ("config", lambda f: {"EPOCHS": "ten"}, "config", EXIT_CONFIG, "EPOCHS='ten'"),
    ("no-bucket", lambda f: {"OUTPUT_URI": "s3://no-such-bucket/runs"}, "output", EXIT_CONFIG,
     "no-such-bucket"),
    ("unreachable", lambda f: {"COS_ENDPOINT": "http://127.0.0.1:9"}, "output", EXIT_TRANSIENT,
     "127.0.0.1:9"),
    ("missing-data", lambda f: {"DATA_URI": str(f["tmp"] / "none")}, "data", EXIT_DATA,
     "no such file or folder"),
    ("truncated", lambda f: {"DATA_URI": truncated(f["mnist"], f["tmp"])}, "data", EXIT_DATA,
     "t10k-labels-idx1-ubyte: IDX size mismatch"),
    ("work-dir", lambda f: {"WORK_DIR": str(f["tmp"] / "nope")}, "work_dir", EXIT_CONFIG,
     "WORK_DIR="),
    ("peer", lambda f: {"TF_CONFIG": json.dumps({"cluster": {"worker": [
        "localhost:2222", "mnist-train-1.no-such-service.invalid:2222"]},
        "task": {"type": "worker", "index": 0}})}, "peers", EXIT_TRANSIENT,
     "mnist-train-1.no-such-service.invalid:2222"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "failing", "code", "text"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_each_check_failing_alone(
    good, tmp_path, mnist_dir, s3_endpoint, bucket, change, failing, code, text
):
    fixtures = {"tmp": tmp_path, "mnist": mnist_dir, "s3": s3_endpoint, "bucket": bucket}
    returned, rows = check({**good, **change(fixtures)}, tmp_path)
    assert returned == code, rows
    failed = [name for name, row in rows.items() if not row["passed"]]
    assert failed == [failing], rows
    assert text in rows[failing]["detail"] and rows[failing]["exit_code"] == code


@pytest.mark.slow
def test_devices_says_what_tensorflow_sees(good, tmp_path):
    code, rows = check(good, tmp_path, "--devices")
    assert code == 0 and "GPUs: none; auto precision: " in rows["devices"]["detail"]


def test_train_stops_on_a_wrong_bucket_before_loading_tensorflow(good, tmp_path):
    proc = run_job("train", env={**good, "OUTPUT_URI": "s3://no-such-bucket/x"}, cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    (line,) = [s for s in proc.stderr.splitlines() if s.startswith("error:")]
    assert "check output failed" in line and "no-such-bucket" in line
    assert '"event": "threads"' not in proc.stderr, "stopped before TensorFlow was loaded"


def test_submit_checks_before_launching(good, tmp_path):
    env = {**good, "OUTPUT_URI": "s3://no-such-bucket/x"}
    proc = run_job("submit", "--backend", "local", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and "check output failed" in proc.stderr
    assert "Run id:" not in proc.stdout, "nothing was launched"
