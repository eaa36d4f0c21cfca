"""The plumbing of one training run, in one object, so job.train reads like the notebook.

A RunContext holds the run's stores (the shared one, and what this process publishes to: the
same store for the chief, throw-away scratch for other workers), the epoch history, the
checkpointer, the preemption guard, the strategy's scope and a scratch folder. As a context
manager it writes the start record on entry and, on the way out of a failure, `_FAILURE` (or
the `preempted` status) exactly once, whoever notices the failure first: the main thread or
the multi-worker watchdog (`abort`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import tempfile
import threading
from pathlib import Path

from job import __version__, distribute, layout, logs
from job.callbacks import History
from job.checkpoint import Checkpointer
from job.config import Config
from job.errors import ConfigError, JobError
from job.layout import METRICS, STATUS
from job.ownership import Lease, LostOwnership, RunOwned
from job.preemption import Preempted, PreemptionGuard
from job.publish import FinishedElsewhere, RunPublisher, now_iso
from job.store import LocalStore, PreconditionFailed, Store
from job.watchdog import Watchdog


def run_record(config: Config) -> dict:
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


class RunContext:
    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        strategy=None,
        guard: PreemptionGuard | None = None,
        create_strategy: bool = False,
    ) -> None:
        """`create_strategy`: make the tf.distribute strategy from the configuration once the
        run is claimed (the command line; it must precede every other TensorFlow op), under
        the watchdog when there are peers to wait for."""
        self.config = config
        self.strategy = strategy
        self.create_strategy = create_strategy
        self.watchdog: Watchdog | None = None
        self.guard = guard or PreemptionGuard()
        self.shared = RunPublisher(
            store or layout.open_store(config.output_uri, config.storage), config.run_id
        )
        self.publisher = self.shared
        self.lease: Lease | None = None
        self.finished = False
        self._final: dict = {}  # status.json's fields once published
        self.history = History()
        self.log = logs.get("job.train")
        self._stack = contextlib.ExitStack()
        self._end = threading.Lock()
        self._ended = False

    def published_metrics(self) -> dict:
        return self.shared.read_json(METRICS) or {}

    def __enter__(self) -> RunContext:
        """Claim the run (or find it finished: `finished`), make scratch space, write the
        start record."""
        self.finished = self.shared.succeeded()
        if self.finished:
            return self
        try:
            scratch = tempfile.TemporaryDirectory(
                prefix=f"mnist-job-{self.config.run_id}-", dir=self.config.work_dir
            )
        except OSError as exc:
            raise ConfigError(
                "WORK_DIR", self.config.work_dir, f"a writable folder ({exc.strerror})"
            ) from None
        self.scratch = Path(self._stack.enter_context(scratch))
        if not self.config.is_chief:
            # Only the chief publishes; the other workers go through the same steps (their
            # collectives need them) and write into scratch space that disappears.
            self.publisher = RunPublisher(LocalStore(self.scratch / "worker"), self.config.run_id)
        self.checkpointer = Checkpointer(
            self.shared, self.publisher, self.scratch / "checkpoint", self.history
        )
        try:
            if self._claim():
                self.publisher.start(run_record(self.config))
        except BaseException:
            self._release()
            raise
        if self.finished:
            self._release()
            return self
        try:
            self._start_strategy()
        except BaseException:
            self.__exit__(*sys.exc_info())  # the run is claimed: record how it ended
            raise
        self.log.info("run_started", location=self.publisher.location, chief=self.config.is_chief)
        return self

    def _start_strategy(self) -> None:
        if self.config.cluster is not None:
            self.watchdog = Watchdog(self.config.distribution.collective_timeout, self.abort)
            self.watchdog.arm()
        if self.create_strategy:
            with distribute.peer_errors(self.config.cluster):
                self.strategy = distribute.strategy_for(self.config.distribution)
        if self.watchdog is not None:
            self.watchdog.pause()  # until fit begins: the data may take long to arrive

    def _claim(self) -> bool:
        """Take the run's lease (chief only: other workers write to scratch). False when the
        run turned out to be finished by another process meanwhile."""
        if self.config.is_chief:
            self.lease = Lease(self.shared, self.config.lease_seconds)
            self.lease.acquire()
            self.shared.lease = self.lease
            if self.shared.succeeded():
                self.finished = True
                return False
            self.lease.start()
        self.publisher.adopt()
        return True

    def _release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.on_train_end()
        if self.lease is not None:
            self.lease.release()
        self._stack.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        try:
            if isinstance(exc, Preempted):
                self.log.warning("preempted", signal=exc.signame)
                self.end("preempted", str(exc))
            elif isinstance(exc, (RunOwned, LostOwnership, FinishedElsewhere, PreconditionFailed)):
                # A refused write means another process wrote the run: it is not ours to mark.
                self.log.error("run_not_ours", error=str(exc))
            elif exc is not None:
                self.end("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self._release()

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def scope(self):
        """The strategy's scope: variables created inside belong to the strategy."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def publish(self, folder: Path, result: dict, headline: dict) -> None:
        self._final = {"epoch": result["epochs_completed"], "epochs": result["epochs"]}
        self._final["metrics"] = headline
        manifest = self.publisher.publish(folder, **self._final)
        try:
            self.checkpointer.clear()
        except JobError as exc:  # the run stands; the checkpoints are only disk space
            self.log.warning("checkpoints_not_cleared", error=str(exc))
        self.log.info(
            "run_published", location=self.publisher.location, files=len(manifest["files"])
        )

    def promote(self) -> None:
        """After `_SUCCESS`, the champion decision PROMOTE asks for (job.champion), recorded in
        status.json beside the final figures. The run's own files do not change, and a
        decision that fails (the store, a corrupt champion record) does not undo the run: it
        is logged as `promotion_failed` and recorded as not promoted, with the error. A rerun
        of a finished run whose status holds no decision (the process died in between) takes
        it then: deciding again on the same run is harmless ("already the champion")."""
        promotion, name = self.config.promotion, self.config.model_name
        if promotion.policy == "never" or not self.config.is_chief:
            return
        from job import champion

        store, status_key = self.shared.store, self.shared.key(STATUS)
        if self.finished:
            raw, etag = store.get_if_changed(status_key, None)
            status = layout.decode_json(raw, self.shared.where(STATUS)) if raw else {}
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

    def end(self, state: str, reason: str) -> None:
        """Record how the run ended, once. Best effort: the store may be what failed."""
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
                if state == "failed":
                    self.publisher.fail(reason, epoch=len(self.history), last_log=logs.recent())
                else:
                    self.publisher.status(state, reason=reason, epoch=len(self.history))
            except JobError as exc:  # LostOwnership included: then it is not ours to record
                self.log.error("cannot_record_end", state=state, error=str(exc))

    def abort(self, error: JobError) -> None:
        """End the process from another thread (the watchdog) through the same exit path as the
        main thread: `_FAILURE`, one error line, the error's exit code."""
        self.end("failed", f"{type(error).__name__}: {error}")
        print(logs.error_line(str(error), self.config.secrets()), file=sys.stderr, flush=True)
        os._exit(error.exit_code)
