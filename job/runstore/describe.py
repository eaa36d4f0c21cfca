"""One run at a glance, for `show`: what it was given, how it ended, how it learned, whether it
is its model's champion, and where its files are.

`describe` gathers it as plain data (the `--json` object), `lines` words it for a person, and
`curve` draws test accuracy per epoch in characters. It reads a handful of small records, each
through the bounded, typed readers (job.runstore.reader, job.runstore.objects): status.json,
run.json, `_SUCCESS`, metrics.json (checked against its `_SUCCESS` hash), `_FAILURE` and the
champion record; never the model or the images. Values are as read (JSON output escapes them);
every string `lines` shows passes job.logs.printable. An object that cannot be read is named in
`unreadable` and the rest is still shown.
"""

from __future__ import annotations

import math

from job import errors
from job.config import MODEL_NAME_RE
from job.errors import EXIT_CLASSES, EXIT_OUT_OF_MEMORY, DataError
from job.logs import printable
from job.runstore import champion
from job.runstore.layout import (
    FAILURE,
    IMAGES,
    METRICS,
    MODEL_FILE,
    REPORT,
    RUN_RECORD,
    SUCCESS,
)
from job.runstore.reader import RunReader
from job.runstore.store import Store

# The settings that shape a result, as run.json's `config.training` names them.
SETTINGS = ("recipe", "epochs", "train_limit", "test_limit", "precision", "seed", "batch_size",
            "learning_rate")  # fmt: skip
WORST = 3  # classes shown, lowest recall first
CURVE_WIDTH = 40  # characters of the longest bar
MAX_CURVE = 100  # epochs drawn: the last ones (a history may hold thousands)
MAX_LAST_LOG = 5  # of a failed run's last log lines
WIDTH = 300  # characters of any one value shown


def describe(
    store: Store,
    run_id: str,
    *,
    champions: Store,
    submitted: dict | None,
    model_name: str,
) -> dict:
    """The run `run_id` of `store` as plain data. `champions`: the store of the champion records
    (OUTPUT_URI; a WML run's files are elsewhere); `model_name`: the model to ask about when the
    run's record names none."""
    reader = RunReader(store, run_id)
    unreadable: list[str] = []

    def attempt(read):
        try:
            return read()
        except DataError as exc:  # that object's own fault: said, and the rest shown
            unreadable.append(str(exc))
            return None

    attempt(reader.poll_status)
    status = reader.status or {}
    outcome = attempt(reader.outcome)  # a marker that is a link is that marker's fault
    record = attempt(lambda: reader.read_json(RUN_RECORD)) or {}
    entries = attempt(reader.manifest) if outcome == "succeeded" else None
    metrics = attempt(lambda: reader.listed_metrics(entries)) if entries is not None else None
    failure = attempt(lambda: reader.read_json(FAILURE)) if outcome == "failed" else None
    config = _dict(record.get("config"))
    return {
        "run_id": run_id,
        "location": reader.location,
        "state": outcome or status.get("state") or ("submitted" if submitted else "unknown"),
        "epoch": status.get("epoch"),
        "epochs": status.get("epochs"),
        "updated_at": status.get("updated_at"),
        "submission": _submission(submitted),
        "settings": _settings(config, _dict((metrics or {}).get("params"))),
        "result": _result(metrics) if metrics else None,
        "curve": _points((metrics or status).get("history")),
        "champion": _champion(champions, run_id, _model_name(config) or model_name),
        "failure": _failure(failure, status) if outcome == "failed" else None,
        "stopped": status.get("reason") if outcome in (None, "cancelled") else None,
        "files": _files(reader.location, entries),
        "unreadable": unreadable,
    }


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _submission(submitted: dict | None) -> dict | None:
    if not submitted:
        return None
    return {k: submitted.get(k) for k in ("backend", "handle", "submitted_at")}


def _settings(config: dict, params: dict) -> dict:
    """What the run was given (run.json), and the precision it chose (metrics.json)."""
    training = _dict(config.get("training"))
    given = {k: training.get(k) for k in SETTINGS if k in training}
    for k in ("recipe", "precision", "seed"):  # a run whose run.json is gone still says these
        if k in params:
            given.setdefault(k, params[k])
    if "precision" in params:
        given["precision_used"] = params["precision"]
    return given


def _model_name(config: dict) -> str | None:
    """The model the run's own configuration names (MODEL_NAME, else its dataset)."""
    named = _dict(config.get("promotion")).get("model_name")
    name = named or _dict(config.get("training")).get("dataset")
    return name if isinstance(name, str) and MODEL_NAME_RE.fullmatch(name) else None


def _result(metrics: dict) -> dict:
    """The headline figures, whether it is a smoke run, and the worst classes by recall with
    the digit each is most often taken for (from the confusion matrix)."""
    classes = [  # each field checked where present (objects.METRICS): here, present
        c for c in metrics.get("per_class") or [] if isinstance(c, dict) and "class" in c
        and "recall" in c
    ]  # fmt: skip
    matrix = metrics.get("confusion_matrix")
    rows = matrix if isinstance(matrix, list) else []
    worst = []
    for c in sorted(classes, key=lambda c: c["recall"])[:WORST]:
        row = rows[c["class"]] if c["class"] < len(rows) else None
        taken = _taken_for(row, c["class"]) if isinstance(row, list) else None
        worst.append({"class": c["class"], "recall": c["recall"], "precision": c.get("precision"),
                      "support": c.get("support"), **(taken or {})})  # fmt: skip
    keys = ("test_accuracy", "baseline_error_pct", "test_loss", "misclassified_count", "n_train",
            "n_test", "epochs_completed", "weights_sha256")  # fmt: skip
    return {**{k: metrics.get(k) for k in keys}, "smoke": champion.smoke(metrics),
            "worst_classes": worst}  # fmt: skip


def _taken_for(row: list, digit: int) -> dict | None:
    mistakes = [(n, j) for j, n in enumerate(row) if j != digit and type(n) is int and n > 0]
    if not mistakes:
        return None
    count, other = max(mistakes)
    return {"taken_for": other, "times": count}


def _points(history: object) -> list[dict]:
    """(epoch, test accuracy) per epoch of a history, entries that are not one left out."""
    entries = history if isinstance(history, list) else []
    return [
        {"epoch": h["epoch"], "test_accuracy": h["val_accuracy"]}
        for h in entries
        if isinstance(h, dict) and type(h.get("epoch")) is int and _number(h.get("val_accuracy"))
        and 0 <= h["val_accuracy"] <= 1
    ]  # fmt: skip


def _champion(store: Store, run_id: str, name: str) -> dict:
    try:
        record, _ = champion.read(store, name)
    except DataError as exc:  # the registry's fault, not the run's: said, not fatal
        return {"model_name": name, "is_champion": None, "champion": None, "error": str(exc)}
    holder = record["run_id"] if record else None
    return {"model_name": name, "is_champion": holder == run_id, "champion": holder}


def exit_code_of(failure: dict) -> int | None:
    """The exit code a failed run ended with: the one `_FAILURE` records, else the one its
    reason's error class stands for (the reason begins `DataError: ...`); None when neither
    says (an exception outside the job's classes may be 70, 71 or 75: not guessed)."""
    recorded = failure.get("exit_code")
    if type(recorded) is int and 0 <= recorded <= 255:
        return recorded
    name = str(failure.get("reason") or "").partition(":")[0].strip()
    return _error_codes().get(name)


def _error_codes() -> dict[str, int]:
    """The job's error classes by name and their exit codes (job.errors, and the subclasses
    the parts loaded so far define), plus the out-of-memory errors job.errors.classify names."""
    codes: dict[str, int | None] = {"MemoryError": EXIT_OUT_OF_MEMORY,
                                    "ResourceExhaustedError": EXIT_OUT_OF_MEMORY}  # fmt: skip
    found, todo = [], [errors.JobError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    for cls in found:
        if cls is errors.Preempted:  # its code is the signal's: never a _FAILURE anyway
            continue
        # Two classes of one name with different codes: the name does not tell which.
        code = cls.exit_code
        codes[cls.__name__] = code if codes.get(cls.__name__, code) == code else None
    return {k: v for k, v in codes.items() if v is not None}


def _failure(failure: dict | None, status: dict) -> dict:
    failure = failure or {}
    reason = failure.get("reason") or status.get("reason") or "no reason recorded"
    code = exit_code_of({**failure, "reason": reason})
    last = failure.get("last_log")
    last_log = [str(x) for x in last[-MAX_LAST_LOG:]] if isinstance(last, list) else []
    return {"reason": reason, "exit_code": code, "exit_class": EXIT_CLASSES.get(code, "unknown")
            if code is not None else None, "failed_at": failure.get("failed_at"),
            "last_log": last_log}  # fmt: skip


def _files(location: str, entries: list[dict] | None) -> dict:
    """Where the run's files are: the folder, and each file `_SUCCESS` lists (`entries`; None
    when there is no readable one) that a person opens: the model with its size, metrics,
    report, images."""
    listed = {e["path"]: e for e in entries or []}
    files: dict = {"run": location}
    if entries is not None:
        files["success"] = f"{location}/{SUCCESS}"
    if MODEL_FILE in listed:
        files["model"] = f"{location}/{MODEL_FILE}"
        files["model_bytes"] = listed[MODEL_FILE].get("size")
    for key, name in (("metrics", METRICS), ("report", REPORT)):
        if name in listed:
            files[key] = f"{location}/{name}"
    files["images"] = [f"{location}/{p}" for p in sorted(listed) if p.startswith(f"{IMAGES}/")]
    return files


# --- for a person ---


def _shown(value: object, width: int = WIDTH) -> str:
    return "-" if value is None else printable(value, width)


def _pct(value: object) -> str:
    return f"{100 * value:.2f}%" if _number(value) else "-"


def curve(points: list[dict], width: int = CURVE_WIDTH) -> list[str]:
    """Test accuracy per epoch as one line each: the epoch, a bar of `#` on a scale from the
    tenth below the lowest accuracy to 100% (stated in the first line, so the differences of
    a good run show), and the figure. The last MAX_CURVE epochs."""
    if not points:
        return []
    shown = points[-MAX_CURVE:]
    low = min(math.floor(10 * min(p["test_accuracy"] for p in shown)) / 10, 0.9)
    lines = [f"Test accuracy per epoch (bar: {100 * low:.0f}% to 100%):"]
    if len(points) > len(shown):
        lines.append(f"  (the first {len(points) - len(shown)} epochs are not drawn)")
    for p in shown:
        filled = round(width * (p["test_accuracy"] - low) / (1 - low))
        bar = "#" * filled + "." * (width - filled)
        lines.append(f"  {p['epoch']:>4} {bar} {_pct(p['test_accuracy'])}")
    return lines


def lines(summary: dict) -> list[str]:
    """`describe`'s summary as lines for a person; every value from the store made printable."""
    s = summary
    progress = f"epoch {_shown(s['epoch'], 8)}/{_shown(s['epochs'], 8)}, " if s["epoch"] else ""
    out = [f"Run {_shown(s['run_id'])}: {_shown(s['state'], 32)} ({progress}"
           f"updated {_shown(s['updated_at'], 40)})"]  # fmt: skip
    if s["submission"]:
        sub = s["submission"]
        backend, handle = _shown(sub["backend"], 16), _shown(sub["handle"], 200)
        out.append(f"Started by: submit --backend {backend} ({handle}), "
                   f"{_shown(sub['submitted_at'], 40)}")  # fmt: skip
    settings = s["settings"]
    if settings:
        words = []
        for key, value in settings.items():
            if key == "precision_used":
                continue
            shown = "all" if key.endswith("_limit") and value is None else _shown(value, 40)
            if key == "precision" and settings.get("precision_used") not in (None, value):
                shown += f" (used {_shown(settings['precision_used'], 40)})"
            words.append(f"{key.replace('_', ' ')} {shown}")
        out.append("Settings: " + ", ".join(words))
    out += _result_lines(s["result"])
    out += curve(s["curve"])
    out.append(_champion_line(s["champion"]))
    if s["failure"]:
        f = s["failure"]
        code = (f"exit {f['exit_code']} ({_shown(f['exit_class'], 32)})"
                if f["exit_code"] is not None else "exit class not recorded")  # fmt: skip
        reason = next((r for r in str(f["reason"]).splitlines() if r.strip()), "")
        out.append(f"Failed, {code}: {_shown(reason, 1000)}")
        if f["last_log"]:
            out.append("Its last log lines:")
            out += [f"  {_shown(line, 1000)}" for line in f["last_log"]]
    elif s["stopped"]:
        out.append(f"Stopped: {_shown(s['stopped'], 1000)}")
    out += _file_lines(s["files"])
    return out


def _result_lines(result: dict | None) -> list[str]:
    if not result:
        return []
    out = [
        f"Test accuracy: {_pct(result['test_accuracy'])} ({_shown(result['misclassified_count'])} "
        f"of {_shown(result['n_test'])} test digits wrong; trained on {_shown(result['n_train'])} "
        "digits)",
    ]
    if _number(result["baseline_error_pct"]):
        out.append(f"Baseline Error: {result['baseline_error_pct']:.2f}%")  # the notebook's line
    if result["smoke"]:
        out.append(f"Smoke run: {_shown(result['smoke'])}; never a champion without --force")
    worst = [
        f"{c['class']} {_pct(c['recall'])}"
        + (f" ({c['times']} read as {c['taken_for']})" if "taken_for" in c else "")
        for c in result["worst_classes"]
    ]
    if worst:  # as `watch` words it, with each class's most frequent mistake
        out.append("Worst classes (recall): " + "; ".join(worst))
    return out


def _champion_line(found: dict) -> str:
    name = _shown(found["model_name"], 64)
    if found.get("error"):
        return f"Champion: unknown (model {name}: {_shown(found['error'])})"
    if found["is_champion"]:
        return f"Champion: yes, of model {name}"
    if found["champion"]:
        return f"Champion: no (model {name}'s champion is {_shown(found['champion'], 64)})"
    return f"Champion: no (model {name} has no champion yet)"


def _file_lines(files: dict) -> list[str]:
    out = ["Files:", f"  run      {_shown(files['run'], 2000)}"]
    if "model" in files:
        size = files.get("model_bytes")
        mb = f" ({size / 1e6:.1f} MB)" if _number(size) else ""
        out.append(f"  model    {_shown(files['model'], 2000)}{mb}")
    for key in ("metrics", "report"):
        if key in files:
            out.append(f"  {key:8s} {_shown(files[key], 2000)}")
    for i, image in enumerate(files["images"]):
        out.append(f"  {'images' if i == 0 else '':8s} {_shown(image, 2000)}")
    if "success" not in files:
        out.append(f"  (no readable {SUCCESS}: no file of the run is to be trusted)")
    return out
