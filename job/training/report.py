"""report.html: a run on one page that a person opens in any browser, from a bucket or a laptop.

Self-contained: the pictures are embedded as data: URIs and the style is inline; there is no
script, font or link to load, so the page looks the same offline, downloaded from an object
store, or in a year's time. Its Content-Security-Policy forbids loading anything else, so even
a value that slipped through could not fetch a byte. Every value shown comes from
metrics.json, whose settings are a user's text: each is made printable (job.logs.printable) and
HTML-escaped before it reaches the page. `render` is pure; job.training.artifacts writes it.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape

from job.config import SECRET_NAMES
from job.logs import printable
from job.training.images import SIZES

# The pictures on the page (job.training.images' names) and what each shows, its alt text.
PICTURES = {
    "history": "loss and accuracy per epoch, on the training and the test set",
    "confusion": "confusion matrix of the test set",
    "misclassified": "misclassified test digits, the most confident mistakes first",
    "samples": "the first training digits with their labels",
}
WIDTH = 1000  # characters of one shown value: a longer one is cut, and marked so
HISTORY_COLUMNS = (  # (key in a history entry, heading, format)
    ("epoch", "epoch", "{:d}"),
    ("loss", "train loss", "{:.4f}"),
    ("accuracy", "train accuracy", "{:.2%}"),
    ("val_loss", "test loss", "{:.4f}"),
    ("val_accuracy", "test accuracy", "{:.2%}"),
    ("seconds", "seconds", "{:.1f}"),
)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  background: #fff; max-width: 1040px; margin: 0 auto; padding: 16px 24px; line-height: 1.4; }
header { border-bottom: 1px solid #d0d7de; padding-bottom: 8px; }
h1 { font-size: 2.4em; margin: 0.1em 0; }
h1 .accuracy { color: #1a7f37; }
h2 { font-size: 1.3em; margin: 1.2em 0 0.3em; border-bottom: 1px solid #eaeef2; }
h3 { font-size: 1em; margin: 0.8em 0 0.2em; }
.error { font-size: 1.4em; font-weight: 600; margin: 0.1em 0; }
.muted { color: #59636e; }
img { display: block; max-width: 100%; height: auto; margin: 8px 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 6px 0; }
th, td { border: 1px solid #d0d7de; padding: 2px 8px; text-align: right; }
th { background: #f6f8fa; }
table.settings th, table.settings td { text-align: left; }
tr.worst td { background: #fff1e5; }
code, td.code { font-family: ui-monospace, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
"""


def render(result: dict, pictures: dict[str, bytes]) -> str:
    """The page of one run. `result` is metrics.json's content; `pictures` the PNGs by their
    name in job.training.images.SIZES (one that is missing is said to be missing)."""
    run_id = _text(result.get("run_id"))
    title = f"{_percent(result.get('test_accuracy'))} test accuracy: run {run_id}"
    body = [
        _headline(result),
        _section("curves", "Training curves", _picture("history", pictures), _history(result)),
        _section("confusion", "Confusion matrix", _picture("confusion", pictures)),
        _section("per-class", "Per class", _per_class(result)),
        _section("misclassified", "Misclassified digits", _picture("misclassified", pictures)),
        _section("samples", "Training samples", _picture("samples", pictures)),
        _section("settings", "Settings", *_settings(result)),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _headline(result: dict) -> str:
    """The notebook's ending, first: accuracy and its "Baseline Error" line."""
    error = _number(result.get("baseline_error_pct"), "{:.2f}%")
    trained = (
        f"{_count(result.get('misclassified_count'))} of {_count(result.get('n_test'))} test "
        f"digits misclassified; trained on {_count(result.get('n_train'))} digits for "
        f"{_count(result.get('epochs_completed'))} of {_count(result.get('epochs'))} epochs; "
        f"test loss {_number(result.get('test_loss'), '{:.4f}')}"
    )
    return "\n".join(
        [
            '<header id="headline">',
            f'<p class="muted">Run <code>{_text(result.get("run_id"))}</code>, '
            f"{_text(result.get('dataset'))}</p>",
            f'<h1><span class="accuracy">{_percent(result.get("test_accuracy"))}</span> '
            "test accuracy</h1>",
            f'<p class="error">Baseline Error: {error}</p>',
            f"<p>{trained}</p>",
            "</header>",
        ]
    )


def _section(anchor: str, heading: str, *parts: str) -> str:
    return "\n".join([f'<section id="{anchor}">', f"<h2>{heading}</h2>", *parts, "</section>"])


def _picture(name: str, pictures: dict[str, bytes]) -> str:
    data = pictures.get(name)
    if not data:
        return f'<p class="muted">No {name} picture was written.</p>'
    width, height = SIZES[name]
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" width="{width}" height="{height}" alt="{escape(PICTURES[name])}">'


def _history(result: dict) -> str:
    entries = [h for h in _list(result.get("history")) if isinstance(h, dict)]
    head = "".join(f"<th>{heading}</th>" for _, heading, _ in HISTORY_COLUMNS)
    rows = [
        "".join(f"<td>{_number(h.get(key), fmt)}</td>" for key, _, fmt in HISTORY_COLUMNS)
        for h in entries
    ]
    return _table("history", head, rows)


def _per_class(result: dict) -> str:
    """Precision, recall and F1 per digit, with the digit each is most often taken for (from
    the confusion matrix); the class with the lowest recall is marked."""
    classes = [c for c in _list(result.get("per_class")) if isinstance(c, dict)]
    cm = [row for row in _list(result.get("confusion_matrix")) if isinstance(row, list)]
    recalls = [c.get("recall") for c in classes]
    worst = min(
        (i for i, r in enumerate(recalls) if _finite(r)), key=lambda i: recalls[i], default=None
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("digit", "test digits", "precision", "recall", "F1", "most often taken for")
    )
    rows = []
    for i, c in enumerate(classes):
        cells = [
            _count(c.get("class")),
            _count(c.get("support")),
            _percent(c.get("precision")),
            _percent(c.get("recall")),
            _number(c.get("f1"), "{:.4f}"),
            _confused_with(cm[i] if i < len(cm) else [], i),
        ]
        rows.append("".join(f"<td>{cell}</td>" for cell in cells))
    return _table("per-class", head, rows, marked=worst)


def _confused_with(row: list, digit: int) -> str:
    """'7 (12 times)': the predicted class this true class is most often mistaken for."""
    mistakes = [(n, j) for j, n in enumerate(row) if j != digit and _finite(n) and n > 0]
    if not mistakes:
        return "none"
    count, other = max(mistakes)
    return f"{other} ({_count(count)} times)"


def _settings(result: dict) -> list[str]:
    """What the run was given (every training variable, as named in the environment), how it
    trained (recipe, precision, batch...), and what its result rests on (data, code, timings)."""
    # metrics.json holds the training section only, which has no secret; a secret's name is
    # dropped anyway, so a page could never show one whatever a future setting carries.
    given = {k: v for k, v in _dict(result.get("inputs")).items() if k not in SECRET_NAMES}
    rests_on = {
        "data source": result.get("data_source"),
        "code version": result.get("code_version"),
        "test set SHA-256": result.get("test_set_sha256"),
        "weights SHA-256": result.get("weights_sha256"),
        "target accuracy": result.get("target_accuracy"),
        "target reached at epoch": result.get("target_reached_epoch"),
        "resumed from epoch": result.get("resumed_from_epoch"),
        **_dict(result.get("timings")),
        **_dict(result.get("conditions")),
    }
    return [
        "<h3>Given</h3>",
        _pairs("given", given),
        "<h3>How it trained</h3>",
        _pairs("trained", _dict(result.get("params"))),
        "<h3>What the result rests on</h3>",
        _pairs("rests-on", rests_on),
    ]


def _pairs(name: str, values: dict) -> str:
    rows = [
        f'<tr><th>{_text(k)}</th><td class="code">{_value(v)}</td></tr>'
        for k, v in sorted(values.items(), key=lambda kv: str(kv[0]))
    ]
    return f'<table class="settings" id="{name}">' + "".join(rows) + "</table>"


def _table(name: str, head: str, rows: list[str], marked: int | None = None) -> str:
    """A table of cells already formatted; row `marked` is highlighted (class "worst")."""
    body = "".join(
        f'<tr class="worst">{row}</tr>' if i == marked else f"<tr>{row}</tr>"
        for i, row in enumerate(rows)
    )
    return f'<table id="{name}"><tr>{head}</tr>{body}</table>'


# --- values, whatever metrics.json holds: numbers checked, text printable and escaped ---


def _text(value: object) -> str:
    cut = "\u2026" if len(str(value)) > WIDTH else ""
    return escape(printable(value, WIDTH)) + cut


def _value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, (dict, list)):
        return _text(json.dumps(value, sort_keys=True, default=str))
    return _text(value)


def _finite(value: object) -> bool:
    """A real number (not a bool, NaN or infinity): what may be formatted as one."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: object, fmt: str) -> str:
    if not _finite(value):
        return "n/a"
    if fmt == "{:d}":
        return str(int(value)) if float(value).is_integer() else "n/a"
    return escape(fmt.format(value))


def _percent(value: object) -> str:
    return _number(value, "{:.2%}")


def _count(value: object) -> str:
    return _number(value, "{:d}")


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}
