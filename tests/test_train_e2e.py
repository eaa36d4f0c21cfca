"""End to end on a real MNIST slice: one run through `job.training.train.run` in this process, every
artifact checked; and the command line once, for its printed result, logs and exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from job.runstore.digest import sha256_file
from job.training import data
from tests.support.jobs import cli, job_env, run_job, train_in_process

EXPECTED_FILES = {
    "run.json",
    "metrics.json",
    "model/model.keras",
    "model/saved_model/saved_model.pb",
    "images/misclassified.png",
    "images/samples.png",
    "images/confusion.png",
    "images/history.png",
    "report.html",
}
METRICS_KEYS = (
    "schema_version", "run_id", "dataset", "n_train", "n_test", "epochs_completed",
    "test_loss", "test_accuracy", "baseline_error_pct", "per_class", "confusion_matrix",
    "misclassified_count", "history", "timings", "params",
)  # fmt: skip
PNG_SIZES = {  # (width, height) in pixels, as the README documents them
    "images/samples.png": (800, 400),
    "images/misclassified.png": (1000, 700),
    "images/confusion.png": (700, 600),
    "images/history.png": (1000, 400),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    """One small real run shared by the checks below."""
    tmp = tmp_path_factory.mktemp("e2e")
    settings = {
        "RUN_ID": "e2e-run", "TRAIN_LIMIT": "2000", "TEST_LIMIT": "500", "EPOCHS": "2",
        "BATCH_SIZE": "128",  # the default (fast) recipe, with enough steps on a small slice
    }  # fmt: skip
    result, run_dir = train_in_process(tmp, mnist_dir, **settings)
    return result, run_dir, settings, tmp


@pytest.mark.slow
def test_the_command_line_prints_the_notebook_line_and_logs_json(tmp_path, mnist_dir):
    env = job_env(
        RUN_ID="cli-run", RECIPE="seed", EPOCHS="2", TRAIN_LIMIT="1000", TEST_LIMIT="200",
        DATA_URI=str(mnist_dir), OUTPUT_URI=str(tmp_path / "out"),
    )  # fmt: skip
    proc = run_job("train", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "out" / "cli-run"
    assert f"Results: {run_dir}" in proc.stdout
    line = next(s for s in proc.stdout.splitlines() if s.startswith("Baseline Error: "))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert line == f"Baseline Error: {metrics['baseline_error_pct']:.2f}%"
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert events and all(e["run_id"] == "cli-run" for e in events)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(
        {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(e) for e in epochs
    )
    assert not [line for line in proc.stderr.splitlines() if not line.startswith("{")]


@pytest.mark.slow
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


@pytest.mark.slow
def test_metrics_schema_and_learning(trained):
    result, run_dir, _, _ = trained
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m == result, "metrics.json is exactly what run() returns"
    for key in METRICS_KEYS:
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


@pytest.mark.slow
def test_status_and_run_record(trained):
    _, run_dir, _, _ = trained
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["epoch"] == status["epochs"] == 2
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["run_id"] == "e2e-run"
    assert {"tensorflow", "keras", "python", "numpy"} <= set(record["versions"])


@pytest.mark.slow
def test_pngs_decode_to_their_sizes(trained):
    _, run_dir, _, _ = trained
    for name, size in PNG_SIZES.items():
        with Image.open(run_dir / name) as img:
            img.load()
            assert (img.format, img.size) == ("PNG", size), name


@pytest.mark.slow
def test_rerun_of_a_succeeded_run_changes_nothing(trained, mnist_dir):
    result, run_dir, settings, tmp = trained
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    # Even with input that would fail, a finished run is left alone and returns its metrics.
    again, _ = train_in_process(tmp, tmp / "missing", **settings)
    assert again == result
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def digit_pngs(ds: data.Dataset, folder) -> list:
    """Each test digit as a PNG, and again drawn dark on light at another size."""
    paths = []
    for i, digit in enumerate(ds.x_test):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(digit).save(paths[-1])
        paths.append(folder / f"inverted{i}.png")
        Image.fromarray(255 - digit).resize((56, 56)).save(paths[-1])
    return paths


@pytest.mark.slow
def test_predict_classifies_saved_pngs(trained, tmp_path, mnist_dir):
    from job.training.predict import predict

    _, run_dir, _, _ = trained
    ds = data.load("mnist", str(mnist_dir)).limited(1, 12)
    paths = digit_pngs(ds, tmp_path)
    results = predict(run_dir, paths)
    assert [p for p, _, _ in results] == paths
    predicted = [digit for _, digit, _ in results]
    plain, inverted = predicted[0::2], predicted[1::2]
    assert sum(p == t for p, t in zip(plain, ds.y_test, strict=True)) >= 8
    assert sum(p == q for p, q in zip(plain, inverted, strict=True)) >= 10
    assert all(0 < confidence <= 1 for _, _, confidence in results)


@pytest.mark.slow
def test_saved_model_takes_raw_uint8_digits_like_predict(trained, tmp_path, mnist_dir):
    """What a serving client (TF Serving, a WML deployment) sends: uint8 pixels, 0-255, shape
    (n, 28, 28, 1); no scaling on the client. Plain TensorFlow, no Keras code of ours."""
    import tensorflow as tf

    from job.training.predict import predict

    _, run_dir, _, _ = trained
    ds = data.load("mnist", str(mnist_dir)).limited(1, 50)
    served = tf.saved_model.load(str(run_dir / "model" / "saved_model"))
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and tuple(spec.shape) == (None, 28, 28, 1)
    probs = next(iter(signature(tf.constant(ds.x_test[..., None])).values())).numpy()
    paths = digit_pngs(ds, tmp_path)[0::2]
    assert probs.argmax(axis=1).tolist() == [digit for _, digit, _ in predict(run_dir, paths)]
    # Floats in [0, 1], what the model took before scaling moved inside it, are refused.
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        signature(tf.constant(ds.x_test[..., None] / 255.0, tf.float32))


def test_predict_with_a_missing_model_is_a_data_error(tmp_path):
    proc = run_job(
        "predict", str(tmp_path / "nope"), str(tmp_path / "x.png"), env=job_env(), cwd=tmp_path
    )
    assert proc.returncode == 65
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr


def test_config_command_prints_effective_configuration(tmp_path):
    proc = cli("config", env=job_env(EPOCHS="5", RUN_ID="cfg"), cwd=tmp_path)
    assert proc.returncode == 0
    shown = json.loads(proc.stdout)
    assert shown["training"]["epochs"] == 5 and shown["run_id"] == "cfg"
