"""CPUs the job may use: cgroup v1/v2 quotas and the affinity mask, on fake cgroup folders."""

from __future__ import annotations

import json

import pytest

from job.training import cpus
from tests.support.jobs import job_env, run_job


def cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "host_cpus", "expected"),
    [
        ({"cpu.max": "200000 100000"}, 64, (2, "cgroup quota")),  # v2: 2 CPUs of 64
        ({"cpu.max": "150000 100000"}, 64, (2, "cgroup quota")),  # 1.5 rounds up
        ({"cpu.max": "50000 100000"}, 64, (1, "cgroup quota")),  # half a CPU: still one
        ({"cpu.max": "max 100000"}, 8, (8, "affinity mask")),  # v2, no limit
        ({"cpu.max": "800000 100000"}, 4, (4, "affinity mask")),  # quota above the mask
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 16,
         (3, "cgroup quota")),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 6,
         (6, "affinity mask")),  # v1, no limit
        ({"cpu.max": "garbage"}, 2, (2, "affinity mask")),
        ({}, 3, (3, "affinity mask")),  # no cgroup files at all
    ],
)  # fmt: skip
def test_threads_follow_the_smaller_of_quota_and_mask(tmp_path, files, host_cpus, expected):
    assert cpus.usable(None, cgroup(tmp_path, files), cpus=host_cpus) == expected


def test_threads_variable_overrides(tmp_path):
    root = cgroup(tmp_path, {"cpu.max": "100000 100000"})
    assert cpus.usable(6, root, cpus=64) == (6, "THREADS")


@pytest.mark.slow
def test_the_job_logs_its_thread_count_and_source(tmp_path, mnist_dir):
    env = job_env(
        RUN_ID="threads", OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(mnist_dir),
        RECIPE="seed", EPOCHS="1", TRAIN_LIMIT="256", TEST_LIMIT="64", THREADS="1",
    )  # fmt: skip
    proc = run_job("train", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    (threads,) = [e for e in events if e["event"] == "threads"]
    assert (threads["threads"], threads["source"]) == (1, "THREADS")
