"""A run's lifecycle in the store: claimed, started, heartbeat, published, ended, once each.

`RunLifecycle` holds what this process publishes to (the shared run folder for the chief,
throw-away scratch for other workers), the owner lease, and how the run ended. `claim` takes
the lease (or finds the run finished), `start` writes the start record, `publish` the artifacts
and `_SUCCESS`, `promote` the champion decision PROMOTE asks for, and `end` records a failure,
a preemption or a cancellation exactly once, whoever notices it first: the main thread, or the
multi-worker watchdog through `abort`, which ends the process.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import threading
from pathlib import Path

from job import __version__, logs
from job.config import Config
from job.errors import DataError, JobError, PreconditionFailed, TransientError, end_process
from job.runstore import champion, hold, layout, objects
from job.runstore.layout import HOLD, METRICS, STATUS
from job.runstore.lease import Lease
from job.runstore.local import LocalStore
from job.runstore.publish import RunPublisher, now_iso
from job.runstore.store import Store
from job.training.callbacks import History


def run_record(config: Config) -> dict:
    """The start record: the configuration (redacted), the versions, the host."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "run_id": config.run_id,
        "started_at": now_iso(),
        "config": config.redacted(),
        "host": socket.gethostname(),
        "versions": {
            "job": __version__,
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
    }


class RunLifecycle:
    def __init__(self, config: Config, store: Store, history: History) -> None:
        self.config = config
        self.shared = RunPublisher(store, config.run_id)
        self.publisher = self.shared  # what this process writes to: see `publish_to_scratch`
        self.lease: Lease | None = None
        self.finished = False
        self.log = logs.get("job.train")
        self._final: dict = {}  # status.json's fields once published
        self._end = threading.Lock()
        self._ended = False
        self.history = history  # how far training got, for the end record

    def already_finished(self) -> bool:
        """Whether the run has `_SUCCESS` (then nothing of it changes again)."""
        self.finished = self.shared.succeeded()
        return self.finished

    def publish_to_scratch(self, folder: Path) -> None:
        """Only the chief publishes; the other workers go through the same steps (their
        collectives need them) and write into scratch space that disappears."""
        self.publisher = RunPublisher(LocalStore(folder), self.config.run_id)

    def claim(self) -> bool:
        """Take the run's lease (the chief; other workers write to scratch) and write the start
        record. False when the run turned out to be finished by another process meanwhile."""
        if self.config.is_chief:
            self.lease = Lease(self.shared, self.config.lease_seconds)
            self.lease.acquire()
            self.shared.lease = self.lease
            if self.shared.succeeded():
                self.finished = True
                return False
            self._not_being_pruned()
            self.lease.start()
        self.publisher.adopt()
        self.publisher.start(run_record(self.config))
        return True

    def _not_being_pruned(self) -> None:
        """A retry of an ended run, under its lease: prune may have marked the run for deletion
        just before (it re-checks for a live lease after its mark; this is the other side)."""
        if not self.shared.exists(HOLD):
            return
        try:
            hold.hold(self.shared.store, self.config.run_id)
        except DataError as exc:
            self.lease.release()  # type: ignore[union-attr]
            raise TransientError(f"{exc}; retry once it is gone") from None

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def published_metrics(self) -> dict:
        return self.shared.read_json(METRICS) or {}

    def publish(self, folder: Path, result: dict, headline: dict) -> dict:
        """The artifacts, then `_SUCCESS` (job.runstore.publish); returns the manifest."""
        self._final = {"epoch": result["epochs_completed"], "epochs": result["epochs"]}
        self._final["metrics"] = headline
        return self.publisher.publish(folder, **self._final)

    def promote(self) -> None:
        """After `_SUCCESS`, the champion decision PROMOTE asks for (job.runstore.champion),
        recorded in status.json beside the final figures. A smoke run (TRAIN_LIMIT/TEST_LIMIT
        below the full sets) is refused under every policy, with the reason and what would do
        it (champion.decide); only `promote --force` overrides. The run's own files do not
        change, and a decision that fails (the store, a corrupt champion record) does not undo
        the run: it is logged as `promotion_failed` and recorded as not promoted, with the
        error. A rerun of a finished run whose status holds no decision (the process died in
        between) takes it then: deciding again on the same run is harmless ("already the
        champion", not recorded twice)."""
        promotion, name = self.config.promotion, self.config.model_name
        if promotion.policy == "never" or not self.config.is_chief:
            return
        store, status_key = self.shared.store, self.shared.key(STATUS)
        if self.finished:
            try:
                status, etag = objects.read_if_changed(store, status_key, None, objects.STATUS)
            except JobError as exc:  # the run stands; its heartbeat file is only a record
                self.log.warning("status_unreadable", error=str(exc), action="decide, not record")
                status, etag = None, None
            status = status or {}
            if isinstance(status.get("promotion"), dict):
                return
        try:
            decision = champion.consider(
                store, name, champion.candidate(store, self.config.run_id),
                policy=promotion.policy, margin=promotion.margin,
            ).summary()  # fmt: skip
        except JobError as exc:
            self.log.error("promotion_failed", model_name=name, error=str(exc))
            decision = {"model_name": name, "promoted": False, "reason": f"error: {exc}"}
        if not self.finished:
            self.publisher.status("succeeded", **self._final, promotion=decision)
        elif etag is not None:  # no lease on a finished run: replace only what was read
            with contextlib.suppress(PreconditionFailed):
                store.put_bytes(status_key, layout.to_json({**status, "promotion": decision}),
                                if_match=etag)  # fmt: skip

    def end(self, state: str, reason: str, exit_code: int | None = None) -> None:
        """Record how the run ended, once (a failure with the exit code the process ends
        with). Best effort: the store may be what failed."""
        with self._end:
            if self._ended:
                return
            self._ended = True
            reason = logs.scrub(reason, self.config.secrets())
            if self.publisher.published:
                self.log.warning("after_publication", state=state, reason=reason)
                return  # the run succeeded; what failed afterwards was tidying up
            try:
                if self.lease is not None:
                    self.lease.verify()
                epoch = len(self.history)
                if state == "failed":
                    self.publisher.fail(
                        reason, epoch=epoch, last_log=logs.recent(), exit_code=exit_code
                    )
                else:
                    self.publisher.status(state, reason=reason, epoch=epoch)
            except JobError as exc:  # LostOwnership included: then it is not ours to record
                self.log.error("cannot_record_end", state=state, error=str(exc))

    def abort(self, error: JobError) -> None:
        """End the process from another thread (the watchdog) through the same exit path as the
        main thread: `_FAILURE`, one error line, the error's exit code."""
        self.end("failed", f"{type(error).__name__}: {error}", error.exit_code)
        end_process(error, self.config.secrets())
