"""The WML backend: the job package as a model definition, run by Watson Machine Learning.

WML does not run our image: it runs a zip of code with a command on IBM's TensorFlow runtime.
So the zip holds the `job` package and the two pure-Python packages the runtime lacks
(structlog, python-dotenv: `VENDORED`), and the command is only `python3 -m job train` with the
run id and the hyperparameters: nothing is downloaded at start, so air-gapped Cloud Pak for Data
clusters run it too. WML mounts the results reference as RESULT_DIR (the run's files land in
the results bucket under `<path>/<training id>/`) and the data reference as DATA_DIR; the job
uses both as local folders by itself, so it needs no boto3 there. The submission record tells
`watch` where the results are.

The submitter signs in with IBM's maintained client, ibm-watsonx-ai (the `[wml]` extra, in the
environment `make` builds; not in the image), or the deprecated ibm-watson-machine-learning
where that is the one installed: on IBM Cloud with an API key or a token, on Cloud Pak for
Data as a user with an API key or a password (docs/wml.md).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import ssl
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from job import __version__, logs
from job.config import HYPERPARAMETERS, Config, Wml, given
from job.errors import EXIT_TRANSIENT, ConfigError, JobError, TransientError, classify
from job.launch.backend import Backend, Options, Started, record
from job.launch.watch import RunNotFound
from job.logs import REDACTED, printable
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


# The WML clients, in the order they are looked for: IBM's maintained one (the `[wml]` extra),
# then the deprecated one. Both make the same calls (model_definitions.store, training.run,
# get_details, cancel); they differ in how they are given credentials (`api_client`).
CLIENTS = ("ibm_watsonx_ai", "ibm_watson_machine_learning")
NO_CLIENT = (
    "a WML client beside the submitter: pip install 'mnist-job[wml]' (ibm-watsonx-ai; `make` "
    "installs it), or the deprecated ibm-watson-machine-learning"
)


def client_module(url: str | None):
    """The first WML client installed (`CLIENTS`); exit 78 with a hint when there is none."""
    for name in CLIENTS:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ConfigError("WML_URL", url or "", NO_CLIENT)


def sign_in_variable(wml: Wml) -> str:
    """The variable holding the credential WML is given, for an error that rejects it."""
    if wml.token:
        return "WML_TOKEN"
    return "WML_PASSWORD" if wml.password and not wml.apikey else "WML_APIKEY"


def credentials(wml: Wml, *, maintained: bool) -> dict[str, str]:
    """The client's credentials from the settings, checked for a complete sign-in.

    IBM Cloud: WML_APIKEY (exchanged at IAM) or WML_TOKEN. Cloud Pak for Data: WML_USERNAME with
    WML_APIKEY or WML_PASSWORD (or WML_TOKEN alone). The deprecated client tells the two apart
    by `instance_id` (`openshift` on Cloud Pak) and needs the CPD version; ibm-watsonx-ai tells
    them apart by the URL (and asks the cluster its version), and warns when given an
    instance id, so it gets none."""
    if not wml.url:
        raise ConfigError("WML_URL", "", "the https:// URL of the WML service")
    if not wml.space_id:
        raise ConfigError("WML_SPACE_ID", "", "the id of the deployment space to train in")
    found: dict[str, str] = {"url": wml.url.rstrip("/")}
    if wml.token:
        found["token"] = wml.token
    elif wml.username and (wml.apikey or wml.password):
        found["username"] = wml.username
        found.update({"apikey": wml.apikey} if wml.apikey else {"password": wml.password or ""})
    elif wml.username:
        raise ConfigError("WML_PASSWORD", "", "WML_PASSWORD or WML_APIKEY with WML_USERNAME")
    elif wml.password:
        raise ConfigError("WML_USERNAME", "", "the Cloud Pak for Data user of WML_PASSWORD")
    elif wml.apikey:
        found["apikey"] = wml.apikey
    else:
        raise ConfigError(
            "WML_APIKEY", "", "an API key (IBM Cloud), WML_USERNAME with WML_APIKEY or "
            "WML_PASSWORD (Cloud Pak for Data), or WML_TOKEN",
        )  # fmt: skip
    if not maintained and (wml.username or wml.instance_id):  # Cloud Pak, to the old client
        found["instance_id"] = wml.instance_id or "openshift"
    if wml.cpd_version:
        found["version"] = wml.cpd_version
    if wml.auth_url:
        found["auth_url"] = wml.auth_url
    if wml.ca_bundle:
        ca_bundle(wml.ca_bundle)
    # Always verified: ibm-watsonx-ai, left without `verify`, retries a connection whose
    # certificate fails with verification off, and would send the key to anyone.
    found["verify"] = wml.ca_bundle or True
    return found


def ca_bundle(path: str) -> None:
    """WML_CA_BUNDLE names a PEM file of certificates that TLS can load."""
    expected = "a readable PEM file of CA certificates"
    if not Path(path).is_file():
        raise ConfigError("WML_CA_BUNDLE", path, expected)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError("WML_CA_BUNDLE", path, f"{expected} ({type(exc).__name__})") from None


def client(wml: Wml):
    """A signed-in client with the deployment space set (the space is checked by WML)."""
    module = client_module(wml.url)
    maintained = module.__name__ == CLIENTS[0]
    given = credentials(wml, maintained=maintained)
    with reaching(wml):
        if maintained:
            api = module.APIClient(module.Credentials.from_dict(given))
        else:
            verify = given.pop("verify", None)
            api = module.APIClient(given, verify=verify)

    def space_refused(exc: Exception) -> bool:
        if "does not exist" not in str(exc):
            # Setting the space keeps the HTTP status to itself (a token WML refuses fails
            # here first): asking for the space's details raises with it, for `reaching`.
            with reaching(wml):
                api.spaces.get_details(wml.space_id)
        return True

    with refusing(wml, "WML_SPACE_ID", wml.space_id, "a deployment space these credentials can "
                  "use", when=space_refused):  # fmt: skip
        api.set.default_space(wml.space_id)
    return api


@contextlib.contextmanager
def refusing(wml: Wml, variable: str, value: object, expected: str, *, when):
    """`reaching`, where what it leaves unclassed is a refusal of one setting: signed in, WML
    answering, and still no such thing. `when(exc)` says whether this error is that refusal
    (else it goes on as it is); it may itself raise a better-classed error."""
    try:
        with reaching(wml):
            yield
    except JobError:
        raise
    except Exception as exc:
        if not when(exc):
            raise
        raise ConfigError(variable, value, expected) from None


# What the deprecated client leaves of a network failure: only its message.
NETWORK_TROUBLE = ("Max retries exceeded", "Connection refused", "Failed to establish",
                   "Name or service not known", "timed out", "Temporary failure")  # fmt: skip
# The deprecated client's refusals carry their status only in the message, on this line.
STATUS_LINE = re.compile(r"\nStatus code: (\d{3}), body:")


def chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and those it was raised from or during (the clients wrap their
    transport's errors), innermost last; bounded against cycles."""
    found: list[BaseException] = []
    while exc is not None and exc not in found and len(found) < 20:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def status_of(exc: BaseException | None) -> int | None:
    """The HTTP status a client error reports: its response's, or (the deprecated client's
    errors) the one its message states on the line it gives it. Never a number found
    elsewhere in a message, which holds ids, hosts and ports."""
    for e in chain(exc):
        code = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
        found = STATUS_LINE.search(str(e))
        if found:
            return int(found.group(1))
    return None


def certificate_trouble(causes: list[BaseException]) -> bool:
    return any(isinstance(e, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(e) for e in causes)


@contextlib.contextmanager
def reaching(wml: Wml):
    """What the WML clients raise, as the job's exit classes: refused credentials are 78 naming
    the variable (decided on the HTTP status and the error's type, never on the message,
    which can quote the server), an unreachable or failing service 75, a certificate TLS does
    not trust 78 naming WML_CA_BUNDLE. The clients' own log records and warnings meanwhile
    become the job's events (job.logs.library_chatter)."""
    try:
        with logs.library_chatter(*CLIENTS):
            yield
    except JobError:
        raise
    except Exception as exc:
        causes = chain(exc)
        status = status_of(exc)
        # Refused credentials first: a client may try a second sign-in route that cannot be
        # reached (ibm-watsonx-ai's Cloud Pak IAM route) and report both.
        if status in (401, 403) or any("Credentials" in type(e).__name__ for e in causes):
            shown = f"HTTP {status}" if status else type(exc).__name__
            raise ConfigError(
                sign_in_variable(wml), REDACTED, f"credentials WML accepts (it answered {shown})"
            ) from exc
        if certificate_trouble(causes):
            raise ConfigError(
                "WML_CA_BUNDLE", wml.ca_bundle or "",
                f"a PEM file with the certificate authority of {wml.url}",
            ) from None  # fmt: skip
        where = f"WML_URL={wml.url}" + (f" or WML_AUTH_URL={wml.auth_url}" if wml.auth_url else "")
        if status is not None and (status >= 500 or status == 429):
            raise TransientError(f"{where} answered HTTP {status}; retrying may help") from None
        if any(classify(e)[1] == EXIT_TRANSIENT for e in causes) or any(
            text in str(exc) for text in NETWORK_TROUBLE
        ):
            raise TransientError(f"cannot reach {where}: {type(exc).__name__}") from None
        if "url is not valid" in str(exc):
            raise ConfigError("WML_URL", wml.url, "the URL of an IBM Cloud WML region") from None
        if isinstance(exc, (KeyError, TypeError, AttributeError, ValueError)):
            raise TransientError(
                f"{where} answered something unexpected ({type(exc).__name__}: "
                f"{logs.printable(' '.join(str(exc).split()), 300)}); retrying may help"
            ) from None
        raise


# A TensorFlow runtime's software specification under either of WML's namings: the training
# runtimes `tensorflow_rt24.1-py3.11` (Runtime 24.1 and earlier) and the base specifications
# `runtime-25.1-py3.12` (Runtime 25.1 on, which carry TensorFlow with no name of their own:
# IBM's samples pair it with model type tensorflow_2.18). Variants with a suffix (-edt, -dist,
# ...) are never chosen by default.
TENSORFLOW_RUNTIME = re.compile(r"(?:tensorflow_rt|runtime-)(\d+)\.(\d+)-py3\.(\d+)")
# The runtimes that carry TensorFlow under the base naming: 25.1 and later.
FIRST_BASE_RUNTIME = (25, 1)
# (runtime, Python) pairs the zip's command is proven on in `make test` (tests/test_runtimes.py:
# .venv-tf214 and .venv-tf218).
PROVEN_RUNTIMES = frozenset({(24, 1, 11), (25, 1, 12)})
# One-GPU hardware specifications by NVIDIA generation, newest first: the default is the newest
# WML lists (K80 is gone from current clusters). Names with x2, x4... have more GPUs.
GPU_GENERATIONS = ("H100", "A100", "L40S", "L4", "V100", "K80")


def tensorflow_runtime(name: str) -> tuple[int, int, int] | None:
    """(runtime major, minor, Python minor) of a specification that carries TensorFlow."""
    found = TENSORFLOW_RUNTIME.fullmatch(name)
    if not found:
        return None
    version = tuple(int(g) for g in found.groups())
    if name.startswith("runtime-") and version[:2] < FIRST_BASE_RUNTIME:
        return None  # runtime-24.1-py3.11 is Python without TensorFlow
    return version  # type: ignore[return-value]


def default_hardware(hardware: list[str]) -> str | None:
    """The one-GPU specification of the newest generation offered (`GPU_GENERATIONS`)."""
    offered = {n.upper(): n for n in hardware}
    for generation in GPU_GENERATIONS:
        for name in (generation, f"1X{generation}", f"{generation}X1"):
            if name in offered:
                return offered[name]
    return None


def choose_specs(wml: Wml, software: list[str], hardware: list[str]) -> tuple[str, str]:
    """The software and hardware specification names to train with, from what WML offers.

    A name given in WML_SOFTWARE_SPEC / WML_HARDWARE_SPEC must be offered (else ConfigError
    listing what is). Unset, the software specification is the TensorFlow runtime with the
    highest (runtime version, Python version) under either naming among those `make test`
    proves the job on (`PROVEN_RUNTIMES`), e.g. runtime-25.1-py3.12 over
    tensorflow_rt24.1-py3.11; only where WML offers none of those, the newest it offers, with a
    warning. The hardware is the newest one-GPU specification."""
    if wml.software_spec is None:
        runtimes = sorted((v, n) for n in software if (v := tensorflow_runtime(n)))
        if not runtimes:
            raise ConfigError(
                "WML_SOFTWARE_SPEC", "", f"a TensorFlow runtime; WML offers {listing(software)}"
            )
        proven = [(v, n) for v, n in runtimes if v in PROVEN_RUNTIMES]
        chosen = (proven or runtimes)[-1][1]
        if not proven:
            logs.get("job.wml").warning(
                "unproven_runtime", software_spec=chosen,
                proven=sorted(f"{a}.{b}-py3.{c}" for a, b, c in PROVEN_RUNTIMES),
                note="set WML_SOFTWARE_SPEC to choose; tests/test_runtimes.py proves a runtime",
            )  # fmt: skip
    elif wml.software_spec in software:
        chosen = wml.software_spec
    else:
        raise ConfigError(
            "WML_SOFTWARE_SPEC", wml.software_spec, f"one WML offers: {listing(software)}"
        )
    hardware_spec = wml.hardware_spec or default_hardware(hardware)
    if hardware_spec is None:
        raise ConfigError(
            "WML_HARDWARE_SPEC", "", f"a GPU specification ({', '.join(GPU_GENERATIONS)}); "
            f"WML offers {listing(hardware)}",
        )  # fmt: skip
    if hardware_spec not in hardware:
        raise ConfigError(
            "WML_HARDWARE_SPEC", hardware_spec, f"one WML offers: {listing(hardware)}"
        )
    return chosen, hardware_spec


def listing(names: list[str]) -> str:
    return ", ".join(sorted(set(names))) or "none"


def offered_specs(api) -> tuple[list[str], list[str]]:
    """The names of the software and hardware specifications WML offers (two GETs)."""
    software = api.software_specifications.get_details()["resources"]
    # The client has no silent list call for hardware: `list` prints a table (kept off stdout,
    # which is the submitter's result) and returns it as a DataFrame.
    with contextlib.redirect_stdout(io.StringIO()):
        hardware = api.hardware_specifications.list(limit=1000)
    software_names = [s["metadata"]["name"] for s in software]
    return names_only(software_names), names_only(list(hardware["NAME"]))


def names_only(values: list) -> list[str]:
    """The names in a list WML sent (anything else in it is not a specification to offer)."""
    return [v for v in values if isinstance(v, str)]


def python_version(software_spec: str) -> str:
    """The Python of a runtime (its name's `-py3.N`), for the model definition's platform."""
    found = re.search(r"-py(3\.\d+)", software_spec)
    return found.group(1) if found else "3.11"


def storage_reference(cfg: Config, location: layout.Location) -> dict:
    """Where WML reads the data or writes the results. By default an S3 reference carrying the
    HMAC keys (IBM Cloud's way); with WML_CONNECTION_ID, the space's connection asset for the
    bucket (Cloud Pak for Data's way), and no key travels in the request."""
    where = {"bucket": location.bucket, "path": location.path or "."}
    if cfg.wml.connection_id:
        return {"type": "connection_asset", "connection": {"id": cfg.wml.connection_id},
                "location": where}  # fmt: skip
    storage = cfg.storage
    return {
        "type": "s3",
        "connection": {
            "endpoint_url": storage.endpoint,
            "access_key_id": storage.access_key_id,
            "secret_access_key": storage.secret_access_key,
        },
        "location": where,
    }


def check_connection(api, wml: Wml) -> None:
    """WML_CONNECTION_ID names a connection asset of the space (one GET), before anything is
    stored."""
    if not wml.connection_id:
        return
    with refusing(wml, "WML_CONNECTION_ID", wml.connection_id,
                  f"a connection asset in space {wml.space_id}",
                  when=lambda exc: status_of(exc) == 404):  # fmt: skip
        api.connections.get_details(wml.connection_id)


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
    with reaching(cfg.wml):
        software_spec, hardware_spec = choose_specs(cfg.wml, *offered_specs(api))
    check_connection(api, cfg.wml)
    with reaching(cfg.wml):
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
                meta.TRAINING_DATA_REFERENCES: [storage_reference(cfg, locations["DATA_URI"])],
                meta.TRAINING_RESULTS_REFERENCE: storage_reference(cfg, locations["OUTPUT_URI"]),
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


# What a 404 for a training means: `watch` reports it as failed on the platform, `logs` as gone.
DELETED = (
    "WML has no training {training_id} (HTTP 404): deleted, or in another space than "
    "WML_SPACE_ID; its state and messages went with it"
)


def status(api, wml: Wml, training_id: str) -> tuple[str, str | None]:
    """WML's state of the training, and its failure message if it failed (`api` from
    `client`, made once per watch: with an API key every new client asks IAM for a token)."""
    with reaching(wml):  # a reply of another shape is "unexpected" there, exit 75
        try:
            found = api.training.get_details(training_id)["entity"]["status"]
        except Exception as exc:  # the client's own error types differ by client and version
            if status_of(exc) == 404:  # deleted under the watcher: it will never end there
                return "failed", DELETED.format(training_id=training_id)
            raise
        errors = (found.get("failure") or {}).get("errors") or []
        message = "; ".join(str(e.get("message", "")) for e in errors) or None
        return str(found["state"]), message


# The states in which a WML training has ended (its API spells `canceled`).
ENDED_STATES = ("completed", "failed", "canceled")


def messages(api, wml: Wml, training_id: str) -> tuple[str, list[str]]:
    """WML's state of the training and what WML says of it, as lines for a person: the state
    (with when it started running or ended, where WML says), its status message, each error of
    a failure. All of it is WML's text, shown through `printable`."""
    with reaching(wml):  # a reply of another shape is "unexpected" there, exit 75
        try:
            details = api.training.get_details(training_id)
        except Exception as exc:  # the client's own error types differ by client and version
            if status_of(exc) == 404:  # deleted: its state and messages went with it
                raise RunNotFound(DELETED.format(training_id=training_id)) from None
            raise
        found = details["entity"]["status"]
        state = str(found["state"])
    when = found.get("completed_at") or found.get("running_at")
    stamp = f"{printable(when, 40)} " if isinstance(when, str) else ""
    lines = [f"{stamp}state {printable(state, 32)}"]
    message = found.get("message")
    if isinstance(message, dict) and message.get("text"):
        level = printable(message.get("level") or "message", 16)
        lines.append(f"{level}: {printable(message['text'], 1000)}")
    failure = found.get("failure")
    errors = failure.get("errors") if isinstance(failure, dict) else None
    for error in (errors if isinstance(errors, list) else [])[:20]:
        if isinstance(error, dict):
            code = printable(error.get("code") or "error", 64)
            lines.append(f"failure: {code}: {printable(error.get('message', ''), 1000)}")
    return state, lines


def stop(handle: str, cfg: Config) -> None:
    api = client(cfg.wml)
    with reaching(cfg.wml):
        result = api.training.cancel(handle)
    if result not in ("SUCCESS", None):
        raise JobError(f"WML did not cancel training {handle}: {result}")


# How long `logs --follow` keeps polling a WML that does not answer before it gives up (exit
# 75): as long as `watch` waits for a heartbeat by default (--stall-after).
UNREACHABLE_LIMIT = 900.0


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
        log = logs.get("job.watch")

        def platform_state() -> tuple[str, str | None]:
            # One failed poll does not end a watch of hours: WML's view is "unknown" until the
            # next poll answers (the stall limit still applies).
            try:
                return status(api, cfg.wml, handle)
            except TransientError as exc:
                log.warning("platform_unreachable", error=str(exc))
                return "unknown", None

        return platform_state

    def logs(
        self,
        handle: str,
        cfg: Config,
        submitted: dict,
        *,
        follow: bool,
        interval: float,
        out: Callable[[str], None],
    ) -> None:
        """WML's state and messages for the training (`messages`): the job's own log lines are
        WML's to keep, and its client offers no call that reads them. With `follow`, polled
        every `interval` seconds until the training has ended, each line shown once; a poll
        that fails meanwhile is a warning, as in `watch`, until they have failed for
        UNREACHABLE_LIMIT seconds. A training WML no longer has is not found (exit 5)."""
        api = client(cfg.wml)
        shown: set[str] = set()
        failing_since: float | None = None  # when the polls began to fail, while they do
        while True:
            try:
                state, lines = messages(api, cfg.wml, handle)
                failing_since = None
            except TransientError as exc:
                if not follow:
                    raise
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= UNREACHABLE_LIMIT:  # a follow must end some time
                    raise TransientError(
                        f"{exc}; gave up following after {UNREACHABLE_LIMIT:.0f} s without an "
                        "answer"
                    ) from None
                logs.get("job.logs").warning("platform_unreachable", error=str(exc))
                state, lines = "unknown", []
            for line in lines:
                if line not in shown:
                    shown.add(line)
                    out(line)
            if not follow or state in ENDED_STATES:
                return
            time.sleep(interval)

    def run_store(self, cfg: Config, store: Store, handle: str) -> Store:
        """WML puts the job's results under `<OUTPUT_URI>/<training id>/` (RESULT_DIR)."""
        return open_store(layout.run_uri(cfg.output_uri, handle), cfg.storage)

    def valid_handle(self, handle: str, run_id: str) -> bool:
        return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", handle) is not None
