"""`python -m job watch RUN_ID`: follow a run from its store, whatever started it.

Polls `status.json` (a conditional GET: unchanged costs no body), prints progress (a bar on a
terminal, one JSON line per change otherwise), gives up when the heartbeat is older than the
stall limit, and on `_SUCCESS` downloads `metrics.json` and the images, checks their hashes and
prints a summary. Exit codes, for cron wrappers: job.errors.WATCH_EXIT.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from job.errors import WATCH_EXIT, DataError, JobError
from job.logs import printable
from job.runstore import objects
from job.runstore.layout import FAILURE, METRICS, RUN_RECORD, STATUS, SUCCESS
from job.runstore.reader import RunReader


def progress_lines(status: dict, seen: set, tty: bool) -> list[str]:
    """One line per epoch not shown yet (status.json carries the whole history), or per state."""
    epochs = status.get("epochs") or 0
    entries = [h for h in status.get("history") or [] if h["epoch"] not in seen]
    if not entries and ("state", status.get("state")) not in seen:
        entries = [{"epoch": status.get("epoch") or 0, **(status.get("metrics") or {})}]
        seen.add(("state", status.get("state")))
    lines = []
    for entry in entries:
        seen.add(entry["epoch"])
        if not tty:
            lines.append(
                json.dumps(
                    {
                        "event": "progress",
                        "run_id": status.get("run_id"),
                        "state": status.get("state"),
                        "epochs": epochs,
                        **entry,
                    }
                )
            )
            continue
        done = min(30, int(30 * entry["epoch"] / epochs)) if epochs else 0
        acc = entry.get("val_accuracy", entry.get("test_accuracy"))
        shown = f"  test accuracy {100 * acc:.2f}%" if acc is not None else ""
        bar = "#" * done + "." * (30 - done)
        state = printable(status.get("state"), 32)
        lines.append(f"[{bar}] {state} epoch {entry['epoch']}/{epochs}{shown}")
    return lines


def summary(metrics: dict, files_dir: Path) -> list[str]:
    worst = sorted(metrics.get("per_class", []), key=lambda c: c["recall"])[:3]
    return [
        f"Baseline Error: {metrics['baseline_error_pct']:.2f}%",
        f"Test accuracy: {100 * metrics['test_accuracy']:.2f}% "
        f"({metrics['misclassified_count']} of {metrics['n_test']} test digits wrong)",
        "Worst classes (recall): "
        + ", ".join(f"{c['class']}: {100 * c['recall']:.1f}%" for c in worst),
        f"Files: {files_dir}",
    ]


def promotion_line(reader: RunReader, interval: float, wait: float) -> str | None:
    """What became of the run's champion decision, when it asked for one (PROMOTE in its
    run.json). The decision lands in status.json just after `_SUCCESS`: wait for it a while."""
    config = (reader.read_json(RUN_RECORD) or {}).get("config")
    promotion = config.get("promotion") if isinstance(config, dict) else None
    policy = promotion.get("policy") if isinstance(promotion, dict) else None
    if policy in (None, "never"):
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            reader.poll_status()
        except JobError:  # the run succeeded and is downloaded: this line must not undo that
            return f"Promotion: {STATUS} unreadable"
        decision = (reader.status or {}).get("promotion")
        if isinstance(decision, dict):
            reason = printable(decision.get("reason", "no reason recorded"), 300)
            name = printable(decision.get("model_name", "?"), 63)
            if decision.get("promoted") is True:
                return f"Promoted: champion of model {name} ({reason})"
            return f"Not promoted to champion of model {name}: {reason}"
        if time.monotonic() > deadline:
            return f"Promotion: no decision recorded (PROMOTE={str(policy)[:20]})"
        time.sleep(interval)


def watch(
    reader: RunReader,
    *,
    interval: float,
    stall_after: float,
    timeout: float | None,
    download_to: Path,
    out: Callable[[str], None] = print,
    tty: bool | None = None,
    platform_state: Callable[[], tuple[str, str | None]] | None = None,
    appear_within: float | None = None,
) -> int:
    """Follow the run until it ends; `platform_state` (WML) reports the platform's own view,
    so a run that fails before the job starts (or is cancelled there) is reported too.
    `appear_within`: give up on a run that has no status.json after that long (a run id that
    nobody submitted, or a typo) instead of waiting for the stall limit."""
    tty = sys.stdout.isatty() if tty is None else tty
    started = changed = time.monotonic()
    seen: set = set()
    last_platform = None
    while True:
        outcome = reader.outcome()
        if reader.poll_status() and reader.status:
            changed = time.monotonic()
            for line in progress_lines(reader.status, seen, tty):
                out(line)
        if outcome == "succeeded":
            files = reader.download(download_to)
            metrics = objects.decode(files[METRICS], objects.METRICS, reader.where(METRICS))
            try:
                lines = summary(metrics, download_to)
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{reader.where(METRICS)}: not this job's metrics ({exc})"
                ) from None
            for line in lines:
                out(line)
            out(f"Downloaded {len(files)} files, hashes match {SUCCESS}")
            decision = promotion_line(reader, interval, wait=min(60.0, stall_after))
            if decision:
                out(decision)
            return WATCH_EXIT["succeeded"]
        if outcome == "failed":
            failure = reader.read_json(FAILURE) or {}
            reason = printable(failure.get("reason", "no reason recorded"), 1000)
            out(f"Run {reader.run_id} failed: {reason}")
            return WATCH_EXIT["failed"]
        if outcome == "cancelled":
            out(f"Run {reader.run_id} was cancelled")
            return WATCH_EXIT["cancelled"]
        if platform_state is not None:
            state, message = platform_state()
            if state != last_platform:
                out(json.dumps({"event": "platform", "run_id": reader.run_id, "state": state}))
                last_platform = state
            if state in ("queued", "pending"):
                changed = time.monotonic()  # waiting for capacity is not a stall
            if state in ("failed", "error") and reader.outcome() is None:  # not a marker late
                shown = printable(message or "no message", 1000)
                out(f"Run {reader.run_id} failed on the platform: {shown}")
                return WATCH_EXIT["failed"]
            if state == "canceled":
                out(f"Run {reader.run_id} was cancelled on the platform")
                return WATCH_EXIT["cancelled"]
        # A stall is judged on this machine's clock (how long status.json has not changed), and
        # on the run's own `updated_at` only when that is older: a timestamp in the future (a
        # skewed or hostile clock) cannot keep a dead run alive.
        quiet = time.monotonic() - changed
        age = reader.heartbeat_age()
        stale = max(quiet, age or 0.0)
        waited = time.monotonic() - started
        if appear_within is not None and reader.status is None and waited > appear_within:
            out(f"Run {reader.run_id} not found in its store after {appear_within:.0f} s")
            return WATCH_EXIT["not_found"]
        if stale > stall_after:
            shown = f"{stale:.0f} s ago" if reader.status else "never"
            out(f"Run {reader.run_id} stalled: last heartbeat {shown} (limit {stall_after:.0f} s)")
            return WATCH_EXIT["stalled"]
        if timeout is not None and waited > timeout:
            out(f"Run {reader.run_id} not finished after {timeout:.0f} s")
            return WATCH_EXIT["stalled"]
        time.sleep(interval)
