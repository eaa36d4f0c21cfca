"""`make image-test`: the real Dockerfile built with podman and run as `docker run` would.

Run only through `make image-test` (IMAGE_TEST=1), which installs podman and creates the local
stand-in base image first. No registry is reachable here, so the CPU variant is built on that
stand-in; the GPU variant's base cannot be pulled and is not built here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from job.runstore.digest import sha256_file
from tests.support.s3 import all_objects, cos_env

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/mnist-job:image-test"
# Needs podman; the first test also builds the image (the fixture allows 30 min for that).
pytestmark = [pytest.mark.container, pytest.mark.timeout(2700)]
SMALL = ["-e", "TRAIN_LIMIT=2000", "-e", "TEST_LIMIT=500", "-e", "EPOCHS=2", "-e", "BATCH_SIZE=128"]


def podman(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def build(variant: str, tag: str) -> None:
    """The image as `make image VARIANT=...` builds it (docker/build.sh, with podman here)."""
    proc = subprocess.run(
        [str(ROOT / "docker" / "build.sh"), variant, tag], capture_output=True, text=True,
        timeout=2400, check=False, env={**os.environ, "ENGINE": "podman", "REVISION": "image-test"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="session")
def image() -> str:
    build("cpu", IMAGE)
    return IMAGE


def test_image_metadata(image):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", "job"] and config["Cmd"] == ["train"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.revision"] == "image-test"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"].startswith("/tmp")


def test_process_runs_as_non_root(image):
    proc = podman("run", "--rm", "--read-only", "--entrypoint", "id", image)
    assert proc.returncode == 0 and proc.stdout.startswith("uid=10001"), proc.stdout


def train_in_container(image: str, tmp_path, run_id: str, *options: str):
    """A small run as `docker run` would start it: read-only root, no network, results in a
    mounted folder; it must publish with every hash. Returns the process and the run folder."""
    out = tmp_path / "runs"
    out.mkdir()
    out.chmod(0o777)  # the container's user (10001) writes here
    proc = podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,size=2g", "--network", "none",
        "-v", f"{out}:/runs", "-e", f"RUN_ID={run_id}", *options, *SMALL, image,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / run_id
    for entry in json.loads((run / "_SUCCESS").read_text())["files"]:
        assert sha256_file(run / entry["path"]) == entry["sha256"], entry["path"]
    return proc, run


@pytest.mark.slow
def test_trains_to_a_mounted_folder_read_only(image, tmp_path):
    proc, run = train_in_container(image, tmp_path, "in-container")
    assert "Baseline Error: " in proc.stdout and "Results: /runs/in-container" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_source"] == "data/mnist", "the MNIST baked into the image"
    assert metrics["test_accuracy"] > 0.8
    # Written by the container's user, not by root.
    assert {p.stat().st_uid for p in run.rglob("*") if p.is_file()} == {10001}


@pytest.mark.slow
def test_trains_to_s3_on_the_host(image, s3_endpoint, bucket, tmp_path):
    # Credentials go in an env file, never on the command line.
    env_file = tmp_path / "cos.env"
    env_file.write_text(
        "\n".join(f"{k}={v}" for k, v in cos_env(s3_endpoint).items())
        + f"\nOUTPUT_URI=s3://{bucket}/runs\n"
    )
    os.chmod(env_file, 0o600)
    proc = podman(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,size=2g", "--network", "host",
        "--env-file", str(env_file), "-e", "RUN_ID=to-bucket", *SMALL, image,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    objects = all_objects(s3_endpoint, bucket)
    manifest = json.loads(objects["runs/to-bucket/_SUCCESS"])
    assert {e["path"] for e in manifest["files"]} >= {"metrics.json", "model/model.keras"}


@pytest.mark.slow
def test_a_cpu_limit_sizes_the_thread_pools(image, tmp_path):
    """`--cpus=1` on this 2-core machine: the cgroup quota (cpu.cfs_quota_us / cfs_period_us
    under podman's cgroup v1 here, cpu.max under v2), not the host's cores, sizes TensorFlow."""
    proc, _ = train_in_container(image, tmp_path, "one-cpu", "--cpus=1")
    (threads,) = [json.loads(s) for s in proc.stderr.splitlines() if '"event": "threads"' in s]
    assert (threads["threads"], threads["source"]) == (1, "cgroup quota")
