"""The held-out comparison (`make bench-heldout`): it must never read the test set."""

import numpy as np
import pytest

from bench.heldout import HELD_OUT, parse_variant, win_share, write_split
from job import data


def test_the_split_is_the_training_set_only(mnist_dir, tmp_path):
    full = data.load("mnist", mnist_dir)
    split = data.load("mnist", write_split(full, tmp_path / "split"))
    cut = len(full.y_train) - HELD_OUT
    assert np.array_equal(split.x_train, full.x_train[:cut])
    assert np.array_equal(split.y_train, full.y_train[:cut])
    assert np.array_equal(split.x_test, full.x_train[cut:])
    assert np.array_equal(split.y_test, full.y_train[cut:])
    # Not one scored digit is a test-set digit (MNIST's two sets share no image).
    test_rows = {row.tobytes() for row in full.x_test}
    assert not any(row.tobytes() in test_rows for row in split.x_test)


def test_variants_and_win_share():
    assert parse_variant("-") == {}
    assert parse_variant("LEARNING_RATE=0.005, EPOCHS=30") == {
        "LEARNING_RATE": "0.005",
        "EPOCHS": "30",
    }
    with pytest.raises(SystemExit, match="VAR=value"):
        parse_variant("LEARNING_RATE")
    assert win_share([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert win_share([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert win_share([2.0], [1.0, 2.0, 3.0]) == 0.5
