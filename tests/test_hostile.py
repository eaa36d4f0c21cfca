"""Hostile input, as a tester attacking the job, the store and the submitter would send it.

One table per kind of attack; every row names the attack, its expected exit code and the text
its one error line must contain. Rows that act on a finished
run also prove that nothing changed (SHA-256 of every file before and after), that nothing was
written outside the destination, and that no process but ours was signalled (the victim is a
`sleep` started here).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job import config
from job.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_TRANSIENT,
    ConfigError,
    DataError,
    TransientError,
)  # fmt: skip
from job.runstore import layout
from job.training import data
from job.training.data import idx_bytes
from job.training.preemption import PreemptionGuard
from tests.support.jobs import ROOT, cli, job_env, run_job, start_job, train_in_process
from tests.support.s3 import cos_env, s3_client
from tests.test_submit import RECORDER, recorded, stand_in

TINY = {"RECIPE": "seed", "EPOCHS": "1", "TRAIN_LIMIT": "256", "TEST_LIMIT": "64"}


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_dir):
    """A real finished run (tiny) in a local folder: the thing attacks must not change."""
    tmp = tmp_path_factory.mktemp("finished")
    train_in_process(tmp, mnist_dir, RUN_ID="done", **TINY)
    return tmp / "out"


@pytest.fixture
def out(finished, tmp_path):
    """A private copy of the finished run's store, and its digests."""
    copy = tmp_path / "out"
    shutil.copytree(finished, copy)
    return copy


def env_for(out: Path, **extra: str) -> dict[str, str]:
    return job_env(**{"OUTPUT_URI": str(out), **extra})


# --- 1, 19: watch trusts nothing it reads from the store ---------------------------------


def forge(run: Path, name: str, content: bytes | str) -> None:
    path = run / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def manifest_with(run: Path, entry: dict) -> None:
    manifest = json.loads((run / "_SUCCESS").read_text())
    manifest["files"].append(entry)
    (run / "_SUCCESS").write_text(json.dumps(manifest))


WATCH_CASES = [
    # (the attack, how the store is damaged, exit code, text of the error line)
    ("traversal-key", lambda run: manifest_with(
        run, {"path": "images/../../../../x.txt", "size": 1, "sha256": "0" * 64}),
     EXIT_DATA, "unsafe key 'images/../../../../x.txt'"),
    ("absolute-key", lambda run: manifest_with(
        run, {"path": "/tmp/evil.png", "size": 1, "sha256": "0" * 64}), EXIT_DATA, "unsafe key"),
    ("hash-mismatch", lambda run: forge(run, "metrics.json", "{}"), EXIT_DATA,
     "metrics.json: SHA-256 differs"),
    ("corrupt-success", lambda run: forge(run, "_SUCCESS", "{not json"), EXIT_DATA,
     "_SUCCESS: not valid JSON"),
    ("success-not-object", lambda run: forge(run, "_SUCCESS", "[1]"), EXIT_DATA,
     "_SUCCESS: not a JSON object"),
    ("corrupt-status", lambda run: forge(run, "status.json", b"\xff\xfe"), EXIT_DATA,
     "status.json: not valid JSON"),
    ("corrupt-submission", lambda run: forge(run, "submission.json", "nope"), EXIT_DATA,
     "submission.json: not valid JSON"),
    ("status-wrong-types", lambda run: forge(run, "status.json", json.dumps(
        {"state": "running", "history": [1], "metrics": "x", "epochs": "3"})), EXIT_DATA,
     "status.json: not a status (epochs, metrics, history"),
    ("success-without-metrics", lambda run: (run / "_SUCCESS").write_text(
        json.dumps({"files": []})), EXIT_DATA, "does not list metrics.json"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "damage", "code", "text"), WATCH_CASES, ids=[c[0] for c in WATCH_CASES]
)
def test_watch_trusts_nothing_from_the_store(case, damage, code, text, out, tmp_path):
    damage(out / "done")
    dest = tmp_path / "a" / "b" / "c" / "dest"
    before_outside = digests(tmp_path)
    proc = cli("watch", "done", "--dest", str(dest), env=env_for(out), cwd=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert text in one_error_line(proc.stderr)
    after = digests(tmp_path)
    new = {p for p in after if p not in before_outside and not p.startswith("a/b/c/dest/")}
    assert new == set(), f"written outside --dest: {new}"
    assert not (tmp_path / "x.txt").exists() and not Path("/tmp/evil.png").exists()
    if case == "hash-mismatch":
        assert not (dest / "metrics.json").exists(), "a file failing its hash stays out"


def test_traversal_key_in_a_bucket_writes_nothing_outside(s3_endpoint, bucket, tmp_path):
    """In a bucket the object `run/images/../../../../x.txt` can really exist."""
    client = s3_client(s3_endpoint)
    body = b"pwned"
    key = "runs/evil/images/../../../../x.txt"
    client.put_object(Bucket=bucket, Key=key, Body=body)
    manifest = {"run_id": "evil", "files": [
        {"path": "images/../../../../x.txt", "size": 5,
         "sha256": hashlib.sha256(body).hexdigest()}]}  # fmt: skip
    client.put_object(Bucket=bucket, Key="runs/evil/_SUCCESS", Body=json.dumps(manifest))
    client.put_object(Bucket=bucket, Key="runs/evil/status.json", Body=b"{}")
    dest = tmp_path / "a" / "b" / "c" / "d" / "dest"
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs")
    proc = cli("watch", "evil", "--dest", str(dest), env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_DATA and "unsafe key" in one_error_line(proc.stderr)
    assert not list(tmp_path.rglob("x.txt"))


def test_one_corrupt_run_does_not_break_runs(out, tmp_path):
    forge(out / "broken", "status.json", "{{{{")
    forge(out / "typed", "status.json", json.dumps({"metrics": [1], "history": "ab"}))
    proc = cli("runs", env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "succeeded" in rows["done"] and "unreadable" in rows["broken"]
    assert "broken/status.json: not valid JSON" in rows["broken"]
    assert "unreadable" in rows["typed"] and "wrong type" in rows["typed"]


# --- 2, 5: cancel acts only on our own runs --------------------------------------------------


@pytest.fixture
def victim():
    """A process that is not ours to signal: it must survive every cancel below."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def impostor(tmp_path):
    """A Python process whose arguments mention `job` and `train`, with this run's RUN_ID in its
    environment, that is not `python -m job train`: not ours to signal either."""
    code = "import time; time.sleep(120)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "job", "train"], env={**job_env(), "RUN_ID": "live"}
    )
    yield proc
    proc.kill()
    proc.wait()


def submission(out: Path, run_id: str, backend: str, handle: str) -> None:
    forge(out / run_id, "submission.json", json.dumps({"backend": backend, "handle": handle}))
    forge(out / run_id, "status.json", json.dumps({"state": "running"}))


CANCEL_CASES = [
    # (the attack, run id, backend, handle (VICTIM: the victim's pid), exit, text)
    ("foreign-pid", "live", "local", "VICTIM", EXIT_CONFIG, "process"),
    ("job-train-lookalike", "live", "local", "IMPOSTOR", EXIT_CONFIG, "process"),
    ("negative-pid", "live", "local", "-1", EXIT_DATA, "is not a local handle"),
    ("process-group", "live", "local", "-VICTIM", EXIT_DATA, "is not a local handle"),
    ("k8s-all", "live", "k8s", "--all", EXIT_DATA, "is not a k8s handle"),
    ("docker-flag", "live", "docker", "--help", EXIT_DATA, "is not a docker handle"),
    ("wml-injection", "live", "wml", "x; rm -rf /", EXIT_DATA, "is not a wml handle"),
    # A finished run is left alone, and that is not an error (exit 0; it was 78).
    ("finished-run", "done", "local", "VICTIM", 0, "already finished; nothing to cancel"),
    ("traversal-run-id", "../done", "local", "1", EXIT_CONFIG, "RUN_ID='../done'"),
]


@pytest.mark.parametrize(
    ("case", "run_id", "backend", "handle", "code", "text"),
    CANCEL_CASES,
    ids=[c[0] for c in CANCEL_CASES],
)
def test_cancel_signals_nothing_that_is_not_ours(
    case, run_id, backend, handle, code, text, out, victim, impostor, tmp_path
):
    handle = handle.replace("VICTIM", str(victim.pid)).replace("IMPOSTOR", str(impostor.pid))
    if run_id == "done":
        (out / "done" / "submission.json").write_text(
            json.dumps({"backend": backend, "handle": handle})
        )
    elif "/" not in run_id:
        submission(out, run_id, backend, handle)
    before = digests(out)
    bin_dir = stand_in(tmp_path, "kubectl", RECORDER)
    stand_in(tmp_path, "docker", RECORDER)
    env = env_for(out, PATH=f"{bin_dir}:/usr/bin:/bin", RECORD=str(tmp_path / "calls"))
    proc = run_job("cancel", run_id, env=env, cwd=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert text in (proc.stdout if code == 0 else one_error_line(proc.stderr))
    assert victim.poll() is None and impostor.poll() is None, "a process not ours was signalled"
    assert not (tmp_path / "calls").exists(), "docker/kubectl were called"
    assert digests(out) == before, "cancel changed the store"


# --- 5, 6, 7, 21: submit ---------------------------------------------------------------------

DOCKER_DOWN = """
import sys
print("docker: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
      "Is the docker daemon running?", file=sys.stderr)
print("See 'docker run --help'.", file=sys.stderr)
sys.exit(125)
"""

SUBMIT_CASES = [
    # (the attack, extra env, extra args, docker stand-in, exit, text)
    ("finished-run-id", {}, ["--run-id", "done"], RECORDER, EXIT_CONFIG, "has _SUCCESS"),
    ("newline-injection", {"JOB_NAME": "x\nCOS_ENDPOINT=http://evil"}, [], RECORDER,
     EXIT_CONFIG, "JOB_NAME="),
    ("no-daemon", {}, [], DOCKER_DOWN, EXIT_TRANSIENT, "Cannot connect to the Docker daemon"),
    ("image-flag", {}, ["--image=--privileged"], RECORDER, EXIT_CONFIG, "--image="),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "extra", "args", "docker", "code", "text"),
    SUBMIT_CASES,
    ids=[c[0] for c in SUBMIT_CASES],
)
def test_submit_refuses_and_records_nothing(case, extra, args, docker, code, text, out, tmp_path):
    bin_dir = stand_in(tmp_path, "docker", docker)
    env = env_for(out, PATH=f"{bin_dir}:/usr/bin:/bin", RECORD=str(tmp_path / "calls"), **extra)
    before = digests(out)
    proc = run_job("submit", "--backend", "docker", *args, env=env, cwd=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert text in one_error_line(proc.stderr)
    assert digests(out) == before, "a failed submit left a record"


def test_a_run_owned_by_a_live_process_is_not_submitted_again(out, tmp_path):
    from job.runstore.lease import Lease
    from job.runstore.local import LocalStore
    from job.runstore.publish import RunPublisher

    holder = Lease(RunPublisher(LocalStore(out), "busy"), seconds=60)
    holder.acquire()  # this test process: alive
    bin_dir = stand_in(tmp_path, "docker", RECORDER)
    env = env_for(out, PATH=f"{bin_dir}:/usr/bin:/bin", RECORD=str(tmp_path / "calls"))
    before = digests(out)
    proc = run_job("submit", "--backend", "docker", "--run-id", "busy", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_TRANSIENT and "is running" in one_error_line(proc.stderr)
    assert digests(out) == before and not (tmp_path / "calls").exists()


def test_a_failed_record_leaves_no_orphan(tmp_path, mnist_dir):
    """The store refuses the submission record (OUTPUT_URI a file): the child just started
    is stopped, and exit 78 names the folder."""
    (tmp_path / "a-file").write_text("x")
    env = job_env(OUTPUT_URI=str(tmp_path / "a-file"), DATA_URI=str(mnist_dir), **TINY)
    proc = run_job("submit", "--backend", "local", "--run-id", "orphan", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and "OUTPUT_URI=" in one_error_line(proc.stderr)
    assert not [p for p in Path("/proc").glob("[0-9]*") if b"RUN_ID=orphan\0" in environ(p)]


def environ(proc: Path) -> bytes:
    try:
        return (proc / "environ").read_bytes() + b"\0"
    except OSError:  # gone, or not ours
        return b""


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--run-id", "k1"], "OUTPUT_URI="), (["--overlay", "../../job"], "--overlay=")],
    ids=["a-k8s-run-needs-bucket-uris", "overlay-outside-the-manifests"],
)
def test_k8s_submissions_refused_before_kubectl_runs(out, tmp_path, args, named):
    bin_dir = stand_in(tmp_path, "kubectl", RECORDER)
    env = env_for(out, PATH=f"{bin_dir}:/usr/bin:/bin", RECORD=str(tmp_path / "calls"))
    proc = run_job("submit", "--backend", "k8s", *args, env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and named in one_error_line(proc.stderr)
    assert not (tmp_path / "calls").exists()


def test_a_corrupt_lease_is_nobodys(out):
    from job.runstore.lease import Lease
    from job.runstore.local import LocalStore
    from job.runstore.publish import RunPublisher

    forge(out / "junk", "owner.json", json.dumps({"expires_at": float("inf"), "renewed_at": 0}))
    lease = Lease(RunPublisher(LocalStore(out), "junk"), seconds=60)
    lease.acquire()  # taken over: an infinite lease is not a lease
    assert json.loads((out / "junk" / "owner.json").read_text())["pid"] == lease.me["pid"]
    lease.release()
    assert not (out / "junk" / "owner.json").exists()


@pytest.mark.parametrize(
    ("renewed", "lasts", "owned"),
    [(10 * 365 * 86400, 3600, False), (400, 60, False), (200, 60, True), (0, 60, True)],
    ids=["ten-years-ahead", "beyond-the-clock-skew", "within-the-clock-skew", "now"],
)
def test_a_lease_from_the_future_is_nobodys_beyond_the_clock_skew(out, renewed, lasts, owned):
    """A host clock up to CLOCK_SKEW_SECONDS ahead still owns its run; a record renewed further
    ahead (a clock run wild, or forged) would block the run for as long as it claims."""
    from job.runstore.lease import Lease, RunOwned
    from job.runstore.local import LocalStore
    from job.runstore.publish import RunPublisher

    now = time.time()
    record = {"renewed_at": now + renewed, "expires_at": now + renewed + lasts, "host": "far"}
    forge(out / "ahead", "owner.json", json.dumps(record))
    lease = Lease(RunPublisher(LocalStore(out), "ahead"), seconds=60)
    if owned:
        with pytest.raises(RunOwned):
            lease.acquire()
    else:
        lease.acquire()  # taken over
        lease.release()


@pytest.mark.parametrize(
    ("args", "option"),
    [(["watch", "any", "--stall-after", "nan"], "--stall-after"),
     (["watch", "any", "--interval", "0"], "--interval"),
     (["watch", "any", "--timeout", "inf"], "--timeout"),
     (["submit", "--backend", "local", "--wait", "--stall-after", "-1"], "--stall-after"),
     (["runs", "--limit", "-1"], "--limit"),
     (["runs", "--limit", "0"], "--limit")],
)  # fmt: skip
def test_an_option_that_would_never_stall_or_drop_runs_is_refused(out, tmp_path, args, option):
    """`--stall-after nan` never declared a stall and `runs --limit -1` silently dropped a run:
    such values are a configuration error naming the option, before anything starts."""
    proc = cli(*args, env=env_for(out), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert one_error_line(proc.stderr).startswith(f"error: {option}=")
    assert not list(out.glob("*/submission.json")), "nothing was submitted"


@pytest.mark.parametrize(
    ("args", "kind"),
    [(["runs"], "a-file"), (["prune", "--keep", "0"], "a-file"), (["check"], "below-a-file"),
     (["check"], "proc-self")],
)  # fmt: skip
def test_an_output_uri_that_cannot_be_a_store_is_a_configuration_error(tmp_path, args, kind):
    """A file, or a folder where no file can be made (/proc/self), is a wrong OUTPUT_URI (78):
    not an empty store (runs and prune said nothing and exited 0) and not a transient fault
    (75, retried for nothing)."""
    a_file = tmp_path / "runs"
    a_file.write_text("not a folder")
    target = {"a-file": a_file, "below-a-file": a_file / "x", "proc-self": Path("/proc/self")}
    proc = cli(*args, env=job_env(OUTPUT_URI=str(target[kind])), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stdout + proc.stderr
    assert "OUTPUT_URI=" in (proc.stdout + proc.stderr)


def test_forwarded_values_reach_kubernetes_literally(tmp_path, s3_endpoint, bucket):
    """Kubernetes expands `$(NAME)` in a container's variable from its other variables, the
    Secret's included: a forwarded value that holds one would put the secret into object keys.
    The manifest carries it as `$$(`, which Kubernetes reads as a literal `$(`."""
    import yaml

    from job import config
    from job.launch.k8s import render_job

    env = {**cos_env(s3_endpoint), "OUTPUT_URI": f"s3://{bucket}/x/$(COS_SECRET_ACCESS_KEY)-a$$b",
           "RUN_ID": "literal", "EPOCHS": "3"}  # fmt: skip
    rendered = render_job(config.from_env(env), env, "cpu", None)
    (job,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Job"]
    values = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # Kubernetes turns $$ into $: every $ doubled is the value as written.
    assert values["OUTPUT_URI"] == f"s3://{bucket}/x/$$(COS_SECRET_ACCESS_KEY)-a$$$$b"
    assert values["EPOCHS"] == "3"


def test_host_paths_stay_on_the_host(out, tmp_path):
    bin_dir = stand_in(tmp_path, "docker", RECORDER)
    (tmp_path / "host.env").write_text("EPOCHS=2\n")
    env = env_for(
        out, PATH=f"{bin_dir}:/usr/bin:/bin", RECORD=str(tmp_path / "calls"),
        ENV_FILE=str(tmp_path / "host.env"), WORK_DIR=str(tmp_path), DATA_URI=str(tmp_path),
    )  # fmt: skip
    proc = run_job("submit", "--backend", "docker", "--run-id", "fwd", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (call,) = recorded(tmp_path / "calls")
    forwarded = dict(line.split("=", 1) for line in call["env_file"].splitlines())
    assert forwarded.get("EPOCHS") == "2", "the .env file's settings travel, as values"
    assert not {"ENV_FILE", "WORK_DIR", "DATA_URI", "OUTPUT_URI"} & set(forwarded)


def test_wml_unreachable_is_transient(out, s3_endpoint, bucket, tmp_path, mnist_dir):
    """Found by submit's checks before anything is stored (and without them, by the client)."""
    env = env_for(
        out, **cos_env(s3_endpoint), WML_URL="https://127.0.0.1:9", WML_TOKEN="token-123456789",
        WML_SPACE_ID="s1", OUTPUT_URI=f"s3://{bucket}/runs", DATA_URI=f"s3://{bucket}/mnist",
        # the harness lets the real client talk to a host that is not IBM's (tests/test_wml.py)
        PYTHONPATH=f"{ROOT}:{ROOT / 'tests' / 'support' / 'wml_harness'}",
    )  # fmt: skip
    from tests.test_storage import upload_slice

    ds = data.load("mnist", mnist_dir).limited(200, 50)
    upload_slice(s3_endpoint, bucket, {k: getattr(ds, k) for k in data.IDX_FILES})
    for skip in ([], ["--no-check"]):
        proc = run_job("submit", "--backend", "wml", "--run-id", "w1", *skip, env=env, cwd=tmp_path)
        assert proc.returncode == EXIT_TRANSIENT, proc.stderr[-2000:]
        assert "cannot reach WML_URL=https://127.0.0.1:9" in one_error_line(proc.stderr)


# --- 8, 14: following runs ---------------------------------------------------------------------


@pytest.mark.slow
def test_wait_notices_a_dead_local_child(tmp_path, mnist_dir):
    """The child exits 78 (WORK_DIR missing) before it writes anything: --wait reports it from
    the process itself instead of waiting out --stall-after (10 minutes here)."""
    env = job_env(
        OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(mnist_dir), WORK_DIR=str(tmp_path / "no"),
        **TINY,
    )  # fmt: skip
    proc = run_job(
        "submit", "--backend", "local", "--run-id", "dies", "--wait", "--interval", "0.2",
        "--stall-after", "600", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed on the platform: the job exited with 78" in proc.stdout


def test_a_heartbeat_from_the_future_does_not_hide_a_stall(out, tmp_path):
    future = {"run_id": "zombie", "state": "running", "updated_at": "2999-01-01T00:00:00Z"}
    forge(out / "zombie", "status.json", json.dumps(future))
    forge(out / "zombie", "submission.json", json.dumps({"backend": "k8s", "handle": "zombie"}))
    args = ["--interval", "0.2", "--stall-after", "1"]
    proc = cli("watch", "zombie", *args, env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 3 and "stalled" in proc.stdout, proc.stdout + proc.stderr


def test_an_unknown_run_id_is_not_found(out, tmp_path):
    args = ["--interval", "0.2", "--stall-after", "1"]
    proc = cli("watch", "no-such-run", *args, env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 5 and "not found" in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error:") and proc.stdout == "", "said at once, on stderr"


# --- 10, 11: resume only what matches ----------------------------------------------------------


class StopAfterEpoch(PreemptionGuard):
    """A stop request as SIGTERM makes it, once the run's status shows `epochs` epochs."""

    def __init__(self, status: Path, epochs: int) -> None:
        super().__init__()
        self.status, self.epochs = status, epochs

    def check(self) -> None:
        if (
            self.status.exists()
            and json.loads(self.status.read_text()).get("epoch", 0) >= self.epochs
        ):
            self.requested = "SIGTERM"
        super().check()


@pytest.fixture
def checkpointed(tmp_path, mnist_dir):
    """A run stopped (as by SIGTERM) after one of three epochs: a checkpoint to resume."""
    from job.errors import Preempted

    settings = {**TINY, "EPOCHS": "3", "RUN_ID": "half"}
    guard = StopAfterEpoch(tmp_path / "out" / "half" / "status.json", 1)
    with pytest.raises(Preempted):
        train_in_process(tmp_path, mnist_dir, guard=guard, **settings)
    assert (tmp_path / "out" / "half" / "checkpoints" / "latest.json").exists()
    return settings


@pytest.mark.slow
def test_resume_refuses_other_settings_and_discard_starts_over(checkpointed, tmp_path, mnist_dir):
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, mnist_dir, **{**checkpointed, "EPOCHS": "1", "RECIPE": "fast"})
    assert err.value.exit_code == EXIT_CONFIG
    assert (
        "EPOCHS" in str(err.value)
        and "RECIPE" in str(err.value)
        and "RESUME=discard" in str(err.value)
    )
    result, run_dir = train_in_process(
        tmp_path, mnist_dir, **{**checkpointed, "EPOCHS": "1", "RESUME": "discard"}
    )
    assert result["epochs_completed"] == 1 and result["resumed_from_epoch"] is None
    assert not (run_dir / "_FAILURE").exists() and (run_dir / "_SUCCESS").exists()


@pytest.mark.slow
def test_resume_with_the_same_settings_continues(checkpointed, tmp_path, mnist_dir):
    result, _ = train_in_process(tmp_path, mnist_dir, **checkpointed)
    assert result["resumed_from_epoch"] == 1 and result["epochs_completed"] == 3


@pytest.mark.slow
def test_a_checkpoint_from_before_a_setting_existed(checkpointed, tmp_path, mnist_dir):
    """A checkpoint written before EMA_MOMENTUM existed was trained without an average: it
    resumes where the run asks for none (the seed recipe), and is refused, naming the variable
    and the value assumed for it, where the run asks for one."""
    pointer = tmp_path / "out" / "half" / "checkpoints" / "latest.json"
    meta = json.loads(pointer.read_text())
    del meta["settings"]["EMA_MOMENTUM"]
    pointer.write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, mnist_dir, **{**checkpointed, "EMA_MOMENTUM": "0.9"})
    assert str(err.value).startswith("EMA_MOMENTUM=0.9 is invalid: expected 0.0 as when")
    result, _ = train_in_process(tmp_path, mnist_dir, **checkpointed)
    assert result["resumed_from_epoch"] == 1 and result["epochs_completed"] == 3


@pytest.mark.slow
def test_a_checkpoint_from_before_a_recipe_default_changed(checkpointed, tmp_path, mnist_dir):
    """A recipe's default changed between versions (the fast recipe's peak learning rate went
    from 0.003 to 0.005): the checkpoint recorded the old value, so a rerun on the new default
    is refused naming the variable and the recorded value (never a silent resume at another
    rate), and a rerun that sets the old value resumes."""
    pointer = tmp_path / "out" / "half" / "checkpoints" / "latest.json"
    meta = json.loads(pointer.read_text())
    meta["settings"]["LEARNING_RATE"] = 0.003  # as written by the previous default
    pointer.write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, mnist_dir, **checkpointed)
    assert err.value.exit_code == EXIT_CONFIG
    assert str(err.value).startswith("LEARNING_RATE=0.001 is invalid: expected 0.003 as when")
    result, _ = train_in_process(tmp_path, mnist_dir, **{**checkpointed, "LEARNING_RATE": "0.003"})
    assert result["resumed_from_epoch"] == 1 and result["epochs_completed"] == 3


@pytest.mark.slow
def test_corrupt_checkpoint_pointer_fails_once_with_a_record(checkpointed, tmp_path, mnist_dir):
    run_dir = tmp_path / "out" / "half"
    (run_dir / "checkpoints" / "latest.json").write_text("{garbage")
    with pytest.raises(DataError) as err:
        train_in_process(tmp_path, mnist_dir, **checkpointed)
    assert "latest.json: not valid JSON" in str(err.value)
    failure = json.loads((run_dir / "_FAILURE").read_text())
    assert "latest.json" in failure["reason"]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


# --- 12, 15: data --------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size (a decompression bomb's header)."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def gz_corrupt(folder: Path) -> Path:
    (folder / "t10k-images-idx3-ubyte").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return folder


def npz(folder: Path, make) -> Path:
    path = folder / "mnist.npz"
    make(path)
    return path


def npz_bad_crc(path: Path) -> None:
    np.savez(
        path, **{k: np.zeros((3, 28, 28) if k[0] == "x" else 3, np.uint8) for k in data.IDX_FILES}
    )
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # inside the first array's data: its CRC no longer matches
    path.write_bytes(bytes(raw))


def huge_header(folder: Path) -> Path:
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 2**31, 2**31, 28)
    (folder / "train-images-idx3-ubyte").write_bytes(header + b"\0" * 100)
    return folder


DATA_CASES = [
    ("corrupt-gzip", gz_corrupt, "t10k-images-idx3-ubyte.gz"),
    ("npz-bad-crc", lambda f: npz(f, npz_bad_crc), "mnist.npz"),
    ("npz-truncated", lambda f: npz(f, lambda p: p.write_bytes(b"PK\x03\x04ab")), "mnist.npz"),
    ("npz-empty", lambda f: npz(f, lambda p: p.write_bytes(b"")), "mnist.npz"),
    ("idx-2^31-images", huge_header, "IDX size mismatch"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "damage", "text"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_a_data_error_naming_the_file(case, damage, text, tmp_path, mnist_dir):
    folder = tmp_path / "mnist"
    ds = data.load("mnist", mnist_dir).limited(20, 10)
    folder.mkdir()
    for key, stem in data.IDX_FILES.items():
        (folder / stem).write_bytes(idx_bytes(getattr(ds, key)))
    source = damage(folder)
    with pytest.raises(DataError, match=text) as err:
        data.load("mnist", source)
    assert err.value.exit_code == EXIT_DATA


@pytest.mark.slow
def test_bucket_data_ignores_subfolders_and_errors_name_the_object(
    s3_endpoint, bucket, tmp_path, mnist_dir
):
    from tests.test_storage import upload_slice

    ds = data.load("mnist", mnist_dir).limited(256, 64)
    data_uri = upload_slice(s3_endpoint, bucket, {k: getattr(ds, k) for k in data.IDX_FILES})
    client = s3_client(s3_endpoint)
    prefix = data_uri.split("/", 3)[3]
    for stem in data.IDX_FILES.values():  # an old copy below the prefix, all of it junk
        client.put_object(Bucket=bucket, Key=f"{prefix}/old/{stem}", Body=b"junk")
    env = {**cos_env(s3_endpoint), "DATA_URI": data_uri, **TINY}
    result, _ = train_in_process(tmp_path, mnist_dir, RUN_ID="nested", **env)
    assert result["n_train"] == 256 and result["data_source"] == data_uri
    client.put_object(Bucket=bucket, Key=f"{prefix}/t10k-labels-idx1-ubyte", Body=b"junk")
    with pytest.raises(DataError) as err:
        train_in_process(tmp_path, mnist_dir, RUN_ID="broken", **env)
    assert f"{data_uri}/t10k-labels-idx1-ubyte" in str(err.value)
    assert "/tmp" not in str(err.value).split(data_uri)[0]


# --- 16: predict ----------------------------------------------------------------------------------


def model_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "m.keras"
    if kind == "text":
        path.write_text("not a model")
    elif kind == "empty-zip":
        zipfile.ZipFile(path, "w").close()
    elif kind == "png":
        Image.new("L", (28, 28)).save(path, format="PNG")
    elif kind == "bad-config":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", '{"class_name": "Nope", "config": {}}')
            zf.writestr("metadata.json", '{"keras_version": "3.0.0"}')
    return path


@pytest.mark.parametrize("kind", ["text", "empty-zip", "png", "bad-config"])
def test_predict_with_a_broken_model_is_a_data_error(kind, tmp_path):
    from job.training.predict import predict

    digit = Image.new("L", (28, 28))
    digit.paste(255, (12, 6, 16, 22))  # a stroke: a picture with ink, so the model is what fails
    digit.save(tmp_path / "digit.png")
    with pytest.raises(DataError, match=r"m\.keras: not a Keras model") as err:
        predict(model_file(tmp_path, kind), [tmp_path / "digit.png"])
    assert err.value.exit_code == EXIT_DATA


def test_predict_refuses_a_decompression_bomb(finished, tmp_path):
    from job.training.predict import predict

    (tmp_path / "bomb.png").write_bytes(png_claiming(20000, 20000))
    with pytest.raises(DataError, match=r"bomb\.png") as err:
        predict(finished / "done", [tmp_path / "bomb.png"])
    assert err.value.exit_code == EXIT_DATA


# --- 17, 20: where the run goes ------------------------------------------------------------------


class CaptivePortal(BaseHTTPRequestHandler):
    """Answers everything with 200 and a page of HTML, as a hotel network does."""

    def _page(self) -> None:
        body = b"<html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _page

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def portal():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CaptivePortal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_captive_portal_is_transient_not_success(portal, tmp_path, mnist_dir):
    env = {**cos_env(portal), "OUTPUT_URI": "s3://bucket-1/runs", **TINY}
    with pytest.raises(TransientError, match="not S3") as err:
        train_in_process(tmp_path, mnist_dir, store=None, RUN_ID="portal", **env)
    assert err.value.exit_code == EXIT_TRANSIENT


def path_cases(tmp_path: Path) -> list[tuple[str, dict[str, str], str]]:
    (tmp_path / "a-file").write_text("x")
    return [
        # (the attack, env (OUTPUT_URI otherwise tmp_path/o), text of the error)
        ("work-dir-missing", {"WORK_DIR": str(tmp_path / "missing")}, "WORK_DIR="),
        ("work-dir-a-file", {"WORK_DIR": str(tmp_path / "a-file")}, "WORK_DIR="),
        ("output-name-too-long", {"OUTPUT_URI": str(tmp_path / ("x" * 300))}, "OUTPUT_URI="),
        ("output-a-file", {"OUTPUT_URI": str(tmp_path / "a-file")}, "OUTPUT_URI="),
        ("output-under-proc", {"OUTPUT_URI": "/proc/mnist-runs"}, "OUTPUT_URI="),
    ]


@pytest.mark.parametrize("index", range(5), ids=lambda i: f"case{i}")
def test_path_problems_are_configuration_errors(index, tmp_path, mnist_dir):
    from job.training import train

    case, env, text = path_cases(tmp_path)[index]
    base = {"DATA_URI": str(mnist_dir), "OUTPUT_URI": str(tmp_path / "o"), "RUN_ID": "paths"}
    cfg = config.from_env({**base, **TINY, **env})
    with pytest.raises(ConfigError, match=text) as err:
        train.run(cfg)
    assert err.value.exit_code == EXIT_CONFIG, case


# --- 13, 18, 22: parsing ------------------------------------------------------------------------

PARSE_CASES = [
    ("evaluator-only", {"TF_CONFIG": json.dumps(
        {"cluster": {"evaluator": ["e:1"]}, "task": {"type": "evaluator", "index": 0}})},
     "TF_CONFIG"),
    ("index-true", {"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": True}})},
     "TF_CONFIG"),
    ("secret-with-space", {"COS_SECRET_ACCESS_KEY": "a b"}, "COS_SECRET_ACCESS_KEY"),
    ("underscore-int", {"EPOCHS": "1_0"}, "EPOCHS"),
    ("arabic-indic-digits", {"EPOCHS": "\u0661\u0662"}, "EPOCHS"),
    ("denormal-rate", {"LEARNING_RATE": "1e-320"}, "LEARNING_RATE"),
    ("s3-one-slash", {"OUTPUT_URI": "s3:/b"}, "OUTPUT_URI"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "env", "variable"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_strict_parsing(case, env, variable):
    with pytest.raises(ConfigError) as err:
        layout.check(config.from_env(env))
    assert err.value.variable == variable and err.value.exit_code == EXIT_CONFIG


@pytest.mark.parametrize(
    ("content", "text"),
    [(b"EPOCHS=3\n\xff=x\n", "UTF-8"), (b'EPOCHS="unterminated\n', "line 1")],
    ids=["not-utf8", "unterminated-quote"],
)
def test_a_broken_env_file_stops_the_job(content, text, tmp_path):
    (tmp_path / ".env").write_bytes(content)
    proc = cli("config", env=job_env(), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and text in one_error_line(proc.stderr)


def test_scrubbing_never_reveals_a_secret():
    from job import logs

    secret = "SECRETsecret-123"
    line = logs.error_line(f"cannot log in with {secret} at s3://bucket", [secret, "SECRET", "s"])
    assert line == "error: cannot log in with *** at s3://bucket", "longest first, words kept"


# --- 9, 22: signals -----------------------------------------------------------------------------


def wait_for_epoch(status: Path, proc: subprocess.Popen) -> None:
    while proc.poll() is None:
        if status.exists() and json.loads(status.read_text()).get("epoch", 0) >= 1:
            return
        time.sleep(0.1)
    pytest.fail(f"the job ended early: {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "code"), [([signal.SIGINT], 130), ([signal.SIGTERM] * 20, 143)],
    ids=["sigint-without-a-terminal", "burst-of-sigterms"],
)  # fmt: skip
def test_signals_stop_cleanly(signals, code, tmp_path, mnist_dir):
    env = job_env(
        RUN_ID="sig", OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(mnist_dir),
        RECIPE="seed", EPOCHS="50", TRAIN_LIMIT="2000", TEST_LIMIT="200",
    )  # fmt: skip
    proc = start_job("train", env=env, cwd=tmp_path)
    wait_for_epoch(tmp_path / "out" / "sig" / "status.json", proc)
    for sig in signals:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    one_error_line(stderr)
    status = json.loads((tmp_path / "out" / "sig" / "status.json").read_text())
    assert status["state"] == "preempted"
    assert (tmp_path / "out" / "sig" / "checkpoints" / "latest.json").exists()


# --- 3: one owner per run ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_process_finds_the_live_owner(out, tmp_path, mnist_dir):
    """A holds the run (a live lease); B with the same RUN_ID exits 75 naming A, writing
    nothing; and a finished run is left alone by everyone."""
    from job.runstore.lease import Lease, RunOwned
    from job.runstore.local import LocalStore
    from job.runstore.publish import RunPublisher

    store = LocalStore(out)
    holder = Lease(RunPublisher(store, "busy"), seconds=60)
    holder.me["host"] = "another-host"  # not this machine: only expiry ends its lease
    holder.acquire()
    before = digests(out)
    with pytest.raises(RunOwned, match="owned by another-host") as err:
        train_in_process(tmp_path, mnist_dir, store=store, RUN_ID="busy", **TINY)
    assert err.value.exit_code == EXIT_TRANSIENT
    assert digests(out) == before


@pytest.mark.slow
def test_a_zombie_owner_cannot_change_a_run_finished_after_takeover(tmp_path, mnist_dir):
    """B claims the run and is frozen (SIGSTOP) after loading data, long enough for its lease
    to expire; A takes the run over and publishes it; B wakes up, finds its writes refused,
    and exits 75 without changing one byte of A's run."""
    out = tmp_path / "out"
    env = job_env(
        RUN_ID="race", OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), LEASE_SECONDS="10", **TINY
    )
    b = start_job("train", env=env, cwd=tmp_path)
    while b.poll() is None and not (out / "race" / "status.json").exists():
        time.sleep(0.05)
    b.send_signal(signal.SIGSTOP)
    try:
        owner = json.loads((out / "race" / "owner.json").read_text())
        assert owner["pid"] == b.pid
        owner["host"] = "elsewhere"  # as if B ran on another node: A must wait for expiry
        (out / "race" / "owner.json").write_text(json.dumps(owner))
        a = run_job("train", env=env, cwd=tmp_path)  # B's lease is live: A must not start
        assert a.returncode == EXIT_TRANSIENT and "owned by elsewhere" in one_error_line(a.stderr)
        while time.time() <= owner["expires_at"]:  # B is frozen: its lease runs out
            time.sleep(0.2)
        a = run_job("train", env=env, cwd=tmp_path)
        assert a.returncode == 0, a.stderr[-2000:]
        finished = digests(out / "race")
    finally:
        b.send_signal(signal.SIGCONT)
    _, stderr = b.communicate(timeout=120)
    assert b.returncode == EXIT_TRANSIENT, stderr[-2000:]
    assert "another process" in one_error_line(stderr)
    assert digests(out / "race") == finished, "the zombie changed the finished run"


@pytest.mark.slow
def test_same_run_id_started_twice_by_two_processes(tmp_path, mnist_dir):
    """Two processes with the same RUN_ID started together, 3 times: one publishes, the other
    exits 75 (a live owner) or 0 (already finished); the finished run never changes after.
    The fencing itself is raced many more times in one process (test_fencing.py); these rounds
    prove the processes around it: the exit codes, the error line, no debris."""
    outcomes = []
    for round_ in range(3):
        out = tmp_path / f"round{round_}"
        env = job_env(RUN_ID="twice", OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), **TINY)
        pair = [start_job("train", env=env, cwd=tmp_path) for _ in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in pair]
        codes = sorted(code for code, _ in results)
        assert codes in ([0, 0], [0, EXIT_TRANSIENT]), results
        for code, stderr in results:
            if code == EXIT_TRANSIENT:
                assert "owned by" in one_error_line(stderr) or "claimed" in stderr
        run = out / "twice"
        manifest = json.loads((run / "_SUCCESS").read_text())
        listed = {entry["path"] for entry in manifest["files"]}
        assert set(digests(run)) == listed | {"_SUCCESS", "status.json"}, "no debris beside it"
        for entry in manifest["files"]:
            assert hashlib.sha256((run / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        assert json.loads((run / "status.json").read_text())["state"] == "succeeded"
        finished = digests(run)
        if round_ == 0:  # and a third start, later, changes nothing
            again = run_job("train", env=env, cwd=tmp_path)
            assert again.returncode == 0 and digests(run) == finished
        outcomes.append(tuple(codes))
    assert len(outcomes) == 3


# --- 4: a peer that never joins -------------------------------------------------------------


@pytest.mark.slow
def test_a_peer_that_never_starts_ends_the_chief_with_75(tmp_path, mnist_dir):
    """Worker 0 of two, alone: creating the strategy waits for worker 1 inside native code.
    COLLECTIVE_TIMEOUT bounds that wait; the chief records the failure and exits 75."""
    from tests.test_distribute import free_ports

    ports = free_ports(2)
    spec = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = job_env(
        RUN_ID="lonely", OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(mnist_dir),
        COLLECTIVE_TIMEOUT="10", **TINY,
        TF_CONFIG=json.dumps({"cluster": spec, "task": {"type": "worker", "index": 0}}),
    )  # fmt: skip
    proc = run_job("train", env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == EXIT_TRANSIENT, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert ("peer" in line and "COLLECTIVE_TIMEOUT" in line) or "lost contact" in line, line
    run = tmp_path / "out" / "lonely"
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    assert (run / "_FAILURE").exists() and not (run / "_SUCCESS").exists()
