"""End to end: `python -m job train` on a real MNIST slice, then every artifact checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from job import data
from job.digest import sha256_file
from tests.conftest import job_env, run_job

EXPECTED_FILES = {
    "run.json",
    "metrics.json",
    "model/model.keras",
    "model/saved_model/saved_model.pb",
    "images/misclassified.png",
    "images/samples.png",
    "images/confusion.png",
    "images/history.png",
}
PNG_SIZES = {  # (width, height) in pixels, as the README documents them
    "images/samples.png": (800, 400),
    "images/misclassified.png": (1000, 700),
    "images/confusion.png": (700, 600),
    "images/history.png": (1000, 400),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    """One small real run shared by the checks below."""
    cwd = tmp_path_factory.mktemp("e2e")
    env = job_env(
        RUN_ID="e2e-run",
        DATA_URI=str(mnist_dir),
        OUTPUT_URI=str(cwd / "out"),
        TRAIN_LIMIT="2000",
        TEST_LIMIT="500",
        EPOCHS="2",
        BATCH_SIZE="128",  # the default (fast) recipe, with enough steps on a small slice
    )
    proc = run_job("train", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, cwd / "out" / "e2e-run", env, cwd


def test_prints_the_notebook_line_and_location(trained):
    proc, run_dir, _, _ = trained
    assert f"Results: {run_dir}" in proc.stdout
    line = next(s for s in proc.stdout.splitlines() if s.startswith("Baseline Error: "))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert line == f"Baseline Error: {metrics['baseline_error_pct']:.2f}%"


def test_success_lists_every_artifact_with_matching_hashes(trained):
    _, run_dir, _, _ = trained
    manifest = json.loads((run_dir / "_SUCCESS").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) >= EXPECTED_FILES
    on_disk = {
        p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name not in ("_SUCCESS", "status.json")
    }
    assert on_disk == set(listed), "every artifact is listed and every listed file exists"
    for path, entry in listed.items():
        assert (run_dir / path).stat().st_size == entry["size"], path
        assert sha256_file(run_dir / path) == entry["sha256"], path
    assert not (run_dir / "_FAILURE").exists()


def test_metrics_schema_and_learning(trained):
    _, run_dir, _, _ = trained
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "schema_version", "run_id", "dataset", "n_train", "n_test", "epochs_completed",
        "test_loss", "test_accuracy", "baseline_error_pct", "per_class", "confusion_matrix",
        "misclassified_count", "history", "timings", "params",
    ):  # fmt: skip
        assert key in m, key
    assert (m["run_id"], m["dataset"], m["n_train"], m["n_test"]) == ("e2e-run", "mnist", 2000, 500)
    assert m["epochs_completed"] == 2 and len(m["history"]) == 2
    assert m["test_accuracy"] > 0.7, "well above the 10% of chance"
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 500
    assert np.trace(cm) == round(m["test_accuracy"] * 500)
    assert m["misclassified_count"] == 500 - np.trace(cm)
    assert [c["support"] for c in m["per_class"]] == cm.sum(axis=1).tolist()
    assert m["params"]["model_params"] == 693_962
    assert m["timings"]["train_samples_per_second"] > 0
    for epoch in m["history"]:
        assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(epoch)


def test_status_and_run_record(trained):
    _, run_dir, _, _ = trained
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["epoch"] == status["epochs"] == 2
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["run_id"] == "e2e-run"
    assert {"tensorflow", "keras", "python", "numpy"} <= set(record["versions"])


def test_pngs_decode_to_their_sizes(trained):
    _, run_dir, _, _ = trained
    for name, size in PNG_SIZES.items():
        with Image.open(run_dir / name) as img:
            img.load()
            assert (img.format, img.size) == ("PNG", size), name


def test_logs_are_json_with_one_event_per_epoch(trained):
    proc, _, _, _ = trained
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert events and all(e["run_id"] == "e2e-run" for e in events)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(
        {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(e) for e in epochs
    )


def test_rerun_of_a_succeeded_run_changes_nothing(trained):
    _, run_dir, env, cwd = trained
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    # Even with input that would fail, a finished run is left alone and the command exits 0.
    proc = run_job("train", env={**env, "DATA_URI": str(cwd / "missing")}, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "run_already_succeeded" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_predict_classifies_saved_pngs(trained, tmp_path, mnist_dir):
    _, run_dir, env, cwd = trained
    ds = data.load("mnist", str(mnist_dir)).limited(1, 12)
    paths = []
    for i, digit in enumerate(ds.x_test):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(digit).save(paths[-1])
        # The same digit drawn dark on light, and at another size: predict normalises both.
        paths.append(tmp_path / f"inverted{i}.png")
        Image.fromarray(255 - digit).resize((56, 56)).save(paths[-1])
    proc = run_job("predict", str(run_dir), *map(str, paths), env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(paths)
    predicted = [int(line.split(": ")[1].split(" ")[0]) for line in lines]
    plain, inverted = predicted[0::2], predicted[1::2]
    assert sum(p == t for p, t in zip(plain, ds.y_test, strict=True)) >= 8
    assert sum(p == q for p, q in zip(plain, inverted, strict=True)) >= 10
    for line in lines:
        confidence = float(line.rsplit("(", 1)[1].rstrip("%)"))
        assert 0 < confidence <= 100


def test_predict_with_a_missing_model_is_a_data_error(tmp_path):
    proc = run_job(
        "predict", str(tmp_path / "nope"), str(tmp_path / "x.png"), env=job_env(), cwd=tmp_path
    )
    assert proc.returncode == 65
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr


def test_config_command_prints_effective_configuration(tmp_path):
    proc = run_job("config", env=job_env(EPOCHS="5", RUN_ID="cfg"), cwd=tmp_path)
    assert proc.returncode == 0
    shown = json.loads(proc.stdout)
    assert shown["epochs"] == 5 and shown["run_id"] == "cfg"
