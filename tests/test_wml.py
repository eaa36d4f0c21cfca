"""The WML backend with the real ibm-watson-machine-learning client (in .venv-wml) against the
TLS stand-in of the WML REST endpoints (tests/support/wml_standin.py), and the loopback S3
server."""

from __future__ import annotations

import base64
import io
import json
import queue
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from tests.support.jobs import ROOT, job_env, run_job
from tests.support.s3 import SECRET_KEY, all_objects, cos_env
from tests.support.wml_standin import WMLStandIn
from tests.test_storage import upload_slice

WML_PYTHON = ROOT / ".venv-wml" / "bin" / "python"


def token() -> str:
    """A bearer token shaped like IAM's (the client reads `exp` from the JWT payload)."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(time.time()) + 3600})}.sig"


@pytest.fixture
def standin(tmp_path):
    server = WMLStandIn(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def wml_env(standin, s3_endpoint, bucket, mnist_dir, tmp_path):
    from job.training import data

    ds = data.load("mnist", str(mnist_dir)).limited(2000, 500)
    data_uri = upload_slice(s3_endpoint, bucket, {k: getattr(ds, k) for k in data.IDX_FILES})
    return job_env(
        **cos_env(s3_endpoint),
        OUTPUT_URI=f"s3://{bucket}/runs",
        DATA_URI=data_uri,
        RECIPE="seed",
        EPOCHS="2",
        WML_URL=standin.url,
        WML_TOKEN=token(),
        WML_SPACE_ID="space-0001",
        WML_HARDWARE_SPEC="V100",
        WML_SOFTWARE_SPEC="tensorflow_rt24.1-py3.11",
        WML_NODES="1",
        REQUESTS_CA_BUNDLE=str(standin.cert),  # trust the stand-in's certificate, verified
        # The repository (the job package) and the harness's sitecustomize.
        PYTHONPATH=f"{ROOT}:{ROOT / 'tests' / 'support' / 'wml_harness'}",
    )


def wml(*args: str, env: dict, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    assert WML_PYTHON.exists(), "run `make venv-wml` (make test does)"
    return subprocess.run(
        [str(WML_PYTHON), "-m", "job", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


def submit(run_id: str, env: dict, cwd) -> tuple[str, dict]:
    proc = wml("submit", "--backend", "wml", "--run-id", run_id, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert SECRET_KEY not in proc.stdout + proc.stderr
    submission = json.loads(all_objects_for(env)[f"runs/{run_id}/submission.json"])
    assert submission["backend"] == "wml"
    return submission["handle"], submission


def all_objects_for(env: dict) -> dict:
    return all_objects(env["COS_ENDPOINT"], env["OUTPUT_URI"].removeprefix("s3://").split("/")[0])


def test_submit_stores_the_package_and_starts_the_training(standin, wml_env, tmp_path):
    training_id, submission = submit("wml-one", wml_env, tmp_path)
    body = standin.trainings[training_id]["entity"]
    definition = body["model_definition"]
    assert "python3 -m job train" in definition["command"]
    assert "RUN_ID=wml-one" in definition["command"] and "EPOCHS=2" in definition["command"]
    assert definition["hardware_spec"] == {"name": "V100", "nodes": 1}
    assert definition["software_spec"] == {"name": "tensorflow_rt24.1-py3.11"}
    assert definition["parameters"] == {"EPOCHS": "2", "RECIPE": "seed"}
    (data_ref,) = body["training_data_references"]
    results_ref = body["results_reference"]
    bucket = wml_env["OUTPUT_URI"].removeprefix("s3://").split("/")[0]
    assert data_ref["location"] == {"bucket": bucket, "path": "mnist"}
    assert results_ref["location"] == {"bucket": bucket, "path": "runs"}
    for ref in (data_ref, results_ref):
        assert ref["type"] == "s3" and ref["connection"]["endpoint_url"] == wml_env["COS_ENDPOINT"]
    assert body["name"] and body["description"]
    assert submission["results_uri"] == f"{wml_env['OUTPUT_URI']}/{training_id}"

    # The stored model definition is the job package, and it runs: unzip it and use it.
    (archive,) = standin.uploads.values()
    unpacked = tmp_path / "unzipped"
    zipfile.ZipFile(io.BytesIO(archive)).extractall(unpacked)
    assert (unpacked / "job" / "__main__.py").is_file() and (
        unpacked / "job" / "training" / "train.py"
    ).is_file()
    proc = subprocess.run(
        [sys.executable, "-c", "import job.training.train, job.__main__; print(job.__file__)"],
        cwd=unpacked, capture_output=True, text=True, check=False,
        env={**job_env(), "PYTHONPATH": str(unpacked)},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith(str(unpacked)), proc.stderr


def run_as_wml_would(standin: WMLStandIn, submission: dict, env: dict, cwd) -> None:
    """Stand in for the WML runtime: the stored zip unpacked as the working directory, the
    command's variables, results written where WML's RESULT_DIR points (the results reference
    under the training id)."""
    (archive,) = standin.uploads.values()
    unpacked = cwd / "wml-working-dir"
    zipfile.ZipFile(io.BytesIO(archive)).extractall(unpacked)
    run_env = {**env, "RUN_ID": submission["run_id"], "OUTPUT_URI": submission["results_uri"]}
    run_env["PYTHONPATH"] = str(unpacked)
    proc = run_job("train", env=run_env, cwd=unpacked)
    assert proc.returncode == 0, proc.stderr[-2000:]


def stdout_lines(proc: subprocess.Popen) -> queue.Queue[str | None]:
    """The process's stdout lines as they are printed (None once it is closed)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_watch_follows_queued_running_completed(standin, wml_env, tmp_path):
    training_id, submission = submit("wml-ok", wml_env, tmp_path)
    err_file = tmp_path / "watch.err"
    with err_file.open("w") as err_sink:
        watcher = subprocess.Popen(
            [str(WML_PYTHON), "-m", "job", "watch", "wml-ok", "--interval", "0.2",
             "--stall-after", "300", "--dest", str(tmp_path / "got")],
            env=wml_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err_sink, text=True,
        )  # fmt: skip
    lines = stdout_lines(watcher)
    # Move the training on only once the watcher has reported it queued.
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while not any('"platform"' in line and '"queued"' in line for line in seen):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            watcher.kill()
            pytest.fail(f"watch never reported queued: {seen} {err_file.read_text()}")
        assert line is not None, f"watch ended early: {seen} {err_file.read_text()}"
        seen.append(line)
    standin.set_state(training_id, "running")
    run_as_wml_would(standin, submission, wml_env, tmp_path)
    standin.set_state(training_id, "completed")
    watcher.wait(timeout=300)
    out = "".join(seen + list(iter(lambda: lines.get(timeout=30), None)))
    err = err_file.read_text()
    assert watcher.returncode == 0, out + err
    states = [json.loads(line)["state"] for line in out.splitlines() if '"platform"' in line]
    assert states[:2] == ["queued", "running"]
    assert any(line.startswith("Baseline Error: ") for line in out.splitlines())
    assert (tmp_path / "got" / "metrics.json").is_file()
    assert SECRET_KEY not in out + err


def test_watch_reports_a_wml_failure(standin, wml_env, tmp_path):
    training_id, _ = submit("wml-fail", wml_env, tmp_path)
    standin.set_state(training_id, "failed", "Out of memory on the GPU (exit 137)")
    proc = wml("watch", "wml-fail", "--interval", "0.2", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed on the platform: Out of memory on the GPU (exit 137)" in proc.stdout


def test_cancel_goes_through_wml(standin, wml_env, tmp_path):
    training_id, _ = submit("wml-cancel", wml_env, tmp_path)
    proc = wml("cancel", "wml-cancel", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"method": "DELETE", "path": f"/ml/v4/trainings/{training_id}"}.items() <= next(
        r for r in standin.requests if r["method"] == "DELETE"
    ).items()
    watched = wml("watch", "wml-cancel", "--interval", "0.2", env=wml_env, cwd=tmp_path)
    assert watched.returncode == 4, watched.stdout + watched.stderr


def test_the_submitter_environment_has_no_tensorflow(wml_env, tmp_path):
    """.venv-wml holds the submitter's dependencies only: it starts and lists runs without
    TensorFlow installed at all."""
    missing = subprocess.run(
        [str(WML_PYTHON), "-c", "import tensorflow"], capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0 and "No module named 'tensorflow'" in missing.stderr
    proc = wml("runs", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_unset_software_spec_takes_the_newest_tensorflow_runtime(standin, wml_env, tmp_path):
    env = {k: v for k, v in wml_env.items() if k not in ("WML_SOFTWARE_SPEC", "WML_HARDWARE_SPEC")}
    training_id, submission = submit("wml-newest", env, tmp_path)
    definition = standin.trainings[training_id]["entity"]["model_definition"]
    # Offered: tensorflow_rt24.1-py3.11, tensorflow_rt25.1-py3.12 and its -edt variant.
    assert definition["software_spec"] == {"name": "tensorflow_rt25.1-py3.12"}
    assert definition["hardware_spec"] == {"name": "K80", "nodes": 1}, "the documented default"
    assert (submission["software_spec"], submission["hardware_spec"]) == (
        "tensorflow_rt25.1-py3.12", "K80",
    )  # fmt: skip
    (asset,) = [r["json"] for r in standin.requests if r["path"] == "/v2/assets"]
    assert '"versions": ["3.12"]' in json.dumps(asset), "the model definition's Python matches"


@pytest.mark.parametrize(
    ("variable", "value", "offered"),
    [
        ("WML_SOFTWARE_SPEC", "tensorflow_rt99.1-py3.11", "tensorflow_rt24.1-py3.11"),
        ("WML_HARDWARE_SPEC", "H100x8", "K80x2"),
        ("WML_SOFTWARE_SPEC", None, "runtime-24.1-py3.11"),  # no TensorFlow runtime at all
    ],
)
def test_a_spec_wml_does_not_offer_is_refused_before_anything_is_stored(
    standin, wml_env, tmp_path, variable, value, offered
):
    env = {k: v for k, v in wml_env.items() if k != variable}
    if value is None:
        standin.software_specs = [n for n in standin.software_specs if "tensorflow" not in n]
    else:
        env[variable] = value
    proc = wml("submit", "--backend", "wml", "--run-id", "wml-spec", env=env, cwd=tmp_path)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert variable in line and offered in line and (value or "TensorFlow") in line
    assert not standin.uploads and not standin.trainings
    assert not [r for r in standin.requests if r["path"] == "/v2/assets"]
    assert not [k for k in all_objects_for(env) if k.startswith("runs/wml-spec")]


def test_check_asks_wml_for_the_space_and_specs(standin, wml_env, mnist_dir, tmp_path):
    env = {**wml_env, "DATA_URI": str(mnist_dir)}
    proc = wml("check", env=env, cwd=tmp_path)
    rows = {json.loads(line)["check"]: json.loads(line) for line in proc.stdout.splitlines()}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows["wml"]["detail"] == (
        "space space-0001: software tensorflow_rt24.1-py3.11, hardware V100"
    )
    proc = wml("check", env={**env, "WML_HARDWARE_SPEC": "A100x9"}, cwd=tmp_path)
    rows = {json.loads(line)["check"]: json.loads(line) for line in proc.stdout.splitlines()}
    assert proc.returncode == 78 and not rows["wml"]["passed"]
    assert "WML_HARDWARE_SPEC='A100x9'" in rows["wml"]["detail"]
    assert SECRET_KEY not in proc.stdout + proc.stderr
