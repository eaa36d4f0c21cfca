"""`show RUN` (one run at a glance, from its records) and `logs RUN` (its log, where the backend
that started it keeps it): a real tiny run, real failed runs written by the job's own publisher
on a local folder and the loopback S3 server, a real local submission, and recording stand-ins
of `docker` and `kubectl` (no Docker engine or API server runs here)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from job import config
from job.launch.backend import MAX_LOG_LINE, record
from job.launch.local import MAX_LOG_SHOWN, print_log
from job.runstore import describe, layout
from job.runstore.local import LocalStore
from job.runstore.publish import RunPublisher
from job.runstore.store import open_store
from tests.support.jobs import cli, job_env, train_in_process
from tests.support.s3 import cos_env
from tests.test_submit import recorded, stand_in
from tests.test_wml import harness, standin, wml_env  # noqa: F401  (fixtures)
from tests.test_wml import submit as wml_submit

ESCAPE = "\x1b]0;owned\x07\x1b[2J"  # a terminal title and a clear screen: never printed as is


def failed_run(store, run_id: str, reason: str, **fields) -> None:
    """A failed run as the job records one (job.runstore.publish), without a process."""
    run = RunPublisher(store, run_id)
    run.adopt()
    run.start({"run_id": run_id, "config": {"training": {"recipe": "seed", "epochs": 3}}})
    run.fail(reason, epoch=1, **fields)


# --- pure parts ---


def test_curve_draws_one_bar_per_epoch_on_a_stated_scale():
    points = [{"epoch": 1, "test_accuracy": 0.935}, {"epoch": 2, "test_accuracy": 0.98},
              {"epoch": 3, "test_accuracy": 1.0}]  # fmt: skip
    head, *bars = describe.curve(points, width=20)
    assert head == "Test accuracy per epoch (bar: 90% to 100%):"
    assert bars == [
        "     1 #######............. 93.50%",
        "     2 ################.... 98.00%",
        "     3 #################### 100.00%",
    ]
    # A smoke run's low figures move the scale down; a history of thousands draws the last.
    low = describe.curve([{"epoch": 1, "test_accuracy": 0.57}], width=10)
    assert low[0].endswith("(bar: 50% to 100%):") and low[1] == "     1 #......... 57.00%"
    many = describe.curve([{"epoch": e, "test_accuracy": 0.99} for e in range(1, 251)])
    assert many[1] == "  (the first 150 epochs are not drawn)" and len(many) == 2 + 100


def test_the_exit_class_of_a_failure_comes_from_its_record_or_its_error_class():
    assert describe.exit_code_of({"reason": "DataError: DATA_URI='x' is invalid"}) == 65
    assert describe.exit_code_of({"reason": "ConfigError: EPOCHS='0' is invalid"}) == 78
    assert describe.exit_code_of({"reason": "RunOwned: run x is running"}) == 75
    assert describe.exit_code_of({"reason": "MemoryError: "}) == 71
    assert describe.exit_code_of({"reason": "DataError: x", "exit_code": 75}) == 75
    # Outside the job's classes the code may be 70, 71 or 75: not guessed.
    assert describe.exit_code_of({"reason": "OSError: [Errno 5] I/O error"}) is None
    assert describe.exit_code_of({"reason": "no colon here"}) is None


def test_a_local_log_is_shown_from_its_last_bytes_and_followed_to_its_writers_end(tmp_path):
    path = tmp_path / "train.log"
    line = "x" * 99 + "\n"
    count = MAX_LOG_SHOWN // len(line) + 500
    path.write_text("".join(f"{i:08d}{line[8:]}" for i in range(count)))
    got: list[str] = []
    fd = os.open(path, os.O_RDONLY)
    print_log(fd, path, got.append, alive=None, interval=0.01)
    # Only whole lines of the last MAX_LOG_SHOWN bytes, the cut one left out.
    assert got[-1].startswith(f"{count - 1:08d}") and len(got) == MAX_LOG_SHOWN // len(line)
    assert all(len(shown) == 99 for shown in got)

    # Followed: what a writer adds while it lives, and its last words after, in order; a line
    # without end comes in pieces of MAX_LOG_LINE; escapes are never printed as they are.
    path.write_text("")
    os.lseek(fd, 0, os.SEEK_SET)

    def writer() -> None:
        with path.open("a") as log:
            for i in range(50):
                log.write(f"line {i}\n")
                log.flush()
            log.write(f"{ESCAPE}" + "y" * (2 * MAX_LOG_LINE) + "\nlast words, no newline")

    thread = threading.Thread(target=writer)
    got.clear()
    thread.start()
    print_log(fd, path, got.append, alive=thread.is_alive, interval=0.01)
    os.close(fd)
    assert got[:50] == [f"line {i}" for i in range(50)]
    assert [len(piece) for piece in got[50:-1]] == [MAX_LOG_LINE, MAX_LOG_LINE, len(ESCAPE)]
    assert got[50].startswith("?]0;owned??[2J") and "\x1b" not in "".join(got)
    assert got[-1] == "last words, no newline"


# --- show ---


@pytest.mark.slow
def test_show_a_finished_run_without_reading_its_model(tmp_path, mnist_dir):
    metrics, folder = train_in_process(
        tmp_path, mnist_dir, RUN_ID="shown-ok", RECIPE="seed", EPOCHS="2", TRAIN_LIMIT="1000",
        TEST_LIMIT="200", SEED="7",
    )  # fmt: skip
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    # The model and the images are not read: show works with them away, and still says where.
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("model", layout.IMAGES):
        (folder / name).rename(aside / name)

    proc = cli("show", "shown-ok", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.splitlines()
    assert text[0].startswith("Run shown-ok: succeeded (epoch 2/2, updated ")
    assert ("Settings: recipe seed, epochs 2, train limit 1000, test limit 200, precision "
            "float32, seed 7, batch size 128, learning rate 0.001") in text  # fmt: skip
    assert f"Baseline Error: {metrics['baseline_error_pct']:.2f}%" in text
    assert f"Test accuracy: {100 * metrics['test_accuracy']:.2f}% " in proc.stdout
    assert "Smoke run: 1,000 of 60,000 training and 200 of 10,000 test digits" in proc.stdout
    worst = sorted(metrics["per_class"], key=lambda c: c["recall"])[:3]
    shown_worst = next(line for line in text if line.startswith("Worst classes (recall): "))
    first = f"{worst[0]['class']} {100 * worst[0]['recall']:.2f}%"
    assert shown_worst.startswith(f"Worst classes (recall): {first}")
    curve = text.index(next(line for line in text if line.startswith("Test accuracy per epoch")))
    for entry, line in zip(metrics["history"], text[curve + 1 : curve + 3], strict=True):
        assert line.split()[0] == str(entry["epoch"]) and "#" in line
        assert line.endswith(f"{100 * entry['val_accuracy']:.2f}%")
    assert "Champion: no (model mnist has no champion yet)" in text
    run_uri = str(tmp_path / "out" / "shown-ok")
    assert f"  model    {run_uri}/model/model.keras" in proc.stdout
    assert f"  report   {run_uri}/report.html" in text
    assert f"  images   {run_uri}/images/confusion.png" in text

    for name in ("model", layout.IMAGES):
        (aside / name).rename(folder / name)
    assert cli("promote", "shown-ok", "--force", env=env, cwd=tmp_path).returncode == 0
    as_json = cli("show", "shown-ok", "--json", env=env, cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)  # stdout: that one object, nothing else
    assert summary["champion"] == {"model_name": "mnist", "is_champion": True,
                                   "champion": "shown-ok"}  # fmt: skip
    assert summary["result"]["test_accuracy"] == metrics["test_accuracy"]
    assert [p["epoch"] for p in summary["curve"]] == [1, 2]
    assert [c["class"] for c in summary["result"]["worst_classes"]] == [c["class"] for c in worst]
    assert summary["failure"] is None and summary["unreadable"] == []

    # A corrupt metrics.json: the rest is shown, the fault is the error line, exit 65.
    (folder / layout.METRICS).write_text('{"test_accuracy": "99%"}')
    broken = cli("show", "shown-ok", env=env, cwd=tmp_path)
    assert broken.returncode == 65
    assert broken.stdout.startswith("Run shown-ok: succeeded") and "Settings: recipe seed" in (
        broken.stdout
    )
    assert broken.stderr.startswith("error: ") and "metrics.json" in broken.stderr


def test_show_a_failed_run_in_a_bucket_names_its_exit_class_and_error_line(
    s3_endpoint, bucket, tmp_path
):
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs")
    store = open_store(env["OUTPUT_URI"], config.from_env(env).storage)
    failed_run(store, "shown-bad", f"DataError: DATA_URI='/nope{ESCAPE}' is invalid\nmore",
               last_log=["loading data", f"evil {ESCAPE}"])  # fmt: skip
    proc = cli("show", "shown-bad", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Failed, exit 65 (data): DataError: DATA_URI='/nope?]0;owned??[2J' is invalid" in (
        proc.stdout.splitlines()
    )
    assert "  evil ?]0;owned??[2J" in proc.stdout and "\x1b" not in proc.stdout
    assert "Settings: recipe seed, epochs 3" in proc.stdout
    assert f"  run      s3://{bucket}/runs/shown-bad" in proc.stdout
    summary = json.loads(cli("show", "shown-bad", "--json", env=env, cwd=tmp_path).stdout)
    assert summary["failure"]["exit_code"] == 65 and summary["failure"]["exit_class"] == "data"
    assert summary["state"] == "failed" and summary["result"] is None

    # Not started by `submit`: `logs` says so, and where such a run's log is (exit 78).
    logs = cli("logs", "shown-bad", env=env, cwd=tmp_path)
    assert logs.returncode == 78 and logs.stdout == ""
    assert logs.stderr.startswith("error: run shown-bad was not started by `")
    assert "its log is wherever the platform that ran it keeps it" in logs.stderr


def test_show_and_logs_of_no_such_run_are_5_at_once_naming_the_store(tmp_path):
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    for command in ("show", "logs"):
        proc = cli(command, "nosuchrun", env=env, cwd=tmp_path)
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.startswith(f"error: run nosuchrun not found in {tmp_path / 'out'}")
        assert "runs` lists the runs there" in proc.stderr and proc.stdout == ""


# --- logs ---


def test_logs_of_a_local_run_prints_and_follows_the_file_its_submission_names(tmp_path):
    """A real `submit --backend local`: its child is the job, which fails at once here on a
    DATA_URI that does not exist (checked before TensorFlow loads)."""
    env = job_env(OUTPUT_URI=str(tmp_path / "out"), DATA_URI=str(tmp_path / "missing"))
    sub = cli("submit", "--backend", "local", "--run-id", "logged", "--no-check", env=env,
              cwd=tmp_path)  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    followed = cli("logs", "logged", "--follow", "--interval", "0.1", env=env, cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr
    last = followed.stdout.splitlines()[-1]  # the child's error line, the log's last
    assert last.startswith("error: DATA_URI=") and str(tmp_path / "missing") in last
    again = cli("logs", "logged", env=env, cwd=tmp_path)  # the child has ended: the same log
    assert again.returncode == 0 and again.stdout == followed.stdout


def test_logs_opens_only_a_log_of_the_shape_submit_makes(tmp_path):
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    store = LocalStore(tmp_path / "out")
    folder = tmp_path / "mnist-job-planted-abcd_123"
    folder.mkdir(mode=0o755)
    (folder / "train.log").write_text("a log in a folder others may enter\n")
    for run_id, log, code, said in [
        ("planted", "/etc/passwd", 65, "is not the train.log `submit` created"),
        ("planted", str(folder / ".." / folder.name / "train.log"), 65, "is not the train.log"),
        ("planted", str(folder / "train.log"), 65, "is not a folder only this user may enter"),
        ("planted", str(tmp_path / "mnist-job-planted-gone_123" / "train.log"), 5,
         "is not on this machine"),
    ]:  # fmt: skip
        record(store, run_id, "local", "4242", log=log)
        proc = cli("logs", run_id, env=env, cwd=tmp_path)
        assert proc.returncode == code and said in proc.stderr, (log, proc.stderr)
        assert proc.stdout == "" and "root:" not in proc.stderr


DOCKER_LOGS = """
import json, os, sys
with open(os.environ["RECORD"], "a") as fh:
    fh.write(json.dumps({"argv": sys.argv[1:]}) + "\\n")
if os.environ.get("GONE"):
    print("Error response from daemon: No such container: " + sys.argv[-1], file=sys.stderr)
    sys.exit(1)
print("epoch 1/2 test accuracy 0.91", flush=True)
print("a line with \\x1b[2J an escape", file=sys.stderr, flush=True)
print("Baseline Error: 2.10%")
"""


def test_docker_logs_runs_docker_logs_on_the_container_submit_started(tmp_path):
    bin_dir = stand_in(tmp_path, "docker", DOCKER_LOGS)
    calls = tmp_path / "calls"
    env = job_env(OUTPUT_URI=str(tmp_path / "out"), PATH=f"{bin_dir}:{os.environ['PATH']}",
                  RECORD=str(calls))  # fmt: skip
    sub = cli("submit", "--backend", "docker", "--run-id", "in-docker", "--no-check", env=env,
              cwd=tmp_path)  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    proc = cli("logs", "in-docker", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "epoch 1/2 test accuracy 0.91", "a line with ?[2J an escape", "Baseline Error: 2.10%",
    ]  # fmt: skip
    assert cli("logs", "in-docker", "-f", env=env, cwd=tmp_path).returncode == 0
    argvs = [c["argv"] for c in recorded(calls)]
    assert argvs[-2:] == [["logs", "mnist-job-in-docker"],
                          ["logs", "--follow", "mnist-job-in-docker"]]  # fmt: skip
    gone = cli("logs", "in-docker", env={**env, "GONE": "1"}, cwd=tmp_path)
    assert gone.returncode == 5, gone.stderr
    assert "No such container: mnist-job-in-docker" in gone.stderr


def test_k8s_logs_reads_the_jobs_log_in_the_recorded_namespace(tmp_path):
    bin_dir = stand_in(tmp_path, "kubectl", DOCKER_LOGS)
    calls = tmp_path / "calls"
    env = job_env(OUTPUT_URI=str(tmp_path / "out"), PATH=f"{bin_dir}:{os.environ['PATH']}",
                  RECORD=str(calls))  # fmt: skip
    store = LocalStore(tmp_path / "out")
    # The record `submit --backend k8s` writes (job.launch.k8s); its namespace is read back.
    record(store, "in-k8s", "k8s", "in-k8s", overlay="gpu", namespace="team-a")
    proc = cli("logs", "in-k8s", "--follow", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "Baseline Error: 2.10%" in proc.stdout, proc.stderr
    assert recorded(calls)[-1]["argv"] == [
        "logs", "job/in-k8s", "--namespace", "team-a", "--follow",
    ]  # fmt: skip
    record(store, "in-k8s", "k8s", "in-k8s", overlay="gpu", namespace="x --all-namespaces")
    hostile = cli("logs", "in-k8s", env=env, cwd=tmp_path)
    assert hostile.returncode == 65 and "is not a Kubernetes namespace name" in hostile.stderr
    assert len(recorded(calls)) == 1  # nothing run for it


def test_wml_logs_prints_the_trainings_state_and_messages(standin, wml_env, tmp_path):  # noqa: F811
    training_id, _ = wml_submit("wml-logged", wml_env, tmp_path)
    standin.set_state(training_id, "running")
    now = cli("logs", "wml-logged", env=wml_env, cwd=tmp_path)
    assert now.returncode == 0 and now.stdout == "state running\n", now.stderr
    standin.set_state(training_id, "failed", f"Out of memory on the GPU {ESCAPE}")
    followed = cli("logs", "wml-logged", "-f", "--interval", "0.1", env=wml_env, cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == [
        "state failed", "failure: job_failed: Out of memory on the GPU ?]0;owned??[2J",
    ]  # fmt: skip


# --- what the review found (logs 1b, 1c, 1d, 5, 9) ---

KUBECTL_FAILING = """
import os, sys
print("epoch 1/2 test accuracy 0.91", flush=True)
said = os.environ.get("SAYS")
if said:
    print(said, file=sys.stderr, flush=True)
sys.exit(int(os.environ.get("EXIT", "1")))
"""


def test_a_failing_kubectl_logs_is_75_or_78_by_what_it_says_and_never_a_log_line(tmp_path):
    bin_dir = stand_in(tmp_path, "kubectl", KUBECTL_FAILING)
    env = job_env(OUTPUT_URI=str(tmp_path / "out"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    record(LocalStore(tmp_path / "out"), "k1", "k8s", "k1", overlay="gpu", namespace="team-a")
    for said, code in [
        ('Error from server (BadRequest): container "mnist" in pod "k1-abcde" is waiting to '
         "start: ContainerCreating", 75),
        ('Error from server (Forbidden): pods "k1-abcde" is forbidden: User "u" cannot get '
         'resource "pods/log" in API group "" in the namespace "team-a"', 78),
        ("error: You must be logged in to the server (Unauthorized)", 78),
        ("error: something kubectl never said before", 75),
        ('Error from server (NotFound): jobs.batch "k1" not found', 5),
    ]:  # fmt: skip
        proc = cli("logs", "k1", env={**env, "SAYS": said}, cwd=tmp_path)
        assert proc.returncode == code, (said, proc.returncode, proc.stderr)
        # The log's line on stdout, kubectl's error only on stderr, as the error line.
        assert proc.stdout == "epoch 1/2 test accuracy 0.91\n", proc.stdout
        assert proc.stderr.startswith("error: kubectl logs failed (exit 1): "), proc.stderr
        assert said in proc.stderr
    # A log whose last line looks like an error (the job's own error line) is still the log.
    ended = cli("logs", "k1", env={**env, "SAYS": "error: DATA_URI='x' is invalid", "EXIT": "0"},
                cwd=tmp_path)  # fmt: skip
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.splitlines() == ["epoch 1/2 test accuracy 0.91",
                                         "error: DATA_URI='x' is invalid"]  # fmt: skip


def test_wml_logs_of_a_deleted_training_is_5(standin, wml_env, tmp_path):  # noqa: F811
    training_id, _ = wml_submit("wml-deleted", wml_env, tmp_path)
    del standin.trainings[training_id]  # deleted in WML: it answers 404
    proc = cli("logs", "wml-deleted", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert f"WML has no training {training_id} (HTTP 404)" in proc.stderr and proc.stdout == ""


def test_wml_logs_follow_gives_up_when_wml_stays_unreachable(standin, wml_env, tmp_path,  # noqa: F811
                                                            monkeypatch):  # fmt: skip
    from job.launch import wml

    training_id, _ = wml_submit("wml-away", wml_env, tmp_path)
    # Ended in WML, which fails every poll for longer than the limit (a 5xx the client does not
    # retry): without a limit the follow would only end once WML answers again.
    standin.set_state(training_id, "completed")
    standin.failures[("GET", f"/ml/v4/trainings/{training_id}")] = [507] * 40
    monkeypatch.setattr(wml, "UNREACHABLE_LIMIT", 0.3)
    proc = cli("logs", "wml-away", "-f", "--interval", "0.05", env=wml_env, cwd=tmp_path)
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "answered HTTP 507" in proc.stderr and "gave up following after 0 s" in proc.stderr
    assert '"platform_unreachable"' in proc.stderr and proc.stdout == ""
    assert standin.failures[("GET", f"/ml/v4/trainings/{training_id}")]  # it stopped asking


def test_logs_of_a_log_in_a_folder_this_user_may_not_enter_is_65(tmp_path):
    """The review's case: the record names a log under a folder this user cannot enter. Where
    the tests run as root, whom no folder stops, the command runs as nobody (effective ids,
    restored after: the interpreter itself lives under root's own folder)."""
    base = Path(tempfile.mkdtemp(prefix="logs-locked-"))  # outside pytest's root-only folder
    locked = base / "locked"
    try:
        base.chmod(0o755)
        store = LocalStore(base / "out")
        (locked / "mnist-job-p1-abcdefgh").mkdir(parents=True, mode=0o700)
        record(store, "p1", "local", "123", log=str(locked / "mnist-job-p1-abcdefgh" / "train.log"))
        env = job_env(OUTPUT_URI=str(base / "out"))
        root = os.geteuid() == 0
        if root:
            for folder, _, files in os.walk(base / "out"):
                os.chmod(folder, 0o755)
                for name in files:
                    os.chmod(os.path.join(folder, name), 0o644)
            locked.chmod(0o700)
            os.setegid(65534)
            os.seteuid(65534)
        else:
            locked.chmod(0o000)
        try:
            proc = cli("logs", "p1", env=env, cwd=base)
        finally:
            if root:
                os.seteuid(0)
                os.setegid(0)
        assert proc.returncode == 65, proc.stderr
        assert "the log of run p1 cannot be read by this user" in proc.stderr
        assert str(locked / "mnist-job-p1-abcdefgh") in proc.stderr and proc.stdout == ""
    finally:
        locked.chmod(0o700)
        shutil.rmtree(base)


def test_show_and_logs_find_a_run_whose_folder_holds_only_what_cannot_be_read(tmp_path):
    out = tmp_path / "out"
    env = job_env(OUTPUT_URI=str(out))
    (out / "x1").mkdir(parents=True)
    os.mkfifo(out / "x1" / "status.json")
    (out / "x1" / "_FAILURE").symlink_to("/etc/passwd")
    listed = cli("runs", env=env, cwd=tmp_path)
    assert "x1" in listed.stdout and "unreadable" in listed.stdout, listed.stdout
    shown = cli("show", "x1", env=env, cwd=tmp_path)
    assert shown.returncode == 65, shown.stderr
    assert shown.stdout.startswith("Run x1: "), shown.stdout
    assert "status.json" in shown.stderr and "root:" not in shown.stdout + shown.stderr
    assert cli("logs", "x1", env=env, cwd=tmp_path).returncode == 78  # found; not submitted


def test_show_with_an_unreadable_submission_still_shows_the_run(tmp_path):
    store = LocalStore(tmp_path / "out")
    failed_run(store, "bad-sub", "DataError: DATA_URI='x' is invalid")
    record(store, "bad-sub", "nope", "whatever")  # no backend the job knows
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    proc = cli("show", "bad-sub", env=env, cwd=tmp_path)
    assert proc.returncode == 65, proc.stderr
    assert proc.stdout.startswith("Run bad-sub: failed"), proc.stdout
    assert "submission.json: no known backend and handle" in proc.stderr
    as_json = cli("show", "bad-sub", "--json", env=env, cwd=tmp_path)
    summary = json.loads(as_json.stdout)
    assert as_json.returncode == 65 and summary["state"] == "failed"
    assert "no known backend and handle" in summary["unreadable"][0]
    logs = cli("logs", "bad-sub", env=env, cwd=tmp_path)  # nothing to act on: the record's fault
    assert logs.returncode == 65 and "no known backend and handle" in logs.stderr
