"""Scale-out: TF_CONFIG parsing and building, chief detection, and real two-worker training."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from job import config, distribute
from job.errors import EXIT_CONFIG, EXIT_TRANSIENT, ConfigError
from tests.conftest import job_env, run_job, start_job


def tf_config(spec: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": spec, "task": {"type": task_type, "index": index}})


TWO = {"worker": ["h0:2222", "h1:2222"]}


def test_worker_zero_is_chief_without_a_chief_task():
    assert distribute.parse_tf_config(tf_config(TWO, "worker", 0)).is_chief
    assert not distribute.parse_tf_config(tf_config(TWO, "worker", 1)).is_chief


def test_a_chief_task_outranks_worker_zero():
    spec = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    assert distribute.parse_tf_config(tf_config(spec, "chief", 0)).is_chief
    worker0 = distribute.parse_tf_config(tf_config(spec, "worker", 0))
    assert not worker0.is_chief and worker0.n_workers == 3


def test_single_worker_and_no_cluster():
    one = distribute.parse_tf_config(tf_config({"worker": ["h:1"]}, "worker", 0))
    assert one.is_chief and one.n_workers == 1
    assert distribute.choose("auto", one, local_gpus=0) == "none"
    assert distribute.choose("auto", None, local_gpus=2) == "mirrored"
    assert distribute.choose(
        "auto", distribute.parse_tf_config(tf_config(TWO, "worker", 1)), 0
    ) == ("multi_worker")
    assert config.from_env({}).is_chief and config.from_env({}).tf_config is None


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        json.dumps({"task": {"type": "worker", "index": 0}}),
        tf_config({"worker": "h0:1"}, "worker", 0),
        tf_config({"worker": ["h0"]}, "worker", 0),
        tf_config(TWO, "worker", 2),
        tf_config(TWO, "chief", 0),
        tf_config({"ps": ["p:1"], "worker": ["w:1"]}, "worker", 0),
        tf_config({"master": ["m:1"]}, "master", 0),
        tf_config({"chief": ["a:1", "b:1"]}, "chief", 0),
    ],
)
def test_malformed_tf_config_names_the_variable(raw):
    with pytest.raises(ConfigError) as err:
        config.from_env({"TF_CONFIG": raw})
    assert err.value.variable == "TF_CONFIG" and err.value.exit_code == EXIT_CONFIG


def test_tf_config_built_for_an_indexed_job():
    cfg = config.from_env(
        {"WORKERS": "3", "JOB_COMPLETION_INDEX": "2", "WORKER_SERVICE": "mnist-workers",
         "JOB_NAME": "mnist-mw", "WORKER_PORT": "2345"}
    )  # fmt: skip
    built = json.loads(cfg.tf_config)
    assert built["cluster"]["worker"] == [f"mnist-mw-{i}.mnist-workers:2345" for i in range(3)]
    assert built["task"] == {"type": "worker", "index": 2} and not cfg.is_chief


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WORKERS": "2", "JOB_COMPLETION_INDEX": "2", "WORKER_SERVICE": "s", "JOB_NAME": "j"},
         "JOB_COMPLETION_INDEX"),
        ({"WORKERS": "2", "JOB_COMPLETION_INDEX": "0", "JOB_NAME": "j"}, "WORKER_SERVICE"),
        ({"WORKERS": "2", "WORKER_SERVICE": "s", "JOB_NAME": "j"}, "JOB_COMPLETION_INDEX"),
        ({"WORKERS": "two"}, "WORKERS"),
        ({"WORKERS": "2", "JOB_COMPLETION_INDEX": "0", "WORKER_SERVICE": "s", "JOB_NAME": "j",
          "WORKER_PORT": "70000"}, "WORKER_PORT"),
        ({"DISTRIBUTION": "multi_worker"}, "DISTRIBUTION"),
        ({"DISTRIBUTION": "none", "TF_CONFIG": tf_config(TWO, "worker", 0)}, "DISTRIBUTION"),
    ],
)  # fmt: skip
def test_inconsistent_cluster_variables(env, variable):
    with pytest.raises(ConfigError) as err:
        config.from_env(env)
    assert err.value.variable == variable


def test_bad_tf_config_exits_78_before_training(tmp_path):
    proc = run_job("train", env=job_env(TF_CONFIG="{broken"), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and proc.stderr.startswith("error: TF_CONFIG=")


def test_watchdog_turns_a_stall_into_exit_75(tmp_path):
    script = (
        "import time\n"
        "from job.watchdog import Watchdog\n"
        "Watchdog(timeout=1).on_train_begin()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == EXIT_TRANSIENT
    assert "error: no progress in a training step" in proc.stderr


# --- two real workers on loopback ---


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(tmp_path, mnist_dir, run_id: str, **extra: str) -> list[subprocess.Popen]:
    spec = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        env = job_env(
            TF_CONFIG=tf_config(spec, "worker", index),
            RUN_ID=run_id,
            DATA_URI=str(mnist_dir),
            OUTPUT_URI=str(tmp_path / "out"),
            WORK_DIR=str(tmp_path),
            TRAIN_LIMIT="2000",
            TEST_LIMIT="500",
            BATCH_SIZE="128",
            COLLECTIVE_TIMEOUT="30",
            **extra,
        )
        procs.append(start_job("train", env=env, cwd=tmp_path))
    return procs


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_two_workers_train_together_and_only_the_chief_publishes(tmp_path, mnist_dir):
    procs = start_workers(tmp_path, mnist_dir, "two-workers", EPOCHS="2")
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    assert "Baseline Error:" in outputs[0][0]
    assert "Worker worker-1 done" in outputs[1][0]

    per_worker = [events(err) for _, err in outputs]
    for worker, evs in enumerate(per_worker):
        (model,) = [e for e in evs if e["event"] == "model"]
        assert model["replicas"] == 2 and model["worker"] == f"worker-{worker}"
        assert model["batch_size"] == 256, "global batch = BATCH_SIZE x replicas"
    steps = [[e["steps"] for e in evs if e["event"] == "epoch"] for evs in per_worker]
    assert steps[0] == steps[1] == [2000 // 256] * 2, "both took every synchronous step"

    run = tmp_path / "out" / "two-workers"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params"]["replicas"] == 2 and metrics["test_accuracy"] > 0.5
    assert (run / "_SUCCESS").is_file()
    # Nothing else was published: the other worker wrote into scratch space that is gone.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["two-workers"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]


def test_a_lost_peer_fails_fast_and_all_workers_resume(tmp_path, mnist_dir):
    procs = start_workers(tmp_path, mnist_dir, "lost-peer", EPOCHS="6", RECIPE="seed")
    latest = tmp_path / "out" / "lost-peer" / "checkpoints" / "latest.json"
    deadline_proc = procs[0]
    while not latest.exists():
        assert deadline_proc.poll() is None, deadline_proc.communicate()[1][-2000:]
    procs[1].kill()
    procs[1].communicate()
    # Bounded by COLLECTIVE_TIMEOUT and TensorFlow's peer health checks, not a hang.
    _, err = procs[0].communicate(timeout=180)
    assert procs[0].returncode == EXIT_TRANSIENT, err[-2000:]
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "lost contact with a peer worker" in error_lines[0]
    saved = json.loads(latest.read_text())["epoch"]
    assert 1 <= saved < 6

    procs = start_workers(tmp_path, mnist_dir, "lost-peer", EPOCHS="6", RECIPE="seed")
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        resumed = [e for e in events(err) if e["event"] == "resumed"]
        assert resumed and resumed[0]["from_epoch"] == saved, "every worker resumed"
    metrics = json.loads((tmp_path / "out" / "lost-peer" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == saved and len(metrics["history"]) == 6
