"""Recipes, precision choice and the input pipeline: the fast path never changes the network."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from job import config
from job.config import RECIPES
from job.errors import ConfigError
from job.training import precision
from job.training.plan import steps_per_execution
from tests.support.jobs import train_in_process


def test_seed_recipe_is_the_notebook():
    t = config.from_env({"RECIPE": "seed"}).training
    assert (t.epochs, t.batch_size, t.learning_rate, t.precision) == (12, 128, 0.001, "float32")
    assert (t.schedule, t.augment, t.label_smoothing, t.ema_momentum) == (
        "constant", False, 0.0, 0.0,
    )  # fmt: skip
    assert (t.pipeline, t.max_steps_per_execution) == ("numpy", 1)
    assert set(RECIPES["seed"]) == set(RECIPES["fast"]), "every recipe sets the same fields"


def test_fast_is_the_default_and_explicit_values_win():
    assert config.from_env({}).training.recipe == "fast"
    t = config.from_env({"RECIPE": "seed", "EPOCHS": "3", "PRECISION": "bfloat16"}).training
    assert (t.epochs, t.batch_size, t.precision, t.pipeline) == (3, 128, "bfloat16", "numpy")


def test_seed_recipe_compiles_the_notebook_model(mnist_dir):
    import keras

    from job.training import data
    from job.training.model import build_model, compile_model, learning_rate
    from job.training.plan import training_plan

    t = config.from_env({"RECIPE": "seed", "TRAIN_LIMIT": "1000", "TEST_LIMIT": "100"}).training
    ds = data.load("mnist", str(mnist_dir)).limited(1000, 100)
    plan = training_plan(t, ds)
    assert (plan.batch_size, plan.steps_per_epoch, plan.steps_per_execution) == (128, 8, 1)
    args = plan.fit_args(0)
    batches = list(args["x"].take(16))  # two of its epochs, one after the other
    assert [len(y) for _, y in batches] == [128] * 7 + [104] + [128] * 7 + [104], "every digit"
    x, _ = batches[0]
    assert x.shape == (128, 28, 28, 1) and x.dtype == np.uint8, "raw digits: the model scales"
    assert args["steps_per_epoch"] == 8 and args["shuffle"] is False
    model = build_model()
    rate = learning_rate(t.learning_rate, t.schedule, 8, t.epochs, t.warmup_epochs)
    compile_model(model, rate, label_smoothing=t.label_smoothing)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.RMSprop)
    assert float(opt.learning_rate) == pytest.approx(0.001)
    assert (opt.rho, opt.epsilon) == (0.9, 1e-08)
    assert model.loss.get_config()["label_smoothing"] == 0.0
    assert model.count_params() == 693_962
    assert [type(layer).__name__ for layer in model.layers] == [
        "Rescaling", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense",
    ]  # fmt: skip
    assert model.inputs[0].dtype == "uint8" and model.layers[0].scale == pytest.approx(1 / 255)
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)


def test_warmup_cosine_schedule_peaks_then_ends_at_zero():
    from job.training.model import learning_rate

    rate = learning_rate(0.003, "warmup_cosine", steps_per_epoch=10, epochs=5, warmup_epochs=1)
    values = [float(rate(step)) for step in (0, 5, 10, 30, 50)]
    assert values[0] == 0.0 and values[1] == pytest.approx(0.0015)
    assert values[2] == pytest.approx(0.003) and 0 < values[3] < 0.003
    assert values[4] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("momentum", "steps", "expected"),
    [(0.98, 117, 0.98), (0.98, 10, 0.8), (0.98, 2, 0.0), (0.0, 117, 0.0), (0.999, 4000, 0.999)],
)
def test_weight_average_spans_at_most_half_an_epoch(momentum, steps, expected):
    from job.training.plan import average_momentum

    assert average_momentum(momentum, steps) == pytest.approx(expected)


POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def ema_probe(python: str, cwd: Path) -> list[dict]:
    """tests/support/ema_probe.py under `python`, from `cwd` (where `job` imports): one dict
    a policy."""
    proc = subprocess.run(
        [python, str(Path(__file__).parent / "support" / "ema_probe.py"), *POLICIES],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def assert_average_scored_and_kept(results: list[dict]) -> None:
    assert [r["policy"] for r in results] == list(POLICIES)
    for r in results:
        assert r["pairs"] == 6, r  # every trainable weight, float16's loss-scale wrapper too
        # The average was updated, and differs from the raw weights: the checks below can tell
        # which is which.
        assert r["average_moved"] and r["raw_differs"], r
        assert r["scored_is_kept"] and r["kept_is_average"], r
        assert r["swapped_back"], r  # training went on from the raw weights
        # The epoch-end checkpoint holds the raw weights and the average, as a resume needs.
        assert r["checkpoint_raw"] and r["checkpoint_average"], r


def test_the_weight_average_is_scored_kept_and_checkpointed_keras_3():
    """The swap around each test pass, the average fit() keeps and its round trip through a
    .weights.h5 checkpoint, under each precision policy (Keras 2.14 and 3.5, WML's runtimes:
    tests/test_runtimes.py)."""
    assert_average_scored_and_kept(ema_probe(sys.executable, Path(__file__).parent.parent))


def test_each_epoch_scores_the_averaged_weights_the_run_keeps(tmp_path, mnist_dir):
    """EMA_MOMENTUM: the test pass of every epoch and the model published are the moving
    average of the weights, so the last epoch's figures are the kept model's; training goes on
    from the raw weights in between (the run still learns)."""
    m, _ = train_in_process(
        tmp_path, mnist_dir, RUN_ID="ema", EPOCHS="3", TRAIN_LIMIT="6144", TEST_LIMIT="500",
        PRECISION="float32",
    )  # fmt: skip
    assert m["params"]["ema_momentum"] == pytest.approx(1 - 2 / 12, abs=1e-6)  # 12 steps: capped
    last = m["history"][-1]
    assert last["val_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-9)
    assert last["val_loss"] == pytest.approx(m["test_loss"], rel=1e-4)
    assert m["history"][0]["loss"] > last["loss"] and m["test_accuracy"] > 0.8


@pytest.mark.parametrize(
    ("steps", "limit", "expected"),
    [(117, 16, 13), (7, 16, 7), (17, 16, 1), (1, 16, 1), (468, 1, 1)],
)
def test_steps_per_execution_divides_the_epoch(steps, limit, expected):
    assert steps_per_execution(steps, limit) == expected
    assert steps % expected == 0


FLAG_SETS = [set(), {"avx512f"}, {"amx_bf16", "amx_tile"}, {"avx512_bf16"}]


@pytest.mark.parametrize(
    ("requested", "flags"), list(itertools.product(config.PRECISIONS, FLAG_SETS))
)
def test_never_float16_on_a_cpu(requested, flags):
    if requested == "float16":
        with pytest.raises(ConfigError, match="PRECISION"):
            precision.choose(requested, [], flags)
    else:
        assert precision.choose(requested, [], flags) != "float16"


def test_auto_precision_follows_the_hardware():
    assert precision.choose("auto", [], {"avx512f"}) == "float32"
    assert precision.choose("auto", [], {"amx_bf16"}) == "bfloat16"
    assert precision.choose("auto", [(8, 0), (9, 0)], set()) == "bfloat16"
    assert precision.choose("auto", [(7, 0)], set()) == "float16"
    assert precision.choose("auto", [(6, 1)], set()) == "float32"
    assert precision.choose("float16", [(7, 5)], set()) == "float16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n")
    assert precision.cpu_flags(info) == {"fpu", "avx512f", "amx_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


def test_identity_and_shift_transforms():
    import tensorflow as tf

    from job.training.pipeline import affine_matrix, random_transforms, transform

    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((3, 28, 28, 1), dtype=np.float32))
    zeros, ones = tf.zeros([3]), tf.ones([3])
    same = transform(images, affine_matrix(zeros, ones, zeros, zeros))
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-5)
    shifted = transform(images, affine_matrix(zeros, ones, ones * 2, zeros)).numpy()
    np.testing.assert_allclose(shifted[:, :, 2:], images.numpy()[:, :, :-2], atol=1e-5)
    assert np.all(shifted[:, :, :2] == 0), "zero fill where the image moved away"
    turned = transform(images, random_transforms(tf.constant(3), tf.constant([1, 2]))).numpy()
    assert turned.shape == images.shape and not np.allclose(turned, images.numpy())
    assert turned.min() >= 0.0 and turned.max() <= 1.0 + 1e-6
    quarter = transform(images, affine_matrix(ones * math.pi / 2, ones, zeros, zeros)).numpy()
    np.testing.assert_allclose(
        quarter[0, :, :, 0], np.rot90(images.numpy()[0, :, :, 0], k=-1), atol=1e-4
    )


def test_training_dataset_drops_the_remainder_and_one_hots(mnist_dir):
    from job.training import data
    from job.training.pipeline import training_dataset

    ds = data.load("mnist", str(mnist_dir)).limited(1000, 10)
    batches = list(
        training_dataset(ds.x_train, ds.y_train, 300, augment_images=True, seed=1, epochs=1)
    )
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (300, 28, 28, 1) and y.shape == (300, 10)
    assert np.all(y.numpy().sum(axis=1) == 1)


def test_pipelines_run_without_autotuning(mnist_dir):
    """tf.data's autotuning made one epoch in three twice as long on 2 cores
    (job.training.pipeline):
    both pipelines have it off."""
    from job.training import data
    from job.training.pipeline import eval_dataset, training_dataset

    ds = data.load("mnist", str(mnist_dir)).limited(1000, 10)
    train = training_dataset(ds.x_train, ds.y_train, 300, augment_images=True, seed=1, epochs=1)
    for dataset in (train, eval_dataset(ds.x_test, ds.y_test)):
        assert dataset.options().autotune.enabled is False


@pytest.mark.slow
def test_target_accuracy_stops_training(tmp_path, mnist_dir):
    m, run_dir = train_in_process(
        tmp_path, mnist_dir, RUN_ID="target", RECIPE="seed", TRAIN_LIMIT="3000",
        TEST_LIMIT="500", EPOCHS="20", TARGET_ACCURACY="0.9",
    )  # fmt: skip
    assert json.loads((run_dir / "metrics.json").read_text()) == m
    accuracies = [h["val_accuracy"] for h in m["history"]]
    assert m["epochs_completed"] < 20
    assert accuracies[-1] >= 0.9 and all(a < 0.9 for a in accuracies[:-1])
    assert m["target_reached_epoch"] == m["epochs_completed"]
    assert m["params"]["recipe"] == "seed" and m["params"]["precision"] == "float32"
