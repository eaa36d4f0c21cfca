"""The package as users install it: built (sdist, then the wheel from the sdist), installed into a
fresh virtual environment, and `submit --backend k8s` run from there, far from the repository,
with the manifests the wheel ships as package data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.support.jobs import ROOT, job_env
from tests.support.s3 import all_objects, cos_env
from tests.test_manifests import render
from tests.test_submit import RECORDER, recorded, stand_in

pytestmark = pytest.mark.slow


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`python -m build` offline: the sdist, then the wheel built from the unpacked sdist in a
    temporary folder (so the sdist must carry k8s/ too, and no build/ is left in the tree)."""
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check",
        "--outdir", dist, ROOT)  # fmt: skip
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with only the wheel installed; the dependencies come from
    .venv's site-packages through a .pth path line (no network). Path lines do not run the .pth
    files found there, so the editable install of the repository's `job` stays out of reach."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        "--no-index", "--no-compile", wheel)  # fmt: skip
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())  # fmt: skip
    deps = [p for p in sys.path if p.endswith("site-packages")]  # this process's, e.g. .venv's
    (site / "dev-venv-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    return venv


def test_the_wheel_ships_the_package_and_the_manifests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    manifests = {f"job/k8s/{p.relative_to(ROOT / 'k8s').as_posix()}"
                 for p in (ROOT / "k8s").rglob("*.yaml")}  # fmt: skip
    assert {"job/k8s/base/job.yaml", "job/k8s/overlays/gpu/kustomization.yaml"} <= manifests
    assert manifests <= names, sorted(manifests - names)
    # The package list in pyproject.toml is explicit (job.k8s is mapped): nothing left behind.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "job").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert not [n for n in names if n.startswith(("tests/", "k8s/", "data/"))]


def test_submit_k8s_from_the_installed_wheel(fresh, tmp_path, s3_endpoint, bucket):
    python = fresh / "bin" / "python"
    where = run(
        python, "-c",
        "import job, job.launch.k8s; print(job.__file__); print(job.launch.k8s.manifests_root())",
        env=job_env(), cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(fresh) for p in where), where

    bin_dir = stand_in(tmp_path, "kubectl", RECORDER)
    env = job_env(
        PATH=f"{bin_dir}:{job_env()['PATH']}",
        RECORD=str(tmp_path / "calls"),
        REAL_KUBECTL=shutil.which("kubectl"),
        OUTPUT_URI=f"s3://{bucket}/runs",  # a pod cannot see a local folder
        RECIPE="seed",
        **cos_env(s3_endpoint),
    )
    proc = run(python, "-m", "job", "submit", "--backend", "k8s", "--overlay", "gpu",
               "--run-id", "wheel-test", env=env, cwd=tmp_path)  # fmt: skip
    assert "Run id: wheel-test" in proc.stdout.splitlines()

    (call,) = recorded(tmp_path / "calls")
    assert call["argv"] == ["apply", "-f", "-"]
    applied = [d for d in yaml.safe_load_all(call["stdin"]) if d]
    (job,) = [d for d in applied if d["kind"] == "Job"]
    (overlay_job,) = [d for d in render("gpu") if d["kind"] == "Job"]
    assert job["metadata"]["name"] == "wheel-test"
    container = job["spec"]["template"]["spec"]["containers"][0]
    expected = overlay_job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == expected["image"]
    assert container["resources"] == expected["resources"]  # the overlay's GPU limit
    assert container["envFrom"] == expected["envFrom"]  # the overlay's ConfigMap
    assert container["env"][: len(expected["env"])] == expected["env"]  # RUN_ID, Secret refs
    added = {e["name"]: e["value"] for e in container["env"][len(expected["env"]) :]}
    assert added["RECIPE"] == "seed"  # the job's settings, added to the overlay's
    submission = json.loads(all_objects(s3_endpoint, bucket)["runs/wheel-test/submission.json"])
    assert submission["backend"] == "k8s" and submission["handle"] == "wheel-test"
