"""`python -m job watch RUN_ID`: follow a run from its store, whatever started it.

Polls `status.json` (a conditional GET: unchanged costs no body), prints progress (a bar on a
terminal; JSON lines otherwise, or with `--json`: never both on one stdout), gives up when the
heartbeat is older than the stall limit, and on `_SUCCESS` reads `metrics.json` as `_SUCCESS`
lists it (downloads it and the images, hash-checked, only with `--dest`) and prints a summary.
Exit codes, for cron wrappers: job.errors.WATCH_EXIT (a run that is not there at all:
RunNotFound, the same 5).
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


class RunNotFound(JobError):
    """A run id with no folder in the store and no submission: nothing to follow."""

    exit_code = WATCH_EXIT["not_found"]


def worst_classes(metrics: dict, n: int = 3) -> list[dict]:
    """The `n` classes of lowest recall, as metrics.json's `per_class` holds them."""
    return sorted(metrics.get("per_class", []), key=lambda c: c["recall"])[:n]


def summary(metrics: dict, files: str) -> list[str]:
    """The person's lines for a finished run (`files`: where its files are)."""
    worst = worst_classes(metrics)
    return [
        f"Baseline Error: {metrics['baseline_error_pct']:.2f}%",
        f"Test accuracy: {100 * metrics['test_accuracy']:.2f}% "
        f"({metrics['misclassified_count']} of {metrics['n_test']} test digits wrong)",
        "Worst classes (recall): "
        + ", ".join(f"{c['class']}: {100 * c['recall']:.1f}%" for c in worst),
        f"Files: {files}",
    ]


def promotion(reader: RunReader, interval: float, wait: float) -> dict | None:
    """What became of the run's champion decision, when it asked for one (PROMOTE in its
    run.json): `message` for a person, and the decision's fields when one was recorded. The
    decision lands in status.json just after `_SUCCESS`: wait for it a while."""
    config = (reader.read_json(RUN_RECORD) or {}).get("config")
    promote = config.get("promotion") if isinstance(config, dict) else None
    policy = promote.get("policy") if isinstance(promote, dict) else None
    if policy in (None, "never"):
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            reader.poll_status()
        except JobError:  # the run succeeded and is downloaded: this line must not undo that
            return {"message": f"Promotion: {STATUS} unreadable"}
        decision = (reader.status or {}).get("promotion")
        if isinstance(decision, dict):
            reason = printable(decision.get("reason", "no reason recorded"), 300)
            name = printable(decision.get("model_name", "?"), 63)
            promoted = decision.get("promoted") is True
            message = (
                f"Promoted: champion of model {name} ({reason})"
                if promoted
                else f"Not promoted to champion of model {name}: {reason}"
            )
            return {"promoted": promoted, "model_name": name, "reason": reason, "message": message}
        if time.monotonic() > deadline:
            return {"message": f"Promotion: no decision recorded (PROMOTE={str(policy)[:20]})"}
        time.sleep(interval)


def _succeeded(reader: RunReader, download_to: Path | None) -> tuple[list[str], dict]:
    """A finished run's summary lines and figures, from its metrics.json as `_SUCCESS` lists
    it (downloaded, with the images, only into `download_to` when given)."""
    if download_to is None:
        metrics = reader.listed_metrics(reader.manifest())
        where, downloaded = reader.location, []
    else:
        files = reader.download(download_to)
        metrics = objects.decode(files[METRICS], objects.METRICS, reader.where(METRICS))
        where, downloaded = str(download_to), sorted(files)
    try:
        lines = summary(metrics, where)
        worst = worst_classes(metrics)
        fields = {
            "baseline_error_pct": metrics["baseline_error_pct"],
            "test_accuracy": metrics["test_accuracy"],
            "misclassified_count": metrics["misclassified_count"],
            "n_test": metrics["n_test"],
            "worst_classes": [{"class": c["class"], "recall": c["recall"]} for c in worst],
            "weights_sha256": metrics.get("weights_sha256"),
            "files": where,
            "downloaded": downloaded,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{reader.where(METRICS)}: not this job's metrics ({exc})") from None
    if downloaded:
        lines.append(f"Downloaded {len(downloaded)} files, hashes match {SUCCESS}")
    return lines, fields


def _ended(
    reader: RunReader,
    outcome: str,
    out: Callable[[str], None],
    tty: bool,
    lines: list[str],
    fields: dict | None = None,
    printed: int = 0,
) -> int:
    """Say how the run ended, as lines for a person (the first `printed` are out already) or
    as one JSON object (`summary`: those same lines), and return watch's exit code for it."""
    code = WATCH_EXIT[outcome]
    if tty:
        for line in lines[printed:]:
            out(line)
    else:
        record = {"event": "result", "run_id": reader.run_id, "outcome": outcome}
        out(json.dumps({**record, "exit_code": code, "summary": lines, **(fields or {})}))
    return code


def watch(
    reader: RunReader,
    *,
    interval: float,
    stall_after: float,
    timeout: float | None,
    download_to: Path | None = None,
    out: Callable[[str], None] = print,
    tty: bool | None = None,
    platform_state: Callable[[], tuple[str, str | None]] | None = None,
    appear_within: float | None = None,
) -> int:
    """Follow the run until it ends; `platform_state` (WML) reports the platform's own view,
    so a run that fails before the job starts (or is cancelled there) is reported too.
    `appear_within`: give up on a run that has no status.json after that long (a run id that
    nobody submitted, or a typo) instead of waiting for the stall limit. `tty`: text for a
    person (a progress bar, then the summary lines) when true, else JSON lines only (one per
    change, then one `result` object); default: whether stdout is a terminal. `download_to`:
    where a finished run's metrics.json and images go; None downloads nothing."""
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
            lines, fields = _succeeded(reader, download_to)
            printed = len(lines) if tty else 0
            for line in lines[:printed]:  # a person sees the result before the wait below
                out(line)
            fields["promotion"] = promotion(reader, interval, wait=min(60.0, stall_after))
            if fields["promotion"]:
                lines.append(fields["promotion"]["message"])
            return _ended(reader, outcome, out, tty, lines, fields, printed)
        if outcome == "failed":
            failure = reader.read_json(FAILURE) or {}
            reason = printable(failure.get("reason", "no reason recorded"), 1000)
            line = f"Run {reader.run_id} failed: {reason}"
            return _ended(reader, outcome, out, tty, [line], {"reason": reason})
        if outcome == "cancelled":
            return _ended(reader, outcome, out, tty, [f"Run {reader.run_id} was cancelled"])
        if platform_state is not None:
            state, message = platform_state()
            if state != last_platform:
                shown = printable(state, 32)
                event = {"event": "platform", "run_id": reader.run_id, "state": shown}
                out(f"Platform: {shown}" if tty else json.dumps(event))
                last_platform = state
            if state in ("queued", "pending"):
                changed = time.monotonic()  # waiting for capacity is not a stall
            if state in ("failed", "error") and reader.outcome() is None:  # not a marker late
                shown = printable(message or "no message", 1000)
                line = f"Run {reader.run_id} failed on the platform: {shown}"
                return _ended(reader, "failed", out, tty, [line], {"reason": shown})
            if state == "canceled":
                line = f"Run {reader.run_id} was cancelled on the platform"
                return _ended(reader, "cancelled", out, tty, [line])
        # A stall is judged on this machine's clock (how long status.json has not changed), and
        # on the run's own `updated_at` only when that is older: a timestamp in the future (a
        # skewed or hostile clock) cannot keep a dead run alive.
        quiet = time.monotonic() - changed
        age = reader.heartbeat_age()
        stale = max(quiet, age or 0.0)
        waited = time.monotonic() - started
        if appear_within is not None and reader.status is None and waited > appear_within:
            line = f"Run {reader.run_id} not found in its store after {appear_within:.0f} s"
            return _ended(reader, "not_found", out, tty, [line])
        if stale > stall_after:
            shown = f"{stale:.0f} s ago" if reader.status else "never"
            line = (
                f"Run {reader.run_id} stalled: last heartbeat {shown} (limit {stall_after:.0f} s)"
            )
            return _ended(reader, "stalled", out, tty, [line])
        if timeout is not None and waited > timeout:
            line = f"Run {reader.run_id} not finished after {timeout:.0f} s"
            return _ended(reader, "stalled", out, tty, [line])
        time.sleep(interval)
