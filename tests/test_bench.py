"""The held-out comparison (`make bench-heldout`): it must never score on the test set."""

import re

import numpy as np
import pytest

from bench import heldout
from job import data
from tests.conftest import ROOT


def test_the_split_is_the_training_set_only(mnist_dir, tmp_path):
    full = data.load("mnist", mnist_dir)
    split = data.load("mnist", heldout.write_split(full.x_train, full.y_train, tmp_path))
    cut = len(full.y_train) - heldout.HELD_OUT
    assert np.array_equal(split.x_train, full.x_train[:cut])
    assert np.array_equal(split.y_train, full.y_train[:cut])
    assert np.array_equal(split.x_test, full.x_train[cut:])
    assert np.array_equal(split.y_test, full.y_train[cut:])


def test_a_run_that_scored_anything_but_the_split_stops_the_comparison(
    mnist_dir, monkeypatch, capsys
):
    """The guard on every run: here the runner reports the real test set's digest, as a run
    that ignored DATA_URI would."""
    full = data.load("mnist", mnist_dir)
    seen = []

    def runner(recipe, tag, **settings):
        seen.append(settings)
        scored = data.load("mnist", settings["DATA_URI"])
        assert np.array_equal(scored.x_test, full.x_train[-heldout.HELD_OUT :])
        return {"test_set_sha256": data.test_set_sha256(full), "n_train": len(scored.y_train)}

    monkeypatch.setattr(heldout, "run_job", runner)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("LEARNING_RATE", "0.1")  # the caller's shell must not reach the runs
    with pytest.raises(SystemExit, match="did not train and score on the held-out split"):
        heldout.main(["--seeds", "7", "EPOCHS=2"])
    assert seen == [
        {
            "DATA_URI": seen[0]["DATA_URI"],
            "ENV_FILE": seen[0]["ENV_FILE"],
            "SEED": "7",
            "EPOCHS": "2",
        }
    ]
    assert "LEARNING_RATE" not in heldout.os.environ


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
        (["LEARNIG_RATE=0.003"], "not a job variable"),
        (["DATA_URI=data/mnist"], "not a job variable a variant sets"),
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


def test_summary_pairs_by_seed():
    rows = [
        {"variant": v, "seed": s, "heldout_accuracy": a}
        for v, s, a in [("-", 1, 0.990), ("-", 2, 0.992), ("B", 1, 0.991), ("B", 2, 0.991)]
    ]
    b = heldout.summarise(rows, ["-", "B"])["B"]
    assert b["accuracies"] == [0.991, 0.991] and b["seeds_higher_than_first"] == 1
    assert b["mean_minus_first"] == pytest.approx(0.0) and b["wins_over_first"] == 0.5
    assert heldout.win_share([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert heldout.win_share([2.0], [1.0, 2.0, 3.0]) == 0.5
