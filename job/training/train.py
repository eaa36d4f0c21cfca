"""The training run, as the notebook tells it: data -> plan -> model -> fit -> evaluate ->
artifacts -> publish. The plumbing (stores, history, checkpoints, preemption, scratch space,
failure records) is in job.training.lifecycle.

`run()` is the whole job as one function, so tests push a few hundred real digits through the
same path the container takes. Its return value is exactly what `metrics.json` holds.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from job import logs
from job.config import VARIABLES, Config
from job.runstore.store import Store
from job.training import (
    artifacts,
    compat,
    cpus,
    data,
    distribute,
    fingerprint,
    metrics,
    precision,
)
from job.training.callbacks import (
    EpochReporter,
    EvaluateAverage,
    ProgressLine,
    StopAtAccuracy,
    StopOnRequest,
)
from job.training.context import RunContext
from job.training.model import build_model, compile_model, layer_table, learning_rate
from job.training.plan import TrainingPlan, training_plan
from job.training.preemption import PreemptionGuard, stopped_as_preempted


@stopped_as_preempted()  # a stop request during setup ends the run as Preempted
def run(
    config: Config,
    *,
    datasets: data.Dataset | None = None,
    strategy=None,
    store: Store | None = None,
    guard: PreemptionGuard | None = None,
    create_strategy: bool = False,
) -> dict:
    """Train, evaluate and publish one run; returns the metrics (the content of metrics.json).

    A run id that already has `_SUCCESS` is left alone; one that has a checkpoint resumes.
    `strategy` (or `create_strategy`, from DISTRIBUTION and TF_CONFIG): job.training.distribute.
    """
    t = config.training
    ctx = RunContext(
        config, store=store, strategy=strategy, guard=guard, create_strategy=create_strategy
    )
    with ctx, precision.policy(t.precision) as chosen:
        if ctx.finished:
            ctx.guard.defer()  # the champion decision below is not cut short
            ctx.log.info("run_already_succeeded", location=ctx.run.shared.location)
            ctx.run.promote()
            return ctx.run.published_metrics()
        ds = (datasets or data.configured(config, ctx.scratch)).limited(t.train_limit, t.test_limit)
        ctx.log.info("data", source=ds.source, n_train=len(ds.y_train), n_test=len(ds.y_test))
        plan = training_plan(t, ds, ctx.replicas, multi_worker=config.distribution.multi_worker)
        keras.utils.set_random_seed(t.seed)
        compat.op_determinism(config.deterministic == "on")
        model = build(ctx, plan, chosen)
        with ctx.scope():  # restored variables must be created as the strategy's
            inputs = resume_settings(config, ds, plan)
            first_epoch = ctx.checkpointer.restore(
                model, inputs, discard=config.resume == "discard"
            )
        # Setup is done and training begins: from here a stop request waits for the next batch
        # or epoch boundary, so the epochs trained are checkpointed (job.training.preemption).
        ctx.guard.defer()
        with distribute.peer_errors(config.cluster):
            fit_seconds, stopper = fit(ctx, model, plan, first_epoch)
            probs, eval_seconds = evaluate(model, plan)
        outcome = metrics.Outcome(
            history=ctx.history.entries,
            fit_seconds=fit_seconds,
            eval_seconds=eval_seconds,
            samples_per_epoch=plan.samples_per_epoch,
            params=params(config, plan, chosen, model.count_params()),
            target_reached_epoch=stopper.reached_at if stopper else None,
            resumed_from_epoch=first_epoch or None,
            inputs=inputs,
            weights_sha256=fingerprint.model_sha256(model),
            conditions=fingerprint.conditions(chosen, threads_in_use(), config.deterministic),
        )
        result = metrics.run_metrics(config.run_id, t, ds, probs, outcome)
        ctx.log.info("evaluated", **metrics.headline(result))
        ctx.guard.check()  # the last point where a stop request leaves the run unpublished
        folder = artifacts.write(ctx.scratch / "artifacts", model, ds, probs, result)
        ctx.publish(folder, result, metrics.headline(result))
        ctx.run.promote()
    return result


def threads_in_use() -> int:
    """TensorFlow's intra-op threads (job.training.cpus set them from THREADS or the CPUs)."""
    return tf.config.threading.get_intra_op_parallelism_threads() or cpus.usable(None)[0]


def build(ctx: RunContext, plan: TrainingPlan, chosen: str):
    """The seed network, compiled with the recipe's schedule, inside the strategy's scope."""
    t = ctx.config.training
    rate = learning_rate(
        plan.learning_rate, t.schedule, plan.steps_per_epoch, t.epochs, t.warmup_epochs
    )
    with ctx.scope():
        model = build_model()
        compile_model(
            model,
            rate,
            label_smoothing=t.label_smoothing,
            steps_per_execution=plan.steps_per_execution,
            ema_momentum=plan.ema_momentum,
        )
    if ctx.config.distribution.multi_worker and plan.replicas > 1:
        compat.patch_for_multi_worker(model)
    if t.ema_momentum and plan.ema_momentum < round(t.ema_momentum, 6):
        ctx.log.info(
            "ema_capped",
            requested=t.ema_momentum,
            used=plan.ema_momentum,
            steps_per_epoch=plan.steps_per_epoch,
            reason="the average spans at most half an epoch"
            if plan.ema_momentum
            else "fewer than 3 steps an epoch: no average",
        )
    cluster = ctx.config.cluster
    ctx.log.info(
        "model",
        params=model.count_params(),
        layers=layer_table(model),
        recipe=t.recipe,
        precision=chosen,
        strategy=type(ctx.strategy).__name__ if ctx.strategy is not None else "default",
        worker=cluster.worker_id if cluster else None,
        **plan.params(),
    )
    return model


def fit(
    ctx: RunContext, model, plan: TrainingPlan, first_epoch: int
) -> tuple[float, StopAtAccuracy | None]:
    """Train from `first_epoch`; returns the wall time and the early stopper, if any."""
    t = ctx.config.training
    stopper = StopAtAccuracy(t.target_accuracy) if t.target_accuracy else None
    # Order matters: the test pass scores the averaged weights (when kept) for every callback,
    # the reporter adds the epoch to the history before the checkpointer saves it, and a stop
    # request is honoured only after both.
    callbacks = [
        *([EvaluateAverage()] if plan.ema_momentum else []),
        EpochReporter(ctx.run.publisher, ctx.history, t.epochs, plan.samples_per_epoch),
        ctx.checkpointer,
        StopOnRequest(ctx.guard),
    ]
    if ctx.watchdog is not None:
        callbacks.append(ctx.watchdog)
    if stopper:
        callbacks.append(stopper)
    if logs.shows_progress():  # console logs on a terminal: the epoch in progress, in place
        callbacks.append(ProgressLine(t.epochs, plan.steps_per_epoch))
    ctx.run.publisher.status("running", epoch=first_epoch, epochs=t.epochs)
    started = time.perf_counter()
    with logs.progress_line():  # erased however fit ends: the next line starts clean
        model.fit(
            **plan.fit_args(first_epoch),
            epochs=t.epochs,
            initial_epoch=first_epoch,
            callbacks=callbacks,
            # Never Keras's bar: it repeats each epoch's event (job.training.callbacks).
            verbose=0,
        )
    return time.perf_counter() - started, stopper


def evaluate(model, plan: TrainingPlan) -> tuple[np.ndarray, float]:
    """float32 probabilities for the whole test split, and the seconds it took (the plan's
    test dataset, as validation saw it: never numpy into Keras, job.training.plan)."""
    started = time.perf_counter()
    probs = np.asarray(model.predict(plan.test, verbose=0), dtype=np.float32)
    return probs, time.perf_counter() - started


def resume_settings(config: Config, ds: data.Dataset, plan: TrainingPlan) -> dict:
    """What must match for a checkpoint to be resumed: every training variable, as given or
    from the recipe, the number of replicas, and a digest of the data actually used."""
    t = config.training
    values = {v.name: getattr(t, v.attr) for v in VARIABLES if v.section == "training" and v.attr}
    digest = data.arrays_sha256(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    return {**values, "REPLICAS": plan.replicas, "DATA_SHA256": digest}


def params(config: Config, plan: TrainingPlan, chosen: str, model_params: int) -> dict:
    """How the run was trained, for metrics.json."""
    t = config.training
    return {
        "model_params": model_params,
        "recipe": t.recipe,
        "precision": chosen,
        "schedule": t.schedule,
        "augment": t.augment,
        "label_smoothing": t.label_smoothing,
        "optimizer": "rmsprop",
        "seed": t.seed,
        **plan.params(),
    }
