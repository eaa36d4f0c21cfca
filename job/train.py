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
from pathlib import Path

import keras
import numpy as np

from job import __version__, data, images, logs, metrics
from job.callbacks import EpochReporter
from job.config import Config
from job.model import build_model, compile_model, layer_table
from job.publish import RunPublisher, now_iso
from job.store import Store, open_store

METRICS = "metrics.json"


def prepare(x: np.ndarray, y: np.ndarray, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 digits -> float32 in [0, 1] with a channel axis; labels -> one-hot (as the seed)."""
    return (x.astype(np.float32) / 255.0)[..., None], keras.utils.to_categorical(y, n_classes)


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
) -> dict:
    """Train, evaluate and publish one run; returns the metrics (the content of metrics.json)."""
    log = logs.get("job.train")
    publisher = RunPublisher(store or open_store(config.output_uri), config.run_id)
    if publisher.succeeded():
        log.info("run_already_succeeded", location=publisher.location)
        return publisher.read_json(METRICS) or {}
    publisher.start(run_record(config))
    log.info("run_started", location=publisher.location)
    try:
        return _train_and_publish(config, datasets, strategy, publisher)
    except BaseException as exc:
        publisher.fail(f"{type(exc).__name__}: {exc}")
        raise


def _train_and_publish(config, datasets, strategy, publisher: RunPublisher) -> dict:
    log = logs.get("job.train")
    ds = (datasets or data.load(config.dataset, config.data_uri)).limited(
        config.train_limit, config.test_limit
    )
    log.info("data_loaded", source=ds.source, n_train=len(ds.y_train), n_test=len(ds.y_test))
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = prepare(ds.x_train, ds.y_train)
    x_test, y_test = prepare(ds.x_test, ds.y_test)

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model()
        compile_model(model, config.learning_rate)
    log.info("model", params=model.count_params(), layers=layer_table(model))

    reporter = EpochReporter(publisher, config.epochs, len(x_train))
    publisher.status("running", epoch=0, epochs=config.epochs)
    started = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(x_test, y_test),
        callbacks=[reporter],
        # A progress bar only on a terminal; otherwise the reporter's one event per epoch.
        verbose=1 if sys.stdout.isatty() else 0,
    )
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    probs = model.predict(x_test, batch_size=1024, verbose=0).astype(np.float32)
    eval_seconds = time.perf_counter() - started
    result = {
        "schema_version": metrics.SCHEMA_VERSION,
        "run_id": config.run_id,
        "dataset": ds.name,
        "data_source": ds.source,
        "n_train": len(ds.y_train),
        "n_test": len(ds.y_test),
        "epochs": config.epochs,
        "epochs_completed": len(reporter.history),
        **metrics.evaluate(probs, ds.y_test),
        "history": reporter.history,
        "timings": {
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "train_samples_per_second": round(
                len(ds.y_train) * len(reporter.history) / train_seconds, 1
            ),
        },
        "params": {
            "model_params": model.count_params(),
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
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

    work = Path(tempfile.mkdtemp(prefix=f"mnist-job-{config.run_id}-", dir=config.work_dir))
    try:
        write_artifacts(work, model, ds, probs, result)
        manifest = publisher.publish(
            work, epoch=len(reporter.history), epochs=config.epochs, metrics=_headline(result)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("run_published", location=publisher.location, files=len(manifest["files"]))
    return result


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
