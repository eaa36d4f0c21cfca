"""Running the job as a person or a platform does: `python -m job` in a real process (for claims
about processes: signals, races, exit after publication), the command line in this process
(`cli`: everything else, without a new interpreter), and `train.run` directly."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def job_env(**overrides: str) -> dict[str, str]:
    """A clean environment for the job: PATH and friends, none of the job's own variables."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SSL_CERT_FILE", "OPENBLAS_CORETYPE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({"LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


def run_job(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m job ARGS` in `cwd` (so no stray .env is read), capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_job(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """`python -m job ARGS` in the background, for tests that stop or kill it mid-run."""
    return subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_with(env: dict[str, str]) -> dict:
    """One run through `job.training.train.run` in this process, configured from `env` exactly as
    the command line would be (fallbacks such as RESULT_DIR included); returns the metrics."""
    from job import config
    from job.training import train

    return train.run(config.from_env(env))


def train_in_process(
    tmp_path: Path, mnist_dir: Path, *, store=None, guard=None, **env: str
) -> tuple[dict, Path]:
    """One run through `job.training.train.run` in this process, on real MNIST and a real LocalStore
    under tmp_path/out (like tensorflow/models' mnist_test): the training path without the
    cost of a new interpreter and a TensorFlow import. Returns (metrics, run folder)."""
    from job import config
    from job.training import train

    cfg = config.from_env({"DATA_URI": str(mnist_dir), "OUTPUT_URI": str(tmp_path / "out"), **env})
    result = train.run(cfg, store=store, guard=guard)  # None: the store OUTPUT_URI names
    return result, tmp_path / "out" / cfg.run_id


@dataclass
class Completed:
    """What `cli` returns: the fields of subprocess.CompletedProcess the tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict[str, str], cwd: Path) -> Completed:
    """`python -m job ARGS` through `job.cli.main` in this process: `env` is the whole
    environment and `cwd` the working directory while it runs (both restored after), output
    captured as a pipe would see it (not a terminal). For commands that load no TensorFlow
    state of their own; `train` and anything about signals or processes use `run_job`."""
    import structlog

    from job.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: usage errors and --help
                code = exc.code if isinstance(exc.code, int) else 1
            # main configured logging onto this capture: back to structlog's defaults.
            structlog.reset_defaults()
            structlog.contextvars.clear_contextvars()
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return Completed(list(args), code, out.getvalue(), err.getvalue())
