"""The job on a terminal: short plain lines, the model as a table, each epoch once, and the
progress line never sharing a line with a log line; JSON lines unchanged elsewhere. The renderer
is tested as a function; one tiny real training runs under a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import subprocess
import sys

import pytest
import structlog

from job import logs
from tests.support.jobs import job_env

ERASE = "\r\x1b[2K"  # what the console writes to clear the progress line
BAR = re.compile(r"epoch \d+/\d+ \[[=>.]{5,20}\] \d+/\d+")


class Terminal(io.StringIO):
    """stderr that says it is a terminal, and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def logging_to(stream: io.StringIO, log_format: str):
    """The job's logging configured onto `stream` as its stderr; structlog's defaults after."""
    try:
        with contextlib.redirect_stderr(stream):
            logs.configure(log_format)
            yield logs.get("test")
    finally:
        with contextlib.redirect_stderr(io.StringIO()):
            logs.configure("json")  # no terminal left behind for the tests that follow
        structlog.reset_defaults()


def event(name: str, **fields) -> dict:
    return {"event": name, "level": "info", "timestamp": "2026-12-03T07:00:00Z", "run_id": "r1",
            **fields}  # fmt: skip


def test_the_epoch_event_is_one_short_line_in_plain_words():
    fields = dict(epochs=20, epoch=3, loss=0.2567891, accuracy=0.92341, val_loss=0.1234567,
                  val_accuracy=0.96, steps=469, seconds=12.345, train_seconds=11.0,
                  samples_per_second=5454.4)  # fmt: skip
    line = logs.console_line(event("epoch", **fields))
    assert line == (
        "epoch 3/20: accuracy 92.34% (test 96.00%), loss 0.2568 (test 0.1235), 12.3 s, "
        "5,454 digits/s"
    )


def test_jargon_is_said_in_words_and_unknown_events_keep_every_field():
    threads = logs.console_line(event("threads", threads=2, source="affinity mask"))
    assert threads == "using 2 CPU threads (the CPUs this process may run on)"
    capped = logs.console_line(
        event("ema_capped", requested=0.999, used=0.0, steps_per_epoch=2, reason="...")
    )
    assert capped == (
        "no weight averaging (EMA_MOMENTUM=0.999): an epoch of 2 steps is too short to average over"
    )
    warning = logs.console_line(
        {**event("something_new", n_train=256, detail="x"), "level": "warning"}
    )
    assert warning == "warning: something new: training digits 256, detail x"
    # A phrase whose fields are missing falls back to the event's own fields, never a crash.
    assert logs.console_line(event("epoch", epoch=1)) == "epoch: epoch 1"


def test_text_from_outside_is_made_printable_on_the_console():
    line = logs.console_line(event("lease_lost", reason="taken\r\nepoch 9/9: accuracy 100%\x1b[2K"))
    assert "\r" not in line and "\n" not in line and "\x1b" not in line


def test_the_model_is_a_layer_table_on_the_console_and_unchanged_in_json():
    from job.training.model import build_model, layer_table

    model = build_model()
    table = layer_table(model)
    # JSON keeps the `layers` field as it always was: one string per layer.
    assert table.lines() == [
        f"{layer.name} {type(layer).__name__} {tuple(layer.output.shape)} {layer.count_params()}"
        for layer in model.layers
    ]
    fields = dict(params=model.count_params(), layers=table, recipe="seed", precision="float32",
                  strategy="default", worker=None, batch_size=128, learning_rate=0.001, replicas=1,
                  steps_per_epoch=469, steps_per_execution=1, ema_momentum=0.0)  # fmt: skip
    lines = logs.console_line(event("model", **fields)).splitlines()
    assert lines[0] == (
        "the model: 693,962 parameters, float32; recipe seed: batch 128, learning rate 0.001, "
        "469 steps an epoch"
    )
    assert lines[1].split() == ["layer", "type", "output", "shape", "parameters"]
    conv = model.layers[1].name  # conv2d, or conv2d_N after other models in this process
    assert lines[3].split() == [conv, "Conv2D", "(None,", "26,", "26,", "32)", "320"]
    assert lines[-1].split() == ["total", "693,962"]
    assert len(lines) == 1 + 1 + len(model.layers) + 1
    assert len({len(line) for line in lines[1:]}) == 1, "the parameters right-aligned"

    err = io.StringIO()
    with logging_to(err, "json") as log:
        log.info("model", **fields)
    (record,) = [json.loads(line) for line in err.getvalue().splitlines()]
    assert record["layers"] == table.lines() and record["params"] == 693962


def test_a_log_line_erases_the_progress_line_and_pipes_get_no_progress():
    screen = Terminal()
    with logging_to(screen, "auto") as log:
        assert logs.shows_progress()
        with logs.progress_line():
            logs.progress("epoch 1/2 [=====>..............] 5/20")
            log.info("threads", threads=2, source="cgroup quota")
            logs.progress("epoch 1/2 [==========>.........] 10/20")
    assert screen.getvalue() == (
        f"{ERASE}epoch 1/2 [=====>..............] 5/20"
        f"{ERASE}using 2 CPU threads (the container's CPU limit)\n"
        f"{ERASE}epoch 1/2 [==========>.........] 10/20{ERASE}"
    )
    pipe = io.StringIO()
    with logging_to(pipe, "console") as log:
        assert not logs.shows_progress()
        logs.progress("epoch 1/2 [=====>..............] 5/20")
        log.info("threads", threads=2, source="THREADS")
    assert pipe.getvalue() == "using 2 CPU threads (set by THREADS)\n"


def test_the_progress_text_says_where_the_epoch_is():
    text = logs.progress_text(2, 5, 3, 12, 1.2, {"loss": 0.5, "accuracy": 0.8125})
    assert BAR.search(text)
    assert text == "epoch 2/5 [=====>..............] 3/12  4 s left  loss 0.5000  accuracy 81.25%"
    assert logs.progress_text(1, 1, 12, 12, 6.0, {}).startswith("epoch 1/1 [" + "=" * 20 + "]")
    # A long line on a narrow terminal: the bar narrows, the figures stay.
    values = {"loss": 0.0312, "accuracy": 0.9912}
    long = logs.progress_text(20, 20, 200, 469, 30.0, values, width=79)
    assert long == "epoch 20/20 [======>.........] 200/469  40 s left  loss 0.0312  accuracy 99.12%"
    testing = logs.progress_text(20, 20, 469, 469, 30.0, values, testing=True, width=79)
    assert testing.endswith("] 469/469  testing  loss 0.0312  accuracy 99.12%")
    assert len(long) == len(testing) == 79


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows for `raw`: carriage returns, line erases and newlines applied."""
    lines, line, col = [], [], 0
    for token in re.findall(r"\x1b\[2K|\r|\n|[^\r\n\x1b]", raw):
        if token == "\r":
            col = 0
        elif token == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif token == "\x1b[2K":
            line = [" "] * col
        else:
            line[col : col + 1] = [token]
            col += 1
    return [*lines, "".join(line).rstrip()]


@pytest.mark.slow
def test_a_real_terminal_shows_each_epoch_once_and_no_line_starts_inside_the_progress_line(
    tmp_path, mnist_dir
):
    env = job_env(
        LOG_FORMAT="auto", RUN_ID="tty-run", TRAIN_LIMIT="256", TEST_LIMIT="128", EPOCHS="2",
        RECIPE="seed", DATA_URI=str(mnist_dir), OUTPUT_URI=str(tmp_path / "out"),
    )  # fmt: skip
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "train"],
        env=env, cwd=tmp_path, stdin=follower, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the job has exited and closed the terminal
        while chunk := os.read(leader, 65536):
            chunks.append(chunk)
    os.close(leader)
    raw = b"".join(chunks).decode()
    assert proc.wait() == 0, raw[-3000:]

    # Every progress line drawn is followed by an erase: nothing is written after it on its line.
    drawn = list(re.finditer(re.escape(ERASE) + r"(epoch \d/2 \[[^\r\n\x1b]*)", raw))
    assert {m.group(1)[:9] for m in drawn} == {"epoch 1/2", "epoch 2/2"}
    assert all(raw.startswith(ERASE, m.end()) for m in drawn), [
        raw[m.start() : m.end() + 40] for m in drawn if not raw.startswith(ERASE, m.end())
    ]
    shown = screen_lines(raw)
    # No line on the screen holds a progress line and anything else; Keras's bar is not there.
    assert not [s for s in shown if BAR.search(s)], "the progress line is erased at the end"
    assert not [s for s in shown if "━" in s or "step -" in s or s.startswith("Epoch ")]
    epochs = [s for s in shown if re.match(r"epoch \d/2: accuracy \d+\.\d\d% \(test ", s)]
    assert [s[:9] for s in epochs] == ["epoch 1/2", "epoch 2/2"], shown
    metrics = json.loads((tmp_path / "out" / "tty-run" / "metrics.json").read_text())
    for line, entry in zip(epochs, metrics["history"], strict=True):
        assert f"(test {entry['val_accuracy']:.2%})" in line
    assert [s for s in shown if "test " in s and "accuracy" in s] == epochs, "each epoch once"
    assert any(s.split()[:1] == ["total"] and s.endswith("693,962") for s in shown)
    assert "using " in raw and "affinity mask" not in raw and "ema_capped" not in raw
    assert f"Baseline Error: {metrics['baseline_error_pct']:.2f}%" in shown
    assert not [s for s in shown if s.startswith("{")], "no JSON on a terminal"
