"""The submitter: launch on local, docker and k8s, follow from the bucket, list, cancel."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from job.errors import DataError
from tests.support.jobs import cli, job_env, run_job, train_with
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, all_objects, cos_env
from tests.test_manifests import venv_tool
from tests.test_storage import upload_slice

WATCH = ["--interval", "0.2"]


@pytest.fixture
def contract(s3_endpoint, bucket, mnist_dir):
    """The job's variables for a small real run against the loopback S3 server."""
    from job.training import data
    from job.training.data import IDX_FILES

    ds = data.load("mnist", str(mnist_dir)).limited(2000, 500)
    data_uri = upload_slice(s3_endpoint, bucket, {k: getattr(ds, k) for k in IDX_FILES})
    return job_env(
        **cos_env(s3_endpoint),
        DATA_URI=data_uri,
        OUTPUT_URI=f"s3://{bucket}/runs",
        RECIPE="seed",
        EPOCHS="3",
    )


@pytest.mark.slow
def test_submit_local_wait_follows_every_epoch_and_downloads(
    contract, s3_endpoint, bucket, tmp_path
):
    proc = run_job(
        "submit", "--backend", "local", "--run-id", "sub-local", "--wait", *WATCH,
        "--stall-after", "120", "--dest", str(tmp_path / "got"), env=contract, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # On a pipe, --wait prints JSON lines only: the submission, the progress, the result.
    submitted, *progress, result = [json.loads(line) for line in proc.stdout.splitlines()]
    assert submitted["event"] == "submitted" and submitted["run_id"] == "sub-local"
    assert submitted["results"] == f"s3://{bucket}/runs/sub-local"
    assert [p["epoch"] for p in progress if p["state"] == "running" and "loss" in p] == [1, 2, 3]
    assert result["event"] == "result" and result["outcome"] == "succeeded"
    assert result["exit_code"] == 0 and 0 < result["test_accuracy"] <= 1
    assert any(line.startswith("Baseline Error: ") for line in result["summary"])
    assert any(line.startswith("Worst classes (recall): ") for line in result["summary"])
    # The downloaded files are the bucket's, byte for byte, as _SUCCESS lists them.
    objects = all_objects(s3_endpoint, bucket)
    manifest = json.loads(objects["runs/sub-local/_SUCCESS"])
    downloaded = {
        p.relative_to(tmp_path / "got").as_posix()
        for p in (tmp_path / "got").rglob("*")
        if p.is_file()
    }
    listed = {e["path"]: e["sha256"] for e in manifest["files"]}
    assert downloaded == {"metrics.json", "report.html"} | {
        p for p in listed if p.startswith("images/")
    }
    for path in downloaded:
        assert hashlib.sha256((tmp_path / "got" / path).read_bytes()).hexdigest() == listed[path]
    submission = json.loads(objects["runs/sub-local/submission.json"])
    assert submission["backend"] == "local" and int(submission["handle"]) > 0
    # The child's log: a new file in a new private folder, named by the record.
    log = Path(submission["log"])
    assert log.parent.stat().st_mode & 0o777 == 0o700 and log.stat().st_mode & 0o777 == 0o600
    assert '"event": "run_published"' in log.read_text()


def start_long_local_run(run_id: str, contract: dict, endpoint: str, bucket: str, cwd) -> dict:
    """Submit a 50-epoch local run and return its submission once epoch 1 is in the bucket."""
    env = {**contract, "EPOCHS": "50"}
    proc = run_job("submit", "--backend", "local", "--run-id", run_id, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        objects = all_objects(endpoint, bucket)
        status = objects.get(f"runs/{run_id}/status.json")
        if status and json.loads(status).get("epoch", 0) >= 1:
            return json.loads(objects[f"runs/{run_id}/submission.json"])
        time.sleep(0.2)
    raise AssertionError(f"{run_id} never finished an epoch")


@pytest.mark.slow
def test_watch_reports_a_killed_run_as_stalled(contract, s3_endpoint, bucket, tmp_path):
    submission = start_long_local_run("sub-killed", contract, s3_endpoint, bucket, tmp_path)
    os.kill(int(submission["handle"]), signal.SIGKILL)
    proc = cli("watch", "sub-killed", *WATCH, "--stall-after", "4", env=contract, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "stalled: last heartbeat" in proc.stdout


@pytest.mark.slow
def test_cancel_stops_a_local_run(contract, s3_endpoint, bucket, tmp_path):
    start_long_local_run("sub-cancel", contract, s3_endpoint, bucket, tmp_path)
    cancelled = run_job("cancel", "sub-cancel", env=contract, cwd=tmp_path)
    assert cancelled.returncode == 0 and "stopped local" in cancelled.stdout
    proc = cli("watch", "sub-cancel", *WATCH, "--stall-after", "60", env=contract, cwd=tmp_path)
    assert proc.returncode == 4 and "cancelled" in proc.stdout
    for _ in range(100):  # the job itself checkpoints and records `preempted` on SIGTERM
        status = json.loads(all_objects(s3_endpoint, bucket)["runs/sub-cancel/status.json"])
        if status["state"] == "preempted":
            break
        time.sleep(0.2)
    assert status["state"] == "preempted"


@pytest.mark.slow
def test_runs_lists_state_and_accuracy(tmp_path, mnist_dir):
    env = job_env(
        OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(mnist_dir), RECIPE="seed",
        TRAIN_LIMIT="500", TEST_LIMIT="100", EPOCHS="1",
    )  # fmt: skip
    train_with({**env, "RUN_ID": "listed-ok"})
    bad = {**env, "RUN_ID": "listed-bad", "DATA_URI": str(tmp_path / "missing")}
    with pytest.raises(DataError):  # recorded in the run as its failure, as a process would
        train_with(bad)
    proc = cli("runs", env=env, cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()}
    assert rows["listed-ok"][1] == "succeeded" and rows["listed-ok"][5].endswith("%")
    assert rows["listed-bad"][1] == "failed"


def stand_in(tmp_path: Path, name: str, body: str) -> Path:
    """A recording stand-in for a CLI (no Docker engine or API server runs here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!{sys.executable}\n{body}")
    tool.chmod(0o755)
    return bin_dir


RECORDER = """
import json, os, sys
args = sys.argv[1:]
record = {"argv": args}
if "--env-file" in args:
    record["env_file"] = open(args[args.index("--env-file") + 1]).read()
if args[:2] == ["apply", "-f"]:
    record["stdin"] = sys.stdin.read()
if args[:1] == ["kustomize"]:
    os.execv(os.environ["REAL_KUBECTL"], ["kubectl", *args])
with open(os.environ["RECORD"], "a") as fh:
    fh.write(json.dumps(record) + "\\n")
"""


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_docker_backend_keeps_credentials_off_the_command_line(
    contract, s3_endpoint, bucket, tmp_path
):
    """With a recording stand-in of `docker`: no Docker engine runs on these machines (the real
    image is built and run with podman by `make image-test`)."""
    bin_dir = stand_in(tmp_path, "docker", RECORDER)
    env = {**contract, "PATH": f"{bin_dir}:{contract['PATH']}", "RECORD": str(tmp_path / "calls")}
    proc = run_job(
        "submit", "--backend", "docker", "--run-id", "sub-docker", "--gpus",
        "--image", "reg/mnist:1", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (call,) = recorded(tmp_path / "calls")
    argv = call["argv"]
    assert argv[:2] == ["run", "-d"] and argv[-2:] == ["reg/mnist:1", "train"]
    assert "--gpus" in argv and argv[argv.index("--gpus") + 1] == "all"
    assert "RUN_ID=sub-docker" in argv
    assert not [a for a in argv if ACCESS_KEY in a or SECRET_KEY in a]
    assert f"COS_SECRET_ACCESS_KEY={SECRET_KEY}" in call["env_file"].splitlines()
    assert f"OUTPUT_URI=s3://{bucket}/runs" in call["env_file"].splitlines()
    submission = json.loads(all_objects(s3_endpoint, bucket)["runs/sub-docker/submission.json"])
    assert submission == {**submission, "backend": "docker", "handle": "mnist-job-sub-docker"}

    cancel_proc = run_job("cancel", "sub-docker", env=env, cwd=tmp_path)
    assert cancel_proc.returncode == 0, cancel_proc.stderr
    assert recorded(tmp_path / "calls")[-1]["argv"] == [
        "stop",
        "--time",
        "60",
        "mnist-job-sub-docker",
    ]


def test_k8s_backend_applies_the_rendered_job(contract, s3_endpoint, bucket, tmp_path):
    """With a recording stand-in of `kubectl` (kustomize runs for real; `apply` and `delete`
    are recorded): no API server can run here."""
    bin_dir = stand_in(tmp_path, "kubectl", RECORDER)
    env = {
        **contract,
        "PATH": f"{bin_dir}:{contract['PATH']}",
        "RECORD": str(tmp_path / "calls"),
        "REAL_KUBECTL": shutil.which("kubectl"),
    }
    proc = run_job(
        "submit", "--backend", "k8s", "--run-id", "sub-k8s", "--image", "reg.example/mnist:2.0",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (call,) = recorded(tmp_path / "calls")
    assert call["argv"] == ["apply", "-f", "-"]
    manifest = tmp_path / "job.yaml"
    manifest.write_text(call["stdin"])
    check = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", "1.32", str(manifest)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout
    docs = [d for d in yaml.safe_load_all(call["stdin"]) if d]
    assert {d["kind"] for d in docs} == {"ConfigMap", "Job", "NetworkPolicy"}
    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"] == "sub-k8s" and container["image"] == "reg.example/mnist:2.0"
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["EPOCHS"]["value"] == "3" and env_vars["RECIPE"]["value"] == "seed"
    assert env_vars["OUTPUT_URI"]["value"] == f"s3://{bucket}/runs"
    # The keys come as files from the mounted Secret (*_FILE), never as values in the env.
    assert "COS_SECRET_ACCESS_KEY" not in env_vars
    assert env_vars["COS_SECRET_ACCESS_KEY_FILE"]["value"].startswith("/var/run/secrets/")
    assert SECRET_KEY not in call["stdin"] and ACCESS_KEY not in call["stdin"]

    assert run_job("cancel", "sub-k8s", env=env, cwd=tmp_path).returncode == 0
    assert recorded(tmp_path / "calls")[-1]["argv"] == [
        "delete",
        "job",
        "sub-k8s",
        "--namespace",
        "mnist-job",
        "--wait=false",
    ]


def test_submitter_commands_never_import_tensorflow(tmp_path):
    poisoned = tmp_path / "poison" / "tensorflow"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('the submitter must not import me')")
    env = job_env(PYTHONPATH=str(tmp_path / "poison"), OUTPUT_URI=str(tmp_path / "out"))
    for args in (["submit", "--help"], ["watch", "--help"], ["runs"]):
        proc = run_job(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr)
    assert (
        "Exit codes: 0 succeeded, 1 failed, 3 stalled"
        in cli("watch", "--help", env=env, cwd=tmp_path).stdout
    )
