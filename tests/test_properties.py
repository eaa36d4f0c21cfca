"""Generated hostile stores against every command that reads one (issue 21's property suite).

Hypothesis builds a store state from a real finished run by damaging one object: a nesting
bomb, a huge or non-finite number, a value of the wrong type, control characters, a truncated
or oversized object, a link out of the store, a FIFO. Every reading command then runs against it
in its own process under an address-space limit, and must:
- exit with one of its documented codes (70, a bug, never);
- print at most one error line, and no traceback;
- not hang (a 20 s guard per command: a hang is a failure, not a slow pass);
- change no byte of the other finished run, and touch nothing outside the store.
The examples are derandomised, so CI runs the same ones every time; raise EXAMPLES locally to
explore further (`EXAMPLES=200 pytest tests/test_properties.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.jobs import job_env
from tests.test_hostile import TINY, finished

__all__ = ["finished"]  # the module fixture: a real finished run (tests/test_hostile.py)

EXAMPLES = int(os.environ.get("EXAMPLES", "12"))
HANG_GUARD_S = 20
SUBMITTER_AS = 2 * 1024**3  # runs, watch, models, prune, promote, rollback, check
TRAINER_AS = 12 * 1024**3  # TensorFlow reserves far more address space than it uses

# What each command may exit with (job.errors; `watch` adds its own, errors.WATCH_EXIT).
STORE_CODES = {0, 65, 75, 78}
COMMANDS = {
    "runs": (("runs",), STORE_CODES),
    "watch": (("watch", "victim", "--interval", "0.05", "--stall-after", "2", "--timeout", "4"),
              STORE_CODES | {1, 3, 4, 5}),
    "models": (("models",), STORE_CODES),
    "prune": (("prune", "--keep", "0", "--older-than-hours", "0", "--dry-run"), STORE_CODES),
    "promote": (("promote", "victim"), STORE_CODES),
    "rollback": (("rollback",), STORE_CODES),
    "check": (("check",), STORE_CODES),
}  # fmt: skip
TARGETS = [
    "victim/status.json", "victim/_SUCCESS", "victim/metrics.json", "victim/run.json",
    "victim/owner.json", "victim/_FAILURE", "victim/submission.json", "victim/_HOLD",
    "victim/checkpoints/latest.json", "models/mnist/champion.json",
    "models/mnist/history/00000002-victim.json",
]  # fmt: skip


# --- hostile contents ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
FIELDS = ["state", "epoch", "epochs", "metrics", "history", "test_accuracy", "files", "reason",
          "run_id", "expires_at", "renewed_at", "backend", "handle", "previous", "decisions",
          "model", "config", "promotion", "updated_at", "sha256"]  # fmt: skip
control_text = st.lists(
    st.sampled_from(["\x1b[2J", "\r\n", "\x00", "\u202e", "\x07", "a", "Test accuracy: 99%"]),
    min_size=1, max_size=8,
).map("".join)  # fmt: skip


@st.composite
def damage(draw) -> tuple[str, str, object]:
    """(target key, kind of damage, payload)."""
    target = draw(st.sampled_from(TARGETS))
    kind = draw(st.sampled_from(["bomb", "digits", "nonfinite", "types", "control", "truncated",
                                 "oversized", "link", "fifo"]))  # fmt: skip
    field = draw(st.sampled_from(FIELDS))
    if kind == "bomb":
        depth = draw(st.integers(20, 200_000))
        return target, kind, f'{{"{field}": ' + "[" * depth + "]" * depth + "}"
    if kind == "digits":
        return target, kind, f'{{"{field}": {"9" * draw(st.integers(20, 5000))}}}'
    if kind == "nonfinite":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]))
        return target, kind, f'{{"{field}": {literal}}}'
    if kind == "types":
        return target, kind, json.dumps({field: draw(json_values)})
    if kind == "control":
        return target, kind, json.dumps({field: draw(control_text), "state": draw(control_text)})
    if kind == "truncated":
        return target, kind, draw(st.floats(0, 0.99))
    if kind == "oversized":
        return target, kind, draw(st.sampled_from([64 * 1024 + 1, 1024**2 + 1, 4 * 1024**2 + 1]))
    return target, kind, draw(st.sampled_from(["file", "folder", "dangling"]))


def apply(store: Path, outside: Path, target: str, kind: str, payload: object) -> None:
    path = store / target
    path.parent.mkdir(parents=True, exist_ok=True)
    original = path.read_bytes() if path.is_file() else b'{"state": "succeeded"}'
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "truncated":
        path.write_bytes(original[: int(len(original) * payload)])
    elif kind == "oversized":
        path.write_bytes(original + b" " * int(payload))
    elif kind == "link":
        dest = {"file": outside / "record.json", "folder": outside, "dangling": outside / "no"}
        path.symlink_to(dest[payload])
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(str(payload).encode())


# --- the store every example starts from ---


@pytest.fixture(scope="module")
def base(finished, tmp_path_factory, mnist_dir):
    """`done` (champion, then replaced) and `victim` (champion now): two finished runs."""
    from job.runstore import champion
    from job.runstore.local import LocalStore

    root = tmp_path_factory.mktemp("base") / "out"
    shutil.copytree(finished, root)
    shutil.copytree(root / "done", root / "victim")
    store = LocalStore(root)
    for run_id in ("done", "victim"):
        champion.consider(store, "mnist", champion.candidate(store, run_id), policy="always",
                          margin=0.0, force=True)  # a tiny run: a smoke run, so forced  # fmt: skip
    (root / "victim" / "submission.json").write_text(
        json.dumps({"backend": "local", "handle": "999999"})
    )
    return root


def digests(root: Path, skip: set[str] = frozenset()) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and name not in skip:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_limited(args: tuple[str, ...], env: dict, cwd: Path, address_space: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, "-m", "job", *args], env=env, cwd=cwd, capture_output=True, text=True,
        preexec_fn=limit, timeout=HANG_GUARD_S, check=False,
    )  # fmt: skip


def assert_well_behaved(name: str, proc, codes: set[int], case) -> None:
    context = f"{name} on {case}: exit {proc.returncode}\n{proc.stderr[-1500:]}"
    assert proc.returncode in codes, context
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, context
    assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) <= 1, context


def fresh_copy(base: Path, tmp_path: Path, target: str, kind: str, payload: object):
    work = tmp_path / f"ex-{os.urandom(4).hex()}"
    store, outside = work / "out", work / "outside"
    shutil.copytree(base, store)
    outside.mkdir()
    (outside / "record.json").write_text(json.dumps({"state": "succeeded", "epoch": 1}))
    apply(store, outside, target, kind, payload)
    return work, store, outside


SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


@SETTINGS
@given(case=damage())
def test_every_reading_command_survives_a_hostile_store(base, tmp_path, mnist_dir, case):
    target, kind, payload = case
    work, store, outside = fresh_copy(base, tmp_path, target, kind, payload)
    try:
        before_done, before_outside = digests(store / "done", {"_HOLD"}), digests(outside)
        env = job_env(OUTPUT_URI=str(store), DATA_URI=str(mnist_dir), OPENBLAS_NUM_THREADS="1")
        for name, (args, codes) in COMMANDS.items():
            if name == "watch":
                args = (*args, "--dest", str(work / "watched"))
            assert_well_behaved(name, run_limited(args, env, work, SUBMITTER_AS), codes, case)
        assert digests(store / "done", {"_HOLD"}) == before_done, f"done changed by {case}"
        assert digests(outside) == before_outside, f"outside the store touched by {case}"
        assert sorted(p.name for p in outside.iterdir()) == ["record.json"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@settings(SETTINGS, max_examples=max(2, EXAMPLES // 4))
@given(case=damage())
def test_training_rerunning_a_finished_run_survives_a_hostile_store(base, tmp_path, mnist_dir,
                                                                     case):  # fmt: skip
    target, kind, payload = case
    work, store, outside = fresh_copy(base, tmp_path, target, kind, payload)
    try:
        before_done, before_outside = digests(store / "done", {"_HOLD"}), digests(outside)
        env = job_env(OUTPUT_URI=str(store), DATA_URI=str(mnist_dir), RUN_ID="victim",
                      PROMOTE="if-better", **TINY)  # fmt: skip
        proc = run_limited(("train",), env, work, TRAINER_AS)
        assert_well_behaved("train", proc, STORE_CODES, case)
        assert digests(store / "done", {"_HOLD"}) == before_done, f"done changed by {case}"
        assert digests(outside) == before_outside, f"outside the store touched by {case}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
