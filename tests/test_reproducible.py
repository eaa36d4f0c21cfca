"""Bit-identical runs: the same inputs give the same weights (`weights_sha256` in metrics.json),
and a run stopped and resumed ends where the uninterrupted run ends, whether it was killed after
an epoch's checkpoint or preempted in the middle of an epoch (job.training.pipeline's keyed
random streams, job.training.checkpoint's saved ones, TensorFlow's op determinism)."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pytest

from job.errors import EXIT_PREEMPTED
from tests.support.jobs import job_env, run_job, start_job, train_in_process

# Small, but with the pieces that carry randomness: augmentation, dropout, the weight average
# (8 steps an epoch keep it on), a warm-up cosine schedule.
SMALL = {"TRAIN_LIMIT": "2048", "TEST_LIMIT": "500", "BATCH_SIZE": "256", "EPOCHS": "2"}


@pytest.mark.parametrize(
    ("recipe", "precision"),
    [("fast", "bfloat16"), ("fast", "float32"), ("seed", "float32")],
)
def test_two_runs_with_the_same_inputs_are_bit_identical(recipe, precision, tmp_path, mnist_dir):
    settings = {**SMALL, "RECIPE": recipe, "PRECISION": precision, "SEED": "5"}
    first, _ = train_in_process(tmp_path / "a", mnist_dir, RUN_ID="a", **settings)
    second, _ = train_in_process(tmp_path / "b", mnist_dir, RUN_ID="b", **settings)
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["history"][-1]["loss"] == second["history"][-1]["loss"]
    assert first["conditions"] == second["conditions"]
    assert first["conditions"]["precision"] == precision
    other, _ = train_in_process(tmp_path / "c", mnist_dir, RUN_ID="c", **{**settings, "SEED": "6"})
    assert other["weights_sha256"] != first["weights_sha256"], "the digest sees the weights"


@pytest.mark.parametrize("augment", [True, False])
def test_the_pipeline_resumed_at_an_epoch_gives_that_epochs_batches(augment, mnist_dir):
    import numpy as np

    from job.training import data
    from job.training.pipeline import training_dataset

    ds = data.load("mnist", str(mnist_dir)).limited(600, 10)

    def batches(first_epoch: int) -> list:
        return [(x.numpy(), y.numpy()) for x, y in training_dataset(
            ds.x_train, ds.y_train, 100, augment_images=augment, seed=4, epochs=3,
            first_epoch=first_epoch,
        )]  # fmt: skip

    whole, resumed = batches(0), batches(2)
    assert (len(whole), len(resumed)) == (18, 6)
    for (x, y), (rx, ry) in zip(whole[12:], resumed, strict=True):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    assert not np.array_equal(whole[0][1], whole[6][1]), "each epoch has its own order"


def published(out, run_id: str) -> dict:
    return json.loads((out / run_id / "metrics.json").read_text())


def stop_after_first_checkpoint(proc, pointer, how: signal.Signals) -> None:
    """Signal the job as soon as epoch 1's checkpoint exists: it is then inside epoch 2."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not pointer.exists():
        time.sleep(0.01)
    proc.send_signal(how)
    proc.communicate(timeout=120)


@pytest.mark.slow
def test_sigkill_and_sigterm_mid_epoch_then_resume_are_bit_identical(tmp_path, mnist_dir):
    out = tmp_path / "out"
    # 32 steps an epoch: a signal sent as epoch 2 begins lands well inside it.
    settings = {**SMALL, "TRAIN_LIMIT": "8192", "EPOCHS": "3", "RECIPE": "fast", "SEED": "7"}
    env = job_env(OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), **settings)

    whole = run_job("train", env={**env, "RUN_ID": "whole"}, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = published(out, "whole")

    for run_id, how, code in (
        ("killed", signal.SIGKILL, -signal.SIGKILL),
        ("preempted", signal.SIGTERM, EXIT_PREEMPTED),
    ):
        run_env = {**env, "RUN_ID": run_id}
        proc = start_job("train", env=run_env, cwd=tmp_path)
        stop_after_first_checkpoint(proc, out / run_id / "checkpoints" / "latest.json", how)
        assert proc.returncode == code, run_id
        saved = json.loads((out / run_id / "checkpoints" / "latest.json").read_text())
        assert saved["epoch"] == 1, f"{run_id}: stopped inside epoch 2, which is redone"
        rerun = run_job("train", env=run_env, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        resumed = published(out, run_id)
        assert resumed["resumed_from_epoch"] == 1
        assert resumed["weights_sha256"] == expected["weights_sha256"], run_id
        assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in expected["history"]]
        assert resumed["test_accuracy"] == expected["test_accuracy"]


def rewrite(run: Path, metrics: dict) -> None:
    """metrics.json replaced by hand, with its _SUCCESS entry made to match (as someone who
    edits a published run on purpose would)."""
    raw = (json.dumps(metrics) + "\n").encode()
    (run / "metrics.json").write_bytes(raw)
    manifest = json.loads((run / "_SUCCESS").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "metrics.json":
            entry.update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    (run / "_SUCCESS").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_verify_says_identical_and_different_when_a_setting_was_changed_by_hand(
    tmp_path, mnist_dir
):
    out = tmp_path / "out"
    env = job_env(OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), RUN_ID="v1", RECIPE="fast",
                  SEED="3", **SMALL)  # fmt: skip
    assert run_job("train", env=env, cwd=tmp_path).returncode == 0
    recorded = published(out, "v1")

    checked = run_job("verify", "v1", env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"identical: the model's weights are the ones recorded "
                                     f"({recorded['weights_sha256']})")  # fmt: skip
    again = run_job("verify", "v1", "--retrain", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert again.stdout.startswith("identical: retrained to the same weights")
    assert sorted(p.name for p in out.iterdir()) == ["v1"], "the retrain stays out of OUTPUT_URI"

    # metrics.json changed after publication, _SUCCESS not: not the run's record (65).
    edited = {**recorded, "inputs": {**recorded["inputs"], "LEARNING_RATE": 0.002}}
    (out / "v1" / "metrics.json").write_text(json.dumps(edited))
    unlisted = run_job("verify", "v1", env=env, cwd=tmp_path)
    assert unlisted.returncode == 65, unlisted.stdout + unlisted.stderr[-2000:]
    assert "metrics.json: missing or not the file _SUCCESS lists" in unlisted.stderr

    # A recorded setting changed by hand (with _SUCCESS to match): the retrain follows it and
    # lands elsewhere.
    rewrite(out / "v1", edited)
    differs = run_job("verify", "v1", "--retrain", env=env, cwd=tmp_path)
    assert differs.returncode == 1, differs.stdout + differs.stderr[-2000:]
    assert "different: retrained to" in differs.stdout
    assert (
        "weight tensors differ" in differs.stdout and "first differs at epoch 1" in differs.stdout
    )

    # A digest that is not the model's: different, without retraining.
    rewrite(out / "v1", {**recorded, "weights_sha256": "0" * 64})
    tampered = run_job("verify", "v1", env=env, cwd=tmp_path)
    assert tampered.returncode == 1 and "the model file gives" in tampered.stdout

    # A recorded setting no parser takes: the run's record is bad data (65), nothing trained.
    bad = {**recorded, "inputs": {**recorded["inputs"], "EPOCHS": "--help; rm -rf /"}}
    rewrite(out / "v1", bad)
    refused = run_job("verify", "v1", "--retrain", env=env, cwd=tmp_path)
    assert refused.returncode == 65, refused.stdout + refused.stderr[-2000:]
    assert "the recorded EPOCHS is not a value the job takes" in refused.stderr

    # Another TensorFlow than the run's: nothing retrained, and the answer names it (6).
    other = {**recorded, "conditions": {**recorded["conditions"], "tensorflow": "2.14.1"}}
    rewrite(out / "v1", other)
    elsewhere = run_job("verify", "v1", "--retrain", env=env, cwd=tmp_path)
    assert elsewhere.returncode == 6, elsewhere.stdout + elsewhere.stderr[-2000:]
    assert "tensorflow: '2.14.1' -> " in elsewhere.stdout


def test_a_checkpoints_random_streams_are_checked_and_an_old_one_resumes_with_a_warning(
    tmp_path,
):
    """What `latest.json` says of Dropout's streams is store content: only [seed, count] pairs in
    the state's own integers are taken; a checkpoint from before they were kept (no
    `random_streams`) resumes, with a warning that the run is no longer bit-identical."""
    import keras
    from structlog.testing import capture_logs

    from job.errors import DataError
    from job.training import compat
    from job.training.callbacks import History
    from job.training.checkpoint import Checkpointer

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5)])
    (state,) = compat.random_states(model)
    checkpointer = Checkpointer(None, None, tmp_path, History())
    checkpointer.restore_random_states(model, [[7, 42]], "latest.json")
    assert state.numpy().tolist() == [7, 42]
    for hostile in ([[7, 2**70]], [[7]], [["7", 1]], [[7, 1], [8, 2]], {"a": 1}, [[True, 1]]):
        with pytest.raises(DataError, match="random_streams is not 1"):
            checkpointer.restore_random_states(model, hostile, "latest.json")
    assert state.numpy().tolist() == [7, 42], "nothing assigned from a refused record"
    with capture_logs() as events:
        checkpointer.restore_random_states(model, None, "latest.json")
    assert [e["event"] for e in events] == ["checkpoint_without_random_streams"]
