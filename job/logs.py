"""Structured logging: JSON lines in containers and pipes, readable console output on a terminal.

Every event carries `run_id` once `bind_run` is called. TensorFlow's native chatter is kept
out of the logs (see `import_tensorflow_quietly`). On the console an event is one short line in
plain words (`PHRASES`), and training draws its progress line in place below the log lines
(`progress`): a log line first erases it, so the two never share a line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import sys
import threading
import urllib.parse
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def use_json(log_format: str, stream=None) -> bool:
    stream = stream or sys.stderr
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


# The last events, for the reason written into _FAILURE.
_recent: deque[str] = deque(maxlen=20)
REDACTED = "***"
# A secret at least this long is scrubbed wherever it appears; a shorter one (a development
# server's `test`) only where it stands as a whole token, or a one-character secret would
# garble every line. Shorter secrets are accepted with a warning (job.cli).
MIN_SECRET_LENGTH = 8


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by ***; longest first, so a secret that
    contains another is replaced whole."""
    for secret in sorted(set(secrets) | _quoted_forms(tuple(secrets)), key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, REDACTED)
        elif secret:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", REDACTED, text)
    return text


@functools.lru_cache(maxsize=16)  # scrub runs on every log event, with the same few secrets
def _quoted_forms(secrets: tuple[str, ...]) -> frozenset[str]:
    """How a secret looks once a server or library has quoted it: escaped inside JSON (ASCII
    or not) and percent-encoded in a URL or form, where those differ from it."""
    forms = set()
    for secret in secrets:
        if secret:
            forms |= {
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret),
            }
    return frozenset(forms - set(secrets))


def printable(value: object, width: int) -> str:
    """Text read from a store or a platform, fit for a terminal: no escape sequence, no line
    break (a reason holding CR/LF could print a fake result line), cut to `width`. Every
    string shown from a store goes through here."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[: width * 2])[:width]


def error_line(message: str, secrets: list[str]) -> str:
    """The one line an error ends the process with, whatever the exception's text held."""
    return "error: " + printable(scrub(" ".join(message.split()), secrets), 2000)


def _scrubber(secrets: list[str]):
    def scrub_event(logger, method, event: dict) -> dict:
        if not secrets:
            return event
        return {k: scrub(v, secrets) if isinstance(v, str) else v for k, v in event.items()}

    return scrub_event


@dataclass(frozen=True)
class Table:
    """Rows of cells in a log event (the `model` event's layers). In JSON each row is one string,
    its cells joined by spaces; on the console the rows are aligned columns under the event's
    line, with the header and, when given, a footer (a total)."""

    header: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    footer: tuple[object, ...] | None = None

    def lines(self) -> list[str]:
        return [" ".join(map(str, row)) for row in self.rows]

    def text(self) -> list[str]:
        rows = [self.header, *self.rows, *([self.footer] if self.footer else [])]
        cells = [[_cell(c) for c in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.header))]
        numeric = [all(isinstance(row[i], int) for row in self.rows) for i in range(len(widths))]
        return [
            "  " + "  ".join(
                c.rjust(w) if right else c.ljust(w)
                for c, w, right in zip(row, widths, numeric, strict=True)
            ).rstrip()
            for row in cells
        ]  # fmt: skip


def _cell(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else printable(value, 60)


def _tables_as_lines(logger, method, event: dict) -> dict:
    return {k: v.lines() if isinstance(v, Table) else v for k, v in event.items()}


def _remember(logger, method, event: dict) -> dict:
    plain = _tables_as_lines(logger, method, event)
    _recent.append(json.dumps(plain, default=str)[:500])
    return event


def recent() -> list[str]:
    return list(_recent)


# What each event says to a person on the console: a format string over the event's fields, or
# a function of the event. A field the phrase leaves out is only in JSON; an event without a
# phrase (or whose fields do not fit it) is shown as its name and every field, in words.
PHRASES: dict[str, str | Callable[[dict], str]] = {
    "threads": "using {threads} CPU threads ({source})",
    "gpus": "found {count} GPUs (compute capability {compute_capabilities})",
    "no_gpu": "{detail}",
    "run_started": "run {run_id} started; its files go to {location}",
    "run_already_succeeded": "run {run_id} has already succeeded: {location}",
    "data": "{n_train:,} training and {n_test:,} test digits from {source}",
    "model": "the model: {params:,} parameters, {precision}; recipe {recipe}: batch {batch_size}, "
    "learning rate {learning_rate:g}, {steps_per_epoch} steps an epoch",
    "ema_capped": lambda e: (
        f"weight averaging with momentum {e['used']:g} instead of EMA_MOMENTUM="
        f"{e['requested']:g}: it may span at most half an epoch ({e['steps_per_epoch']} steps)"
        if e["used"]
        else f"no weight averaging (EMA_MOMENTUM={e['requested']:g}): an epoch of "
        f"{e['steps_per_epoch']} steps is too short to average over"
    ),
    "resumed": "resuming from the checkpoint after epoch {from_epoch}",
    "checkpoint_discarded": "RESUME=discard: the checkpoint after epoch {epoch} is not used",
    "checkpoint_unusable": "the checkpoint after epoch {epoch} cannot be used: starting afresh",
    "checkpoint_without_random_streams": "the checkpoint holds no random state: {effect}",
    "checkpoint_saved": "checkpoint after epoch {epoch} saved in {seconds:.1f} s",
    "epoch": "epoch {epoch}/{epochs}: accuracy {accuracy:.2%} (test {val_accuracy:.2%}), "
    "loss {loss:.4f} (test {val_loss:.4f}), {seconds:.1f} s, {samples_per_second:,.0f} digits/s",
    "evaluated": "scored on the test set: loss {test_loss:.4f}",
    "run_published": "published {files} files to {location}",
    "champion_decision": lambda e: (
        f"model {e['model_name']}: {e['run']} "
        f"{'is the champion now' if e['promoted'] == 'yes' else 'not promoted'} ({e['reason']})"
    ),
    "preempted": "stopped by {signal}; the same RUN_ID resumes from the last checkpoint",
    "run_not_ours": "another process wrote this run, so this one leaves it: {error}",
    "checkpoints_not_cleared": "the run stands, but its checkpoints were not deleted: {error}",
    "after_publication": "the run was published, then {state}: {reason}",
    "cannot_record_end": "could not record that the run {state}: {error}",
    "status_unreadable": "the run's status could not be read: {error}",
    "promotion_failed": "no champion decision for model {model_name}: {error}",
    "lease_taken_over": "took this run over from {previous} (process {pid}), whose claim had "
    "lapsed",
    "lease_lost": "another process has taken this run over: {reason}",
    "lease_not_renewed": "could not renew the claim on this run (trying again): {error}",
    "lease_not_released": "could not release the claim on this run: {error}",
    "conditional_writes_ignored": "{store} ignores conditional writes: {consequence}",
    "short_secret": "{variable} is short: {note}",
    "misspelled_variable": "{where}: {name} is not a variable: did you mean {did_you_mean}?",
    "unknown_variable": "{where}: {name} is {note}",
    "notified": "NOTIFY_URL told: {outcome} (HTTP {status})",
    "notify_failed": "NOTIFY_URL not told ({outcome}): {error}",
    "notify_skipped": "NOTIFY_URL not told: {reason}",
    "library_log": "{logger}: {message}",
    "library_warning": "{category}: {message}",
    "platform_unreachable": "the platform cannot be reached: {error}",
}
# An event's field values that mean nothing to a person, in words: {event: {field: {value: words}}}.
WORDS = {
    "threads": {
        "source": {
            "affinity mask": "the CPUs this process may run on",
            "cgroup quota": "the container's CPU limit",
            "THREADS": "set by THREADS",
        }
    }
}
# Field names for the events without a phrase.
FIELD_WORDS = {
    "n_train": "training digits",
    "n_test": "test digits",
    "val_accuracy": "test accuracy",
    "val_loss": "test loss",
    "pid": "process",
}
# The fields every event has, shown by other means or not at all on the console.
_UNSAID = ("event", "level", "timestamp", "run_id", "exception")


def console_line(event: dict) -> str:
    """An event as a person reads it: one short line in plain words (text read from a store or
    the environment made printable), then any table or traceback it carries."""
    name = str(event.get("event"))
    shown = {k: _said(v) for k, v in event.items()}
    for field, words in WORDS.get(name, {}).items():
        if field in shown:
            shown[field] = words.get(shown[field], shown[field])
    phrase = PHRASES.get(name)
    try:
        if phrase is None:
            raise KeyError(event.get("event"))
        line = phrase(shown) if callable(phrase) else phrase.format_map(shown)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        line = _generic(shown)
    level = event.get("level", "info")
    lines = [line if level == "info" else f"{level}: {line}"]
    for value in event.values():
        if isinstance(value, Table):
            lines += value.text()
    if event.get("exception"):
        lines += [printable(s, 300) for s in str(event["exception"]).splitlines()]
    return "\n".join(lines)


def _said(value: object) -> object:
    """A field's value ready for a phrase: numbers as they are (phrases format them), anything
    else as bounded printable text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, Table)):
        return value
    if isinstance(value, (list, tuple)):
        return printable(", ".join(str(v) for v in value), 300)
    if value is None:
        return "none"
    return printable(value, 300)


def _generic(shown: dict) -> str:
    name = printable(shown.get("event", "event"), 60).replace("_", " ")
    fields = [
        f"{FIELD_WORDS.get(k, k.replace('_', ' '))} {v}"
        for k, v in shown.items()
        if k not in _UNSAID and not isinstance(v, Table)
    ]
    return f"{name}: {', '.join(fields)}" if fields else name


def _console_renderer(logger, method, event: dict) -> str:
    return console_line(event)


class _Terminal:
    """stderr as a person sees it: log lines and, below them, at most one progress line redrawn
    in place. One lock for both, so a log line from another thread (the lease's heartbeat)
    never lands inside the progress line: it erases that line and takes its place."""

    ERASE = "\r\x1b[2K"  # to the line's start, and clear it

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stream = sys.stderr
        self.progress = False  # progress lines are drawn (console logs on a terminal)
        self.drawn = False  # one is on the screen now

    def print(self, message: str) -> None:
        with self.lock:
            if self.drawn:
                self.stream.write(self.ERASE)
                self.drawn = False
            print(message, file=self.stream, flush=True)

    def draw(self, text: str) -> None:
        if not self.progress:
            return
        with self.lock:
            self.stream.write(self.ERASE + printable(text, self.width()))
            self.stream.flush()
            self.drawn = True

    @staticmethod
    def width() -> int:
        return shutil.get_terminal_size().columns - 1  # a wrapped line could not be erased

    def erase(self) -> None:
        with self.lock:
            if self.drawn:
                self.stream.write(self.ERASE)
                self.stream.flush()
                self.drawn = False


_terminal = _Terminal()


class _ConsoleLogger:
    """structlog's logger for the console: each line through `_terminal`."""

    def msg(self, message: str) -> None:
        _terminal.print(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def shows_progress() -> bool:
    """Whether training should draw a progress line: console logs on a terminal."""
    return _terminal.progress


def progress(text: str) -> None:
    """Draw `text` as the progress line, in place of the previous one (on a terminal only),
    cut to the terminal's width (`progress_width`)."""
    _terminal.draw(text)


def progress_width() -> int:
    return _terminal.width()


@contextlib.contextmanager
def progress_line() -> Iterator[None]:
    """Meanwhile a progress line may be drawn; it is erased however the block ends, so what is
    printed next (the result, an error line) starts on a clean line."""
    try:
        yield
    finally:
        _terminal.erase()


def progress_text(
    epoch: int,
    epochs: int,
    done: int,
    steps: int,
    seconds: float,
    values: dict[str, float],
    *,
    testing: bool = False,
    width: int = 79,
) -> str:
    """The line of an epoch in progress: where it is, the time left (or that the epoch's test
    pass runs), the running figures; the bar narrows to keep the line within `width`."""
    left = seconds / done * (steps - done) if done else 0.0
    parts = ["testing" if testing else f"{left:.0f} s left"]
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "accuracy" in values:
        parts.append(f"accuracy {values['accuracy']:.2%}")
    head, tail = f"epoch {epoch}/{epochs}", f"{done}/{steps}  " + "  ".join(parts)
    size = max(5, min(20, width - len(head) - len(tail) - 4))  # 4: brackets and spaces
    filled = size * min(done, steps) // max(steps, 1)
    bar = "=" * filled + (">" if filled < size else "") + "." * (size - 1 - filled)
    return f"{head} [{bar}] {tail}"


def configure(log_format: str = "auto", level: str = "info", secrets: list[str] = ()) -> None:
    """Set up structlog for this process; logs go to stderr so stdout stays for results.

    Secret values are scrubbed from every event as a last line of defence: nothing is meant to
    log them in the first place. JSON lines stay exactly as they were before the console's
    phrases: machines read them."""
    as_json = use_json(log_format)
    _terminal.stream = sys.stderr
    _terminal.progress = not as_json and sys.stderr.isatty()
    _terminal.drawn = False
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrubber(list(secrets)),
            _remember,
            *([_tables_as_lines, structlog.processors.JSONRenderer()] if as_json else []),
            *([] if as_json else [_console_renderer]),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr)
        if as_json
        else lambda *args: _ConsoleLogger(),
        cache_logger_on_first_use=False,
    )


def bind_run(run_id: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)


def import_tensorflow_quietly(level: str = "info") -> None:
    """Import TensorFlow without its native start-up chatter unless debugging.

    TF_CPP_MIN_LOG_LEVEL no longer silences the absl lines TensorFlow prints while loading its
    native libraries (tensorflow/tensorflow#100442), so file descriptor 2 points at /dev/null for
    the import alone. Python-level import errors still surface as exceptions.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with native_output_silenced(level):
        import tensorflow  # noqa: F401


class _Forward(logging.Handler):
    """A library's log records as the job's debug events, one bounded line each."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger().debug(
            "library_log", logger=record.name, message=printable(record.getMessage(), 500)
        )


@contextlib.contextmanager
def library_chatter(*loggers: str) -> Iterator[None]:
    """Meanwhile, what the named libraries log and warn becomes the job's own events instead of
    raw prose on stderr (which holds JSON lines in a container): their log records at debug
    (the WML clients log each refusal they then raise, which the job reports once as its error
    line), their warnings at warning (a deprecation at debug)."""
    handler = _Forward()
    saved = [(logger, logger.propagate) for logger in map(logging.getLogger, loggers)]
    for logger, _ in saved:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
        log = structlog.get_logger()
        for warning in caught:
            level = log.debug if issubclass(warning.category, DeprecationWarning) else log.warning
            level("library_warning", category=warning.category.__name__,
                  message=printable(warning.message, 500))  # fmt: skip


@contextlib.contextmanager
def native_output_silenced(level: str = "info") -> Iterator[None]:
    """File descriptor 2 on /dev/null meanwhile (not when debugging): for native calls whose
    lines are not log records, such as the CUDA build's `failed call to cuInit` on a host with
    no GPU, which the job reports once as its own `no_gpu` event instead."""
    if level == "debug":
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def get(name: str | None = None):
    return structlog.get_logger(name)
