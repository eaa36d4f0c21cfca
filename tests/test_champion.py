"""Champions per model name (job.runstore.champion) against the loopback S3 server, which enforces
If-Match and If-None-Match on PUT: the decision table, smoke runs kept out, the commands, and
two processes promoting at the same moment, 20 times.

The runs here are finished run folders written object by object (metrics.json, a model file,
`_SUCCESS` with their hashes), since what is tested is the decision on published figures: a
full run is one whose metrics.json says it used the full splits (60,000 / 10,000 digits), as a
real full run's does, without training one. One real (smoke) training checks that a run on
slices is refused on its own and promoted only with --force, and that its champion predicts."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import secrets
import time

import pytest
import structlog

from job.config import DATASETS
from job.errors import EXIT_CONFIG, EXIT_DATA
from job.runstore import champion, layout
from job.runstore.digest import sha256_bytes
from job.runstore.local import LocalStore
from job.runstore.publish import RunPublisher
from tests.support.jobs import cli, job_env, run_job
from tests.support.s3 import all_objects, cos_env
from tests.test_storage import store_for

TEST_SET = "a" * 64
OTHER_TEST_SET = "b" * 64
FULL = {"n_train": 60_000, "n_test": 10_000}  # what a run on the whole of MNIST records
SMOKE = {"n_train": 2_000, "n_test": 300}  # TRAIN_LIMIT=2000 TEST_LIMIT=300


def finish_run(
    store, run_id: str, accuracy: float, test_set: str = TEST_SET, *, counts: dict = FULL
) -> None:
    """A published run: metrics.json and a model, listed with their hashes in `_SUCCESS`."""
    metrics = json.dumps({
        "run_id": run_id, "dataset": "mnist", "test_accuracy": accuracy, "test_loss": 0.05,
        "test_set_sha256": test_set, "code_version": "0.1.0", **counts,
    }).encode()  # fmt: skip
    model = secrets.token_bytes(64)
    files = []
    for name, raw in ((layout.METRICS, metrics), (layout.MODEL_FILE, model)):
        store.put_bytes(f"{run_id}/{name}", raw)
        files.append({"path": name, "size": len(raw), "sha256": sha256_bytes(raw)})
    store.put_bytes(
        f"{run_id}/{layout.SUCCESS}", layout.to_json({"run_id": run_id, "files": files})
    )


@pytest.fixture
def store(s3_endpoint, bucket):
    return store_for(s3_endpoint, f"s3://{bucket}/runs")


def promote(store, run_id: str, *, policy="if-better", margin=0.0, force=False, name="mnist"):
    cand = champion.candidate(store, run_id)
    return champion.consider(store, name, cand, policy=policy, margin=margin, force=force)


def test_first_better_worse_equal_and_margin(store):
    for run_id, acc in (("r1", 0.990), ("r2", 0.992), ("r3", 0.991), ("r4", 0.992), ("r5", 0.993)):
        finish_run(store, run_id, acc)
    assert promote(store, "r1").reason == "first champion"
    better = promote(store, "r2")
    assert better.promoted and better.champion == "r2" and "above" in better.reason
    worse, equal = promote(store, "r3"), promote(store, "r4")
    assert not worse.promoted and not equal.promoted, "strictly higher accuracy only"
    assert "not above champion r2's 0.9920" in equal.reason
    short = promote(store, "r5", margin=0.002)
    assert not short.promoted and "margin 0.002" in short.reason
    record, _ = champion.read(store, "mnist")
    assert record["run_id"] == "r2" and record["previous"] == ["r1"]
    assert record["model"] == "r2/model/model.keras" and record["decisions"] == 5
    entries = champion.history(store, "mnist")
    assert [e["sequence"] for e in entries] == [5, 4, 3, 2, 1]
    assert [e["run_id"] for e in entries] == ["r5", "r4", "r3", "r2", "r1"]
    assert [e["promoted"] for e in entries] == [False, False, False, True, True]


def test_another_test_set_is_not_comparable_unless_forced_or_always(store):
    finish_run(store, "base", 0.990)
    finish_run(store, "fashion", 0.999, test_set=OTHER_TEST_SET)
    promote(store, "base")
    refused = promote(store, "fashion")
    assert not refused.promoted and refused.reason.startswith("not comparable")
    assert "`promote --force` promotes it anyway" in refused.reason, "says what would do it"
    assert promote(store, "fashion", policy="always").promoted
    record, _ = champion.read(store, "mnist")
    assert record["run_id"] == "fashion" and record["reason"] == "PROMOTE=always"


def test_force_then_rollback_twice(store):
    for run_id, acc in (("good", 0.995), ("better", 0.996), ("worse", 0.980)):
        finish_run(store, run_id, acc)
    promote(store, "good")
    promote(store, "better")
    forced = promote(store, "worse", force=True)
    assert forced.promoted and forced.reason == "forced (promote --force)"
    first = champion.rollback(store, "mnist")
    assert first.promoted and first.champion == "better" and first.action == "rollback"
    assert champion.rollback(store, "mnist").champion == "good"
    with pytest.raises(champion.ConfigError, match="earlier champion"):
        champion.rollback(store, "mnist")
    actions = [(e["action"], e["champion"]) for e in champion.history(store, "mnist")][::-1]
    assert actions == [("promote", "good"), ("promote", "better"), ("promote", "worse"),
                       ("rollback", "better"), ("rollback", "good")]  # fmt: skip


def test_hostile_records_do_not_reach_the_history(store):
    finish_run(store, "a", 0.99)
    finish_run(store, "b", 0.98)
    promote(store, "a")
    record = json.loads(store.get_bytes(layout.champion_key("mnist"), limit=2**20))
    # A last decision that disagrees with the record's count, with an escape sequence in it.
    record["last_decision"] = {"sequence": 7, "run_id": "c", "reason": "\x1b[31mowned"}
    store.put_bytes(layout.champion_key("mnist"), layout.to_json(record))
    promote(store, "b")
    assert [(e["sequence"], e["run_id"]) for e in champion.history(store, "mnist")] == [
        (2, "b"), (1, "a"),
    ]  # fmt: skip


def test_a_model_name_may_be_a_dataset_name(store, s3_endpoint, bucket, tmp_path):
    finish_run(store, "fashion-1", 0.91)
    champion.consider(store, "fashion_mnist", champion.candidate(store, "fashion-1"),
                      policy="if-better", margin=0.0)  # fmt: skip
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs", DATASET="fashion_mnist")
    proc = cli("models", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["champion"]["run_id"] == "fashion-1"


def test_unfinished_or_tampered_runs_are_not_candidates(store):
    store.put_bytes("running/status.json", b'{"state": "running"}')
    with pytest.raises(champion.DataError, match="not a finished run"):
        champion.candidate(store, "running")
    finish_run(store, "tampered", 0.99)
    store.put_bytes("tampered/metrics.json", json.dumps({"test_accuracy": 1.0}).encode())
    with pytest.raises(champion.DataError, match="not the file _SUCCESS lists"):
        champion.candidate(store, "tampered")
    finish_run(store, "swapped", 0.99)
    store.put_bytes("swapped/model/model.keras", b"another model")
    with pytest.raises(champion.DataError, match=r"model\.keras: missing or not the file"):
        champion.candidate(store, "swapped")


def test_a_lost_history_entry_is_written_by_the_next_decision(store):
    finish_run(store, "one", 0.99)
    finish_run(store, "two", 0.98)
    promote(store, "one")
    store.delete(layout.history_key("mnist", 1, "one"))  # as if the process died in between
    promote(store, "two")
    assert [e["sequence"] for e in champion.history(store, "mnist")] == [2, 1]


def test_a_corrupt_champion_record_is_a_data_error_naming_it(store):
    finish_run(store, "one", 0.99)
    store.put_bytes(layout.champion_key("mnist"), b'{"run_id": "../x", "test_accuracy": 2}')
    with pytest.raises(champion.DataError, match=r"models/mnist/champion\.json: not a champion"):
        promote(store, "one")


# --- smoke runs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"dataset": "mnist", **FULL}, None),
        ({"dataset": "fashion_mnist", **FULL}, None),
        # A limit at or above the full size uses every digit: the counts are the full ones.
        (
            {
                "dataset": "mnist",
                "n_train": 60_000,
                "n_test": 10_000,
                "inputs": {"TRAIN_LIMIT": 1_000_000, "TEST_LIMIT": 10_000},
            },
            None,
        ),
        # More than the full set is not the dataset as published (forged or foreign).
        ({"dataset": "mnist", "n_train": 70_000, "n_test": 10_000}, "70,000 of 60,000 training"),
        ({"dataset": "mnist", "n_train": 60_000, "n_test": 2**63 - 1}, "of 10,000 test digits"),
        ({"dataset": "mnist", **SMOKE}, "2,000 of 60,000 training and 300 of 10,000 test digits"),
        ({"dataset": "mnist", "n_train": 60_000, "n_test": 9_999}, "9,999 of 10,000 test digits"),
        (
            {"dataset": "mnist", "n_train": 59_999, "n_test": 10_000},
            "59,999 of 60,000 training digits",
        ),
        # Metrics that do not say are a smoke run: the store is untrusted.
        ({"dataset": "mnist", "n_test": 10_000}, "metrics.json records no n_train and n_test"),
        ({"dataset": "mnist", "n_train": True, "n_test": 10_000}, "records no n_train"),
        ({"dataset": "mnist", "n_train": 60_000.0, "n_test": 10_000}, "records no n_train"),
        ({"dataset": "mnist", "n_train": "60000", "n_test": 10_000}, "records no n_train"),
        ({"dataset": "mnist", "n_train": -1, "n_test": 10_000}, "records no n_train"),
        ({**FULL}, "dataset not recorded: no known full size"),
        ({"dataset": "emnist", **FULL}, "dataset emnist: no known full size"),
        ({"dataset": "\x1b[2Jx", **FULL}, "dataset ?[2Jx: no known full size"),
    ],
)
def test_a_smoke_run_is_one_on_less_than_the_full_sets(metrics, expected):
    found = champion.smoke(metrics)
    assert found == expected if expected is None else expected in found


def test_the_full_sizes_are_real_mnists(mnist_dir):
    from job.training import data

    ds = data.load("mnist", str(mnist_dir))
    assert DATASETS["mnist"] == (len(ds.y_train), len(ds.y_test))


def test_a_smoke_run_is_never_a_candidate_unless_forced(store):
    finish_run(store, "smoke", 0.999, counts=SMOKE)
    for policy in ("if-better", "always"):
        refused = promote(store, "smoke", policy=policy)
        assert not refused.promoted and not refused.recorded and refused.champion is None
        assert refused.reason == (
            "a smoke run (2,000 of 60,000 training and 300 of 10,000 test digits), never a "
            "candidate: `promote --force` promotes it anyway, or retrain on the full training "
            "and test sets"
        )
    # Not a candidate, so no decision: no champion record, no history entry.
    assert champion.read(store, "mnist") == (None, None) and champion.history(store, "mnist") == []
    forced = promote(store, "smoke", force=True)
    assert forced.promoted and forced.recorded and forced.champion == "smoke"
    assert forced.reason == (
        "forced (promote --force): a smoke run, 2,000 of 60,000 training and 300 of 10,000 "
        "test digits"
    )
    record, _ = champion.read(store, "mnist")
    assert record["smoke"].startswith("2,000 of 60,000") and record["n_test"] == 300
    # A smoke run is no candidate against a champion either, however good.
    # Its refusal is recorded once (a nightly run left on a slice shows in `models`), a repeat
    # of it not again.
    finish_run(store, "smoke-2", 1.0, counts=SMOKE)
    first = promote(store, "smoke-2")
    assert not first.promoted and first.recorded and "a smoke run" in first.reason
    again = promote(store, "smoke-2")
    assert not again.promoted and not again.recorded
    assert [e["run_id"] for e in champion.history(store, "mnist")] == ["smoke-2", "smoke"]


def test_a_full_run_replaces_a_smoke_champion_then_the_bar_is_fair(store):
    # The smoke champion's 0.999 came from 300 digits (another test set, by digest): before,
    # every later full run was refused as "not comparable".
    finish_run(store, "smoke", 0.999, OTHER_TEST_SET, counts=SMOKE)
    promote(store, "smoke", force=True)
    finish_run(store, "full-1", 0.985)
    replaced = promote(store, "full-1")
    assert replaced.promoted and replaced.champion == "full-1"
    assert replaced.reason == (
        "replaces champion smoke's 0.9990, a smoke run (2,000 of 60,000 training and 300 of "
        "10,000 test digits)"
    )
    record, _ = champion.read(store, "mnist")
    assert record["smoke"] is None and record["previous"] == ["smoke"]
    finish_run(store, "full-2", 0.980)
    assert "not above champion full-1's 0.9850" in promote(store, "full-2").reason


def _as_written_before_smoke_runs(store, name: str = "mnist") -> None:
    """Drop what champion records gained with smoke runs, as a record from before them reads."""
    record = json.loads(store.get_bytes(layout.champion_key(name), limit=2**20))
    for key in ("smoke", "n_train", "n_test"):
        del record[key]
    store.put_bytes(layout.champion_key(name), layout.to_json(record))


def test_a_champion_record_from_before_smoke_runs_is_told_by_its_runs_metrics(store):
    finish_run(store, "old-full", 0.990)
    promote(store, "old-full")
    _as_written_before_smoke_runs(store)
    finish_run(store, "worse", 0.980)
    refused = promote(store, "worse")
    assert not refused.promoted and "not above champion old-full's" in refused.reason
    record, _ = champion.read(store, "mnist")
    assert record["smoke"] is None, "the refusal wrote what the run's metrics say"

    finish_run(store, "old-smoke", 0.999, counts=SMOKE)
    promote(store, "old-smoke", force=True)
    _as_written_before_smoke_runs(store)
    assert champion.was_smoke(store, champion.read(store, "mnist")[0]).startswith("2,000 of")
    assert promote(store, "worse").promoted, "a smoke champion is no bar"


def test_repeated_identical_refusals_are_recorded_once(store):
    for run_id, acc in (("champ", 0.990), ("worse", 0.980), ("other", 0.970)):
        finish_run(store, run_id, acc)
    promote(store, "champ")
    first = promote(store, "worse")
    assert first.recorded and first.sequence == 2
    again = promote(store, "worse")
    assert (again.promoted, again.recorded, again.sequence) == (False, False, 2)
    assert again.reason == first.reason
    assert promote(store, "worse", margin=0.5).recorded, "another reason: another decision"
    assert promote(store, "other").sequence == 4
    assert promote(store, "worse").sequence == 5, "not the last decision: recorded"
    same = promote(store, "champ")
    assert (same.reason, same.recorded, same.sequence) == ("already the champion", False, None)
    assert [e["sequence"] for e in champion.history(store, "mnist")] == [5, 4, 3, 2, 1]
    record, _ = champion.read(store, "mnist")
    assert record["decisions"] == 5 and record["run_id"] == "champ"


class Terminal(io.StringIO):
    """stdout that says it is a terminal (`models` prints its table there, JSON on a pipe)."""

    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch, env: dict, cwd, *args: str) -> str:
    """The command line in this process with `env` as the whole environment and stdout a
    terminal; returns what it printed."""
    from job.cli import main

    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    out = Terminal()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert main(list(args)) == 0
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
    return out.getvalue()


def test_the_commands_on_smoke_runs(s3_endpoint, bucket, store, tmp_path, monkeypatch):
    finish_run(store, "smoke-1", 0.999, counts=SMOKE)
    finish_run(store, "full-1", 0.990)
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs")
    refused = cli("promote", "smoke-1", env=env, cwd=tmp_path)
    assert refused.returncode == 0 and refused.stdout == (
        "smoke-1: not promoted of model mnist (a smoke run (2,000 of 60,000 training and 300 of "
        "10,000 test digits), never a candidate: `promote --force` promotes it anyway, or "
        "retrain on the full training and test sets); champion: none yet; nothing recorded\n"
    )
    forced = cli("promote", "smoke-1", "--force", "--json", env=env, cwd=tmp_path)
    answer = json.loads(forced.stdout)
    assert answer["promoted"] and answer["reason"].startswith("forced (promote --force): a smoke")
    assert answer == {**answer, "run_id": "smoke-1", "action": "promote", "sequence": 1,
                      "recorded": True, "champion": "smoke-1"}  # fmt: skip
    listed = json.loads(cli("models", "--json", env=env, cwd=tmp_path).stdout)
    assert listed["champion"]["smoke"].startswith("2,000 of 60,000 training")
    table = on_a_terminal(monkeypatch, env, tmp_path, "models")
    assert table.startswith("Model mnist: champion smoke-1 (a SMOKE RUN), test accuracy 99.90%")
    assert (
        "Smoke run: 2,000 of 60,000 training and 300 of 10,000 test digits; its accuracy is "
        "no bar: the next full run replaces it under PROMOTE=if-better" in table
    )
    monkeypatch.undo()
    proc = cli("promote", "full-1", env=env, cwd=tmp_path)
    assert (
        "full-1: now champion of model mnist (replaces champion smoke-1's 0.9990, a smoke "
        "run" in proc.stdout
    )
    listed = json.loads(cli("models", env=env, cwd=tmp_path).stdout)  # piped: JSON, as before
    assert listed["champion"]["run_id"] == "full-1" and listed["champion"]["smoke"] is None
    back = json.loads(cli("rollback", "--json", env=env, cwd=tmp_path).stdout)
    assert back["action"] == "rollback" and back["champion"] == "smoke-1"
    assert back["reason"] == (
        "rollback from full-1 to a smoke run, 2,000 of 60,000 training and 300 of 10,000 test "
        "digits"
    )
    finish_run(store, "full-2", 0.5)
    promote(store, "full-2")  # replaces the smoke champion again
    finish_run(store, "full-3", 0.4)
    assert cli("promote", "full-3", env=env, cwd=tmp_path).stdout.endswith("champion: full-2\n")
    repeat = cli("promote", "full-3", env=env, cwd=tmp_path)
    assert repeat.stdout.endswith("champion: full-2; the same as decision 5, not recorded again\n")


class IgnoresConditions(LocalStore):
    """A store that accepts every write, conditional or not, as some S3 implementations do."""

    def put_bytes(self, key, data, *, if_match=None, if_none_match=False):
        return super().put_bytes(key, data)


def test_a_store_that_ignores_conditional_writes_is_detected(tmp_path, store):
    from structlog.testing import capture_logs

    finish_run(store, "on-s3", 0.99)
    with capture_logs() as events:
        promote(store, "on-s3")  # the loopback S3 server enforces conditions: no warning
    assert not [e for e in events if e["event"] == "conditional_writes_ignored"]
    store = IgnoresConditions(tmp_path)
    finish_run(store, "one", 0.99)
    with capture_logs() as events:
        promote(store, "one")
    assert [e for e in events if e["event"] == "conditional_writes_ignored"]
    honest = LocalStore(tmp_path / "honest")
    finish_run(honest, "one", 0.99)
    with capture_logs() as events:
        promote(honest, "one")
    assert not [e for e in events if e["event"] == "conditional_writes_ignored"]


def _promoter(endpoint, uri, barrier, jobs, results) -> None:
    """One of the racing processes: each round, wait at the barrier, then promote."""
    store = store_for(endpoint, uri)
    while (job := jobs.get()) is not None:
        name, run_id = job
        barrier.wait(timeout=60)
        decision = promote(store, run_id, name=name)
        results.put((name, run_id, decision.promoted))


def test_two_processes_promoting_at_once_end_with_the_better_one(store, s3_endpoint, bucket):
    """20 rounds: a champion at 0.980, then runs at 0.985 and 0.990 promoted at the same moment
    by two processes (released together by a barrier). Every round ends with the 0.990 run as
    champion and three decisions, numbered 1-3, in the history."""
    rounds = 20
    for i in range(rounds):
        for run_id, acc in ((f"c{i}", 0.980), (f"a{i}", 0.985), (f"b{i}", 0.990)):
            finish_run(store, run_id, acc)
        promote(store, f"c{i}", name=f"race-{i}")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    queues = [ctx.Queue(), ctx.Queue()]
    uri = f"s3://{bucket}/runs"
    workers = [
        ctx.Process(target=_promoter, args=(s3_endpoint, uri, barrier, q, results)) for q in queues
    ]
    for w in workers:
        w.start()
    for i in range(rounds):
        queues[0].put((f"race-{i}", f"a{i}"))
        queues[1].put((f"race-{i}", f"b{i}"))
    for q in queues:
        q.put(None)
    outcomes = [results.get(timeout=300) for _ in range(2 * rounds)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert all(promoted for name, run_id, promoted in outcomes if run_id.startswith("b"))
    objects = all_objects(s3_endpoint, bucket)
    for i in range(rounds):
        record = json.loads(objects[f"runs/models/race-{i}/champion.json"])
        assert record["run_id"] == f"b{i}" and record["decisions"] == 3
        entries = champion.history(store, f"race-{i}")
        assert [e["sequence"] for e in entries] == [3, 2, 1]
        assert {e["run_id"] for e in entries} == {f"c{i}", f"a{i}", f"b{i}"}
        assert record["previous"][0] == f"c{i}"


def test_commands(s3_endpoint, bucket, store, tmp_path):
    finish_run(store, "cli-one", 0.991)
    finish_run(store, "cli-two", 0.990)
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs")
    proc = cli("promote", "cli-one", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == (
        "cli-one: now champion of model mnist (first champion); champion: cli-one\n"
    )
    proc = cli("promote", "cli-two", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "not promoted" in proc.stdout
    assert cli("promote", "cli-two", "--force", env=env, cwd=tmp_path).returncode == 0
    proc = cli("models", env=env, cwd=tmp_path)
    listed = json.loads(proc.stdout)
    assert listed["champion"]["run_id"] == "cli-two"
    assert [e["sequence"] for e in listed["history"]] == [3, 2, 1]
    assert cli("rollback", env=env, cwd=tmp_path).returncode == 0
    assert champion.read(store, "mnist")[0]["run_id"] == "cli-one"
    missing = cli("promote", "never-ran", env=env, cwd=tmp_path)
    assert missing.returncode == EXIT_DATA and "not a finished run" in missing.stderr
    nothing = cli("rollback", "other", env=env, cwd=tmp_path)
    assert nothing.returncode == EXIT_CONFIG and "MODEL_NAME='other'" in nothing.stderr
    reserved = cli("promote", "models", env=env, cwd=tmp_path)
    assert reserved.returncode == EXIT_CONFIG


@pytest.mark.slow
def test_a_trained_smoke_run_is_refused_then_forced_and_its_champion_predicts(tmp_path, mnist_dir):
    from PIL import Image

    from job.runstore.digest import sha256_file
    from job.training import data

    out = tmp_path / "out"
    env = job_env(
        OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), RECIPE="seed", TRAIN_LIMIT="2000",
        TEST_LIMIT="300", EPOCHS="2", PROMOTE="if-better", RUN_ID="nightly-1",
    )  # fmt: skip
    assert run_job("train", env=env, cwd=tmp_path).returncode == 0
    status = json.loads((out / "nightly-1" / "status.json").read_text())
    assert status["state"] == "succeeded"
    smoke = "2,000 of 60,000 training and 300 of 10,000 test digits"
    assert status["promotion"] == {
        "model_name": "mnist", "promoted": False, "champion": None, "sequence": None,
        "recorded": False, "reason": f"a smoke run ({smoke}), never a candidate: "
        f"{champion.SMOKE_REMEDY}",
    }  # fmt: skip
    assert not (out / "models").exists(), "a smoke run is no candidate: nothing recorded"
    # The run's own files are as `_SUCCESS` lists them: the decision changed none of them.
    for entry in json.loads((out / "nightly-1" / "_SUCCESS").read_text())["files"]:
        assert sha256_file(out / "nightly-1" / entry["path"]) == entry["sha256"]
    watched = cli("watch", "nightly-1", env=env, cwd=tmp_path)
    assert f"Not promoted to champion of model mnist: a smoke run ({smoke})" in watched.stdout

    forced = cli("promote", "nightly-1", "--force", env=env, cwd=tmp_path)
    assert forced.stdout == (
        f"nightly-1: now champion of model mnist (forced (promote --force): a smoke run, "
        f"{smoke}); champion: nightly-1\n"
    )
    digit = data.load("mnist", str(mnist_dir)).limited(1, 1)
    Image.fromarray(digit.x_test[0]).save(tmp_path / "digit.png")
    proc = cli("predict", "champion", str(tmp_path / "digit.png"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{tmp_path / 'digit.png'}: {digit.y_test[0]} (")
    by_path = cli("predict", "models/mnist", str(tmp_path / "digit.png"), env=env, cwd=tmp_path)
    assert by_path.stdout == proc.stdout
    (out / "nightly-1" / "model" / "model.keras").write_bytes(b"swapped")
    tampered = cli("predict", "champion", str(tmp_path / "digit.png"), env=env, cwd=tmp_path)
    assert tampered.returncode == EXIT_DATA and "not the model the champion" in tampered.stderr


def test_prune_keeps_the_newest_champions_and_unfinished_runs(store, s3_endpoint, bucket, tmp_path):
    old = {"state": "succeeded", "updated_at": "2026-01-01T00:00:00.000Z"}
    for i, acc in enumerate((0.99, 0.98, 0.97, 0.96)):  # run-0 is the oldest id
        finish_run(store, f"run-{i}", acc)
        store.put_bytes(f"run-{i}/status.json", json.dumps(old).encode())
    promote(store, "run-0")
    store.put_bytes("run-9/status.json", json.dumps({**old, "state": "running"}).encode())
    # run-1: failed, and a retry owns it again (its lease), still under the old _FAILURE.
    finish_run(store, "run-1b", 0.5)
    store.put_bytes("run-1b/_FAILURE", b"{}")
    store.delete("run-1b/_SUCCESS")
    store.put_bytes("run-1b/status.json", json.dumps(old).encode())
    live = {"expires_at": time.time() + 600, "renewed_at": time.time(), "host": "elsewhere"}
    store.put_bytes("run-1b/owner.json", json.dumps(live).encode())
    # A folder under models/ that no MODEL_NAME can name, holding junk: not read, no error.
    store.put_bytes("models/Not A Model/champion.json", b"junk")
    env = job_env(**cos_env(s3_endpoint), OUTPUT_URI=f"s3://{bucket}/runs")
    before = all_objects(s3_endpoint, bucket)
    dry = cli("prune", "--keep", "2", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0 and "would delete run-2" in dry.stdout
    assert all_objects(s3_endpoint, bucket) == before
    proc = cli("prune", "--keep", "2", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["deleted run-2", "deleted run-1"] and lines[-1] == "2 runs deleted, 4 kept"
    assert "kept run-0: champion of mnist" in lines
    left = {key.split("/")[1] for key in all_objects(s3_endpoint, bucket)}
    # run-9 and run-3: the newest two (run-9 has no end marker: running); run-0: the champion;
    # run-1b: owned.
    assert left == {"run-9", "run-3", "run-1b", "run-0", "models"}
    assert champion.candidate(store, "run-0").run_id == "run-0", "the champion's run is whole"


def publish_full_run(store, run_id: str, work) -> None:
    """A finished full run as the real publication code writes one (RunPublisher: run.json and
    status, the files, `_SUCCESS` listing them, the final status), its metrics those of a run
    on all 60,000 / 10,000 digits, and no champion decision yet."""
    folder = work / f"publish-{run_id}"
    (folder / "model").mkdir(parents=True)
    metrics = {"run_id": run_id, "dataset": "mnist", "test_accuracy": 0.99, "test_loss": 0.03,
               "baseline_error_pct": 1.0, "test_set_sha256": TEST_SET, **FULL}  # fmt: skip
    (folder / layout.METRICS).write_text(json.dumps(metrics))
    (folder / "model" / "model.keras").write_bytes(secrets.token_bytes(64))
    publisher = RunPublisher(store, run_id)
    publisher.start({"run_id": run_id, "config": {"promotion": {"policy": "if-better"}}})
    publisher.publish(folder, epoch=12, epochs=12, metrics={"test_accuracy": 0.99})


@pytest.mark.slow
def test_a_finished_run_without_a_decision_takes_it_when_rerun(tmp_path, mnist_dir):
    """As if the process died between `_SUCCESS` and the decision: the Job's retry (the same
    RUN_ID) finds the run finished and decides then, once. The run is a full one (published,
    not trained: a run on every digit takes minutes), so the decision is a promotion."""
    from tests.support.jobs import train_in_process

    store = LocalStore(tmp_path / "out")
    publish_full_run(store, "late", tmp_path)
    status_file = tmp_path / "out" / "late" / "status.json"
    assert "promotion" not in json.loads(status_file.read_text())
    train_in_process(tmp_path, mnist_dir, RUN_ID="late", PROMOTE="if-better")
    decided = status_file.read_bytes()
    assert json.loads(decided)["promotion"]["reason"] == "first champion"
    train_in_process(tmp_path, mnist_dir, RUN_ID="late", PROMOTE="if-better")
    assert status_file.read_bytes() == decided
    assert [e["run_id"] for e in champion.history(store, "mnist")] == ["late"], "decided once"
