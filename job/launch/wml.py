"""The WML backend: the job package as a model definition, run by Watson Machine Learning.

WML does not run our image: it runs a zip of code with a command on IBM's TensorFlow runtime.
So the zip holds the `job` package and the two pure-Python packages the runtime lacks
(structlog, python-dotenv: `VENDORED`), and the command is only `python3 -m job train` with the
run id and the hyperparameters: nothing is downloaded at start, so air-gapped Cloud Pak for Data
clusters run it too. WML mounts the results reference as RESULT_DIR (the run's files land in
the results bucket under `<path>/<training id>/`) and the data reference as DATA_DIR; the job
uses both as local folders by itself, so it needs no boto3 there. The submission record tells
`watch` where the results are.

Runs only in the submitter's own environment (`make venv-wml`): ibm-watson-machine-learning
pins pandas 2.1, which needs numpy 1.x, while TensorFlow 2.21 brings numpy 2.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tempfile
import zipfile
from pathlib import Path

from job import __version__
from job.config import HYPERPARAMETERS, Config, Storage, Wml, given
from job.errors import ConfigError, JobError, TransientError
from job.launch.backend import Backend, Options, Started, record
from job.runstore import layout
from job.runstore.store import Store, open_store

PACKAGE = Path(__file__).resolve().parent.parent  # the `job` package
# What the job imports beyond WML's TensorFlow runtime (TensorFlow, numpy): pure-Python
# distributions, copied from the submitter's environment (their versions pinned by its lock)
# into the zip's root with their licences and metadata. The zip's root is the command's working
# directory, first on `python3 -m`'s path, so these copies win over any the runtime has.
# boto3 is not among them: job.runstore.s3 imports it only for s3:// locations, and on WML both
# locations are the mounted RESULT_DIR and DATA_DIR (tests/test_runtimes.py runs the zip in an
# environment with nothing but tensorflow-cpu 2.14.1, which has no boto3).
VENDORED = ("structlog", "python-dotenv")


def package_zip() -> bytes:
    """The model definition: the `job` package and `VENDORED`, importable from the zip's root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(PACKAGE.rglob("*.py")):
            zf.write(path, Path("job") / path.relative_to(PACKAGE))
        for name, path in vendored_files():
            zf.write(path, name)
    return buffer.getvalue()


def vendored_files() -> list[tuple[str, Path]]:
    """(name in the zip, file) for each installed file of the `VENDORED` distributions, less
    byte code and console scripts (which install outside site-packages: `../../bin/...`)."""
    from importlib import metadata

    files = []
    for dist_name in VENDORED:
        dist = metadata.distribution(dist_name)
        for entry in dist.files or ():
            name = entry.as_posix()
            if name.startswith("..") or "__pycache__" in name or name.endswith(".pyc"):
                continue
            files.append((name, Path(dist.locate_file(entry))))
    return sorted(files)


def hyperparameters(env: dict[str, str]) -> dict[str, str]:
    """The training variables that are set (job.config.HYPERPARAMETERS), as given."""
    values = given(env)
    return {k: values[k] for k in HYPERPARAMETERS if k in values}


def command(run_id: str, env: dict[str, str]) -> str:
    settings = {"RUN_ID": run_id, "LOG_FORMAT": "json", **hyperparameters(env)}
    assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(settings.items()))
    return f"{assigned} python3 -m job train"


def client(wml: Wml):
    from ibm_watson_machine_learning import APIClient

    if not wml.url:
        raise ConfigError("WML_URL", "", "the https:// URL of the WML service")
    credentials = {"url": wml.url.rstrip("/")}
    if wml.apikey:
        credentials["apikey"] = wml.apikey
    elif wml.token:
        credentials["token"] = wml.token
    else:
        raise ConfigError("WML_APIKEY", "", "an IBM Cloud API key (or WML_TOKEN, a bearer token)")
    if not wml.space_id:
        raise ConfigError("WML_SPACE_ID", "", "the id of the deployment space to train in")
    with reaching(wml.url):
        api = APIClient(credentials)
        api.set.default_space(wml.space_id)
    return api


NETWORK_TROUBLE = ("Max retries exceeded", "Connection refused", "Failed to establish",
                   "Name or service not known", "timed out", "Temporary failure")  # fmt: skip


AUTH_TROUBLE = ("IAM Token", "401", "403", "Unauthorized", "Forbidden", "not authorized")


@contextlib.contextmanager
def reaching(url: str):
    """The WML client wraps network errors in its own exception types: an unreachable service
    is exit 75 (retry later), not an internal error."""
    try:
        yield
    except Exception as exc:
        if any(text in str(exc) for text in NETWORK_TROUBLE):
            raise TransientError(f"cannot reach WML_URL={url}: {type(exc).__name__}") from None
        if "url is not valid" in str(exc):
            raise ConfigError("WML_URL", url, "the URL of an IBM Cloud WML region") from None
        if any(text in str(exc) for text in AUTH_TROUBLE):
            raise ConfigError(
                "WML_APIKEY", "", f"credentials WML accepts (WML_TOKEN, WML_SPACE_ID): {exc}"
            ) from None
        raise


# A TensorFlow training runtime's software specification: tensorflow_rt24.1-py3.11. Variants
# with a suffix (-edt, -dist...) are never chosen by default.
TENSORFLOW_RUNTIME = re.compile(r"tensorflow_rt(\d+)\.(\d+)-py3\.(\d+)")


def choose_specs(wml: Wml, software: list[str], hardware: list[str]) -> tuple[str, str]:
    """The software and hardware specification names to train with, from what WML offers.

    A name given in WML_SOFTWARE_SPEC / WML_HARDWARE_SPEC must be offered (else ConfigError
    listing what is); unset, the software specification is the TensorFlow runtime with the
    highest (runtime version, Python version), e.g. tensorflow_rt25.1-py3.12 over
    tensorflow_rt24.1-py3.11."""
    if wml.software_spec is None:
        runtimes = [(m, n) for n in software if (m := TENSORFLOW_RUNTIME.fullmatch(n))]
        if not runtimes:
            raise ConfigError(
                "WML_SOFTWARE_SPEC", "", f"a TensorFlow runtime; WML offers {listing(software)}"
            )
        chosen = max(runtimes, key=lambda r: tuple(int(g) for g in r[0].groups()))[1]
    elif wml.software_spec in software:
        chosen = wml.software_spec
    else:
        raise ConfigError(
            "WML_SOFTWARE_SPEC", wml.software_spec, f"one WML offers: {listing(software)}"
        )
    if wml.hardware_spec not in hardware:
        raise ConfigError(
            "WML_HARDWARE_SPEC", wml.hardware_spec, f"one WML offers: {listing(hardware)}"
        )
    return chosen, wml.hardware_spec


def listing(names: list[str]) -> str:
    return ", ".join(sorted(set(names))) or "none"


def offered_specs(api) -> tuple[list[str], list[str]]:
    """The names of the software and hardware specifications WML offers (two GETs)."""
    software = api.software_specifications.get_details()["resources"]
    # The client has no silent list call for hardware: `list` prints a table (kept off stdout,
    # which is the submitter's result) and returns it as a DataFrame.
    with contextlib.redirect_stdout(io.StringIO()):
        hardware = api.hardware_specifications.list(limit=1000)
    return [s["metadata"]["name"] for s in software], list(hardware["NAME"])


def python_version(software_spec: str) -> str:
    """The Python of a runtime (its name's `-py3.N`), for the model definition's platform."""
    found = re.search(r"-py(3\.\d+)", software_spec)
    return found.group(1) if found else "3.11"


def cos_reference(storage: Storage, location: layout.Location) -> dict:
    return {
        "type": "s3",
        "connection": {
            "endpoint_url": storage.endpoint,
            "access_key_id": storage.access_key_id,
            "secret_access_key": storage.secret_access_key,
        },
        "location": {"bucket": location.bucket, "path": location.path or "."},
    }


def start(cfg: Config, env: dict[str, str], zip_dir: Path) -> dict:
    """Store the model definition and start the training; returns what to record."""
    locations = {}
    for variable, uri in (("OUTPUT_URI", cfg.output_uri), ("DATA_URI", cfg.data_uri or "")):
        locations[variable] = layout.parse(variable, uri) if uri else None
        if locations[variable] is None or not locations[variable].is_bucket:
            raise ConfigError(variable, uri, "an s3:// URI: WML reads and writes buckets")
    if cfg.promotion.policy != "never":
        raise ConfigError(
            "PROMOTE", cfg.promotion.policy, "never with --backend wml: WML writes each run "
            "under <OUTPUT_URI>/<training id>/, apart from the champions' store",
        )  # fmt: skip
    api = client(cfg.wml)
    with reaching(cfg.wml.url):
        software_spec, hardware_spec = choose_specs(cfg.wml, *offered_specs(api))
    archive = zip_dir / f"mnist-job-{__version__}.zip"
    archive.write_bytes(package_zip())
    names = api.model_definitions.ConfigurationMetaNames
    run_command = command(cfg.run_id, env)
    definition = api.model_definitions.store(
        str(archive),
        {
            names.NAME: f"mnist-job-{cfg.run_id}",
            names.DESCRIPTION: "MNIST CNN training job (python -m job train)",
            names.VERSION: __version__,
            names.PLATFORM: {"name": "python", "versions": [python_version(software_spec)]},
            names.COMMAND: run_command,
        },
    )
    definition_id = api.model_definitions.get_id(definition)
    meta = api.training.ConfigurationMetaNames
    training = api.training.run(
        {
            meta.NAME: f"mnist-job-{cfg.run_id}",
            meta.DESCRIPTION: f"mnist-job run {cfg.run_id}",
            meta.TRAINING_DATA_REFERENCES: [cos_reference(cfg.storage, locations["DATA_URI"])],
            meta.TRAINING_RESULTS_REFERENCE: cos_reference(cfg.storage, locations["OUTPUT_URI"]),
            meta.MODEL_DEFINITION: {
                "id": definition_id,
                "command": run_command,
                "hardware_spec": {"name": hardware_spec, "nodes": cfg.wml.nodes},
                "software_spec": {"name": software_spec},
                "parameters": hyperparameters(env),
            },
        },
        asynchronous=True,
    )
    training_id = api.training.get_id(training)
    # WML writes the results reference's files under <path>/<training id>/, mounted as
    # RESULT_DIR; the job puts its run folder <run id>/ inside.
    results = locations["OUTPUT_URI"].child(training_id).uri
    return {
        "handle": training_id, "results_uri": results, "model_definition": definition_id,
        "software_spec": software_spec, "hardware_spec": hardware_spec,
    }  # fmt: skip


def status(api, training_id: str) -> tuple[str, str | None]:
    """WML's state of the training, and its failure message if it failed (`api` from
    `client`, made once per watch: with an API key every new client asks IAM for a token)."""
    details = api.training.get_details(training_id)
    state = details["entity"]["status"]["state"]
    errors = details["entity"]["status"].get("failure", {}).get("errors", [])
    return state, "; ".join(e.get("message", "") for e in errors) or None


def stop(handle: str, cfg: Config) -> None:
    result = client(cfg.wml).training.cancel(handle)
    if result not in ("SUCCESS", None):
        raise JobError(f"WML did not cancel training {handle}: {result}")


class WatsonML(Backend):
    name = "wml"

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        with tempfile.TemporaryDirectory() as tmp:
            started = start(cfg, env, Path(tmp))
        handle = started.pop("handle")
        record(store, cfg.run_id, "wml", handle, **started)
        return Started(f"WML training {handle}; the job writes under {started['results_uri']}")

    def cancel(self, handle: str, cfg: Config) -> None:
        stop(handle, cfg)

    def status(self, handle: str, cfg: Config):
        api = client(cfg.wml)  # once per watch: with an API key each client asks IAM
        return lambda: status(api, handle)

    def run_store(self, cfg: Config, store: Store, handle: str) -> Store:
        """WML puts the job's results under `<OUTPUT_URI>/<training id>/` (RESULT_DIR)."""
        return open_store(layout.run_uri(cfg.output_uri, handle), cfg.storage)

    def valid_handle(self, handle: str, run_id: str) -> bool:
        return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", handle) is not None
