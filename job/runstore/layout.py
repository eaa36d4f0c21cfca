"""The run layout: where runs live and what their files are called, in one place.

Everything a run writes is under `<OUTPUT_URI>/<run id>/`, in a local folder or a bucket. This
module owns the URI schemes (`s3://BUCKET[/PREFIX]`, `file://PATH`, a plain path), the run's
location, every key name in a run folder, and the checks on keys read back from a store: a
store is untrusted input, so a key becomes a path only once it is relative, normalised and
inside the run folder. No other module spells a key or tests a scheme.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from job.config import Config
from job.errors import ConfigError, DataError
from job.runstore import objects

# --- the keys of a run folder ---
RUN_RECORD = "run.json"  # start record: config (redacted), versions, host
STATUS = "status.json"  # the heartbeat; the only object rewritten while the run lives
METRICS = "metrics.json"
MODEL_FILE = "model/model.keras"
SAVED_MODEL = "model/saved_model"
IMAGES = "images"
REPORT = "report.html"  # the run on one self-contained page (job.training.report)
CHECKPOINTS = "checkpoints"
LATEST_CHECKPOINT = "checkpoints/latest.json"
SUBMISSION = "submission.json"  # how the submitter started the run
OWNER = "owner.json"  # the lease of the process writing the run (job.runstore.lease)
SUCCESS = "_SUCCESS"  # written last: every file with its size and SHA-256
FAILURE = "_FAILURE"
CANCELLED = "_CANCELLED"
HOLD = "_HOLD"  # a champion decision's or prune's claim on a finished run (job.runstore.hold)
CHECK_PROBE = ".check-probe"  # `check` writes, reads and deletes <OUTPUT_URI>/.check-probe-<hex>
DOWNLOADED = (METRICS, REPORT, f"{IMAGES}/")  # what `watch --dest` fetches of a finished run


# What each record is, for job.runstore.objects: its size cap and the fields readers rely on.
KINDS = {
    RUN_RECORD: objects.RUN_RECORD, STATUS: objects.STATUS, METRICS: objects.METRICS,
    LATEST_CHECKPOINT: objects.CHECKPOINT, SUBMISSION: objects.SUBMISSION, OWNER: objects.OWNER,
    SUCCESS: objects.MANIFEST, FAILURE: objects.MARKER, CANCELLED: objects.MARKER,
    HOLD: objects.HOLD,
}  # fmt: skip


def checkpoint_key(epoch: int) -> str:
    return f"{CHECKPOINTS}/epoch-{epoch:04d}/ckpt.weights.h5"


# --- champions, beside the runs: <OUTPUT_URI>/models/<name>/ (job.runstore.champion) ---
MODELS = "models"  # a reserved run id (job.config.RESERVED_RUN_IDS)
HISTORY_RE = re.compile(r"(\d{8})-([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\.json")


def champion_key(name: str) -> str:
    return f"{MODELS}/{name}/champion.json"


def history_prefix(name: str) -> str:
    return f"{MODELS}/{name}/history/"


def history_key(name: str, sequence: int, run_id: str) -> str:
    return f"{history_prefix(name)}{sequence:08d}-{run_id}.json"


def parse_history_key(name: str, key: str) -> tuple[int, str] | None:
    """(sequence, run id) of a history entry's key, None for anything else under the prefix."""
    found = HISTORY_RE.fullmatch(key.removeprefix(history_prefix(name)))
    return (int(found.group(1)), found.group(2)) if found else None


# --- URIs ---
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
URI_RULE = "a local path, file://PATH or s3://BUCKET[/PREFIX]"
MAX_URI = 1024


@dataclass(frozen=True)
class Location:
    """A local folder (bucket None) or a prefix in a bucket."""

    path: str
    bucket: str | None = None

    @property
    def is_bucket(self) -> bool:
        return self.bucket is not None

    @property
    def uri(self) -> str:
        if self.bucket is None:
            return self.path
        return f"s3://{self.bucket}/{self.path}".rstrip("/")

    def child(self, name: str) -> Location:
        joined = f"{self.path.rstrip('/')}/{name}" if self.path else name
        return Location(joined, self.bucket)


def parse(variable: str, uri: str) -> Location:
    """OUTPUT_URI / DATA_URI text -> a Location, or a ConfigError naming the variable."""
    if len(uri) > MAX_URI or "\x00" in uri:
        raise ConfigError(variable, uri[:80], f"{URI_RULE}, at most {MAX_URI} characters")
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        parts = [p for p in prefix.split("/") if p]
        if not BUCKET_RE.match(bucket) or ".." in bucket or "//" in prefix or ".." in parts:
            raise ConfigError(variable, uri, "s3://BUCKET[/PREFIX] with a valid bucket name")
        return Location("/".join(parts), bucket)
    if uri.startswith("file://"):
        return Location(uri.removeprefix("file://"))
    # "s3:/bucket", "S3://...", "gs://...": a typo must not become a local folder named "s3:".
    if SCHEME_RE.match(uri):
        raise ConfigError(variable, uri, URI_RULE)
    return Location(uri)


def check(cfg: Config) -> None:
    """The configured URIs are well formed and a bucket comes with keys; before anything runs."""
    locations = [parse("OUTPUT_URI", cfg.output_uri)]
    if cfg.data_uri:
        locations.append(parse("DATA_URI", cfg.data_uri))
    if any(loc.is_bucket for loc in locations):
        for variable, value in (
            ("COS_ACCESS_KEY_ID", cfg.storage.access_key_id),
            ("COS_SECRET_ACCESS_KEY", cfg.storage.secret_access_key),
        ):
            if not value:
                raise ConfigError(variable, "", "set (HMAC keys) when a URI is s3://")


def run_uri(output_uri: str, run_id: str) -> str:
    """Where a run's files are, as a user would type it."""
    return parse("OUTPUT_URI", output_uri).child(run_id).uri


# --- keys read back from a store ---


def safe_key(key: object, where: str) -> str:
    """A key read from a store, checked before it becomes part of a path: a relative,
    normalised '/'-separated path with no '..', no empty part and no control character."""
    if not isinstance(key, str) or not key or len(key) > MAX_URI:
        raise DataError(f"{where}: invalid key {str(key)[:80]!r}")
    parts = key.split("/")
    bad = (
        key.startswith("/")
        or "\\" in key
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
        or PurePosixPath(key).as_posix() != key
    )
    if bad:
        raise DataError(f"{where}: unsafe key {key[:80]!r} (not a plain path inside the run)")
    return key


def to_json(data: object) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


class RunFiles:
    """One run's objects in a store (rooted at OUTPUT_URI), under `<run id>/`."""

    def __init__(self, store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.location = f"{store.uri.rstrip('/')}/{run_id}"

    def key(self, name: str) -> str:
        return f"{self.run_id}/{name}"

    def where(self, name: str) -> str:
        return f"{self.location}/{name}"

    def read_json(self, name: str) -> dict | None:
        """One of the run's records, through the bounded, typed reader (job.runstore.objects)."""
        return objects.read(self.store, self.key(name), KINDS[name])

    def put_json(self, name: str, data: object) -> None:
        self.store.put_bytes(self.key(name), to_json(data))

    def exists(self, name: str) -> bool:
        return self.store.exists(self.key(name))
