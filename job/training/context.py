"""The plumbing one training process needs around the notebook's steps, so job.training.train
reads like the notebook: a scratch folder, the tf.distribute strategy and its scope, the
multi-worker watchdog, the epoch history, the checkpointer, the preemption guard, and the run's
lifecycle in the store (job.training.lifecycle).

As a context manager it claims the run on entry (or finds it finished: `finished`) and, on the
way out of a failure, has the lifecycle record `_FAILURE` (or the `preempted` status) once.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from job.config import Config
from job.errors import ConfigError, JobError, PreconditionFailed, Preempted, classify
from job.runstore.lease import LostOwnership, RunOwned
from job.runstore.publish import FinishedElsewhere
from job.runstore.store import Store, open_store
from job.training import distribute
from job.training.callbacks import History
from job.training.checkpoint import Checkpointer
from job.training.lifecycle import RunLifecycle
from job.training.preemption import PreemptionGuard, StopNow
from job.training.watchdog import Watchdog


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
        self.history = History()
        self.run = RunLifecycle(
            config, store or open_store(config.output_uri, config.storage), self.history
        )
        self.log = self.run.log
        self._stack = contextlib.ExitStack()

    @property
    def finished(self) -> bool:
        return self.run.finished

    def __enter__(self) -> RunContext:
        """Claim the run (or find it finished: `finished`), make scratch space, write the start
        record, start the strategy."""
        if self.run.already_finished():
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
            self.run.publish_to_scratch(self.scratch / "worker")
        self.checkpointer = Checkpointer(
            self.run.shared, self.run.publisher, self.scratch / "checkpoint", self.history
        )
        try:
            self.run.claim()
        except BaseException as exc:
            self.guard.defer()
            if isinstance(exc, StopNow) and getattr(self.run.lease, "etag", None) is not None:
                # Stopped half-way through the claim with the lease ours: end the run as any
                # preemption (best effort: its status may not be written yet).
                self.run.end("preempted", str(exc.preempted))
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
        self.log.info(
            "run_started", location=self.run.publisher.location, chief=self.config.is_chief
        )
        return self

    def _start_strategy(self) -> None:
        if self.config.cluster is not None:
            self.watchdog = Watchdog(self.config.distribution.collective_timeout, self.run.abort)
            self.watchdog.arm()
        if self.create_strategy:
            with distribute.peer_errors(self.config.cluster):
                self.strategy = distribute.strategy_for(self.config.distribution)
        if self.watchdog is not None:
            self.watchdog.pause()  # until fit begins: the data may take long to arrive

    def _release(self) -> None:
        self.guard.defer()  # a stop request during setup must not cut the release short
        if self.watchdog is not None:
            self.watchdog.on_train_end()
        self.run.release()
        self._stack.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        # How the run ended is being recorded: a stop request now waits (job.training.preemption).
        self.guard.defer()
        if self.finished:
            return
        if isinstance(exc, StopNow):  # a stop request during setup
            exc = exc.preempted
        try:
            if isinstance(exc, Preempted):
                self.log.warning("preempted", signal=exc.signame)
                self.run.end("preempted", str(exc))
            elif isinstance(exc, (RunOwned, LostOwnership, FinishedElsewhere, PreconditionFailed)):
                # A refused write means another process wrote the run: it is not ours to mark.
                self.log.error("run_not_ours", error=str(exc))
            elif exc is not None:
                self.run.end("failed", f"{type(exc).__name__}: {exc}", classify(exc)[1])
        finally:
            self._release()

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy is not None else 1

    def scope(self):
        """The strategy's scope: variables created inside belong to the strategy."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def publish(self, folder: Path, result: dict, headline: dict) -> None:
        """Publish the run, then drop its checkpoints (the run stands without them)."""
        manifest = self.run.publish(folder, result, headline)
        try:
            self.checkpointer.clear()
        except JobError as exc:  # the run stands; the checkpoints are only disk space
            self.log.warning("checkpoints_not_cleared", error=str(exc))
        self.log.info(
            "run_published", location=self.run.publisher.location, files=len(manifest["files"])
        )
