"""NOTIFY_URL: one POST per `train` attempt's end, to a real HTTP server on 127.0.0.1 (job.notify).

What a person reads (`text`) and what a machine reads (the fields); no secret in either, nor in
the logs; a server that hangs, trickles or fails costs at most the budget and never the exit
code (judged by the job's own `seconds` in its `notify_failed` event); reruns of a finished run
and workers other than the chief tell nothing; the setting is a secret, checked at start.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from job import config, notify
from job.errors import EXIT_CONFIG, EXIT_PREEMPTED, ConfigError, DataError, Preempted
from job.logs import REDACTED
from job.runstore.local import LocalStore
from tests.support.jobs import cli, job_env, run_job

# Distinctive, so every output can be searched for them: the webhook's credential (its path, as
# Slack's) and the COS keys, which every failure message could drag along.
TOKEN = "XWEBHOOKTOKENq1w2e3r4t5y6u7"
COS_KEY_ID = "CANARYKEYIDa1s2d3f4g5"
COS_SECRET = "CANARYSECRETz1x2c3v4b5n6"


class Hook:
    """A webhook on 127.0.0.1 that records every POST and answers as `mode` says: ok (200),
    an HTTP status (500, 404), `redirect` (302), `hang` (reads the request, never answers) or
    `trickle` (a byte of its status line at a time, never finishing)."""

    def __init__(self, mode: str | int = "ok") -> None:
        self.mode = mode
        self.requests: list[dict] = []
        self.release = threading.Event()  # set on close: the hanging handlers end
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if hook.mode == "hang":
                    hook.release.wait()
                elif hook.mode == "trickle":
                    for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                        if hook.release.wait(0.2):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                elif hook.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    status = 200 if hook.mode == "ok" else int(hook.mode)
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # the test's output stays its own
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/T0001/B0002/{TOKEN}"

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook(request):
    """A Hook; parametrize indirectly with its mode (default ok)."""
    server = Hook(getattr(request, "param", "ok"))
    yield server
    server.close()


def events(stderr: str) -> list[dict]:
    """The JSON log events on stderr (the error line is not one)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def the_event(stderr: str, name: str) -> dict:
    (event,) = [e for e in events(stderr) if e["event"] == name]
    return event


def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in (TOKEN, COS_KEY_ID, COS_SECRET):
            assert secret not in text


def failing_env(tmp_path: Path, url: str) -> dict[str, str]:
    """`train` that fails in its first second, before TensorFlow: WORK_DIR is not there."""
    return job_env(
        OUTPUT_URI=str(tmp_path / "out"), WORK_DIR=str(tmp_path / "nowhere"), RUN_ID="fail-1",
        NOTIFY_URL=url, COS_ACCESS_KEY_ID=COS_KEY_ID, COS_SECRET_ACCESS_KEY=COS_SECRET,
    )  # fmt: skip


def cfg_for(url: str, tmp_path: Path, **env: str) -> config.Config:
    return config.from_env(
        {"NOTIFY_URL": url, "OUTPUT_URI": str(tmp_path / "out"), "RUN_ID": "r-1",
         "COS_ACCESS_KEY_ID": COS_KEY_ID, "COS_SECRET_ACCESS_KEY": COS_SECRET, **env}
    )  # fmt: skip


# --- the setting ---


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T0001/B0002/" + TOKEN,
        "https://acme.webhook.office.com/webhookb2/a1b2@c3d4/IncomingWebhook/e5f6/a7b8",
        "https://prod-01.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke"
        "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=" + TOKEN,
        "http://127.0.0.1:8080/hook",
        "http://[::1]:9000/hook",
    ],
)
def test_an_http_or_https_webhook_is_accepted(url):
    assert config.from_env({"NOTIFY_URL": url}).notify_url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/" + TOKEN,
        "hooks.example.com/" + TOKEN,
        "https:///" + TOKEN,
        "https://user:" + TOKEN + "@hooks.example.com/x",
        "https://hooks.example.com:99999/" + TOKEN,
        "https://hooks.example.com/" + TOKEN + "/<script>",
        "file:///etc/" + TOKEN,
    ],
)
def test_a_bad_webhook_is_exit_78_naming_the_variable_never_the_value(url):
    with pytest.raises(ConfigError) as err:
        config.from_env({"NOTIFY_URL": url})
    assert err.value.variable == "NOTIFY_URL" and err.value.exit_code == EXIT_CONFIG
    assert err.value.value == REDACTED and TOKEN not in str(err.value)


def test_a_bad_webhook_ends_train_with_78_at_start(tmp_path):
    proc = run_job("train", env=failing_env(tmp_path, "ftp://x.example/" + TOKEN), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        "error: NOTIFY_URL='***' is invalid: expected an http:// or https:// URL with a host"
    )
    shown = cli("config", env=job_env(NOTIFY_URL="https://x.example/" + TOKEN), cwd=tmp_path)
    assert json.loads(shown.stdout)["notify_url"] == REDACTED and TOKEN not in shown.stdout


def test_the_webhook_is_a_secret_read_from_a_file_or_from_an_optional_secret(tmp_path):
    url = "https://hooks.slack.com/services/T0001/B0002/" + TOKEN
    (tmp_path / "url").write_text(url + "\n")
    cfg = config.load({"NOTIFY_URL_FILE": str(tmp_path / "url")})
    assert cfg.notify_url == url and url in cfg.secrets()
    assert cfg.redacted()["notify_url"] == REDACTED and TOKEN not in repr(cfg)
    # Kubernetes mounts an optional Secret that does not exist as an empty folder: no webhook.
    assert config.load({"NOTIFY_URL_FILE": str(tmp_path / "absent" / "url")}).notify_url is None
    (tmp_path / "bad").write_text("ftp://x/" + TOKEN)
    with pytest.raises(ConfigError) as err:
        config.load({"NOTIFY_URL_FILE": str(tmp_path / "bad")})
    assert err.value.variable == "NOTIFY_URL_FILE" and TOKEN not in str(err.value)


# --- what is told, and by whom ---


def test_a_success_says_accuracy_baseline_epochs_promotion_and_where(hook, tmp_path):
    cfg = cfg_for(hook.url, tmp_path, PROMOTE="if-better")
    run = tmp_path / "out" / "r-1"
    run.mkdir(parents=True)
    status = {"run_id": "r-1", "state": "succeeded", "updated_at": "2026-01-01T00:00:00Z",
              "promotion": {"model_name": "mnist", "promoted": True, "reason": "first champion",
                            "champion": "r-1", "sequence": 1}}  # fmt: skip
    (run / "status.json").write_text(json.dumps(status))
    metrics = {"test_accuracy": 0.99123, "baseline_error_pct": 0.877, "epochs": 12,
               "epochs_completed": 12}  # fmt: skip
    notify.Attempt(cfg).succeeded(metrics, LocalStore(tmp_path / "out"))
    (body,) = hook.bodies()
    assert body["text"] == (
        f"mnist-job run r-1: succeeded, test accuracy 99.12% (baseline error 0.88%), 12 epochs, "
        f"promoted; {tmp_path / 'out' / 'r-1'}"
    )
    assert body["event"] == "succeeded" and body["exit_code"] == 0 and body["exit_class"] == "ok"
    assert body["test_accuracy"] == 0.99123 and body["epochs"] == 12
    assert body["promotion"] == {"promoted": True, "reason": "first champion", "champion": "r-1"}
    assert hook.requests[0]["headers"]["Content-Type"] == "application/json"


def test_failure_and_preemption_say_the_exit_class_and_the_error_line_without_secrets(
    hook, tmp_path
):
    cfg = cfg_for(hook.url, tmp_path)
    # A message that drags secrets along: the keys, and the webhook's own token standing alone.
    notify.Attempt(cfg).ended(DataError(f"bad data at {COS_SECRET}/{COS_KEY_ID}/{TOKEN}"))
    notify.Attempt(cfg).ended(Preempted("SIGTERM"))
    notify.Attempt(cfg).ended(Preempted("SIGINT"))
    failed, term, interrupted = hook.bodies()
    no_secret_in(json.dumps(hook.bodies()))
    assert (failed["event"], failed["exit_code"], failed["exit_class"]) == ("failed", 65, "data")
    assert failed["error"] == "error: bad data at ***/***/***"
    assert failed["text"].startswith("mnist-job run r-1: failed, exit 65 (data): bad data at ***")
    assert (term["event"], term["exit_code"], term["exit_class"]) == (
        "preempted", EXIT_PREEMPTED, "preempted",
    )  # fmt: skip
    assert "stopped by SIGTERM" in term["text"] and "stopped by SIGTERM" in term["error"]
    assert (interrupted["exit_code"], interrupted["exit_class"]) == (130, "interrupted")


def test_only_the_chief_tells(hook, tmp_path):
    def worker(index: int) -> config.Config:
        tf_config = {"cluster": {"worker": ["w0:2222", "w1:2222"]},
                     "task": {"type": "worker", "index": index}}  # fmt: skip
        return cfg_for(hook.url, tmp_path, TF_CONFIG=json.dumps(tf_config))

    other = notify.Attempt(worker(1))
    other.ended(DataError("worker 1 failed"))
    other.succeeded({"test_accuracy": 0.9, "baseline_error_pct": 10.0}, LocalStore(tmp_path))
    assert hook.requests == []
    notify.Attempt(worker(0)).ended(DataError("the chief failed"))
    assert [b["error"] for b in hook.bodies()] == ["error: the chief failed"]


def test_one_notification_per_attempt_and_none_without_a_webhook(hook, tmp_path):
    attempt = notify.Attempt(cfg_for(hook.url, tmp_path))
    attempt.ended(DataError("first"))
    attempt.ended(DataError("second"))
    assert len(hook.requests) == 1
    notify.Attempt(config.from_env({"RUN_ID": "r-2"})).ended(DataError("nobody to tell"))
    assert len(hook.requests) == 1


# --- a server that does not help ---


@pytest.mark.parametrize(
    ("hook", "attempts", "status"), [(404, 1, 404), ("redirect", 1, 302)], indirect=["hook"]
)
def test_a_refusal_a_retry_cannot_change_is_tried_once_and_a_redirect_not_followed(
    hook, attempts, status, tmp_path
):
    with capture_logs() as logged:
        notify.Attempt(cfg_for(hook.url, tmp_path)).ended(DataError("x"))
    (failed,) = [e for e in logged if e["event"] == "notify_failed"]
    assert (failed["attempts"], failed["status"]) == (attempts, status)
    assert [r["path"] for r in hook.requests] == [f"/services/T0001/B0002/{TOKEN}"]


@pytest.mark.parametrize("hook", ["trickle"], indirect=True)
def test_a_server_that_trickles_its_answer_costs_at_most_the_budget(hook, tmp_path):
    with capture_logs() as logged:
        notify.Attempt(cfg_for(hook.url, tmp_path)).ended(DataError("x"))
    (failed,) = [e for e in logged if e["event"] == "notify_failed"]
    assert failed["seconds"] <= notify.BUDGET_SECONDS + 0.5
    assert failed["attempts"] == 1 and failed["error"] == "gave up after 5 s (waiting)"
    no_secret_in(json.dumps(logged))


# --- the whole process: `train` ---


def test_a_failed_train_tells_its_exit_code_and_error_line_and_exits_with_it(hook, tmp_path):
    proc = run_job("train", env=failing_env(tmp_path, hook.url), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    error_line = proc.stderr.strip().splitlines()[-1]
    assert error_line.startswith("error: check work_dir failed: WORK_DIR=")
    (body,) = hook.bodies()
    assert (body["event"], body["exit_code"], body["exit_class"]) == ("failed", 78, "config")
    assert body["error"] == error_line, "the very line the process ended with"
    assert body["run_id"] == "fail-1" and "fail-1: failed, exit 78 (config): " in body["text"]
    notified = the_event(proc.stderr, "notified")
    assert (notified["outcome"], notified["status"], notified["attempts"]) == ("failed", 200, 1)
    no_secret_in(hook.requests[0]["body"].decode(), proc.stdout, proc.stderr)


@pytest.mark.parametrize("hook", ["hang", 500], indirect=True)
def test_a_server_that_hangs_or_fails_neither_changes_the_exit_code_nor_delays_the_end(
    hook, tmp_path
):
    """`hang` accepts the connection, reads the request and never answers: every try times
    out within the budget. `500` answers at once, every time: three tries, then it gives up."""
    proc = run_job("train", env=failing_env(tmp_path, hook.url), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip().splitlines()[-1].startswith("error: check work_dir failed")
    failed = the_event(proc.stderr, "notify_failed")
    assert failed["seconds"] <= notify.BUDGET_SECONDS + 0.5, "the end is delayed 5 s at most"
    assert failed["outcome"] == "failed" and len(hook.requests) == failed["attempts"]
    if hook.mode == 500:
        assert (failed["attempts"], failed["status"]) == (notify.ATTEMPTS, 500)
    else:
        assert failed["attempts"] >= 1 and "timed out" in failed["error"]
    no_secret_in(proc.stdout, proc.stderr)


@pytest.mark.slow
def test_a_trained_run_tells_its_success_once_and_its_rerun_tells_nothing(
    hook, tmp_path, mnist_dir
):
    out = tmp_path / "out"
    env = job_env(
        OUTPUT_URI=str(out), DATA_URI=str(mnist_dir), RECIPE="seed", TRAIN_LIMIT="1000",
        TEST_LIMIT="200", EPOCHS="1", BATCH_SIZE="128", PROMOTE="if-better", RUN_ID="told-1",
        NOTIFY_URL=hook.url, COS_ACCESS_KEY_ID=COS_KEY_ID, COS_SECRET_ACCESS_KEY=COS_SECRET,
    )  # fmt: skip
    proc = run_job("train", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "told-1" / "metrics.json").read_text())
    (body,) = hook.bodies()
    accuracy = f"{100 * metrics['test_accuracy']:.2f}%"
    assert body["text"] == (
        f"mnist-job run told-1: succeeded, test accuracy {accuracy} (baseline error "
        f"{metrics['baseline_error_pct']:.2f}%), 1 epoch, not promoted; {out / 'told-1'}"
    )
    assert body["test_accuracy"] == metrics["test_accuracy"] and body["exit_code"] == 0
    # 1,000 training digits: a smoke run, never a candidate; the message says why.
    assert body["promotion"]["promoted"] is False and body["location"] == str(out / "told-1")
    assert "a smoke run" in body["promotion"]["reason"] and body["promotion"]["champion"] == ""
    assert the_event(proc.stderr, "notified")["outcome"] == "succeeded"
    no_secret_in(hook.requests[0]["body"].decode(), proc.stdout, proc.stderr)
    rerun = run_job("train", env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(hook.requests) == 1, "a rerun of a finished run tells nothing"
    assert the_event(rerun.stderr, "notify_skipped")["reason"] == "the run had already succeeded"
