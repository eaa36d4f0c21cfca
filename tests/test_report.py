"""report.html: the page itself (pure: escaping, nothing loaded from outside, the figures), and
one real tiny run's page, published in `_SUCCESS` and opened in Debian's headless Chromium over
the DevTools protocol: no console error, no request leaves the page, and the screenshot shows
the headline."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job.runstore.digest import sha256_file
from job.runstore.layout import REPORT
from job.training import report
from tests.support.jobs import train_in_process

PNG = b"\x89PNG\r\n\x1a\n"
HOSTILE = '"><script>alert(1)</script><img src=http://192.0.2.1/x onerror=alert(2)>\x1b[2J\r\n'


def result_of(**fields) -> dict:
    """metrics.json of a small run, as job.training.metrics writes it (the fields the page uses)."""
    cm = np.diag([98, 113, 100, 99, 95, 86, 93, 100, 90, 98])
    cm[9, 4], cm[7, 2], cm[5, 3] = 7, 3, 2  # 9 taken for 4 most: the worst recall
    support = cm.sum(axis=1)
    per_class = [
        {"class": k, "precision": round(cm[k, k] / cm[:, k].sum(), 6),
         "recall": round(cm[k, k] / support[k], 6), "f1": 0.97, "support": int(support[k])}
        for k in range(10)
    ]  # fmt: skip
    result = {
        "run_id": "nightly-7", "dataset": "mnist", "data_source": "/data/mnist",
        "n_train": 60000, "n_test": int(cm.sum()), "epochs": 3, "epochs_completed": 3,
        "test_accuracy": 0.9876, "test_loss": 0.0412, "baseline_error_pct": 1.24,
        "misclassified_count": 12, "per_class": per_class, "confusion_matrix": cm.tolist(),
        "history": [
            {"epoch": e, "loss": 0.3 / e, "accuracy": 0.9 + e / 100, "val_loss": 0.2 / e,
             "val_accuracy": 0.95 + e / 100, "seconds": 4.5}
            for e in (1, 2, 3)
        ],
        "params": {"recipe": "fast", "precision": "float32", "seed": 42},
        "inputs": {"EPOCHS": 3, "RECIPE": "fast", "TRAIN_LIMIT": None, "SEED": 42},
        "timings": {"fit_seconds": 13.5}, "code_version": "1.2.3",
    }  # fmt: skip
    return {**result, **fields}


def pictures() -> dict[str, bytes]:
    return {name: PNG + name.encode() for name in report.PICTURES}


def test_headline_is_the_accuracy_and_the_notebooks_baseline_error_line():
    page = report.render(result_of(), pictures())
    headline = page[page.index('<header id="headline">') : page.index("</header>")]
    assert "98.76%" in headline
    assert "Baseline Error: 1.24%" in headline  # the notebook's line, as `train` prints it
    assert "12 of 984 test digits misclassified" in headline
    assert "<title>98.76% test accuracy: run nightly-7</title>" in page


def test_every_picture_is_embedded_as_the_bytes_given():
    page = report.render(result_of(), pictures())
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(pictures().values())
    missing = report.render(result_of(), {})
    assert "<img" not in missing and "No history picture was written." in missing


def test_per_class_figures_mark_the_worst_digit_and_what_it_is_taken_for():
    page = report.render(result_of(), pictures())
    table = page[page.index('<table id="per-class">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr(?: class=\"worst\")?>(.*?)</tr>", table)
    assert len(rows) == 11  # the heading and 10 digits
    (worst,) = re.findall(r'<tr class="worst">(.*?)</tr>', table)
    assert worst.startswith("<td>9</td><td>105</td>")  # 98 right and 7 taken for a 4
    assert "<td>4 (7 times)</td>" in worst
    assert "<td>none</td>" in rows[1]  # every 0 right


class Tags(HTMLParser):
    """Every element and attribute of a page, and the text of its style sheet."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str]] = []
        self.style, self._in_style = "", False

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.add(tag)
        self.attributes += [(name, value or "") for name, value in attrs]
        self._in_style = tag == "style"

    def handle_data(self, data) -> None:
        if self._in_style:
            self.style += data


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "section", "h1", "h2",
             "h3", "p", "span", "code", "img", "table", "tr", "th", "td"}  # fmt: skip


def test_the_page_loads_nothing_from_outside_and_runs_no_script():
    parsed = Tags()
    parsed.feed(report.render(result_of(run_id=HOSTILE, data_source=HOSTILE), pictures()))
    assert parsed.tags <= PAGE_TAGS  # no script, link, iframe, object, form...
    assert not [name for name, _ in parsed.attributes if name.startswith("on")]
    assert all(v.startswith("data:") for k, v in parsed.attributes if k in ("src", "href"))
    assert "url(" not in parsed.style and "@import" not in parsed.style
    csp = [v for k, v in parsed.attributes if k == "content" and "default-src" in v]
    assert csp == [report.CSP] and "default-src 'none'" in report.CSP


def test_every_value_is_printable_and_escaped():
    hostile = result_of(
        run_id=HOSTILE, dataset=HOSTILE, data_source=HOSTILE, code_version=HOSTILE,
        params={"recipe": HOSTILE, HOSTILE: 1}, inputs={"SEED": [HOSTILE], "RECIPE": HOSTILE},
        history=[{"epoch": HOSTILE, "loss": float("nan")}],
    )  # fmt: skip
    page = report.render(hostile, pictures())
    assert "<script>" not in page and "<img src=http" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\r" not in page
    # Each shown value is one line of printable text.
    assert all(line.isprintable() for line in page.splitlines())


def test_a_long_value_is_cut_and_marked():
    page = report.render(result_of(data_source="x" * 50_000), pictures())
    assert "x" * report.WIDTH + "\u2026" in page and "x" * (report.WIDTH + 1) not in page


def test_no_secret_name_reaches_the_page():
    leaky = result_of(inputs={"EPOCHS": 3, "COS_SECRET_ACCESS_KEY": "hunter2-secret"})
    page = report.render(leaky, pictures())
    assert "hunter2-secret" not in page and "COS_SECRET_ACCESS_KEY" not in page
    assert "EPOCHS" in page


@pytest.mark.parametrize(
    "broken",
    [{}, {"test_accuracy": "high", "per_class": "all", "confusion_matrix": [[1, "x"], None]},
     {"history": [None, 3, {"epoch": 1.5}], "inputs": [1], "params": None,
      "baseline_error_pct": float("inf"), "n_test": True}],
)  # fmt: skip
def test_missing_or_wrongly_typed_fields_still_render(broken):
    page = report.render(broken, {})
    assert "Baseline Error: n/a" in page and page.endswith("</html>\n")


# --- one real tiny run: its published page, in a real browser ---


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    settings = {"RUN_ID": "report-run", "TRAIN_LIMIT": "1000", "TEST_LIMIT": "300",
                "EPOCHS": "2", "BATCH_SIZE": "128"}  # fmt: skip
    _, folder = train_in_process(tmp, mnist_dir, **settings)
    return folder


@pytest.mark.slow
def test_each_run_publishes_its_report_listed_in_success(run_dir):
    manifest = json.loads((run_dir / "_SUCCESS").read_text())
    (listed,) = [f for f in manifest["files"] if f["path"] == REPORT]
    page_file = run_dir / REPORT
    assert listed["sha256"] == sha256_file(page_file)
    page = page_file.read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"Baseline Error: {metrics['baseline_error_pct']:.2f}%" in page
    # The page embeds the very pictures published beside it.
    embedded = {base64.b64decode(e) for e in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)}
    assert embedded == {p.read_bytes() for p in (run_dir / "images").glob("*.png")}
    assert len(embedded) == len(report.PICTURES)


def above_9(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    no port, nothing another process could reach), with a fresh profile. Messages are JSON,
    each ended by a NUL byte; events of the page are kept in `events`."""

    def __init__(self, profile: Path) -> None:
        browser = shutil.which("chromium")
        if browser is None:
            pytest.fail("Debian's chromium is missing: `apt-get install chromium` (.ci/run does)")
        self._log = profile.parent / "chromium.log"  # its stderr, shown when it goes away
        # Both of the browser's ends above fd 9, so placing them on 3 and 4 clobbers neither.
        to_browser, self._write = (above_9(fd) for fd in os.pipe())
        self._read, from_browser = (above_9(fd) for fd in os.pipe())
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--disable-dev-shm-usage", "--hide-scrollbars",
        ]  # fmt: skip
        # Chromium reads commands on fd 3 and writes answers on fd 4.
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser}', "-", browser, *flags],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=self._log.open("wb"),
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session = None

    def send(self, method: str, **params) -> dict:
        """One command; its result, the events that came before it kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        while True:
            message = self._receive()
            if "method" in message:
                self.events.append(message)
                if message["method"] == event:
                    return message

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            assert chunk, f"chromium went away: {self._log.read_text(errors='replace')[-3000:]}"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, width: int, height: int) -> None:
        """A new page of width x height CSS pixels at scale 1, `url` loaded."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)[
            "result"
        ].get("value")

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (a refused load, a
        policy violation) of the page so far."""
        found = []
        for e in self.events:
            method, params = e["method"], e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(json.dumps(params["args"])[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def requests(self) -> list[str]:
        """Every URL the page asked for (data: URIs are not requests to anything)."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
            and not e["params"]["request"]["url"].startswith("data:")
        ]

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        finally:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._read)
            os.close(self._write)


@pytest.fixture
def chromium(tmp_path):
    browser = DevTools(tmp_path / "profile")
    yield browser
    browser.close()


HEADLINE_BOX = """JSON.stringify((() => {
  const r = document.getElementById("headline").getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height,
          text: document.getElementById("headline").innerText,
          images: [...document.images].map(i => i.complete && i.naturalWidth > 0)};
})())"""


@pytest.mark.slow
def test_report_renders_in_chromium_with_the_headline_shown(run_dir, chromium, tmp_path):
    page = run_dir / REPORT
    chromium.open(page.as_uri(), 1100, 900)
    state = json.loads(chromium.evaluate(HEADLINE_BOX))
    assert chromium.errors() == []
    assert chromium.requests() == [page.as_uri()]  # the page itself, and nothing else
    assert state["images"] == [True] * len(report.PICTURES)  # every embedded picture decoded
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"Baseline Error: {metrics['baseline_error_pct']:.2f}%" in state["text"]
    assert f"{metrics['test_accuracy']:.2%}" in state["text"]

    # The headline is what is drawn in its box: the page with it hidden (same layout) differs
    # there, in many pixels, and nowhere else.
    shown = chromium.screenshot()
    shown.save(tmp_path / "report-screenshot.png")
    chromium.evaluate('document.getElementById("headline").style.visibility = "hidden"')
    hidden = chromium.screenshot()
    left, top = math.floor(state["x"]), math.floor(state["y"])  # every pixel it touches
    box = (
        left,
        top,
        math.ceil(state["x"] + state["width"]),
        math.ceil(state["y"] + state["height"]),
    )
    assert box[1] < 100 and state["height"] > 40, f"the headline is not at the top: {box}"
    changed = np.any(np.asarray(shown) != np.asarray(hidden), axis=2)
    inside = changed[box[1] : box[3], box[0] : box[2]]
    assert inside.mean() > 0.02, f"only {inside.sum()} pixels of the headline drawn"
    changed[box[1] : box[3], box[0] : box[2]] = False
    assert not changed.any(), "hiding the headline changed the page elsewhere"


@pytest.mark.slow
def test_the_browser_check_sees_an_error_when_there_is_one(run_dir, chromium, tmp_path):
    """The checks above can fail: the same page with a picture from the network shows the
    policy's refusal as a console error, and the attempt among the page's requests."""
    page = (run_dir / REPORT).read_text(encoding="utf-8")
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("</body>", '<img src="http://192.0.2.1/x.png"></body>'))
    chromium.open(bad.as_uri(), 1100, 900)
    errors = chromium.errors()
    assert errors and "192.0.2.1" in " ".join(errors), errors
    assert chromium.requests() == [bad.as_uri(), "http://192.0.2.1/x.png"]
