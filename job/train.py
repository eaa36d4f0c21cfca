"""The training run: data -> model -> fit -> evaluate -> artifacts -> publish.

`run()` is the whole job as one function, so tests push a few hundred real digits through the
same path the container takes. Its return value is exactly what `metrics.json` holds.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from job import __version__, compat, data, distribute, images, logs, metrics, precision
from job.callbacks import EpochReporter, StopAtAccuracy
from job.checkpoint import LATEST, Checkpointer
from job.config import Config
from job.errors import JobError
from job.model import build_model, compile_model, layer_table, learning_rate
from job.plan import TrainingPlan, prepare, training_plan
from job.preemption import Preempted, PreemptionGuard
from job.publish import RunPublisher, now_iso
from job.recipes import RECIPES, Recipe
from job.store import LocalStore, Store, open_store
from job.watchdog import Watchdog

METRICS = "metrics.json"


def run_record(config: Config) -> dict:
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


def run(
    config: Config,
    *,
    datasets: data.Dataset | None = None,
    strategy=None,
    store: Store | None = None,
    guard: PreemptionGuard | None = None,
) -> dict:
    """Train, evaluate and publish one run; returns the metrics (the content of metrics.json).

    A run id that already has `_SUCCESS` is left alone; one that has a checkpoint resumes.
    """
    log = logs.get("job.train")
    shared = RunPublisher(store or open_store(config.output_uri, config), config.run_id)
    if shared.succeeded():
        log.info("run_already_succeeded", location=shared.location)
        return shared.read_json(METRICS) or {}
    with contextlib.ExitStack() as stack:
        publisher = shared
        if not config.is_chief:
            # Only the chief publishes; the other workers go through the same steps (their
            # collectives need them) and write into scratch space that disappears.
            scratch = stack.enter_context(tempfile.TemporaryDirectory(dir=config.work_dir))
            publisher = RunPublisher(LocalStore(Path(scratch)), config.run_id)
        return _run(config, datasets, strategy, shared, publisher, guard or PreemptionGuard())


def _run(config, datasets, strategy, shared, publisher, guard) -> dict:
    log = logs.get("job.train")
    publisher.start(run_record(config))
    log.info("run_started", location=publisher.location, chief=config.is_chief)
    try:
        return _train_and_publish(config, datasets, strategy, shared, publisher, guard)
    except Preempted as exc:
        log.warning("preempted", signal=exc.signame)
        _record_end(publisher, "preempted", str(exc))
        raise
    except BaseException as exc:
        reason = logs.scrub(f"{type(exc).__name__}: {exc}", config.secrets())
        _record_end(publisher, "failed", reason)
        raise


def _record_end(publisher: RunPublisher, state: str, reason: str) -> None:
    """Best effort: the store may be the very thing that failed."""
    try:
        checkpoint = publisher.read_json(LATEST) or {}
        if state == "failed":
            publisher.fail(reason, epoch=checkpoint.get("epoch", 0), last_log=logs.recent())
        else:
            publisher.status(state, reason=reason, epoch=checkpoint.get("epoch", 0))
    except JobError as exc:
        logs.get("job.train").error("cannot_record_end", state=state, error=str(exc))


def load_data(config: Config) -> data.Dataset:
    """The configured dataset; an s3:// DATA_URI is copied to local scratch first."""
    if not (config.data_uri or "").startswith("s3://"):
        return data.load(config.dataset, config.data_uri)
    from job.bucket import download_data

    with tempfile.TemporaryDirectory(prefix="mnist-data-", dir=config.work_dir) as tmp:
        local = download_data(config, config.data_uri, Path(tmp))
        return replace(data.load(config.dataset, str(local)), source=config.data_uri)


def _train_and_publish(
    config: Config,
    datasets,
    strategy,
    shared: RunPublisher,
    publisher: RunPublisher,
    guard: PreemptionGuard,
) -> dict:
    log = logs.get("job.train")
    cluster = config.cluster
    ds = (datasets or load_data(config)).limited(config.train_limit, config.test_limit)
    log.info("data_loaded", source=ds.source, n_train=len(ds.y_train), n_test=len(ds.y_test))
    recipe = RECIPES[config.recipe]
    chosen = precision.detect(config.precision)
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.KERAS_POLICY[chosen])
    work = Path(tempfile.mkdtemp(prefix=f"mnist-job-{config.run_id}-", dir=config.work_dir))
    try:
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        plan = training_plan(config, recipe, ds, replicas)
        with _scope(strategy):
            model = build_model()
            compile_model(
                model,
                learning_rate(
                    plan.learning_rate,
                    recipe.schedule,
                    plan.steps_per_epoch,
                    config.epochs,
                    recipe.warmup_epochs,
                ),
                label_smoothing=recipe.label_smoothing,
                steps_per_execution=plan.steps_per_execution,
            )
        log.info(
            "model",
            params=model.count_params(),
            layers=layer_table(model),
            recipe=recipe.name,
            precision=chosen,
            batch_size=plan.batch_size,
            steps_per_epoch=plan.steps_per_epoch,
            steps_per_execution=plan.steps_per_execution,
            replicas=replicas,
            strategy=type(strategy).__name__ if strategy is not None else "default",
            worker=cluster.worker_id if cluster else None,
        )
        reporter = EpochReporter(publisher, config.epochs, plan.samples_per_epoch)
        if cluster is not None and replicas > 1:
            compat.patch_for_multi_worker(model)
        checkpointer = Checkpointer(shared, publisher, work / "checkpoint", reporter, guard)
        with _scope(strategy):  # restored variables must be created as the strategy's
            initial_epoch = checkpointer.restore(model)
        stopper = StopAtAccuracy(config.target_accuracy) if config.target_accuracy else None
        callbacks = [reporter, checkpointer]
        callbacks += [Watchdog(config.collective_timeout)] if cluster is not None else []
        callbacks += [stopper] if stopper else []
        with distribute.peer_errors(cluster):
            result, probs = _fit_and_evaluate(
                config, recipe, chosen, ds, plan, model, reporter, callbacks, initial_epoch
            )
        result["target_reached_epoch"] = stopper.reached_at if stopper else None
        result["resumed_from_epoch"] = initial_epoch or None
        # Finishing the publication beats abandoning it: a stop request waits, then the run
        # ends as a success.
        with guard.critical(stop_after=False):
            artifacts = work / "artifacts"
            write_artifacts(artifacts, model, ds, probs, result)
            manifest = publisher.publish(
                artifacts,
                epoch=result["epochs_completed"],
                epochs=config.epochs,
                metrics=_headline(result),
            )
            checkpointer.clear()
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        shutil.rmtree(work, ignore_errors=True)
    log.info("run_published", location=publisher.location, files=len(manifest["files"]))
    return result


def _scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _fit_and_evaluate(
    config: Config,
    recipe: Recipe,
    chosen: str,
    ds,
    plan: TrainingPlan,
    model,
    reporter: EpochReporter,
    callbacks: list,
    initial_epoch: int,
) -> tuple[dict, np.ndarray]:
    """Fit, then evaluate in float32 on the test split; returns (metrics, probabilities)."""
    log = logs.get("job.train")
    reporter.publisher.status("running", epoch=initial_epoch, epochs=config.epochs)
    started = time.perf_counter()
    model.fit(
        **plan.fit_args,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        # A progress bar only on a terminal; otherwise the reporter's one event per epoch.
        verbose=1 if sys.stdout.isatty() else 0,
    )
    fit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    x_test, _ = prepare(ds.x_test, ds.y_test)
    probs = np.asarray(model.predict(x_test, batch_size=2000, verbose=0), dtype=np.float32)
    eval_seconds = time.perf_counter() - started
    completed = len(reporter.history)
    train_only = sum(h["train_seconds"] for h in reporter.history) or 1e-9
    result = {
        "schema_version": metrics.SCHEMA_VERSION,
        "run_id": config.run_id,
        "dataset": ds.name,
        "data_source": ds.source,
        "n_train": len(ds.y_train),
        "n_test": len(ds.y_test),
        "epochs": config.epochs,
        "epochs_completed": completed,
        "target_accuracy": config.target_accuracy,
        **metrics.evaluate(probs, ds.y_test),
        "history": reporter.history,
        "timings": {
            "fit_seconds": round(fit_seconds, 3),
            "train_seconds": round(train_only, 3),
            "eval_seconds": round(eval_seconds, 3),
            "train_samples_per_second": round(plan.samples_per_epoch * completed / train_only, 1),
        },
        "params": {
            "model_params": model.count_params(),
            "recipe": recipe.name,
            "precision": chosen,
            "batch_size": plan.batch_size,
            "learning_rate": plan.learning_rate,
            "replicas": plan.replicas,
            "schedule": recipe.schedule,
            "augment": recipe.augment,
            "label_smoothing": recipe.label_smoothing,
            "steps_per_epoch": plan.steps_per_epoch,
            "steps_per_execution": plan.steps_per_execution,
            "optimizer": "rmsprop",
            "seed": config.seed,
        },
    }
    log.info(
        "evaluated",
        test_accuracy=result["test_accuracy"],
        test_loss=result["test_loss"],
        baseline_error_pct=result["baseline_error_pct"],
    )
    return result, probs


def _headline(result: dict) -> dict:
    keys = ("test_accuracy", "test_loss", "baseline_error_pct")
    return {k: result[k] for k in keys}


def write_artifacts(work: Path, model, ds: data.Dataset, probs: np.ndarray, result: dict) -> None:
    """The run's files, laid out as they will appear under `<run_id>/`."""
    (work / "model").mkdir(parents=True)
    model.save(work / "model" / "model.keras")
    # A TensorFlow SavedModel for TF Serving / WML deployments.
    model.export(str(work / "model" / "saved_model"), format="tf_saved_model", verbose=False)
    (work / METRICS).write_text(json.dumps(result, indent=2) + "\n")
    order = metrics.misclassified(probs, ds.y_test)
    images.misclassified(ds.x_test, ds.y_test, probs, order, work / "images" / "misclassified.png")
    images.samples(ds.x_train, ds.y_train, work / "images" / "samples.png")
    images.confusion(np.asarray(result["confusion_matrix"]), work / "images" / "confusion.png")
    images.history(result["history"], work / "images" / "history.png")
