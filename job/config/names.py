"""Names that are not the job's variables: one typo from one (`EPOCH`, `LEARNINGRATE`,
`TRAIN_LIMT`, `epochs`), or merely unknown.

A misspelled name is otherwise silently ignored and its setting silently defaulted: the user who
meant a 3-epoch smoke run gets 20 epochs on all the data. So a near miss in the environment is
warned about, and in `.env` (a file the user wrote for this job) it is an error; another unknown
`.env` name is warned about unless the job's libraries read it (`LIBRARY_PREFIXES`). Only the
table's own names are matched against: the environment holds many other programs' names (HOME,
PATH, TERM...) that must not be taken for typos. Values are never shown: a misspelled secret's
value is still a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from job.config.settings import SECRET_NAMES, VARIABLES
from job.errors import ConfigError, JobError
from job.logs import get as get_logger
from job.logs import printable

ENVIRONMENT = "environment"
# A secret may be given as the path of a file holding it (`COS_SECRET_ACCESS_KEY_FILE`), the
# convention of Docker and Kubernetes secrets mounted as files, for every name a secret is read
# under (SECRET_NAMES: the table's secret variables and their fallbacks): job.config.environment.
FILE_SUFFIX = "_FILE"
# Every name the job reads, in the table's order (a near miss names the first it is near): the
# variables, their fallbacks (the platforms' names: DATA_DIR, RESULT_DIR, TRAINING_ID, AWS_*),
# and the `<NAME>_FILE` pointers of the secrets.
KNOWN: tuple[str, ...] = tuple(
    dict.fromkeys(
        [v.name for v in VARIABLES]
        + [n for v in VARIABLES for n in v.fallbacks]
        + [n + FILE_SUFFIX for n in sorted(SECRET_NAMES)]
    )
)
_KNOWN = frozenset(KNOWN)
# Names read by the job's libraries, not by the job: TensorFlow, Keras, OpenMP and oneDNN/MKL
# (threads), CUDA and XLA, boto3 (AWS_*: profiles, CA bundles, more endpoints), Python itself,
# and the proxy and certificate settings HTTP clients honour. A `.env` may well set them.
LIBRARY_PREFIXES = ("TF_", "KERAS_", "OMP_", "KMP_", "MKL_", "CUDA_", "XLA_", "AWS_", "PYTHON")
LIBRARY_NAMES = frozenset(
    ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
     "SSL_CERT_DIR", "CURL_CA_BUNDLE")
)  # fmt: skip
# A name shorter than this (SEED) is near another only by case or two neighbours swapped: one
# letter more, less or changed makes ordinary words of it (SEEN, SEEK, NEED).
SHORT = 6
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHOWN_WIDTH = 100  # a name read from a file or the environment, as shown
# Kubernetes "service links": for every Service of the namespace the kubelet sets
# <SERVICE>_SERVICE_HOST, <SERVICE>_SERVICE_PORT[_<PORT>], <SERVICE>_PORT=tcp://<ip>:<port> and
# <SERVICE>_PORT_<N>_<PROTO>[_...]. A Service named `workers` makes WORKERS_PORT, one letter
# from WORKER_PORT: the platform's name, never a typo.
_SERVICE_LINK_NAME = re.compile(r".+_(SERVICE_HOST|SERVICE_PORT(_.*)?|PORT_.+)")
_SERVICE_LINK_VALUE = re.compile(r"\s*(tcp|udp|sctp)://", re.IGNORECASE)


# The names that set one setting: a variable, its fallbacks and their secrets' `_FILE`
# pointers. A near miss of a setting that is set anyway is another program's name (OUTPUT_URL
# beside OUTPUT_URI, DATADIR beside DATA_URI): the setting meant is not lost.
def _settings() -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for var in VARIABLES:
        group = {var.name, *var.fallbacks}
        group |= {n + FILE_SUFFIX for n in group if n in SECRET_NAMES}
        out.update(dict.fromkeys(group, frozenset(group)))
    return out


_SETTING = _settings()


def is_known(name: str) -> bool:
    """A name the job reads: a variable, a fallback or a secret's `_FILE` pointer."""
    return name in _KNOWN


def is_library(name: str) -> bool:
    return name.startswith(LIBRARY_PREFIXES) or name.upper() in LIBRARY_NAMES


def intended(name: str) -> str | None:
    """The job's name `name` is one typo from (another case, one letter missing, added or
    changed, two neighbours swapped), or None: a name of the job's, or of something else."""
    if name in _KNOWN or not _NAME_RE.fullmatch(name):
        return None
    upper = name.upper()
    if upper in _KNOWN:  # only the case differs: the clearest of typos, whatever the length
        return upper
    for known in KNOWN:
        if len(known) < SHORT:
            if _swapped(upper, known):
                return known
        elif _one_edit(upper, known):
            return known
    return None


def is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes sets for a Service of the namespace (by its name or its
    `tcp://` value), not one a person typed."""
    return bool(_SERVICE_LINK_NAME.fullmatch(name) or _SERVICE_LINK_VALUE.match(value))


def _swapped(a: str, b: str) -> bool:
    """`a` is `b` with two neighbouring characters swapped."""
    if len(a) != len(b):
        return False
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(diff) != 2 or diff[1] != diff[0] + 1:
        return False
    i, j = diff
    return a[i] == b[j] and a[j] == b[i]


def _one_edit(a: str, b: str) -> bool:
    """`a` and `b` (different) differ by one character changed, added or removed, or two
    neighbours swapped: linear, since every name of the environment meets every known name."""
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diff) == 1 or _swapped(a, b)
    if abs(len(a) - len(b)) != 1:
        return False
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((i for i, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1 :]


@dataclass(frozen=True)
class Unknown:
    """A name set (to a non-empty value) that the job does not read: `where` it was set (the
    environment, or the .env file as named), and the variable it is one typo from, if any."""

    name: str
    where: str
    intended: str | None = None

    @property
    def shown(self) -> str:
        return printable(self.name, SHOWN_WIDTH)

    def line(self) -> str:
        where = printable(self.where, 1000)
        if self.intended:
            return f"{where}: {self.shown} is not a variable: did you mean {self.intended}?"
        return f"{where}: {self.shown} is not one of the job's variables"


class Misspelled(ConfigError):
    """A name one typo from a variable (exit 78). The line names where it was set, the name and
    the variable meant; never the value. For the environment, which holds other programs'
    names too, it says how to tell the job a name is not a typo: set the variable meant."""

    def __init__(self, found: Iterable[Unknown]) -> None:
        first, *others = found
        more = "; ".join(f"{u.shown}: {u.intended}?" for u in others)
        text = first.line() + (f" (also {more})" if more else "")
        if first.where == ENVIRONMENT:
            text += f"; if {first.shown} is another program's, set {first.intended} too"
        JobError.__init__(self, text)
        self.variable, self.value, self.expected = first.name, None, str(first.intended)


def unknown(from_file: Mapping[str, str], environ: Mapping[str, str], file: str) -> list[Unknown]:
    """The names set in `.env` (`from_file`, read from `file`) and in the environment that the
    job does not read, each once (a name in both counts as the file's: the user wrote it for
    this job): every near miss, and the file's other names unless a library reads them. Empty
    values set nothing and are passed over, as everywhere. A near miss of a setting that is set
    anyway, and a Kubernetes service link, are other programs' names, not typos: merely unknown
    in the file, and not even that in the environment."""
    merged = {**from_file, **environ}
    present = {n for n, v in merged.items() if isinstance(v, str) and v.strip()}

    def near(name: str, value: str) -> str | None:
        meant = intended(name)
        if meant is None or is_service_link(name, value) or _SETTING[meant] & present:
            return None
        return meant

    found: list[Unknown] = []
    for name, value in from_file.items():
        if name in _KNOWN or not value.strip():
            continue
        meant = near(name, value)
        if meant or not is_library(name):
            found.append(Unknown(name, file, meant))
    for name, value in environ.items():
        if name in from_file or not isinstance(value, str) or not value.strip():
            continue
        meant = near(name, value)
        if meant:
            found.append(Unknown(name, ENVIRONMENT, meant))
    return found


def hidden(from_file: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    """The job's names that `.env` sets but the environment sets to an empty value: the
    environment wins, and empty means unset, so the file's value is silently not used (a
    templated manifest's `EPOCHS=`)."""
    return [
        name
        for name, value in from_file.items()
        if name in _KNOWN and value.strip() and name in environ
        and isinstance(environ[name], str) and not environ[name].strip()
    ]  # fmt: skip


# What the last read of the configuration found (job.config.environment), and what this process
# has already warned about: `read_environment` may run several times in one command, and each
# name is said once.
_latest: list[Unknown] = []
_told: set[Unknown] = set()
_hidden: list[tuple[str, str]] = []  # (name, .env file as named)
_told_hidden: set[tuple[str, str]] = set()


def review(found: list[Unknown], hidden: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse a near miss in `.env` (exit 78: the file was written for this job, and a typo
    there is a setting silently lost); keep the rest, and the `.env` values an empty
    environment value hides (`hidden`), for `warn` and `near_misses`."""
    in_file = [u for u in found if u.intended and u.where != ENVIRONMENT]
    if in_file:
        raise Misspelled(in_file)
    _latest[:] = found
    _hidden[:] = hidden


def hidden_now() -> list[tuple[str, str]]:
    """The job's names whose `.env` value the last read found hidden by an empty environment
    value, with the file as named."""
    return list(_hidden)


def near_misses() -> list[Unknown]:
    """The names one typo from a variable that the last read of the configuration found."""
    return [u for u in _latest if u.intended]


def warn() -> None:
    """One warning per name the last read found (once per process), through the job's logger:
    a JSON line in a container. Call it once logging is configured."""
    log = get_logger("job.config")
    for found in _latest:
        if found in _told:
            continue
        _told.add(found)
        if found.intended:
            log.warning("misspelled_variable", name=found.shown, where=found.where,
                        did_you_mean=found.intended)  # fmt: skip
        else:
            note = "not one of the job's variables (`config --table` lists them)"
            log.warning("unknown_variable", name=found.shown, where=found.where, note=note)
    for name, file in _hidden:
        if (name, file) in _told_hidden:
            continue
        _told_hidden.add((name, file))
        note = f"empty in the environment, which hides {file}'s value: unset it to use {file}'s"
        log.warning("hidden_variable", name=name, where=ENVIRONMENT, note=printable(note, 1100))
