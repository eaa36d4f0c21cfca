"""Shared fixtures: real MNIST from `make data`; the S3 server and bucket (tests.support.s3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.jobs import ROOT

pytest_plugins = ["tests.support.s3"]  # the S3 server and bucket fixtures
# The container tests need podman and a local base image: `make image-test` runs them.
collect_ignore = [] if os.environ.get("IMAGE_TEST") else ["image"]

MNIST_DIR = ROOT / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"real MNIST is missing from {MNIST_DIR}: run `make data` first")
    return MNIST_DIR
