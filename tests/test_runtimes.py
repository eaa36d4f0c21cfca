"""The WML model definition on WML's own TensorFlow runtimes, each as a local environment
that holds TensorFlow and matplotlib and nothing of the job's own dependencies:

- rt24, Runtime 24.1 (software spec `tensorflow_rt24.1-py3.11`): TensorFlow 2.14.1, Keras 2,
  Python 3.11, as `.venv-tf214` (requirements-tf214.lock, `make venv-tf214`);
- rt25, Runtime 25.1 (`runtime-25.1-py3.12`): TensorFlow 2.18.1, Keras 3.5.0 (the oldest Keras
  3 TensorFlow 2.18 accepts; IBM does not name the runtime's), Python 3.12, as `.venv-tf218`
  (requirements-tf218.lock, `make venv-tf218`).

Each test runs on both (`pytest -k rt25` picks Runtime 25.1's). The zip is built by the real
`job.launch.wml.package_zip()`, unpacked, and its exact command is run in the unpacked folder
the way WML runs it: `bash -c COMMAND`, with RESULT_DIR (the results bucket, mounted), DATA_DIR
(a folder of IDX files, the mounted data reference) and TRAINING_ID set, no OUTPUT_URI or
DATA_URI, and `python3` on PATH being the runtime's interpreter.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from job.launch import wml
from job.runstore.digest import sha256_file
from tests.support.jobs import ROOT
from tests.test_distribute import ATTEMPTS, BIND_FAILED, free_ports, tf_config
from tests.test_train_e2e import EXPECTED_FILES, METRICS_KEYS

TRAINING_ID = "training-5f3c2a9e"
SETTINGS = {"TRAIN_LIMIT": "3000", "TEST_LIMIT": "1000", "BATCH_SIZE": "128"}


@dataclass(frozen=True)
class Runtime:
    """One of WML's TensorFlow runtimes, as the versions it reports."""

    venv: str
    tensorflow: str
    keras: str  # a prefix of keras.__version__
    python: str  # a prefix of the Python version

    @property
    def bin(self) -> Path:
        return ROOT / self.venv / "bin"

    @property
    def python3(self) -> str:
        return str(self.bin / "python3")


RUNTIMES = {
    "rt24": Runtime(".venv-tf214", tensorflow="2.14.1", keras="2.14", python="3.11."),
    "rt25": Runtime(".venv-tf218", tensorflow="2.18.1", keras="3.5.0", python="3.12."),
}


@pytest.fixture(scope="module", params=list(RUNTIMES.values()), ids=list(RUNTIMES))
def runtime(request) -> Runtime:
    rt = request.param
    make = "venv-" + rt.venv.removeprefix(".venv-")
    assert Path(rt.python3).exists(), f"run `make {make}` (make test does)"
    return rt


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The model definition as WML unpacks it (MODEL_DIR, the command's working directory)."""
    unpacked = tmp_path_factory.mktemp("model_definition")
    zipfile.ZipFile(io.BytesIO(wml.package_zip())).extractall(unpacked)
    return unpacked


def wml_environment(runtime: Runtime, result_dir: Path, data_dir: Path) -> dict[str, str]:
    """What a WML training container sets (notes/WML.md), and nothing of ours."""
    return {
        "PATH": f"{runtime.bin}:/usr/bin:/bin",
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


def in_runtime(runtime: Runtime, script: str, *args: str) -> str:
    """Run a Python snippet with the runtime's interpreter; its stdout."""
    proc = subprocess.run(
        [runtime.python3, "-c", script, *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_the_weight_average_is_scored_kept_and_checkpointed(runtime, model_dir):
    """The optimizer's average (job.training.compat.averaged_weights) on the runtime's Keras:
    Keras 2's path on rt24, Keras 3.5's on rt25, from the zip."""
    from tests.test_recipes import assert_average_scored_and_kept, ema_probe

    results = ema_probe(runtime.python3, model_dir)
    assert {r["keras"].startswith(runtime.keras) for r in results} == {True}
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
def test_the_zip_trains_publishes_and_serves(runtime, model_dir, tmp_path, mnist_dir):
    result_dir = tmp_path / "results"
    command = wml.command("wml-run", {**SETTINGS, "EPOCHS": "3"})
    proc = start(command, model_dir, wml_environment(runtime, result_dir, mnist_dir))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = result_dir / "wml-run"
    assert f"Results: {run_dir}" in stdout
    # The report alone: the SavedModel export's listing of its signatures (Keras 2 and 3.5)
    # does not reach stdout (job.training.compat.export_saved_model).
    assert "Saved artifact" not in stdout and "TensorSpec" not in stdout

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
    # The runtime's path to the weight average (job.training.compat.averaged_weights): the last
    # epoch scored the average and the run kept it.
    assert metrics["params"]["ema_momentum"] > 0
    assert metrics["history"][-1]["val_accuracy"] == metrics["test_accuracy"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["versions"]["tensorflow"] == runtime.tensorflow
    assert record["versions"]["keras"].startswith(runtime.keras)
    assert record["versions"]["python"].startswith(runtime.python)
    assert not (run_dir / "checkpoints").exists()

    # The SavedModel, loaded by the runtime's plain TensorFlow and fed raw uint8 digits, scores
    # what the run reported, and the .keras file predicts the same classes.
    served = json.loads(in_runtime(runtime, SERVE, str(run_dir), str(mnist_dir)))
    assert served["tensorflow"] == runtime.tensorflow
    assert served["input"] == ["uint8", [None, 28, 28, 1]]
    assert abs(served["accuracy"] - metrics["test_accuracy"]) <= 0.005
    assert served["agree"] >= 0.995


@pytest.mark.slow
def test_sigkill_then_the_same_command_resumes(runtime, model_dir, tmp_path, mnist_dir):
    result_dir = tmp_path / "results"
    env = wml_environment(runtime, result_dir, mnist_dir)
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


def two_workers(command: str, model_dir: Path, env: dict[str, str], logs: Path) -> list[tuple]:
    """The command as worker 0 and worker 1 of one cluster on loopback (TF_CONFIG): (exit code,
    stdout, stderr) of each. A port picked free may be taken before TensorFlow binds it: then
    the pair runs again on new ports (tests/test_distribute.py)."""
    logs.mkdir()
    for attempt in range(ATTEMPTS):
        spec = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
        procs, files = [], []
        for index in range(2):
            out, err = (logs / f"{attempt}-worker-{index}.{ext}" for ext in ("out", "err"))
            with out.open("w") as out_file, err.open("w") as err_file:
                procs.append(subprocess.Popen(
                    ["bash", "-c", command], cwd=model_dir, start_new_session=True,
                    env={**env, "TF_CONFIG": tf_config(spec, "worker", index)},
                    stdout=out_file, stderr=err_file,
                ))  # fmt: skip
            files.append((out, err))
        # Until both are done, or one has failed: worker 0 (the coordination service's leader)
        # would wait for a peer that could not bind its port for good on TensorFlow 2.14/2.18.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if None not in codes or any(codes):
                break
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        results = [
            (p.returncode, out.read_text(), err.read_text())
            for p, (out, err) in zip(procs, files, strict=True)
        ]
        if not any(BIND_FAILED in err for _, _, err in results):
            return results
    pytest.fail(f"the workers could not bind their ports in {ATTEMPTS} attempts")


@pytest.mark.slow
def test_two_workers_agree_on_every_figure(runtime, model_dir, tmp_path, mnist_dir):
    """The zip's command as two workers. Keras 3.5 needs job.training.compat.
    patch_for_multi_worker's way through its epoch iterator and its sums of the metrics across
    workers (without them the run fails, or each worker reports its own share of the data)."""
    result_dir = tmp_path / "results"
    settings = {"TRAIN_LIMIT": "2000", "TEST_LIMIT": "500", "BATCH_SIZE": "128", "EPOCHS": "1"}
    command = wml.command("wml-two", {**settings, "COLLECTIVE_TIMEOUT": "30"})
    env = wml_environment(runtime, result_dir, mnist_dir)
    results = two_workers(command, model_dir, env, tmp_path / "logs")
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    assert "Results:" in results[0][1] and "Worker worker-1 done" in results[1][1]

    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    figures = [
        [{k: e[k] for k in keys} for e in events(stderr) if e["event"] == "epoch"]
        for _, _, stderr in results
    ]
    assert len(figures[0]) == 1 and figures[0] == figures[1]
    metrics = json.loads((result_dir / "wml-two" / "metrics.json").read_text())
    assert metrics["params"]["replicas"] == 2
    # The last test pass scored the whole test split, as the chief's own evaluation does.
    assert metrics["history"][-1]["val_accuracy"] == metrics["test_accuracy"]
