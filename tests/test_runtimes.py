"""The WML model definition on WML's own TensorFlow runtime: TensorFlow 2.14.1, Keras 2, Python
3.11 (software spec `tensorflow_rt24.1-py3.11`), as `.venv-tf214` (requirements-tf214.lock,
`make venv-tf214`), which holds TensorFlow and matplotlib and nothing of the job's own
dependencies.

The zip is built by the real `job.launch.wml.package_zip()`, unpacked, and its exact command is run
in
the unpacked folder the way WML runs it: `bash -c COMMAND`, with RESULT_DIR (the results
bucket, mounted), DATA_DIR (a folder of IDX files, the mounted data reference) and TRAINING_ID
set, no OUTPUT_URI or DATA_URI, and `python3` on PATH being the runtime's interpreter.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from job.launch import wml
from job.runstore.digest import sha256_file
from tests.support.jobs import ROOT
from tests.test_train_e2e import EXPECTED_FILES, METRICS_KEYS

RUNTIME = ROOT / ".venv-tf214"
TRAINING_ID = "training-5f3c2a9e"
SETTINGS = {"TRAIN_LIMIT": "3000", "TEST_LIMIT": "1000", "BATCH_SIZE": "128"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The model definition as WML unpacks it (MODEL_DIR, the command's working directory)."""
    assert (RUNTIME / "bin" / "python3").exists(), "run `make venv-tf214` (make test does)"
    unpacked = tmp_path_factory.mktemp("model_definition")
    zipfile.ZipFile(io.BytesIO(wml.package_zip())).extractall(unpacked)
    return unpacked


def wml_environment(result_dir: Path, data_dir: Path) -> dict[str, str]:
    """What a WML training container sets (notes/WML.md), and nothing of ours."""
    return {
        "PATH": f"{RUNTIME / 'bin'}:/usr/bin:/bin",
        "HOME": str(result_dir.parent),
        "LANG": "C.UTF-8",
        "RESULT_DIR": str(result_dir),
        "DATA_DIR": str(data_dir),
        "LOG_DIR": str(result_dir.parent / "logs"),
        "TRAINING_ID": TRAINING_ID,
        "PYTHONUNBUFFERED": "1",
    }


def start(command: str, model_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-c", command], cwd=model_dir, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def in_runtime(script: str, *args: str) -> str:
    """Run a Python snippet with the runtime's interpreter; its stdout."""
    proc = subprocess.run(
        [str(RUNTIME / "bin" / "python3"), "-c", script, *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_the_weight_average_is_scored_kept_and_checkpointed_keras_2(model_dir):
    """Keras 2's path to the optimizer's average (job.training.compat.averaged_weights), from the
    zip."""
    from tests.test_recipes import assert_average_scored_and_kept, ema_probe

    results = ema_probe(str(RUNTIME / "bin" / "python3"), model_dir)
    assert {r["keras"][:4] for r in results} == {"2.14"}
    assert_average_scored_and_kept(results)


def test_the_command_downloads_nothing():
    command = wml.command("r", {"EPOCHS": "3"})
    assert "pip" not in command and command.endswith("python3 -m job train")
    names = zipfile.ZipFile(io.BytesIO(wml.package_zip())).namelist()
    assert {"job/__main__.py", "structlog/__init__.py", "dotenv/__init__.py"} <= set(names)
    assert not [n for n in names if n.endswith(".pyc") or n.startswith("boto")]


SERVE = """
import json, sys
import numpy as np, tensorflow as tf, keras
run, data = sys.argv[1], sys.argv[2]
raw = open(f"{data}/t10k-images-idx3-ubyte", "rb").read()
labels = np.frombuffer(open(f"{data}/t10k-labels-idx1-ubyte", "rb").read(), np.uint8, offset=8)
n = json.load(open(f"{run}/metrics.json"))["n_test"]
digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n]
signature = tf.saved_model.load(f"{run}/model/saved_model").signatures["serving_default"]
(spec,) = signature.structured_input_signature[1].values()
served = next(iter(signature(tf.constant(digits)).values())).numpy().argmax(axis=1)
kept = keras.models.load_model(f"{run}/model/model.keras", compile=False)
print(json.dumps({
    "tensorflow": tf.__version__, "input": [spec.dtype.name, list(spec.shape)],
    "accuracy": float((served == labels[:n]).mean()),
    "agree": float((kept.predict(digits, verbose=0).argmax(axis=1) == served).mean()),
}))
"""


@pytest.mark.slow
def test_the_zip_trains_publishes_and_serves_on_tensorflow_2_14(model_dir, tmp_path, mnist_dir):
    result_dir = tmp_path / "results"
    command = wml.command("wml-rt24", {**SETTINGS, "EPOCHS": "3"})
    proc = start(command, model_dir, wml_environment(result_dir, mnist_dir))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = result_dir / "wml-rt24"
    assert f"Results: {run_dir}" in stdout

    manifest = json.loads((run_dir / "_SUCCESS").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) >= EXPECTED_FILES
    for path, entry in listed.items():
        assert sha256_file(run_dir / path) == entry["sha256"], path
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(METRICS_KEYS) <= set(metrics)
    assert metrics["data_source"] == str(mnist_dir) and metrics["n_test"] == 1000
    assert metrics["epochs_completed"] == 3 and metrics["params"]["model_params"] == 693_962
    assert metrics["test_accuracy"] > 0.9
    # Keras 2's path to the weight average (job.training.compat.averaged_weights): the last epoch
    # scored
    # the average and the run kept it.
    assert metrics["params"]["ema_momentum"] > 0
    assert metrics["history"][-1]["val_accuracy"] == metrics["test_accuracy"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["versions"]["tensorflow"] == "2.14.1"
    assert record["versions"]["keras"].startswith("2.14")
    assert not (run_dir / "checkpoints").exists()

    # The SavedModel, loaded by plain TensorFlow 2.14 and fed raw uint8 digits, scores what the
    # run reported, and the .keras file predicts the same classes.
    served = json.loads(in_runtime(SERVE, str(run_dir), str(mnist_dir)))
    assert served["tensorflow"] == "2.14.1"
    assert served["input"] == ["uint8", [None, 28, 28, 1]]
    assert abs(served["accuracy"] - metrics["test_accuracy"]) <= 0.005
    assert served["agree"] >= 0.995


@pytest.mark.slow
def test_sigkill_on_tensorflow_2_14_then_the_same_command_resumes(model_dir, tmp_path, mnist_dir):
    result_dir = tmp_path / "results"
    env = wml_environment(result_dir, mnist_dir)
    command = wml.command("wml-kill", {**SETTINGS, "EPOCHS": "6"})
    pointer = result_dir / "wml-kill" / "checkpoints" / "latest.json"
    proc = start(command, model_dir, env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not pointer.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "killed mid-run"
    saved = json.loads(pointer.read_text())["epoch"]
    assert 1 <= saved < 6

    rerun = start(command, model_dir, env)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    resumed = [e for e in events(stderr) if e["event"] == "resumed"]
    assert resumed and resumed[0]["from_epoch"] == saved
    assert [e["epoch"] for e in events(stderr) if e["event"] == "epoch"] == list(
        range(saved + 1, 7)
    )
    metrics = json.loads((result_dir / "wml-kill" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == saved
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 7))
    assert (result_dir / "wml-kill" / "_SUCCESS").is_file()
