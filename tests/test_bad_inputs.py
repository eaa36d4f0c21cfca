"""Bad input, table-driven: each case exits with its code and one error line naming the culprit,
and no `_SUCCESS` appears."""

from __future__ import annotations

import json

import numpy as np
import pytest

from job.errors import EXIT_CONFIG, EXIT_DATA
from job.training import data
from job.training.data import idx_bytes
from tests.support.jobs import job_env, run_job

STEMS = data.IDX_FILES


def rewrite(name: str, transform):
    def apply(folder):
        path = folder / STEMS[name]
        path.write_bytes(transform(path.read_bytes()))

    return apply


def relabel(folder):  # label 11 in a 10-class dataset
    labels = np.frombuffer((folder / STEMS["y_test"]).read_bytes()[8:], np.uint8).copy()
    labels[3] = 11
    (folder / STEMS["y_test"]).write_bytes(idx_bytes(labels))


def drop_labels(folder):  # 99 labels for 100 images
    labels = np.frombuffer((folder / STEMS["y_train"]).read_bytes()[8:], np.uint8)
    (folder / STEMS["y_train"]).write_bytes(idx_bytes(labels[:-1]))


def not_gzip(folder):
    (folder / STEMS["x_test"]).rename(folder / f"{STEMS['x_test']}.gz.bak")
    (folder / f"{STEMS['x_test']}.gz").write_bytes(b"this is not gzip data")


def npz_missing_arrays(folder):
    for stem in STEMS.values():
        (folder / stem).unlink()
    np.savez(folder / "mnist.npz", x_train=np.zeros((1, 28, 28), np.uint8))


def wrong_image_shape(folder):
    (folder / STEMS["x_train"]).write_bytes(idx_bytes(np.zeros((100, 32, 32), np.uint8)))


# (case id, extra env, how to damage the data folder, exit code, text the error must contain)
CASES = [
    ("epochs-word", {"EPOCHS": "twelve"}, None, EXIT_CONFIG, "EPOCHS='twelve'"),
    ("epochs-negative", {"EPOCHS": "-1"}, None, EXIT_CONFIG, "EPOCHS='-1'"),
    ("batch-zero", {"BATCH_SIZE": "0"}, None, EXIT_CONFIG, "BATCH_SIZE='0'"),
    ("batch-float", {"BATCH_SIZE": "12.5"}, None, EXIT_CONFIG, "BATCH_SIZE='12.5'"),
    ("lr-word", {"LEARNING_RATE": "fast"}, None, EXIT_CONFIG, "LEARNING_RATE='fast'"),
    ("lr-inf", {"LEARNING_RATE": "inf"}, None, EXIT_CONFIG, "LEARNING_RATE='inf'"),
    ("dataset", {"DATASET": "cifar10"}, None, EXIT_CONFIG, "DATASET='cifar10'"),
    ("run-id", {"RUN_ID": "Bad_ID!"}, None, EXIT_CONFIG, "RUN_ID='Bad_ID!'"),
    ("train-limit", {"TRAIN_LIMIT": "0"}, None, EXIT_CONFIG, "TRAIN_LIMIT='0'"),
    ("log-format", {"LOG_FORMAT": "xml"}, None, EXIT_CONFIG, "LOG_FORMAT='xml'"),
    ("output-scheme", {"OUTPUT_URI": "ftp://host/x"}, None, EXIT_CONFIG, "OUTPUT_URI="),
    ("env-file", {"ENV_FILE": "/nonexistent/.env"}, None, EXIT_CONFIG, "ENV_FILE="),
    ("missing-path", {"DATA_URI": "/nonexistent/mnist"}, None, EXIT_DATA, "/nonexistent/mnist"),
    ("truncated", {}, rewrite("x_train", lambda b: b[:-100]), EXIT_DATA, STEMS["x_train"]),
    ("wrong-magic", {}, rewrite("y_test", lambda b: b"\x00\x00\x09" + b[3:]), EXIT_DATA, "magic"),
    ("label-range", {}, relabel, EXIT_DATA, "label 11 out of range"),
    ("count-mismatch", {}, drop_labels, EXIT_DATA, "100 images but 99 labels"),
    ("missing-file", {}, lambda f: (f / STEMS["y_test"]).unlink(), EXIT_DATA, STEMS["y_test"]),
    ("not-gzip", {}, not_gzip, EXIT_DATA, f"{STEMS['x_test']}.gz"),
    ("npz-arrays", {}, npz_missing_arrays, EXIT_DATA, "mnist.npz"),
    ("image-shape", {}, wrong_image_shape, EXIT_DATA, "(n, 28, 28)"),
]


@pytest.fixture(scope="module")
def small_mnist(mnist_dir):
    ds = data.load("mnist", str(mnist_dir)).limited(100, 50)
    return {k: getattr(ds, k) for k in STEMS}


# Found by the look at the data's files before TensorFlow loads (their presence and headers,
# job.training.data.in_place); the rest only when the data is read whole.
FOUND_BEFORE_TRAINING = {"missing-path", "truncated", "wrong-magic", "missing-file", "not-gzip"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "env", "damage", "code", "culprit"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input(case, env, damage, code, culprit, tmp_path, small_mnist):
    folder = tmp_path / "data"
    folder.mkdir()
    for key, stem in STEMS.items():
        (folder / stem).write_bytes(idx_bytes(small_mnist[key]))
    if damage:
        damage(folder)
    out = tmp_path / "out"
    base = {"RUN_ID": "bad", "DATA_URI": str(folder), "OUTPUT_URI": str(out), "EPOCHS": "1"}
    proc = run_job("train", env=job_env(**{**base, **env}), cwd=tmp_path)

    assert proc.returncode == code, proc.stderr[-1500:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-1500:]
    assert culprit in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list(out.rglob("_SUCCESS"))
    if case in FOUND_BEFORE_TRAINING:  # no run folder is made (check.before_training)
        assert not (out / "bad").exists()
    elif code == EXIT_DATA:  # found while loading: the failure is recorded in the run
        failure = json.loads((out / "bad" / "_FAILURE").read_text())
        assert culprit in failure["reason"] and failure["exit_code"] == code
        assert json.loads((out / "bad" / "status.json").read_text())["state"] == "failed"
