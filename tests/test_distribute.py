"""Scale-out: TF_CONFIG parsing and building, chief detection, and real two-worker training."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from job import config
from job.errors import EXIT_CONFIG, EXIT_TRANSIENT, ConfigError
from job.training import distribute
from tests.support.jobs import ROOT, job_env, run_job


def tf_config(spec: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": spec, "task": {"type": task_type, "index": index}})


TWO = {"worker": ["h0:2222", "h1:2222"]}


def test_worker_zero_is_chief_without_a_chief_task():
    assert config.parse_tf_config(tf_config(TWO, "worker", 0)).is_chief
    assert not config.parse_tf_config(tf_config(TWO, "worker", 1)).is_chief


def test_a_chief_task_outranks_worker_zero():
    spec = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}
    assert config.parse_tf_config(tf_config(spec, "chief", 0)).is_chief
    worker0 = config.parse_tf_config(tf_config(spec, "worker", 0))
    assert not worker0.is_chief and worker0.n_workers == 3


def test_single_worker_and_no_cluster():
    one = config.parse_tf_config(tf_config({"worker": ["h:1"]}, "worker", 0))
    assert one.is_chief and one.n_workers == 1
    assert distribute.choose("auto", one, local_gpus=0) == "none"
    assert distribute.choose("auto", None, local_gpus=2) == "mirrored"
    assert distribute.choose("auto", config.parse_tf_config(tf_config(TWO, "worker", 1)), 0) == (
        "multi_worker"
    )
    assert config.from_env({}).is_chief and config.from_env({}).cluster is None


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
        tf_config({"evaluator": ["e:1"]}, "evaluator", 0),  # nobody would train or publish
        tf_config({"worker": ["w:1"], "evaluator": ["e:1"]}, "evaluator", 0),
        json.dumps({"cluster": TWO, "task": {"type": "worker", "index": True}}),
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
    built = json.loads(cfg.cluster.tf_config())
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


def test_watchdog_turns_a_stall_into_exit_75_and_a_failure_record(tmp_path):
    """The watchdog ends the process through the run's own exit path: `_FAILURE` and the
    `failed` status are written, then one error line and exit 75, though the main thread is
    stuck (here in a sleep, in real life inside a collective)."""
    script = (
        "import time\n"
        "from pathlib import Path\n"
        "from job import config\n"
        "from job.training.context import RunContext\n"
        "from job.runstore.local import LocalStore\n"
        "from job.training.watchdog import Watchdog\n"
        "cfg = config.from_env({'RUN_ID': 'stuck', 'OUTPUT_URI': 'out'})\n"
        "with RunContext(cfg, store=LocalStore(Path('out'))) as ctx:\n"
        "    Watchdog(timeout=1, on_stall=ctx.run.abort).arm()\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
        cwd=tmp_path, env=job_env(PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == EXIT_TRANSIENT, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and "no progress for" in errors[0]
    failure = json.loads((tmp_path / "out" / "stuck" / "_FAILURE").read_text())
    assert "COLLECTIVE_TIMEOUT" in failure["reason"]
    status = json.loads((tmp_path / "out" / "stuck" / "status.json").read_text())
    assert status["state"] == "failed"


# --- two real workers on loopback ---


# TensorFlow's gRPC server must be told every worker's address (TF_CONFIG) before any worker
# starts, so a worker cannot bind port 0 and report it; and it binds without SO_REUSEPORT, so
# the test cannot keep the ports reserved either. Between free_ports() releasing a port and the
# worker binding it another process may take it: start_workers() then starts the pair again on
# new ports (TensorFlow fails fast, "Could not start gRPC server").
BIND_FAILED = "Could not start gRPC server"
ATTEMPTS = 3


def free_ports(n: int) -> list[int]:
    """Ports free on every address right now (TensorFlow binds 0.0.0.0)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Worker:
    proc: subprocess.Popen
    out: Path
    err: Path

    def stderr(self) -> str:
        return self.err.read_text()

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait for the exit; stdout and stderr."""
        self.proc.wait(timeout=timeout)
        return self.out.read_text(), self.err.read_text()


def stop(workers: list[Worker]) -> None:
    for w in workers:
        w.proc.kill()
        w.proc.wait()


def started(workers: list[Worker], timeout: float = 300) -> bool:
    """Wait until every worker has logged its model (its gRPC server is bound and the cluster
    joined): True; False, with the workers stopped, when one could not bind its port."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [w.stderr() for w in workers]
        if any(BIND_FAILED in log for log in logs):
            stop(workers)
            return False
        complete = [log[: log.rfind("\n") + 1] for log in logs]  # whole lines only
        if all(any(e["event"] == "model" for e in events(log)) for log in complete):
            return True
        for w, log in zip(workers, logs, strict=True):
            if w.proc.poll() is not None:
                stop(workers)
                pytest.fail(f"a worker exited before training: {log[-2000:]}")
        if time.monotonic() > deadline:
            stop(workers)
            pytest.fail(f"the workers did not start within {timeout} s: {logs[0][-2000:]}")
        time.sleep(0.2)


def start_workers(tmp_path, mnist_dir, run_id: str, **extra: str) -> list[Worker]:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    for _ in range(ATTEMPTS):
        start = len(list(logs.glob(f"{run_id}-*-worker-0.err")))  # logs of every start kept
        spec = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
        workers = []
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
            out, err = (logs / f"{run_id}-{start}-worker-{index}.{ext}" for ext in ("out", "err"))
            with out.open("w") as out_file, err.open("w") as err_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "job", "train"],
                    env=env, cwd=tmp_path, stdout=out_file, stderr=err_file, text=True,
                )  # fmt: skip
            workers.append(Worker(proc, out, err))
        if started(workers):
            return workers
        # A stopped attempt's scratch space is not the run's: clear it for the next one.
        for leftover in tmp_path.glob("tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
    pytest.fail(f"the workers could not bind their ports in {ATTEMPTS} attempts")


def wait_for(path: Path, workers: list[Worker], timeout: float) -> None:
    """Poll for a file the workers write, failing as soon as a worker has exited."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        for w in workers:
            if w.proc.poll() is not None:
                stop(workers)
                pytest.fail(f"a worker exited before {path.name} appeared: {w.stderr()[-2000:]}")
        if time.monotonic() > deadline:
            stop(workers)
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_publishes(tmp_path, mnist_dir):
    workers = start_workers(tmp_path, mnist_dir, "two-workers", EPOCHS="2")
    outputs = [w.finish(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.proc.returncode == 0, err[-2000:]
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
    # The weight average, swapped in for each test pass on both workers, is what was published.
    assert metrics["params"]["ema_momentum"] > 0
    assert metrics["history"][-1]["val_accuracy"] == metrics["test_accuracy"]
    assert (run / "_SUCCESS").is_file()
    # Nothing else was published: the other worker wrote into scratch space that is gone.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["two-workers"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]

    # The same inputs on two workers again (other ports, another run id): the same weights,
    # bit for bit (the all-reduce of two replicas sums in a fixed order).
    again = start_workers(tmp_path, mnist_dir, "two-workers-again", EPOCHS="2")
    for w in again:
        _, err = w.finish(timeout=600)
        assert w.proc.returncode == 0, err[-2000:]
    rerun = json.loads((tmp_path / "out" / "two-workers-again" / "metrics.json").read_text())
    assert rerun["weights_sha256"] == metrics["weights_sha256"]


@pytest.mark.slow
def test_a_lost_peer_fails_fast_and_all_workers_resume(tmp_path, mnist_dir):
    workers = start_workers(tmp_path, mnist_dir, "lost-peer", EPOCHS="6", RECIPE="seed")
    latest = tmp_path / "out" / "lost-peer" / "checkpoints" / "latest.json"
    wait_for(latest, workers, timeout=300)
    workers[1].proc.kill()
    workers[1].proc.wait()
    # Bounded by COLLECTIVE_TIMEOUT and TensorFlow's peer health checks, not a hang.
    _, err = workers[0].finish(timeout=180)
    assert workers[0].proc.returncode == EXIT_TRANSIENT, err[-2000:]
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "lost contact with a peer worker" in error_lines[0]
    saved = json.loads(latest.read_text())["epoch"]
    assert 1 <= saved < 6

    workers = start_workers(tmp_path, mnist_dir, "lost-peer", EPOCHS="6", RECIPE="seed")
    outputs = [w.finish(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.proc.returncode == 0, err[-2000:]
        resumed = [e for e in events(err) if e["event"] == "resumed"]
        assert resumed and resumed[0]["from_epoch"] == saved, "every worker resumed"
    metrics = json.loads((tmp_path / "out" / "lost-peer" / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == saved and len(metrics["history"]) == 6
