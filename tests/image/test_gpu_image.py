"""`make image-test-gpu`: the GPU variant (tensorflow[and-cuda] from requirements-gpu.lock, on
the same slim base) built with podman and run on this machine, which has no GPU.

Not part of `make test`/CI: building it downloads about 3 GB of NVIDIA wheels (sizes and build
times in the README). Run it after changing the Dockerfile or requirements-gpu.lock.
"""

from __future__ import annotations

import json

import pytest

from tests.image.test_image import build, podman, train_in_container

IMAGE = "localhost/mnist-job:gpu-test"
pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


@pytest.fixture(scope="session")
def gpu_image() -> str:
    build("gpu", IMAGE)
    return IMAGE


def test_the_gpu_image_holds_the_cuda_build(gpu_image):
    proc = podman(
        "run", "--rm", "--entrypoint", "python", gpu_image, "-c",
        "import importlib.metadata as m, tensorflow as tf; "
        "print(tf.__version__, tf.test.is_built_with_cuda(), m.version('nvidia-cudnn-cu12'))",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, cuda, cudnn = proc.stdout.split()
    assert version == "2.21.0" and cuda == "True" and cudnn.startswith("9.")


@pytest.mark.slow
def test_without_a_gpu_it_says_so_once_trains_on_the_cpu_and_publishes(gpu_image, tmp_path):
    proc, run = train_in_container(gpu_image, tmp_path, "gpu-image-on-cpu")
    lines = proc.stderr.splitlines()
    assert all(line.startswith("{") for line in lines), "JSON log lines only, no native noise"
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events].count("no_gpu") == 1
    model = next(e for e in events if e["event"] == "model")
    assert model["strategy"] == "default" and model["precision"] in ("float32", "bfloat16")
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] > 0.8
