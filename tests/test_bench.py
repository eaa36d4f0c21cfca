"""The benchmarks' harness: clean environments for their runs, and the held-out comparison
(`make bench-heldout`), which must never score on the test set."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench import bench, heldout
from job.training import data
from tests.support.jobs import ROOT


def test_runs_get_a_clean_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    for name in ("LEARNING_RATE", "TRAINING_ID", "AWS_ACCESS_KEY_ID", "ENV_FILE"):
        monkeypatch.setenv(name, "from the caller")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = bench.clean_environment()
    assert not {"LEARNING_RATE", "TRAINING_ID", "AWS_ACCESS_KEY_ID"} & env.keys()
    assert env["PATH"] == "/usr/bin:/bin"
    assert Path(env["ENV_FILE"]).read_text() == ""  # a .env in the repository is not read


def test_the_split_is_the_training_set_only(mnist_dir, tmp_path):
    full = data.load("mnist", mnist_dir)
    split = data.load("mnist", heldout.write_split(full.x_train, full.y_train, tmp_path))
    cut = len(full.y_train) - heldout.HELD_OUT
    assert np.array_equal(split.x_train, full.x_train[:cut])
    assert np.array_equal(split.y_train, full.y_train[:cut])
    assert np.array_equal(split.x_test, full.x_train[cut:])
    assert np.array_equal(split.y_test, full.y_train[cut:])


@pytest.fixture
def runs(monkeypatch, tmp_path, mnist_dir):
    """heldout.main with the training process replaced: `runs.calls` records what each run was
    given (after checking it points at the split), `runs.digest` is what the runs report."""
    runs = SimpleNamespace(calls=[], digest=None, full=data.load("mnist", mnist_dir))

    def runner(recipe, tag, **settings):
        split = data.load("mnist", settings["DATA_URI"])
        assert np.array_equal(split.x_test, runs.full.x_train[-heldout.HELD_OUT :])
        runs.calls.append((recipe, settings))
        bonus = 0.002 if "EPOCHS" in settings else 0.0
        return {
            "test_set_sha256": runs.digest or data.test_set_sha256(split),
            "n_train": len(split.y_train),
            "test_accuracy": 0.99 + 0.001 * int(settings["SEED"]) + bonus,
            "epochs": 20, "samples_per_second": 1.0, "wall_seconds": 1.0,
        }  # fmt: skip

    monkeypatch.setattr(heldout, "run_job", runner)
    monkeypatch.setattr(heldout, "RESULTS", tmp_path)
    return runs


def test_variants_alternate_per_seed_and_are_summarised_by_seed(runs, tmp_path):
    heldout.main(["--seeds", "1,2", "-", "EPOCHS=2"])
    order = [(s["SEED"], s.get("EPOCHS")) for _, s in runs.calls]
    assert order == [("1", None), ("1", "2"), ("2", "2"), ("2", None)]
    assert {recipe for recipe, _ in runs.calls} == {"fast"}
    lines = [json.loads(line) for line in next(tmp_path.glob("heldout-*.jsonl")).open()]
    assert [(r["variant"], r["seed"]) for r in lines[:4]] == [
        ("-", 1), ("EPOCHS=2", 1), ("EPOCHS=2", 2), ("-", 2)
    ]  # fmt: skip
    b = lines[4]["summary"]["EPOCHS=2"]
    assert b["accuracies"] == pytest.approx([0.993, 0.994])
    assert b["mean_minus_first"] == pytest.approx(0.002)
    assert (b["seeds_higher_than_first"], b["wins_over_first"]) == (2, 1.0)


def test_a_run_that_scored_anything_but_the_split_stops_the_comparison(runs):
    runs.digest = data.test_set_sha256(runs.full)  # as a run that ignored DATA_URI reports
    with pytest.raises(SystemExit, match="did not train and score on the held-out split"):
        heldout.main(["--seeds", "7", "EPOCHS=2"])
    assert len(runs.calls) == 1


def test_the_makefile_default_parses():
    make = (ROOT / "Makefile").read_text()
    seeds = re.search(r"^HELDOUT_SEEDS \?= (.*)$", make, re.M).group(1)
    variants = re.search(r"^HELDOUT_VARIANTS \?= (.*)$", make, re.M).group(1)
    parsed_seeds, parsed = heldout.parse_args(["--seeds", seeds, *variants.split()])
    assert parsed_seeds == [1, 2, 3, 4, 5]
    assert parsed == [("LEARNING_RATE=0.003", {"LEARNING_RATE": "0.003"}), ("-", {})]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["LEARNIG_RATE=0.003"], "is not one of"),
        (["DATA_URI=data/mnist"], "is not one of"),
        (["TRAIN_LIMIT=100"], "is not one of"),
        (["LEARNING_RATE="], "expected VAR=value"),
        (["LEARNING_RATE"], "expected VAR=value"),
        (["-", "-"], "each at most once"),
        (["--seeds", "1,1", "-"], "distinct"),
        (["--seeds", "1 2", "-"], "comma-separated"),
    ],
)
def test_bad_arguments_are_refused_before_any_run(argv, message):
    with pytest.raises(SystemExit, match=message):
        heldout.parse_args(argv)


def test_win_share():
    assert heldout.win_share([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert heldout.win_share([2.0], [1.0, 2.0, 3.0]) == 0.5
