"""The WML backend with the real `ibm-watsonx-ai` client (the `[wml]` extra, in the main
environment) against the TLS stand-in of the WML REST endpoints (tests/support/wml_standin.py),
and the loopback S3 server; the deprecated `ibm-watson-machine-learning` in its own small
environment (`make venv-wml-deprecated`).

The stand-in answers on https://127.0.0.1 as IBM Cloud and on https://localhost as a Cloud Pak
for Data cluster (the harness's sitecustomize tells the clients so); tests of the Cloud Pak sign-in
and storage carry `cpd` in their names, those of Runtime 25.1 `rt25`. The light commands run
in-process (`cli`): the client's import then costs once per test session.
"""

from __future__ import annotations

import io
import json
import queue
import runpy
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile

import pytest

from job.config import sections
from job.errors import ConfigError
from job.launch import wml as wml_backend
from tests.support.jobs import ROOT, cli, job_env, run_job
from tests.support.s3 import SECRET_KEY, all_objects, cos_env
from tests.support.wml_standin import WMLStandIn
from tests.test_storage import upload_slice

DEPRECATED_PYTHON = ROOT / ".venv-wml-deprecated" / "bin" / "python"
HARNESS = ROOT / "tests" / "support" / "wml_harness"
CLOUD_APIKEY = "cloud-apikey-0123456789abcdef"
CPD_USER, CPD_APIKEY, CPD_PASSWORD = "data-scientist", "cpd-apikey-0123456789", "pw-1"
# The sign-ins, as variables on top of WML_URL (https://127.0.0.1: IBM Cloud; localhost: CPD).
SIGN_INS = {
    "cloud-apikey": {"WML_APIKEY": CLOUD_APIKEY},
    "cloud-token": {"WML_TOKEN": None},  # a token the stand-in issued
    "cpd-apikey": {"WML_USERNAME": CPD_USER, "WML_APIKEY": CPD_APIKEY},
    "cpd-password": {"WML_USERNAME": CPD_USER, "WML_PASSWORD": CPD_PASSWORD},
    "cpd-token": {"WML_TOKEN": None},
}


@pytest.fixture(scope="module", autouse=True)
def harness():
    """The harness's sitecustomize, run in this process for the in-process commands (it only
    widens which hosts the clients accept; subprocesses get it through PYTHONPATH)."""
    runpy.run_path(str(HARNESS / "sitecustomize.py"))


@pytest.fixture
def standin(tmp_path):
    server = WMLStandIn(tmp_path)
    server.cloud_apikeys.add(CLOUD_APIKEY)
    server.cpd_users[CPD_USER] = {"api_key": CPD_APIKEY, "password": CPD_PASSWORD}
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
        WML_TOKEN=standin.issue_token(iam_id="test"),
        WML_SPACE_ID="space-0001",
        WML_HARDWARE_SPEC="V100",
        WML_SOFTWARE_SPEC="tensorflow_rt24.1-py3.11",
        WML_NODES="1",
        WML_CA_BUNDLE=str(standin.cert),  # trust the stand-in's certificate, verified
        # The repository (the job package) and the harness's sitecustomize.
        PYTHONPATH=f"{ROOT}:{HARNESS}",
    )


def signed_in_as(shape: str, standin: WMLStandIn, env: dict) -> dict:
    """`env` with only the variables of one sign-in (SIGN_INS) and the URL of its platform."""
    env = {k: v for k, v in env.items() if k not in ("WML_TOKEN", "WML_APIKEY")}
    url = (
        standin.url if shape.startswith("cloud") else standin.url.replace("127.0.0.1", "localhost")
    )
    variables = {k: v or standin.issue_token(username=CPD_USER) for k, v in SIGN_INS[shape].items()}
    if shape == "cloud-apikey":  # IBM Cloud's IAM, here the stand-in's token route
        variables["WML_AUTH_URL"] = f"{standin.url}/identity/token"
    return {**env, "WML_URL": url, **variables}


def wml(*args: str, env: dict, cwd, python=None) -> subprocess.CompletedProcess:
    """The submitter: in this process (`cli`), or in another environment's interpreter."""
    if python is None:
        return cli(*args, env=env, cwd=cwd)
    assert python.exists(), f"run `make` for {python} (make test does)"
    return subprocess.run(
        [str(python), "-m", "job", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip


def submit(run_id: str, env: dict, cwd, python=None) -> tuple[str, dict]:
    proc = wml("submit", "--backend", "wml", "--run-id", run_id, env=env, cwd=cwd, python=python)
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
            [sys.executable, "-m", "job", "watch", "wml-ok", "--interval", "0.2",
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
    *events, result = [json.loads(line) for line in out.splitlines()]  # a pipe: JSON only
    states = [e["state"] for e in events if e["event"] == "platform"]
    assert states[:2] == ["queued", "running"]
    assert result["outcome"] == "succeeded"
    assert any(line.startswith("Baseline Error: ") for line in result["summary"])
    assert (tmp_path / "got" / "metrics.json").is_file()
    assert SECRET_KEY not in out + err


def test_watch_reports_a_wml_failure(standin, wml_env, tmp_path):
    training_id, _ = submit("wml-fail", wml_env, tmp_path)
    standin.set_state(training_id, "failed", "Out of memory on the GPU (exit 137)")
    proc = wml("watch", "wml-fail", "--interval", "0.2", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed on the platform: Out of memory on the GPU (exit 137)" in proc.stdout


def test_watch_of_a_training_deleted_in_wml_reports_it_failed(standin, wml_env, tmp_path):
    training_id, _ = submit("wml-gone", wml_env, tmp_path)
    del standin.trainings[training_id]  # deleted in WML: it answers 404
    proc = wml("watch", "wml-gone", "--interval", "0.2", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # failed, not 70 (a bug)
    assert f"WML has no training {training_id} (HTTP 404)" in proc.stdout


def test_cancel_goes_through_wml(standin, wml_env, tmp_path):
    training_id, _ = submit("wml-cancel", wml_env, tmp_path)
    proc = wml("cancel", "wml-cancel", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"method": "DELETE", "path": f"/ml/v4/trainings/{training_id}"}.items() <= next(
        r for r in standin.requests if r["method"] == "DELETE"
    ).items()
    watched = wml("watch", "wml-cancel", "--interval", "0.2", env=wml_env, cwd=tmp_path)
    assert watched.returncode == 4, watched.stdout + watched.stderr


def test_the_deprecated_client_submits_watches_and_cancels(standin, wml_env, tmp_path):
    """ibm-watson-machine-learning, where it is the client installed (its own environment:
    it needs numpy 1.x), makes the same calls."""
    env = {**wml_env, "WML_APIKEY": CLOUD_APIKEY}  # the token wins: the API key is not used
    probe = subprocess.run(
        [str(DEPRECATED_PYTHON), "-c", "import ibm_watsonx_ai"], capture_output=True, check=False
    )
    assert probe.returncode != 0, "the deprecated client's environment has only that client"
    training_id, _ = submit("wml-old", env, tmp_path, python=DEPRECATED_PYTHON)
    assert standin.trainings[training_id]["entity"]["model_definition"]["software_spec"] == {
        "name": "tensorflow_rt24.1-py3.11"
    }
    proc = wml("cancel", "wml-old", env=env, cwd=tmp_path, python=DEPRECATED_PYTHON)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    watched = wml("watch", "wml-old", "--interval", "0.2", env=env, cwd=tmp_path,
                  python=DEPRECATED_PYTHON)  # fmt: skip
    assert watched.returncode == 4, watched.stdout + watched.stderr
    assert not [r for r in standin.requests if r["path"].startswith("/identity")]


def test_rt25_unset_specs_take_the_newest_tensorflow_runtime_and_gpu(standin, wml_env, tmp_path):
    env = {k: v for k, v in wml_env.items() if k not in ("WML_SOFTWARE_SPEC", "WML_HARDWARE_SPEC")}
    training_id, submission = submit("wml-newest", env, tmp_path)
    definition = standin.trainings[training_id]["entity"]["model_definition"]
    # Offered: runtime-24.1-py3.11 (no TensorFlow), runtime-25.1-py3.12 (TensorFlow 2.18),
    # tensorflow_rt24.1-py3.11 and its -edt variant; K80, K80x2, V100, V100x2, A100x2 and CPUs.
    assert definition["software_spec"] == {"name": "runtime-25.1-py3.12"}
    assert definition["hardware_spec"] == {"name": "V100", "nodes": 1}, "newest one-GPU spec"
    assert (submission["software_spec"], submission["hardware_spec"]) == (
        "runtime-25.1-py3.12", "V100",
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
        standin.software_specs = [
            n for n in standin.software_specs if not wml_backend.tensorflow_runtime(n)
        ]
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
        "space space-0001: software tensorflow_rt24.1-py3.11, hardware V100 (TensorFlow "
        "runtimes offered: runtime-25.1-py3.12, tensorflow_rt24.1-py3.11; hardware offered: "
        "A100x2, K80, K80x2, L, M, S, V100, V100x2, XL, XS, XXS)"
    )
    proc = wml("check", env={**env, "WML_HARDWARE_SPEC": "A100x9"}, cwd=tmp_path)
    rows = {json.loads(line)["check"]: json.loads(line) for line in proc.stdout.splitlines()}
    assert proc.returncode == 78 and not rows["wml"]["passed"]
    assert "WML_HARDWARE_SPEC='A100x9'" in rows["wml"]["detail"]
    assert SECRET_KEY not in proc.stdout + proc.stderr


# The sign-in routes: what a client calls before it has a token.
SIGN_IN_PATHS = ("/identity/token", "/icp4d-api/v1/authorize")


@pytest.mark.parametrize("shape", list(SIGN_INS))
def test_each_sign_in_submits_and_watches(shape, standin, wml_env, tmp_path):
    """IBM Cloud (API key exchanged at IAM, or a token) and Cloud Pak for Data (user with an API
    key or a password, or a token): the real client signs in, submits, and watch follows."""
    env = signed_in_as(shape, standin, wml_env)
    run_id = f"wml-{shape}"
    training_id, _ = submit(run_id, env, tmp_path)
    standin.set_state(training_id, "failed", "preempted by the test")
    watched = wml("watch", run_id, "--interval", "0.2", env=env, cwd=tmp_path)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "failed on the platform: preempted by the test" in watched.stdout

    sign_ins = [r for r in standin.requests if r["path"] in SIGN_IN_PATHS]
    if shape == "cloud-apikey":
        assert {r["path"] for r in sign_ins} == {"/identity/token"}
    elif shape.startswith("cpd-") and not shape.endswith("token"):
        secret = {"api_key": CPD_APIKEY} if shape == "cpd-apikey" else {"password": CPD_PASSWORD}
        assert sign_ins and all(
            r["path"] == "/icp4d-api/v1/authorize" and r["json"] == {"username": CPD_USER, **secret}
            for r in sign_ins
        ), sign_ins
    else:
        assert not sign_ins, "a token is used as it is"
    # Every other call carried a token the stand-in issued: it answers 401 to anything else.
    for secret in (CLOUD_APIKEY, CPD_APIKEY, SECRET_KEY):
        assert secret not in watched.stdout + watched.stderr


@pytest.mark.parametrize(
    ("shape", "variable", "wrong"),
    [
        ("cpd-password", "WML_PASSWORD", "not-the-password"),
        ("cpd-apikey", "WML_APIKEY", "not-the-api-key-0000"),
        ("cloud-apikey", "WML_APIKEY", "not-the-api-key-0000"),
    ],
)
def test_refused_credentials_are_78_naming_the_variable(
    shape, variable, wrong, standin, wml_env, tmp_path
):
    env = {**signed_in_as(shape, standin, wml_env), variable: wrong}
    if shape.startswith("cpd"):  # not the cluster's (5.2): the client warns, in prose
        env["WML_CPD_VERSION"] = "5.1"
    for args in (("submit", "--backend", "wml", "--run-id", "wml-wrong"), ("check",)):
        proc = wml(*args, env=env, cwd=tmp_path)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 78, said
        assert f"{variable}=" in said and "accepts" in said and wrong not in said
        # What the client logs and warns arrives as the job's JSON events, not raw prose.
        lines = proc.stderr.strip().splitlines()
        events = [json.loads(line) for line in lines if not line.startswith("error: ")]
        assert len(events) >= len(lines) - 1
        if shape.startswith("cpd"):
            assert any(e["event"] == "library_warning" and "5.1" in e["message"] for e in events)
    assert not standin.uploads and not standin.trainings
    assert not [k for k in all_objects_for(env) if k.startswith("runs/wml-wrong")]


def test_cpd_an_unreachable_cluster_is_75(standin, wml_env, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**signed_in_as("cpd-password", standin, wml_env), "WML_URL": f"https://localhost:{port}"}
    proc = wml("submit", "--backend", "wml", "--run-id", "wml-away", env=env, cwd=tmp_path)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert f"cannot reach WML_URL=https://localhost:{port}" in proc.stderr
    assert not [k for k in all_objects_for(env) if k.startswith("runs/wml-away")]


def test_cpd_data_and_results_through_a_connection_asset(standin, wml_env, tmp_path):
    """With WML_CONNECTION_ID the references name the space's connection asset and carry no
    HMAC key; an id the space does not have is 78 before anything is stored."""
    standin.connections.add("conn-cos-0001")
    env = {**signed_in_as("cpd-apikey", standin, wml_env), "WML_CONNECTION_ID": "conn-cos-0001"}
    training_id, _ = submit("wml-conn", env, tmp_path)
    body = standin.trainings[training_id]["entity"]
    bucket = env["OUTPUT_URI"].removeprefix("s3://").split("/")[0]
    assert body["training_data_references"] == [
        {"type": "connection_asset", "connection": {"id": "conn-cos-0001"},
         "location": {"bucket": bucket, "path": "mnist"}},
    ]  # fmt: skip
    assert body["results_reference"] == {
        "type": "connection_asset", "connection": {"id": "conn-cos-0001"},
        "location": {"bucket": bucket, "path": "runs"},
    }  # fmt: skip
    sent = json.dumps([r["json"] for r in standin.requests])
    assert SECRET_KEY not in sent and env["COS_ACCESS_KEY_ID"] not in sent

    proc = wml("submit", "--backend", "wml", "--run-id", "wml-noconn", env={
        **env, "WML_CONNECTION_ID": "conn-elsewhere"}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "WML_CONNECTION_ID='conn-elsewhere'" in proc.stderr and "space-0001" in proc.stderr
    assert len(standin.trainings) == 1 and len(standin.uploads) == 1
    assert not [k for k in all_objects_for(env) if k.startswith("runs/wml-noconn")]


def test_without_a_client_check_watch_and_cancel_are_78_with_a_hint(
    standin, wml_env, tmp_path, monkeypatch
):
    submit("wml-noclient", wml_env, tmp_path)
    for module in wml_backend.CLIENTS:  # neither client can be imported from here on
        monkeypatch.setitem(sys.modules, module, None)
    for args in (("check",), ("watch", "wml-noclient"), ("cancel", "wml-noclient")):
        proc = wml(*args, env=wml_env, cwd=tmp_path)
        assert proc.returncode == 78, (args, proc.stdout + proc.stderr)
        assert "pip install 'mnist-job[wml]'" in proc.stdout + proc.stderr, args


def test_credentials_for_each_sign_in_and_what_is_missing(tmp_path):
    base = {"url": "https://cpd.example.com/", "space_id": "s1"}

    def given(maintained=True, **settings):
        return wml_backend.credentials(sections.Wml(**base, **settings), maintained=maintained)

    url = "https://cpd.example.com"
    on = {"url": url, "verify": True}  # always verified, by the system's CAs by default
    assert given(apikey="k" * 20) == {**on, "apikey": "k" * 20}
    assert given(token="t", apikey="k") == {**on, "token": "t"}, "a token wins"
    assert given(username="u", password="p", cpd_version="5.2") == {
        **on, "username": "u", "password": "p", "version": "5.2"
    }, "ibm-watsonx-ai: no instance id (it warns about one)"  # fmt: skip
    assert given(False, username="u", apikey="k") == {
        **on, "username": "u", "apikey": "k", "instance_id": "openshift"
    }, "the deprecated client: the computed default"  # fmt: skip
    assert given(False, username="u", apikey="k", instance_id="icp")["instance_id"] == "icp"
    assert given(False, token="t", instance_id="openshift") == {
        **on, "token": "t", "instance_id": "openshift"
    }, "a Cloud Pak token to the deprecated client: the instance id says Cloud Pak"  # fmt: skip
    assert given(token="t", instance_id="openshift") == {**on, "token": "t"}
    from tests.support.wml_standin import self_signed

    bundle, _ = self_signed(tmp_path)
    assert given(apikey="k", ca_bundle=str(bundle), auth_url="https://iam.example.com/t") == {
        "url": url, "apikey": "k", "verify": str(bundle), "auth_url": "https://iam.example.com/t"
    }  # fmt: skip
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    for settings, variable in [
        ({"username": "u"}, "WML_PASSWORD"),
        ({"password": "p"}, "WML_USERNAME"),
        ({}, "WML_APIKEY"),
        ({"apikey": "k", "ca_bundle": str(tmp_path / "absent.pem")}, "WML_CA_BUNDLE"),
        ({"apikey": "k", "ca_bundle": str(garbage)}, "WML_CA_BUNDLE"),
        ({"apikey": "k", "ca_bundle": str(tmp_path)}, "WML_CA_BUNDLE"),
    ]:
        with pytest.raises(ConfigError) as refused:
            given(**settings)
        assert refused.value.variable == variable, settings
    with pytest.raises(ConfigError) as refused:
        wml_backend.credentials(sections.Wml(url="https://x.example.com"), maintained=True)
    assert refused.value.variable == "WML_SPACE_ID"


@pytest.mark.parametrize("shape", ["cloud-apikey", "cpd-password"])
def test_an_untrusted_certificate_is_78_and_no_credential_is_sent(
    shape, standin, wml_env, tmp_path
):
    """Without WML_CA_BUNDLE the stand-in's self-signed certificate is not trusted: the sign-in
    stops at TLS (ibm-watsonx-ai would otherwise retry unverified and send the key)."""
    env = {k: v for k, v in signed_in_as(shape, standin, wml_env).items() if k != "WML_CA_BUNDLE"}
    proc = wml("submit", "--backend", "wml", "--run-id", "wml-tls", env=env, cwd=tmp_path)
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "WML_CA_BUNDLE=''" in proc.stderr and "certificate authority" in proc.stderr
    assert not standin.requests, "nothing reached the server: no key, no password"


def test_failures_are_classed_by_status_not_by_numbers_in_ids(standin, wml_env, tmp_path):
    def submitted(env: dict, run_id: str):
        return wml("submit", "--backend", "wml", "--run-id", run_id, env=env, cwd=tmp_path)

    # A space that does not exist, whose id holds "401": the space, not the credentials.
    proc = submitted({**wml_env, "WML_SPACE_ID": "space-401abc"}, "wml-nospace")
    assert proc.returncode == 78 and "WML_SPACE_ID='space-401abc'" in proc.stderr, proc.stderr
    # A token WML does not know: 401, the token.
    proc = submitted({**wml_env, "WML_TOKEN": "an-expired-token-0000"}, "wml-expired")
    assert proc.returncode == 78 and "WML_TOKEN='***'" in proc.stderr, proc.stderr
    assert "HTTP 401" in proc.stderr and "an-expired-token-0000" not in proc.stderr
    # The service failing while the training is started: 75, and nothing raw on stderr.
    # 507: a 5xx the client does not retry itself (it retries 500, 502-504 a few times).
    standin.failures[("POST", "/ml/v4/trainings")] = [507]
    proc = submitted(wml_env, "wml-5xx")
    assert proc.returncode == 75 and "answered HTTP 507" in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith(("{", "error: ")) for line in lines), lines
    assert not standin.trainings


def test_watch_rides_out_a_failing_status_poll(standin, wml_env, tmp_path):
    training_id, _ = submit("wml-blip", wml_env, tmp_path)
    standin.failures[("GET", f"/ml/v4/trainings/{training_id}")] = [507, 507]
    standin.set_state(training_id, "failed", "out of quota")
    proc = wml("watch", "wml-blip", "--interval", "0.1", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    states = [
        json.loads(line)["state"] for line in proc.stdout.splitlines() if '"platform"' in line
    ]
    assert states == ["unknown", "failed"]
    assert '"platform_unreachable"' in proc.stderr


def test_the_default_runtime_is_a_proven_one_while_wml_offers_one():
    wml_settings = sections.Wml(url="https://x.example.com", space_id="s")
    hardware = ["V100"]
    newer = ["runtime-25.1-py3.12", "runtime-26.1-py3.13", "tensorflow_rt24.1-py3.11"]
    assert wml_backend.choose_specs(wml_settings, newer, hardware)[0] == "runtime-25.1-py3.12"
    only_new = ["runtime-26.1-py3.13", "runtime-24.1-py3.11"]
    assert wml_backend.choose_specs(wml_settings, only_new, hardware)[0] == "runtime-26.1-py3.13"
    assert wml_backend.choose_specs(wml_settings, ["runtime-25.10-py3.12", "runtime-25.1-py3.12"],
                                    hardware)[0] == "runtime-25.1-py3.12"  # fmt: skip


def test_a_secret_a_server_quoted_is_still_scrubbed():
    from job import logs

    secret = 'Pa\\ss"wörd-long-enough'
    echoed = json.dumps({"password": secret}) + " " + json.dumps({"p": secret}, ensure_ascii=False)
    line = logs.error_line(f"refused: {echoed} form=" + urllib.parse.quote_plus(secret), [secret])
    assert "rd-long" not in line and "***" in line, line
