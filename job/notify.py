"""Notifications: one JSON POST to NOTIFY_URL when a `train` attempt ends, so that a person hears
of a nightly run without watching it.

Who tells what: only `train`, and in a multi-worker run only the chief (the run's one voice, as
for publication); one POST per attempt's end: `succeeded`, `failed` or `preempted` (a stop
request: exit 143 or 130). The rerun of a run that had already succeeded tells nothing: it
changes nothing. A cancelled run is stopped by the same signal as a preempted one, and `cancel`
writes `_CANCELLED` only after the process has let go of the run, so the job tells `preempted`:
it cannot know more. Nothing is told where the process never reaches its end: an OOM kill,
SIGKILL, a pod never scheduled, a configuration that does not load (NOTIFY_URL is part of it),
and the multi-worker watchdog's abort, which ends the process at once (job.errors.end_process).

What it says: `text`, one line that Slack's and Teams' incoming webhooks show as it is, and the
same facts as fields (`event`, `run_id`, `exit_code`, ...). Every string is scrubbed of the
configuration's secrets as the logs are (job.logs.scrub), and of the webhook URL's own path and
query, which are its credential.

What it costs: never the exit code, and at most BUDGET_SECONDS of the end. The POST (and the
one store read the message needs) runs in a daemon thread that the process waits for no longer
than that, whatever the other side does: a server that accepts and never answers, one that
trickles its answer, a DNS lookup that hangs (no socket timeout covers it). Within the budget,
up to ATTEMPTS tries, each with a timeout from what is left; a refusal that a retry cannot
change (a 4xx, a redirect) ends them. The outcome is one event, `notified` or `notify_failed`,
with the seconds it took; the URL never appears.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from job import errors, logs
from job.config import Config
from job.errors import EXIT_CLASSES, Preempted, classify
from job.runstore import layout
from job.runstore.layout import SUCCESS
from job.runstore.reader import RunReader
from job.runstore.store import Store

BUDGET_SECONDS = 5.0  # the most a notification adds to the end of an attempt, all tries included
ATTEMPTS = 3
BACKOFF_SECONDS = 0.25  # before the second try; doubled before each next one
NAME = "mnist-job"
# Worth another try: the server's trouble of the moment, not a refusal of this request.
RETRIED_STATUSES = {408, 425, 429}


@dataclass(frozen=True)
class Delivery:
    """What became of one notification, as far as it got."""

    attempts: int = 0
    status: int | None = None  # the last HTTP status
    error: str | None = None  # the last failure, described without the URL
    delivered: bool = False


class Attempt:
    """This training attempt, for its one notification: create it first thing in `train`, then
    call `before_training` once the store is open and exactly one of `succeeded` or `ended`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # The chief tells for the whole run; the other workers would only repeat it.
        self.wanted = bool(cfg.notify_url) and cfg.is_chief
        self.log = logs.get("job.notify")

    def before_training(self, store: Store) -> None:
        """A run that has already succeeded is only read back (job.training.train): its rerun
        tells nothing. Best effort: if the store cannot say, the run's own steps meet the same
        store and end the attempt with its error, which is then told."""
        if not self.wanted:
            return
        try:
            finished = RunReader(store, self.cfg.run_id).exists(SUCCESS)
        except Exception as exc:  # never this check's failure instead of the run's own
            self.log.debug("notify_precheck_failed", error=type(exc).__name__)
            return
        if finished:
            self.wanted = False
            self.log.info("notify_skipped", reason="the run had already succeeded")

    def succeeded(self, metrics: dict, store: Store) -> None:
        """`metrics`: what train.run returned (metrics.json); the promotion decision is read
        from the run's status.json, within the budget."""
        cfg = self.cfg
        self._tell("succeeded", lambda: succeeded_message(cfg, metrics, decision(store, cfg)))

    def ended(self, exc: BaseException) -> None:
        """The attempt ends with `exc`: the exit code and error line `errors.report` gives it."""
        event = "preempted" if isinstance(exc, Preempted) else "failed"
        self._tell(event, lambda: ended_message(self.cfg, event, exc))

    def _tell(self, event: str, build: Callable[[], dict]) -> None:
        if not self.wanted:
            return
        self.wanted = False  # one notification per attempt, whatever happens next
        started = time.monotonic()
        secrets = hidden(self.cfg)
        delivery = send(str(self.cfg.notify_url), lambda: scrubbed(build(), secrets))
        seconds = round(time.monotonic() - started, 3)
        if delivery.delivered:
            self.log.info("notified", outcome=event, status=delivery.status,
                          attempts=delivery.attempts, seconds=seconds)  # fmt: skip
        else:
            error = logs.printable(logs.scrub(delivery.error or "unknown", secrets), 300)
            self.log.warning("notify_failed", outcome=event, error=error, status=delivery.status,
                             attempts=delivery.attempts, seconds=seconds)  # fmt: skip


def hidden(cfg: Config) -> list[str]:
    """What no message or event may show: the configuration's secrets (the whole URL among
    them), and the parts of the webhook's URL that are its credential on their own: its path,
    its query, and each long segment or value of them (Slack's token, a Teams signature;
    words such as `services` are shorter)."""
    url = urlsplit(str(cfg.notify_url or ""))
    parts = [url.netloc + url.path, url.path, url.query]
    parts += re.split(r"[/?&=]", f"{url.path}?{url.query}")
    long = [p for p in parts if len(p) >= 2 * logs.MIN_SECRET_LENGTH]
    return [*cfg.secrets(), *long]


def scrubbed(value: object, secrets: list[str]) -> object:
    """`value` with every string in it scrubbed (job.logs.scrub)."""
    if isinstance(value, str):
        return logs.scrub(value, secrets)
    if isinstance(value, dict):
        return {k: scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v, secrets) for v in value]
    return value


# --- the messages ---


def message(cfg: Config, event: str, exit_code: int, summary: str, **fields: object) -> dict:
    """The POST's body: `text` for people, the same facts as fields for machines."""
    location = layout.run_uri(cfg.output_uri, cfg.run_id)
    return {
        "text": f"{NAME} run {cfg.run_id}: {summary}; {location}",
        "event": event,
        "job": NAME,
        "run_id": cfg.run_id,
        "model_name": cfg.model_name,
        "exit_code": exit_code,
        "exit_class": EXIT_CLASSES.get(exit_code, "unknown"),
        "location": location,
        **fields,
    }


def succeeded_message(cfg: Config, metrics: dict, promotion: dict | None) -> dict:
    accuracy, baseline = metrics["test_accuracy"], metrics["baseline_error_pct"]
    epochs = metrics.get("epochs_completed", metrics.get("epochs"))
    summary = (
        f"succeeded, test accuracy {100 * accuracy:.2f}% (baseline error {baseline:.2f}%), "
        f"{epochs} epoch{'' if epochs == 1 else 's'}"
    )
    if promotion is not None:
        shown = {True: "promoted", False: "not promoted"}
        summary += f", {shown.get(promotion['promoted'], 'promotion unknown')}"
    return message(
        cfg, "succeeded", errors.EXIT_OK, summary,
        test_accuracy=accuracy, baseline_error_pct=baseline, epochs=epochs, promotion=promotion,
    )  # fmt: skip


def ended_message(cfg: Config, event: str, exc: BaseException) -> dict:
    """The exit code and the very line `errors.report` prints for `exc`."""
    text, code = classify(exc)
    line = logs.error_line(text, cfg.secrets())
    summary = f"{event}, exit {code} ({EXIT_CLASSES.get(code, 'unknown')}): "
    return message(cfg, event, code, summary + line.removeprefix("error: "), error=line)


def decision(store: Store, cfg: Config) -> dict | None:
    """The champion decision PROMOTE asked for, from the run's status.json (job.training
    .lifecycle records it there); None when PROMOTE is `never`. Read from the store, so
    shown, never trusted."""
    if cfg.promotion.policy == "never":
        return None
    try:
        reader = RunReader(store, cfg.run_id)
        reader.poll_status()
        recorded = (reader.status or {}).get("promotion")
    except Exception as exc:  # the run stands; only the message lacks the decision
        return {"promoted": None, "reason": f"{layout.STATUS} unreadable: {type(exc).__name__}"}
    if not isinstance(recorded, dict):
        return {"promoted": None, "reason": "not recorded"}
    promoted = recorded.get("promoted")
    return {
        "promoted": promoted if isinstance(promoted, bool) else None,
        "reason": logs.printable(recorded.get("reason", ""), 300),
        "champion": logs.printable(recorded.get("champion") or "", 100),  # null: none yet
    }


# --- the POST ---


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure, not a new destination: the body is not sent anywhere else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def send(url: str, build: Callable[[], dict], budget: float = BUDGET_SECONDS) -> Delivery:
    """POST what `build` returns to `url` as JSON, waiting at most `budget` seconds in all (see
    the module docstring); what became of it. Never raises."""
    deadline = time.monotonic() + budget
    box = [Delivery()]  # the thread's progress, readable however far it got
    thread = threading.Thread(
        target=_deliver, args=(url, build, deadline, box), name="notify", daemon=True
    )
    try:
        thread.start()
    except RuntimeError:  # no thread to be had (a process at its limit): the end comes first
        return Delivery(error="no thread to send from")
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():  # left behind: a daemon thread ends with the process
        return replace(box[0], error=f"gave up after {budget:g} s ({box[0].error or 'waiting'})")
    return box[0]


def _deliver(url: str, build: Callable[[], dict], deadline: float, box: list[Delivery]) -> None:
    try:
        body = json.dumps(build(), default=str).encode("utf-8")
    except Exception as exc:  # a bug here must not end the attempt with another error
        box[0] = Delivery(error=f"the message could not be made: {type(exc).__name__}")
        return
    opener = urllib.request.build_opener(_NoRedirects)
    headers = {"Content-Type": "application/json", "User-Agent": NAME}
    for attempt in range(ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        tried = attempt + 1
        box[0] = replace(box[0], attempts=tried)  # counted once begun: it may never end
        try:
            # The socket timeout bounds each wait for a byte, not a whole try: the thread's
            # join is the hard bound. Each try gets its share of what is left.
            with opener.open(request, timeout=left / (ATTEMPTS - attempt)) as response:
                box[0] = Delivery(tried, response.status, None, delivered=True)
                return
        except urllib.error.HTTPError as exc:
            exc.close()
            box[0] = Delivery(tried, exc.code, f"HTTP {exc.code}")
            if exc.code < 500 and exc.code not in RETRIED_STATUSES:
                return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            box[0] = Delivery(tried, None, _described(exc))
        except Exception as exc:  # whatever else: described, not a traceback on stderr
            box[0] = Delivery(tried, None, f"unexpected {type(exc).__name__}")
            return
        if attempt + 1 < ATTEMPTS:
            pause = BACKOFF_SECONDS * 2**attempt
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


def _described(exc: BaseException) -> str:
    """A failure without the URL: urllib's reasons name neither host nor path."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"
