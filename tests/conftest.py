"""Shared fixtures: real MNIST from `make data`, and the job run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3"]  # the S3 server and bucket fixtures
# The container tests need podman and a local base image: `make image-test` runs them.
collect_ignore = [] if os.environ.get("IMAGE_TEST") else ["image"]

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = ROOT / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"real MNIST is missing from {MNIST_DIR}: run `make data` first")
    return MNIST_DIR


def job_env(**overrides: str) -> dict[str, str]:
    """A clean environment for the job: PATH and friends, none of the job's own variables."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SSL_CERT_FILE", "OPENBLAS_CORETYPE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


def run_job(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m job ARGS` in `cwd` (so no stray .env is read), capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_job(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """`python -m job ARGS` in the background, for tests that stop or kill it mid-run."""
    return subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_in_process(
    tmp_path: Path, mnist_dir: Path, *, store=None, guard=None, **env: str
) -> tuple[dict, Path]:
    """One run through `job.train.run` in this process, on real MNIST and a real LocalStore
    under tmp_path/out (like tensorflow/models' mnist_test): the training path without the
    cost of a new interpreter and a TensorFlow import. Returns (metrics, run folder)."""
    from job import config, train

    cfg = config.from_env({"DATA_URI": str(mnist_dir), "OUTPUT_URI": str(tmp_path / "out"), **env})
    result = train.run(cfg, store=store, guard=guard)  # None: the store OUTPUT_URI names
    return result, tmp_path / "out" / cfg.run_id
