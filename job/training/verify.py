"""`python -m job verify RUN_ID [--retrain]`: is a finished run's model the one it recorded,
and would the same inputs train it again, bit for bit?

Without --retrain: the run's model file (checked against its completion manifest) is loaded and
its weights digested (job.training.fingerprint); identical means the digest is the one
metrics.json recorded. With --retrain: the run's recorded inputs (metrics.json `inputs`: every
training setting, the replica count, the data's digest) train a new run in a scratch folder,
never in the run itself, and its weights are compared with the recorded model's, tensor by
tensor. A retrain is only meaningful where the software and the CPU features are the run's
(`conditions`): where they differ, nothing is retrained and the answer names them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from job.config import HYPERPARAMETERS, Config, from_env
from job.errors import ConfigError, DataError
from job.runstore.layout import MODEL_FILE, RUN_RECORD
from job.runstore.reader import RunReader
from job.runstore.store import open_store
from job.training import fingerprint, train

# What verify found; the exit code of each is job.errors.VERIFY_EXIT.
IDENTICAL, DIFFERENT, INCOMPARABLE = "identical", "different", "incomparable"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # IDENTICAL, DIFFERENT or INCOMPARABLE
    detail: str


def recorded(cfg: Config, run_id: str) -> tuple[dict, list[np.ndarray], dict]:
    """A finished run's metrics, its model's weights and its start record."""
    run = RunReader(open_store(cfg.output_uri, cfg.storage), run_id)
    entries = run.manifest()
    # Both as _SUCCESS lists them: a metrics.json edited after publication is not the run's.
    metrics = run.listed_metrics(entries)
    raw = run.listed_bytes(entries, MODEL_FILE)
    with tempfile.TemporaryDirectory(prefix="mnist-job-verify-", dir=cfg.work_dir) as scratch:
        path = Path(scratch) / Path(MODEL_FILE).name
        path.write_bytes(raw)
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # what Keras's readers raise: zip, JSON, HDF5, config
            raise DataError(f"{run.where(MODEL_FILE)}: not a Keras model ({exc})") from None
    record = run.read_json(RUN_RECORD) or {}
    return metrics, [np.asarray(w) for w in model.get_weights()], record


def check_digest(metrics: dict, weights: list[np.ndarray]) -> Verdict:
    expected = metrics.get("weights_sha256")
    if not expected:
        return Verdict(INCOMPARABLE, "the run recorded no weights_sha256 (trained before it was)")
    actual = fingerprint.weights_sha256(weights)
    if actual == expected:
        return Verdict(IDENTICAL, f"the model's weights are the ones recorded ({actual})")
    return Verdict(DIFFERENT, f"recorded weights_sha256 {expected}, the model file gives {actual}")


def where_they_differ(ours: list[np.ndarray], theirs: list[np.ndarray]) -> str:
    if len(ours) != len(theirs):
        return f"{len(ours)} weight tensors against {len(theirs)}"
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                 if a.shape != b.shape or a.tobytes() != b.tobytes()]  # fmt: skip
    first = differing[0]
    largest = float(np.max(np.abs(ours[first].astype(np.float64) - theirs[first])))
    return (
        f"{len(differing)} of {len(ours)} weight tensors differ; the first is tensor {first} "
        f"{ours[first].shape} (largest difference {largest:.3g})"
    )


def retrain_environment(cfg: Config, metrics: dict, record: dict, scratch: str) -> dict[str, str]:
    """The variables that train the run again: its recorded inputs, in a scratch folder."""
    inputs = metrics.get("inputs") or {}
    env = {
        name: str(value)
        for name, value in inputs.items()
        if name in HYPERPARAMETERS and value is not None  # the training settings, by name
    }
    conditions = metrics.get("conditions") or {}
    recorded_config = record.get("config") if isinstance(record.get("config"), dict) else {}
    data_uri = recorded_config.get("data_uri") or cfg.data_uri
    env.update(
        RUN_ID="verify-retrain",
        OUTPUT_URI=scratch,
        PROMOTE="never",
        PRECISION=str(conditions.get("precision") or env.get("PRECISION", "auto")),
        THREADS=str(conditions.get("threads") or ""),
        DETERMINISTIC=str(conditions.get("deterministic") or "on"),
        LOG_FORMAT=cfg.logging.format,
        LOG_LEVEL=cfg.logging.level,
    )
    if data_uri:
        env["DATA_URI"] = data_uri
    if cfg.work_dir:
        env["WORK_DIR"] = cfg.work_dir
    return {k: v for k, v in env.items() if v}


def retrain(
    cfg: Config, run_id: str, metrics: dict, weights: list[np.ndarray], record: dict
) -> Verdict:
    inputs = metrics.get("inputs")
    conditions = metrics.get("conditions")
    if not isinstance(inputs, dict) or not isinstance(conditions, dict):
        return Verdict(INCOMPARABLE, "the run recorded no inputs or conditions to retrain from")
    if inputs.get("REPLICAS", 1) != 1:
        return Verdict(INCOMPARABLE, f"trained on {inputs['REPLICAS']} replicas; verify "
                                     "retrains on one")  # fmt: skip
    current = fingerprint.conditions(
        str(conditions.get("precision")), int(conditions.get("threads") or 1),
        str(conditions.get("deterministic")),
    )  # fmt: skip
    changed = fingerprint.differences(
        {k: conditions.get(k) for k in ("tensorflow", "keras", "cpu_features")},
        {k: current[k] for k in ("tensorflow", "keras", "cpu_features")},
    )
    if changed:
        return Verdict(INCOMPARABLE, "not retrained, this machine differs: " + "; ".join(changed))
    with tempfile.TemporaryDirectory(prefix="mnist-job-verify-", dir=cfg.work_dir) as scratch:
        try:  # what the run recorded goes through every setting's own parser
            settings = from_env(retrain_environment(cfg, metrics, record, scratch))
        except ConfigError as exc:
            raise DataError(
                f"{cfg.output_uri}/{run_id}: the recorded {exc.variable} is not a value the "
                f"job takes ({exc.expected})"
            ) from None
        again = train.run(settings)
        model_path = Path(scratch, "verify-retrain", *MODEL_FILE.split("/"))
        retrained = [np.asarray(w) for w in keras.models.load_model(model_path).get_weights()]
    if again.get("inputs", {}).get("DATA_SHA256") != inputs.get("DATA_SHA256"):
        return Verdict(DIFFERENT, "the data is not the data the run was trained on")
    if again["weights_sha256"] == metrics.get("weights_sha256"):
        return Verdict(IDENTICAL, f"retrained to the same weights ({again['weights_sha256']})")
    losses = [h.get("loss") for h in metrics.get("history") or []]
    first_epoch = next(
        (i + 1 for i, h in enumerate(again["history"]) if losses[i : i + 1] != [h["loss"]]), None
    )
    where = where_they_differ(retrained, weights)
    if first_epoch is not None:
        where += f"; the training loss first differs at epoch {first_epoch}"
    return Verdict(DIFFERENT, f"retrained to {again['weights_sha256']}, recorded "
                              f"{metrics.get('weights_sha256')}: {where}")  # fmt: skip


def verify(cfg: Config, run_id: str, *, retrain_it: bool) -> Verdict:
    metrics, weights, record = recorded(cfg, run_id)
    verdict = check_digest(metrics, weights)
    if verdict.outcome != IDENTICAL or not retrain_it:
        return verdict
    return retrain(cfg, run_id, metrics, weights, record)
