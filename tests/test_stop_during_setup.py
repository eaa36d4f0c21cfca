"""A stop request before training stops the job at once (issue 21, mechanism 7).

During setup (the checks, loading TensorFlow, claiming the run, reading the data) nothing is
trained, so SIGTERM or SIGINT ends `python -m job train` promptly with 143 or 130, even inside a
read that would block for minutes; a claimed run is ended as any preemption is (`preempted`
status, lease released). Once training has begun, a request still waits for the next batch or
epoch boundary, so the epochs trained are checkpointed (job.training.preemption).

The blocking read is a real one: a loopback server that accepts connections and reads requests
but never answers, named as the S3 endpoint. The test signals once the server has the job's
request, so the job is in that read (or about to be). Timeouts below are hang guards only.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from job.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED
from job.runstore.layout import FAILURE, LATEST_CHECKPOINT, OWNER, STATUS, SUCCESS
from tests.support.jobs import job_env, start_job
from tests.support.s3 import cos_env

HANG_GUARD = 300  # seconds: only a job that never stops reaches it
SIGNALS = [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGINT, EXIT_INTERRUPTED)]


class SilentServer:
    """Accepts connections and reads what is sent, never answers: a store that hangs (botocore
    waits 60 s per attempt, and retries). `asked` is set once a request has arrived."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.asked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        connections: list[socket.socket] = []
        while not self._stop.is_set():
            ready, _, _ = select.select([self.listener, *connections], [], [], 0.1)
            for sock in ready:
                if sock is self.listener:
                    connections.append(self.listener.accept()[0])
                elif sock.recv(65536):
                    self.asked.set()
                else:  # the client hung up
                    connections.remove(sock)
                    sock.close()
        for sock in connections:
            sock.close()

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


def signal_once_asked(proc: subprocess.Popen, server: SilentServer, signum: int) -> str:
    """Wait until the job's request reaches the server, signal it, return its stderr."""
    guard = time.monotonic() + HANG_GUARD
    while not server.asked.wait(0.1):
        if proc.poll() is not None:
            pytest.fail(f"the job ended before its request: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > guard:
            proc.kill()
            pytest.fail("the job never reached the store")
    proc.send_signal(signum)
    try:
        return proc.communicate(timeout=HANG_GUARD)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the job did not stop: {proc.communicate()[1][-3000:]}")


def events(stderr: str) -> list[str]:
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=["SIGTERM", "SIGINT"])
def test_a_stop_while_the_data_read_hangs_ends_the_claimed_run_as_preempted(signum, code, tmp_path):
    out = tmp_path / "out"
    with SilentServer() as server:
        env = job_env(
            **cos_env(server.url), DATA_URI="s3://data/mnist", OUTPUT_URI=str(out),
            RUN_ID="setup", RECIPE="seed", EPOCHS="1",
        )  # fmt: skip
        proc = start_job("train", env=env, cwd=tmp_path)
        stderr = signal_once_asked(proc, server, signum)
    assert proc.returncode == code, stderr[-3000:]
    assert "run_started" in events(stderr), "the run was claimed before the data was read"
    assert "preempted" in events(stderr)
    assert len(error_lines(stderr)) == 1, stderr[-3000:]
    run = out / "setup"
    status = json.loads((run / STATUS).read_text())
    assert status["state"] == "preempted" and status["epoch"] == 0, status
    assert signal.Signals(signum).name in status["reason"]
    assert not (run / OWNER).exists(), "the lease is released: a rerun may start at once"
    assert not (run / SUCCESS).exists() and not (run / FAILURE).exists()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), SIGNALS, ids=["SIGTERM", "SIGINT"])
def test_a_stop_while_the_output_store_hangs_ends_the_job_before_tensorflow(signum, code, tmp_path):
    """The first check writes a probe to OUTPUT_URI before TensorFlow loads: a store that does
    not answer holds the job there, and a stop ends it without a run ever being claimed."""
    with SilentServer() as server:
        env = job_env(**cos_env(server.url), OUTPUT_URI="s3://runs/here", RUN_ID="setup")
        proc = start_job("train", env=env, cwd=tmp_path)
        stderr = signal_once_asked(proc, server, signum)
    assert proc.returncode == code, stderr[-3000:]
    # No traceback; the error line comes once job.cli reports StopNow (job.training.preemption).
    assert len(error_lines(stderr)) <= 1, stderr[-3000:]
    assert "run_started" not in events(stderr)


@pytest.mark.slow
def test_a_stop_half_way_through_the_claim_ends_the_run_it_holds(tmp_path, mnist_dir):
    """The lease taken, the start record not yet written: where the signal lands, the handler
    raises StopNow (here the store's write stands in for it). The run is ended as preempted and
    its lease released, and train.run reports it as Preempted."""
    from job.errors import Preempted
    from job.runstore.layout import RUN_RECORD
    from job.runstore.local import LocalStore
    from job.training.preemption import StopNow
    from tests.support.jobs import train_in_process

    class StopWhileClaiming(LocalStore):
        def put_bytes(self, key: str, data: bytes, **conditions) -> str:
            if key.endswith(RUN_RECORD):
                raise StopNow("SIGTERM")
            return super().put_bytes(key, data, **conditions)

    out = tmp_path / "out"
    with pytest.raises(Preempted) as err:
        train_in_process(tmp_path, mnist_dir, store=StopWhileClaiming(out), RUN_ID="claim")
    assert err.value.exit_code == EXIT_PREEMPTED
    status = json.loads((out / "claim" / STATUS).read_text())
    assert status["state"] == "preempted" and "SIGTERM" in status["reason"]
    assert not (out / "claim" / OWNER).exists()
    assert not (out / "claim" / FAILURE).exists()


@pytest.mark.slow
def test_a_stop_once_training_has_begun_still_waits_for_the_checkpoint(tmp_path, mnist_dir):
    """The deferred mode as before: SIGTERM during the epochs ends the run after an epoch's
    checkpoint, as `preempted`, 143."""
    out = tmp_path / "out"
    env = job_env(
        RUN_ID="late", OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), RECIPE="seed",
        EPOCHS="50", TRAIN_LIMIT="2000", TEST_LIMIT="200",
    )  # fmt: skip
    proc = start_job("train", env=env, cwd=tmp_path)
    status = out / "late" / STATUS
    guard = time.monotonic() + HANG_GUARD
    while not (status.exists() and json.loads(status.read_text()).get("epoch", 0) >= 1):
        if proc.poll() is not None or time.monotonic() > guard:
            proc.kill()
            pytest.fail(f"the job never finished an epoch: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    record = json.loads(status.read_text())
    assert record["state"] == "preempted" and record["epoch"] >= 1
    assert json.loads((out / "late" / LATEST_CHECKPOINT).read_text())["epoch"] == record["epoch"]


def test_a_guard_raises_at_once_in_setup_and_only_records_once_deferred():
    """The handler's two modes, and a burst of signals: the first request is raised once (as a
    SystemExit, which no library's `except Exception` swallows); the rest only recorded, so
    they cannot cut the way out of the first short."""
    from job.errors import Preempted
    from job.training.preemption import PreemptionGuard, StopNow, stopped_as_preempted

    guard = PreemptionGuard()
    with pytest.raises(Preempted) as err, stopped_as_preempted():
        try:
            guard._handle(signal.SIGINT, None)
        except Exception:  # what botocore does with an Exception while it sends a request
            pytest.fail("a stop request must not be an Exception")
    assert err.value.exit_code == EXIT_INTERRUPTED
    guard._handle(signal.SIGTERM, None)  # a second request: recorded (the first counts)
    assert guard.requested == "SIGINT"
    with pytest.raises(StopNow) as stop:
        PreemptionGuard()._handle(signal.SIGTERM, None)
    assert stop.value.code == EXIT_PREEMPTED, "unconverted, it still exits with its code"

    deferred = PreemptionGuard()
    deferred.defer()
    deferred._handle(signal.SIGTERM, None)
    with pytest.raises(Preempted) as err:
        deferred.check()
    assert err.value.exit_code == EXIT_PREEMPTED
