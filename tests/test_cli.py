"""The command line as a person meets it (job.cli): answers instead of silence, help for every
option, and output formats that never mix JSON and text on one stdout.

Runs are published by the real publication code (job.runstore.publish.RunPublisher) into a
local folder or the loopback S3 server, since what is tested is what the commands say about
them; one test trains a tiny run for real through `submit --wait --json` and checks it with
`runs` and `verify`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

import job
from job import cli as cli_mod
from job import config
from job.errors import EXIT_BROKEN_PIPE, EXIT_CONFIG, EXIT_USAGE, WATCH_EXIT
from job.launch import docker, wml
from job.launch.watch import watch
from job.runstore import champion, layout
from job.runstore.local import LocalStore
from job.runstore.publish import RunPublisher
from job.runstore.reader import RunReader
from tests.support.jobs import ROOT, cli, job_env, run_job
from tests.support.s3 import cos_env
from tests.test_manifests import OVERLAYS, pod_templates, render
from tests.test_storage import store_for

OLD = "2026-01-01T00:00:00.000Z"  # a heartbeat far older than prune's 24 hours


def publish_run(store, run_id: str, accuracy: float, work: Path, *, updated_at: str | None = None):
    """A finished run, written as `train` writes one (RunPublisher: run.json and status first,
    then the files, `_SUCCESS` listing them, the final status). Returns its metrics."""
    metrics = {
        "run_id": run_id, "dataset": "mnist", "test_accuracy": accuracy, "test_loss": 0.05,
        "baseline_error_pct": round(100 * (1 - accuracy), 2), "n_test": 10000,
        "misclassified_count": round(10000 * (1 - accuracy)), "test_set_sha256": "a" * 64,
        "per_class": [{"class": c, "recall": 0.95 + c / 1000} for c in range(10)],
        "weights_sha256": hashlib.sha256(run_id.encode()).hexdigest(), "code_version": "0.1.0",
    }  # fmt: skip
    folder = work / f"publish-{run_id}"
    (folder / "model").mkdir(parents=True)
    (folder / "images").mkdir()
    (folder / layout.METRICS).write_text(json.dumps(metrics))
    (folder / "model" / "model.keras").write_bytes(secrets.token_bytes(64))
    (folder / "images" / "samples.png").write_bytes(b"\x89PNG not really")
    publisher = RunPublisher(store, run_id)
    publisher.start({"run_id": run_id, "config": {"promotion": {"policy": "never"}}})
    publisher.publish(folder, epoch=2, epochs=2, metrics={"test_accuracy": accuracy})
    if updated_at:
        status = {"run_id": run_id, "state": "succeeded", "epoch": 2, "epochs": 2,
                  "updated_at": updated_at}  # fmt: skip
        store.put_bytes(f"{run_id}/{layout.STATUS}", json.dumps(status).encode())
    return metrics


def fail_run(store, run_id: str, reason: str) -> None:
    publisher = RunPublisher(store, run_id)
    publisher.start({"run_id": run_id, "config": {}})
    publisher.fail(reason)


def running_run(store, run_id: str) -> None:
    publisher = RunPublisher(store, run_id)
    publisher.start({"run_id": run_id, "config": {}})
    publisher.status("running", epoch=1, epochs=3)


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def json_lines(stdout: str) -> list[dict]:
    """Every line of stdout as JSON: fails on any line of text among them."""
    lines = stdout.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]


@pytest.fixture
def s3(s3_endpoint, bucket):
    """A run store in a fresh bucket of the loopback S3 server, and the job's variables for it."""
    uri = f"s3://{bucket}/runs"
    return store_for(s3_endpoint, uri), job_env(**cos_env(s3_endpoint), OUTPUT_URI=uri), uri


# --- a bare command, --help, --version, the name in the usage line -------------------------


def test_a_bare_command_prints_the_help_and_exits_2_under_either_name(tmp_path):
    """A bare `mnist-job` used to start a 20-epoch training on all of MNIST."""
    script = Path(sys.executable).parent / "mnist-job"  # the entry point pyproject installs
    assert script.is_file(), f"{script}: `pip install -e .` installs it (make venv)"
    env = job_env(OUTPUT_URI=str(tmp_path / "runs"))
    for argv, name in (([sys.executable, "-m", "job"], "python -m job"),
                       ([str(script)], "mnist-job")):  # fmt: skip
        proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                              check=False)  # fmt: skip
        assert proc.returncode == EXIT_USAGE == 2, proc.stderr
        assert proc.stderr.startswith(f"usage: {name} [-h] [--version] COMMAND"), proc.stderr
        assert "train" in proc.stderr and f"`{name} train` trains" in proc.stderr
        assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing ran: no run folder"
    typo = run_job("runs", "--limit", "x", env=env, cwd=tmp_path)
    assert typo.returncode == 2 and "usage: python -m job runs" in typo.stderr


def test_every_way_the_job_is_started_says_train():
    """With a bare command now a usage error, each launcher must name `train` itself: the
    image's default command, every manifest, the WML command, the docker and local backends."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["python", "-m", "job"\]$', dockerfile, re.M)
    assert re.findall(r"^CMD (.*)$", dockerfile, re.M) == ['["train"]']
    for overlay in OVERLAYS:
        for template in pod_templates(render(overlay)):
            for container in template["spec"]["containers"]:
                assert "command" not in container, (overlay, container["name"])  # the image's
                assert container["args"] == ["train"], (overlay, container["name"])
    assert wml.command("r-1", {"EPOCHS": "3"}).endswith(" python3 -m job train")
    cfg = config.from_env({"OUTPUT_URI": "s3://bucket-1/runs", "COS_ACCESS_KEY_ID": "k",
                           "COS_SECRET_ACCESS_KEY": "s", "RUN_ID": "r-1"})  # fmt: skip
    assert docker.docker_command(cfg, "mnist-job:gpu", False, Path("env"))[-2:] == [
        "mnist-job:gpu", "train"]  # fmt: skip
    local = (ROOT / "job" / "launch" / "local.py").read_text()
    assert '[sys.executable, "-m", "job", "train"]' in local


def test_train_help_names_the_variables_that_matter(tmp_path):
    proc = cli("train", "--help", env=job_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^  ([A-Z][A-Z_]+) ", proc.stdout, re.M))
    training = {v.name for v in config.VARIABLES if v.section == "training"}
    must = {"RECIPE", "EPOCHS", "TRAIN_LIMIT", "TEST_LIMIT", "OUTPUT_URI", "DATA_URI", "SEED",
            "PRECISION", "RUN_ID"}  # fmt: skip
    assert must | training <= listed, must | training - listed
    assert re.search(r"^  EPOCHS +1-10000 \[recipe's \(fast / seed\): \d+ / \d+\]$", proc.stdout,
                     re.M), proc.stdout  # fmt: skip
    assert "config --table" in proc.stdout


def test_version_is_the_package_version(tmp_path):
    proc = cli("--version", env=job_env(), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(f" {job.__version__}")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == job.__version__


def test_every_option_and_argument_has_help():
    parser = cli_mod._parser()
    missing = []
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in [("", parser), *commands.choices.items()]:
        for action in sub._actions:
            if action is not commands and not action.help:
                shown = "/".join(action.option_strings) or action.dest
                missing.append(f"{name} {shown}".strip())
    assert not missing, f"without help: {missing}"
    assert set(commands.choices) >= {"train", "runs", "watch", "prune", "verify", "submit"}


# --- watch: not found at once, formats, downloads only when asked --------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_watch_of_a_run_that_is_nowhere_fails_at_once(where, s3_endpoint, bucket, tmp_path):
    out = tmp_path / "out"
    uri = str(out) if where == "local" else f"s3://{bucket}/runs"
    env = job_env(OUTPUT_URI=uri, **(cos_env(s3_endpoint) if where == "s3" else {}))
    if where == "local":
        fail_run(LocalStore(out), "other", "an unrelated run")  # the store is there
    proc = cli("watch", "nosuchrun", env=env, cwd=tmp_path)
    assert proc.returncode == WATCH_EXIT["not_found"] == 5, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr)
    assert f"run nosuchrun not found in {uri}" in line and " runs` lists the runs" in line
    assert proc.stdout == "", "no result line after the error"


def test_watch_wait_for_start_waits_for_a_run_that_starts(tmp_path):
    out = tmp_path / "out"
    store = LocalStore(out)

    def start_later() -> None:
        time.sleep(0.5)
        publish_run(store, "later", 0.99, tmp_path)

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        proc = cli("watch", "later", "--wait-for-start", "--interval", "0.05",
                   env=job_env(OUTPUT_URI=str(out)), cwd=tmp_path)  # fmt: skip
    finally:
        starter.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json_lines(proc.stdout)[-1]["outcome"] == "succeeded"


def test_watch_prints_json_lines_only_on_a_pipe_and_downloads_only_with_dest(s3, tmp_path):
    store, env, uri = s3
    metrics = publish_run(store, "done", 0.987, tmp_path)
    fail_run(store, "broke", "DATA_URI='/x' is invalid\r\nTest accuracy: 99.99%")
    work = tmp_path / "cwd"
    work.mkdir()
    piped = cli("watch", "done", env=env, cwd=work)
    assert piped.returncode == 0, piped.stderr
    *progress, result = json_lines(piped.stdout)
    assert all(p["event"] == "progress" for p in progress)
    assert result["event"] == "result" and result["outcome"] == "succeeded"
    assert result["weights_sha256"] == metrics["weights_sha256"]
    assert result["files"] == f"{uri}/done" and result["downloaded"] == []
    assert "Baseline Error: 1.30%" in result["summary"]
    assert list(work.iterdir()) == [], "nothing downloaded without --dest (no ./watched)"

    dest = tmp_path / "got"
    fetched = cli("watch", "done", "--json", "--dest", str(dest), env=env, cwd=work)
    result = json_lines(fetched.stdout)[-1]
    assert result["downloaded"] == ["images/samples.png", "metrics.json"]
    assert json.loads((dest / "metrics.json").read_text()) == metrics
    assert list(work.iterdir()) == []

    failed = cli("watch", "broke", "--json", env=env, cwd=work)
    assert failed.returncode == 1
    result = json_lines(failed.stdout)[-1]
    assert result["outcome"] == "failed" and result["exit_code"] == 1
    assert result["reason"] == "DATA_URI='/x' is invalid??Test accuracy: 99.99%"


def test_watch_on_a_terminal_prints_text_only(tmp_path):
    store = LocalStore(tmp_path / "out")
    publish_run(store, "done", 0.99, tmp_path)
    lines: list[str] = []
    code = watch(RunReader(store, "done"), interval=0.05, stall_after=60, timeout=None,
                 out=lines.append, tty=True)  # fmt: skip
    assert code == 0
    assert not [line for line in lines if line.lstrip().startswith("{")], lines
    assert lines[0].startswith("[##############################] succeeded epoch 2/2")
    assert lines[1:] == [
        "Baseline Error: 1.00%",
        "Test accuracy: 99.00% (100 of 10000 test digits wrong)",
        "Worst classes (recall): 0: 95.0%, 1: 95.1%, 2: 95.2%",
        f"Files: {tmp_path / 'out' / 'done'}",
    ]


# --- runs --------------------------------------------------------------------------------


def test_runs_on_an_empty_or_missing_store_says_so(s3_endpoint, bucket, tmp_path):
    missing = tmp_path / "not" / "yet"
    proc = cli("runs", env=job_env(OUTPUT_URI=str(missing)), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, f"no runs in {missing}\n"), proc.stderr
    assert not missing.exists(), "listing creates nothing"
    (tmp_path / "empty").mkdir()
    proc = cli("runs", env=job_env(OUTPUT_URI=str(tmp_path / "empty")), cwd=tmp_path)
    assert proc.stdout == f"no runs in {tmp_path / 'empty'}\n"
    uri = f"s3://{bucket}/runs"
    proc = cli("runs", env=job_env(**cos_env(s3_endpoint), OUTPUT_URI=uri), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, f"no runs in {uri}\n"), proc.stderr
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    proc = cli("runs", env=job_env(OUTPUT_URI=str(a_file)), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert one_error_line(proc.stderr).startswith(f"error: OUTPUT_URI='{a_file}' is invalid")


def test_runs_shows_a_header_the_champion_the_reason_and_the_weights(s3, tmp_path):
    store, env, _ = s3
    first = publish_run(store, "r1-champion", 0.99, tmp_path)
    publish_run(store, "r2-finished", 0.98, tmp_path)
    fail_run(store, "r3-failed", "DATA_URI='/nope' is invalid: expected a folder\nsecond")
    running_run(store, "r4-running")
    candidate = champion.candidate(store, "r1-champion")
    champion.consider(store, "mnist", candidate, policy="always", margin=0.0, force=True)
    proc = cli("runs", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["RUN_ID", "STATE", "EPOCH", "UPDATED", "WEIGHTS", "ACCURACY",
                              "CHAMPION", "REASON"]  # fmt: skip
    rows = {line.split()[0]: line.split(maxsplit=7) for line in lines}
    assert list(rows) == ["r4-running", "r3-failed", "r2-finished", "r1-champion"]
    assert rows["r1-champion"][1:3] == ["succeeded", "2/2"]
    assert rows["r1-champion"][4:] == [first["weights_sha256"][:12], "99.00%", "mnist"]
    assert rows["r2-finished"][5:] == ["98.00%", "-"]
    assert rows["r3-failed"][1:3] == ["failed", "-"] and rows["r3-failed"][4:7] == ["-"] * 3
    assert rows["r3-failed"][7] == "DATA_URI='/nope' is invalid: expected a folder"
    assert rows["r4-running"][1:3] == ["running", "1/3"] and len(rows["r4-running"]) == 7
    as_json = cli("runs", "--json", env=env, cwd=tmp_path).stdout
    listed = {r["run_id"]: r for r in json_lines(as_json)}
    assert listed["r1-champion"]["champion_of"] == ["mnist"]
    assert listed["r1-champion"]["weights_sha256"] == first["weights_sha256"]
    assert listed["r3-failed"]["reason"].startswith("DATA_URI='/nope' is invalid")
    assert listed["r2-finished"]["champion_of"] == [] and listed["r4-running"]["reason"] is None


# --- prune -------------------------------------------------------------------------------


def test_prune_says_what_kept_each_run(tmp_path):
    out = tmp_path / "out"
    store = LocalStore(out)
    for run_id in ("a-old", "b-old", "c-champion"):
        publish_run(store, run_id, 0.99, tmp_path, updated_at=OLD)
    champion.consider(store, "mnist", champion.candidate(store, "c-champion"), policy="always",
                      margin=0.0, force=True)  # fmt: skip
    publish_run(store, "d-recent", 0.99, tmp_path)
    running_run(store, "e-running")
    publish_run(store, "f-newest", 0.99, tmp_path, updated_at=OLD)
    env = job_env(OUTPUT_URI=str(out))
    before = sorted(p.name for p in out.iterdir())
    dry = cli("prune", "--keep", "1", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would delete b-old",
        "would delete a-old",
        "kept the newest 1 (--keep 1): f-newest",
        "kept e-running: running: no end marker (_SUCCESS, _FAILURE, _CANCELLED)",
        "kept d-recent: last updated 0.0 h ago, within --older-than-hours 24",
        "kept c-champion: champion of mnist",
        "2 runs to delete, 4 kept",
    ]
    assert sorted(p.name for p in out.iterdir()) == before, "a dry run deletes nothing"
    # The case: nothing to delete, and why.
    recent = cli("prune", "--keep", "0", "--dry-run", env=env, cwd=tmp_path)
    assert "kept d-recent: last updated 0.0 h ago, within --older-than-hours 24" in recent.stdout
    listed = cli("prune", "--keep", "1", "--dry-run", "--json", env=env, cwd=tmp_path).stdout
    decided = {r["run_id"]: r for r in json_lines(listed)}
    assert decided["a-old"] == {"run_id": "a-old", "action": "would_delete", "kept_by": []}
    assert decided["c-champion"]["kept_by"] == ["champion of mnist"]
    assert decided["f-newest"]["kept_by"] == ["one of the newest 1 (--keep 1)"]
    done = cli("prune", "--keep", "1", env=env, cwd=tmp_path)
    assert done.stdout.splitlines()[:2] == ["deleted b-old", "deleted a-old"]
    assert done.stdout.splitlines()[-1] == "2 runs deleted, 4 kept"
    assert sorted(p.name for p in out.iterdir()) == [
        "c-champion", "d-recent", "e-running", "f-newest", "models"]  # fmt: skip


# --- submit --wait --json and verify --json on a run trained for real --------------------


@pytest.mark.slow
def test_submit_wait_json_then_runs_and_verify_on_the_trained_run(tmp_path, mnist_dir):
    out = tmp_path / "out"
    env = job_env(OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), RECIPE="seed", EPOCHS="1",
                  TRAIN_LIMIT="256", TEST_LIMIT="64")  # fmt: skip
    proc = run_job("submit", "--backend", "local", "--run-id", "cli-1", "--wait", "--json",
                   "--interval", "0.2", env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    submitted, *progress, result = json_lines(proc.stdout)
    assert submitted["event"] == "submitted" and submitted["run_id"] == "cli-1"
    assert submitted["results"] == str(out / "cli-1")
    assert {p["event"] for p in progress} == {"platform", "progress"}  # the child's, the store's
    assert [p["epoch"] for p in progress if p.get("state") == "running" and "loss" in p] == [1]
    assert result["event"] == "result" and result["outcome"] == "succeeded"
    assert any(line.startswith("Baseline Error: ") for line in result["summary"])
    weights = json.loads((out / "cli-1" / "metrics.json").read_text())["weights_sha256"]
    assert result["weights_sha256"] == weights
    row = cli("runs", env=env, cwd=tmp_path).stdout.splitlines()[1].split()
    assert row[:2] == ["cli-1", "succeeded"] and row[4] == weights[:12]
    verified = run_job("verify", "cli-1", "--json", env=env, cwd=tmp_path)  # TensorFlow: a process
    assert verified.returncode == 0, verified.stderr[-2000:]
    (record,) = json_lines(verified.stdout)
    assert record["outcome"] == "identical" and record["exit_code"] == 0
    assert weights[:8] in record["detail"]


# --- pipes closed early, options out of range ------------------------------------------------


def test_a_listing_piped_into_head_ends_quietly(tmp_path):
    store = LocalStore(tmp_path / "out")
    for i in range(3):
        publish_run(store, f"run-{i:02d}", 0.99, tmp_path)
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    for args in (("runs",), ("runs", "--json")):
        # A pipe whose reader is gone before the first line, as `| head -1` is by the second.
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "job", *args], env=env, cwd=tmp_path, stdout=write_end,
                stderr=subprocess.PIPE, text=True, timeout=120,
            )  # fmt: skip
        finally:
            os.close(write_end)
        # 141 (128 + SIGPIPE) as any Unix tool says it, no error line; not "Broken pipe;
        # retrying may help" (75).
        assert (proc.returncode, proc.stderr) == (EXIT_BROKEN_PIPE, ""), proc.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("watch", "r1", "--interval", "1e10"), "--interval"),
        (("watch", "r1", "--timeout", "nan"), "--timeout"),
        (("runs", "--limit", "0"), "--limit"),
        (("prune", "--keep", "1", "--older-than-hours", "nan"), "--older-than-hours"),
        (("prune", "--keep", "-1"), "--keep"),
    ],
)
def test_an_option_out_of_range_is_78_naming_it(args, option, tmp_path):
    proc = cli(*args, env=job_env(OUTPUT_URI=str(tmp_path / "out")), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert one_error_line(proc.stderr).startswith(f"error: {option}=")


def test_watch_dest_that_is_a_file_is_78_before_following(tmp_path):
    store = LocalStore(tmp_path / "out")
    running_run(store, "live")  # would be followed for --stall-after seconds
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    proc = cli("watch", "live", "--dest", str(a_file), env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and proc.stdout == ""
    assert one_error_line(proc.stderr).startswith(f"error: --dest='{a_file}' is invalid")
