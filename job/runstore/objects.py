"""Every JSON object read back from a store goes through this one bounded, typed reader.

A store is untrusted input: anyone with write access to the bucket (or the folder) can leave a
2 GB `status.json`, a nesting bomb, a 400-digit accuracy or a string where a number belongs.
So each kind of object has
- a size cap, checked before the body is read (the store refuses a larger object: a 2 GB
  status costs one refused request, not 4 GB of memory);
- a nesting-depth cap (a deep array is refused, never a RecursionError);
- a schema: the fields readers rely on have their types and ranges; every number anywhere is
  finite and of a sane magnitude, every string is bounded.
An object that breaks any of these is a DataError (exit 65) naming it; listings show it as
unreadable and go on. Caps (docs/run-contract.md): small records 64 KiB; status, the run
record and the checkpoint pointer 1 MiB (a history entry per epoch); the `_SUCCESS` manifest
4 MiB; metrics 16 MiB (a line per misclassified digit of a large test set).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from job.errors import DataError

KIB, MIB = 1024, 1024 * 1024
MAX_DEPTH = 12  # this job writes at most 5 levels (run.json's config sections)
MAX_TEXT = 16 * KIB  # any one string; a reason or a log line is far shorter
MAX_INT = 2**63  # a size in bytes or a pid fits; a 400-digit number does not
# Any one file read whole into memory (a model, a checkpoint, an image to download): this job's
# are a few MB; more than this is not one of its files, whatever a manifest claims.
MAX_ARTIFACT = 256 * MIB


def artifact_limit(size: int) -> int:
    """The bound for a file a manifest lists with `size` bytes."""
    return min(size, MAX_ARTIFACT)


Check = Callable[[object], bool]


def integer(lo: int = -MAX_INT, hi: int = MAX_INT) -> Check:
    return lambda v: type(v) is int and lo <= v <= hi


def number(lo: float = -math.inf, hi: float = math.inf) -> Check:
    return lambda v: type(v) in (int, float) and lo <= v <= hi  # finite: checked for all


def text(most: int = MAX_TEXT) -> Check:
    return lambda v: isinstance(v, str) and len(v) <= most


def nullable(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def mapping_of(check: Check) -> Check:
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


def fields(**checks: Check) -> Check:
    """An object whose named fields, where present, pass their checks (others are free)."""
    return lambda v: isinstance(v, dict) and all(k not in v or c(v[k]) for k, c in checks.items())


def record(**checks: Check) -> Check:
    """An object that has every named field, each passing its check (others are free)."""
    return lambda v: isinstance(v, dict) and all(k in v and c(v[k]) for k, c in checks.items())


def is_bool(value: object) -> bool:
    return type(value) is bool


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in HEX for c in value)


HEX = frozenset("0123456789abcdef")
EPOCH = integer(0, 1_000_000)
FIGURE = nullable(number())  # a metric: finite, or null


@dataclass(frozen=True)
class Kind:
    """One kind of object: its cap, and the checks on the fields its readers use."""

    name: str
    max_bytes: int
    checks: Mapping[str, Check] = field(default_factory=dict)
    required: tuple[str, ...] = ()


STATUS = Kind("status", 1 * MIB, {
    "run_id": text(64), "state": text(32), "updated_at": text(64),
    "epoch": nullable(EPOCH), "epochs": nullable(EPOCH), "reason": text(),
    "metrics": mapping_of(FIGURE),
    "history": list_of(lambda h: isinstance(h, dict) and EPOCH(h.get("epoch")) and all(
        FIGURE(v) for v in h.values())),
    "promotion": fields(model_name=text(64), reason=text(), promoted=is_bool),
})  # fmt: skip
OWNER = Kind("lease", 64 * KIB, {
    "expires_at": number(), "renewed_at": number(), "host": text(256), "pid": integer(0),
})  # fmt: skip
CHAMPION = Kind("champion record", 256 * KIB)  # its own strict check: runstore.champion.read
HISTORY_ENTRY = Kind("champion history entry", 64 * KIB)
METRICS = Kind("metrics", 16 * MIB, {
    "test_accuracy": number(0, 1), "test_loss": number(), "baseline_error_pct": number(0, 100),
    "misclassified_count": integer(0), "n_test": integer(0), "dataset": text(64),
    "per_class": list_of(fields(**{"class": integer(0, 1000)}, recall=number(0, 1))),
    "weights_sha256": is_sha256, "conditions": fields(),
})  # fmt: skip
MANIFEST = Kind("completion manifest", 4 * MIB, {
    "files": list_of(record(path=text(1024), size=integer(0), sha256=is_sha256)),
}, required=("files",))  # fmt: skip
HOLD = Kind("hold", 64 * KIB, {"state": text(16), "at": number()})
RUN_RECORD = Kind("run record", 1 * MIB, {"config": fields()})
MARKER = Kind("end marker", 64 * KIB, {"reason": text()})
SUBMISSION = Kind("submission record", 64 * KIB, {"backend": text(32), "handle": text(1024)})
CHECKPOINT = Kind("checkpoint pointer", 1 * MIB, {
    "epoch": EPOCH, "sha256": is_sha256, "history": list_of(fields(train_seconds=number(0))),
})  # fmt: skip


def _bounded(value: object, depth: int) -> str | None:
    """What is wrong with a decoded value anywhere in it (depth, magnitude, length), or None."""
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} deep"
    if isinstance(value, dict):
        items = list(value.values())
        if any(len(k) > MAX_TEXT for k in value):
            return f"a key longer than {MAX_TEXT} characters"
    elif isinstance(value, list):
        items = value
    elif isinstance(value, str):
        return f"a string longer than {MAX_TEXT} characters" if len(value) > MAX_TEXT else None
    elif type(value) is int:
        return None if -MAX_INT <= value <= MAX_INT else "an integer out of range"
    elif type(value) is float:
        return None if math.isfinite(value) else "a number that is not finite"
    else:
        return None
    for item in items:
        wrong = _bounded(item, depth + 1)
        if wrong:
            return wrong
    return None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def decode(raw: bytes, kind: Kind, where: str) -> dict:
    """An object of `kind` read from a store, or DataError naming `where` and what is wrong."""
    if len(raw) > kind.max_bytes:
        raise DataError(f"{where}: {len(raw)} bytes, more than a {kind.name} may hold")
    try:
        # Python refuses integers of more than 4,300 digits itself (ValueError); NaN and
        # Infinity are not JSON, though json.loads accepts them by default.
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise DataError(f"{where}: nested more than {MAX_DEPTH} deep") from None
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}: not valid JSON") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: not a JSON object")
    wrong = _bounded(data, 1)
    if wrong:
        raise DataError(f"{where}: {wrong}")
    missing = [k for k in kind.required if k not in data]
    bad = [k for k, check in kind.checks.items() if k in data and not check(data[k])]
    if missing or bad:
        named = ", ".join([*(f"{k} missing" for k in missing), *bad])
        raise DataError(f"{where}: not a {kind.name} ({named} of the wrong type or range)")
    return data


def read(store, key: str, kind: Kind) -> dict | None:
    """The object at `key`, decoded and checked; None when there is none."""
    raw = store.get_bytes(key, limit=kind.max_bytes)
    return None if raw is None else decode(raw, kind, where(store, key))


def read_if_changed(store, key: str, tag: str | None, kind: Kind) -> tuple[dict | None, str | None]:
    """(object, tag) when it changed since `tag`; (None, tag) when not; (None, None) if gone."""
    raw, new_tag = store.get_if_changed(key, tag, limit=kind.max_bytes)
    return (None, new_tag) if raw is None else (decode(raw, kind, where(store, key)), new_tag)


def where(store, key: str) -> str:
    return f"{store.uri.rstrip('/')}/{key}"
