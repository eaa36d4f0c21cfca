"""Names that are not the job's variables (issue 24, item 1): a name one typo from a variable
(`EPOCH=3`) is warned about in the environment, refused in `.env`, and fails `check`; other
`.env` names warn unless a library reads them, and reach a local run; `config` says where each
value came from."""

from __future__ import annotations

import json

import pytest

from job import config
from job.config import names
from job.errors import EXIT_CONFIG
from job.launch import local
from tests.support.jobs import cli, job_env
from tests.test_data import write_idx_dir


def warnings(stderr: str) -> list[dict]:
    """The JSON log lines of stderr that are warnings (LOG_FORMAT=json, as in a container)."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("level") == "warning"]


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("EPOCH", "EPOCHS"),  # a letter missing
        ("LEARNINGRATE", "LEARNING_RATE"),  # the underscore missing
        ("TRAIN_LIMT", "TRAIN_LIMIT"),
        ("TEST_LIMTI", "TEST_LIMIT"),  # two letters swapped
        ("RECIPES", "RECIPE"),  # a letter too many
        ("PERCISION", "PRECISION"),
        ("OUTPUT_URL", "OUTPUT_URI"),  # a letter changed
        ("epochs", "EPOCHS"),  # the case
        ("Seed", "SEED"),
        ("SEDE", "SEED"),  # a short name: swapped letters still count
        ("DATADIR", "DATA_DIR"),  # a platform fallback's
        ("COS_SECRET_ACCESS_KEY_FLE", "COS_SECRET_ACCESS_KEY_FILE"),  # a secret file's
        ("AWS_REGOIN", "AWS_REGION"),  # an AWS_* name a library reads is still matched
    ],
)
def test_a_near_miss_names_the_variable_meant(name, meant):
    assert names.intended(name) == meant


@pytest.mark.parametrize(
    "name",
    ["HOME", "PATH", "PWD", "TERM", "USER", "SHELL", "LANG", "TZ", "CI", "HOSTNAME", "OLDPWD",
     "SHLVL", "LOGNAME", "TMPDIR", "DISPLAY", "EDITOR", "PORT", "HOST", "DEBUG", "PROMPT",
     "RESULT", "LOG_DIR", "MODEL_DIR", "JOB_STATE_DIR", "KUBERNETES_PORT", "NODE_NAME",
     # SEED is short: one letter changed, added or removed makes ordinary words of it
     "SEEN", "SEEK", "NEED", "SEE", "SEEDS", "BASH_FUNC_x%%", ""],
)  # fmt: skip
def test_other_programs_names_are_not_taken_for_typos(name):
    assert names.intended(name) is None


def test_the_jobs_own_names_are_known_and_never_near_misses():
    for name in names.KNOWN:
        assert names.is_known(name) and names.intended(name) is None, name
    assert {"DATA_DIR", "RESULT_DIR", "TRAINING_ID", "COS_ACCESS_KEY_ID_FILE"} <= set(names.KNOWN)


def test_epoch_in_the_environment_warns_once_and_fails_check(tmp_path, mnist_dir):
    """The issue's case: EPOCH=3 meant a 3-epoch smoke run. `config` still shows the recipe's
    epochs, with one warning naming EPOCHS; `check` fails on it (78)."""
    write_idx_dir(tmp_path / "data", small_slice(mnist_dir))
    env = job_env(EPOCH="3", DATA_URI=str(tmp_path / "data"), OUTPUT_URI=str(tmp_path / "out"))

    shown = cli("config", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    cfg = json.loads(shown.stdout)
    assert cfg["training"]["epochs"] != 3 and cfg["sources"]["EPOCHS"] == "recipe"
    (warned,) = warnings(shown.stderr)
    assert warned["event"] == "misspelled_variable"
    assert (warned["name"], warned["did_you_mean"], warned["where"]) == (
        "EPOCH", "EPOCHS", "environment",
    )  # fmt: skip

    checked = cli("check", "--json", env=env, cwd=tmp_path)
    assert checked.returncode == EXIT_CONFIG, checked.stdout + checked.stderr
    rows = {row["check"]: row for row in map(json.loads, checked.stdout.splitlines())}
    assert not rows["config"]["passed"] and rows["config"]["exit_code"] == EXIT_CONFIG
    assert rows["config"]["detail"] == (
        "environment: EPOCH is not a variable: did you mean EPOCHS?; "
        "if EPOCH is another program's, set EPOCHS too"
    )
    assert rows["data"]["passed"], "the other checks still run and report"
    assert warnings(checked.stderr) == [], "said once per process (`cli` runs in this one)"


def small_slice(mnist_dir):
    from job.training import data

    ds = data.load("mnist", mnist_dir).limited(30, 10)
    return {k: getattr(ds, k) for k in data.IDX_FILES}


def test_a_near_miss_in_dotenv_is_a_config_error_naming_file_name_and_variable(tmp_path):
    (tmp_path / ".env").write_text("EPOCHS=3\nTRAIN_LIMT=100\nCOS_SECRET_ACESS_KEY=s3cr3t-v4lue\n")
    proc = cli("config", env=job_env(), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stdout == ""
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line == (
        "error: .env: TRAIN_LIMT is not a variable: did you mean TRAIN_LIMIT? "
        "(also COS_SECRET_ACESS_KEY: COS_SECRET_ACCESS_KEY?)"
    )
    assert "s3cr3t-v4lue" not in proc.stderr, "a misspelled secret's value is still a secret"
    assert "100" not in line


def test_dotenv_names_the_job_does_not_read_warn_unless_a_library_reads_them(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(
        "TF_ENABLE_ONEDNN_OPTS=0\nOMP_PROC_BIND=true\nKERAS_HOME=/tmp/k\nAWS_PROFILE=dev\n"
        "CUDA_VISIBLE_DEVICES=0\nDATA_DIR=/data\nMY_NOTE=hello\nEMPTY_ONE=\n"
    )
    proc = cli("config", env=job_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (warned,) = warnings(proc.stderr)
    assert warned["event"] == "unknown_variable"
    assert (warned["name"], warned["where"]) == ("MY_NOTE", ".env")
    assert "hello" not in proc.stderr

    # `submit --backend local` gives the run the names meant for it (its libraries', and the
    # unknown one): the child's environment is these over the submitter's.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_PROC_BIND", raising=False)
    monkeypatch.setenv("KERAS_HOME", "/from/the/environment")
    passed = local.not_the_jobs(config.read_environment())
    assert passed["TF_ENABLE_ONEDNN_OPTS"] == "0" and passed["MY_NOTE"] == "hello"
    assert passed["AWS_PROFILE"] == "dev" and passed["OMP_PROC_BIND"] == "true"
    assert "KERAS_HOME" not in passed, "the environment wins, as for the job's own names"
    assert "DATA_DIR" not in passed, "the job's own names: the child reads them from .env"


def test_config_says_where_each_value_came_from(tmp_path):
    key = tmp_path / "cos-secret"
    key.write_text("a-secret-access-key-42\n")
    (tmp_path / ".env").write_text(
        f"BATCH_SIZE=64\nEPOCHS=9\nCOS_SECRET_ACCESS_KEY_FILE={key}\nCOS_ACCESS_KEY_ID=id-12345678\n"
    )
    env = job_env(EPOCHS="3", TRAINING_ID="training-AbC123", RECIPE="seed")
    proc = cli("config", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    sources = shown["sources"]
    assert set(sources) == {v.name for v in config.VARIABLES}
    assert sources["EPOCHS"] == "environment" and shown["training"]["epochs"] == 3
    assert sources["BATCH_SIZE"] == ".env" and shown["training"]["batch_size"] == 64
    assert sources["RECIPE"] == "environment"
    assert sources["LEARNING_RATE"] == "recipe"
    assert sources["RUN_ID"] == "environment (TRAINING_ID)"
    assert sources["SEED"] == sources["OUTPUT_URI"] == "default"
    assert sources["COS_SECRET_ACCESS_KEY"] == ".env (COS_SECRET_ACCESS_KEY_FILE)"
    assert sources["COS_ACCESS_KEY_ID"] == ".env"
    assert shown["storage"]["secret_access_key"] == shown["storage"]["access_key_id"] == "***"
    assert "a-secret-access-key-42" not in proc.stdout + proc.stderr
    assert "id-12345678" not in proc.stdout
    assert warnings(proc.stderr) == [], "nothing unknown here"


# Other programs' names one typo from a variable, each beside the setting it is near (review 4).
OTHERS_BESIDE_THEIR_SETTING = {
    "LOGLEVEL": "INFO", "LOG_LEVEL": "info",
    "DATA_URL": "https://example.com/x", "DATADIR": "/var/lib/x", "DATA_URI": "/data",
    "OUTPUT_URL": "https://example.com/y", "OUTPUT_URI": "/out",
    "RESULTS_DIR": "/r", "RESULT_DIR": "/wml/results",
    "NTHREADS": "8", "THREAD": "1", "THREADS": "2",
    "MODEL_NAMES": "a,b", "MODEL_NAME": "mnist",
    "WML_URI": "u", "WML_URL": "https://wml.example.com",
}  # fmt: skip


def test_a_near_miss_of_a_setting_that_is_set_is_another_programs_name():
    """OUTPUT_URL beside OUTPUT_URI loses no setting: in the environment it is not a near miss
    (no warning, `check` passes); in .env merely an unknown name (a warning, not exit 78)."""
    assert names.unknown({}, OTHERS_BESIDE_THEIR_SETTING, ".env") == []
    found = names.unknown({"OUTPUT_URL": "x", "EPOCH": "3"}, {"OUTPUT_URI": "/out"}, ".env")
    assert found == [names.Unknown("OUTPUT_URL", ".env"), names.Unknown("EPOCH", ".env", "EPOCHS")]
    # the setting counts as set under any of its names: a fallback, a secret's _FILE pointer
    assert names.unknown({}, {"DATADIR": "/d", "DATA_DIR": "/wml/data"}, "") == []
    assert (
        names.unknown({}, {"COS_SECRET_ACESS_KEY": "s", "AWS_SECRET_ACCESS_KEY_FILE": "/k"}, "")
        == []
    )
    # alone, each is still the typo it looks like
    assert names.unknown({}, {"LOGLEVEL": "INFO"}, "") == [
        names.Unknown("LOGLEVEL", names.ENVIRONMENT, "LOG_LEVEL")
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("WORKERS_PORT", "tcp://10.0.0.1:2222"), ("WORKERS_PORT", "udp://10.0.0.1:53"),
     ("WORKERS_SERVICE_HOST", "10.0.0.1"), ("WORKERS_SERVICE_PORT", "2222"),
     ("WORKERS_SERVICE_PORT_GRPC", "2222"), ("WORKERS_PORT_2222_TCP_PORT", "2222"),
     ("WORKER_SERVICE_PORT", "2222")],
)  # fmt: skip
def test_kubernetes_service_links_are_never_typos(name, value):
    """A Service named `workers` makes the kubelet set WORKERS_PORT=tcp://..., one letter from
    WORKER_PORT, in every pod of the namespace."""
    assert names.is_service_link(name, value)
    assert names.unknown({}, {name: value}, "") == []
    assert not names.is_service_link("WORKERS_PORT", "2222"), "a typed port is still a typo"


def test_check_passes_other_programs_names_beside_the_settings_they_are_near(tmp_path):
    env = job_env(**{**OTHERS_BESIDE_THEIR_SETTING, "OUTPUT_URI": str(tmp_path / "out")})
    env["WORKERS_PORT"] = "tcp://10.0.0.1:2222"
    checked = cli("check", "--json", env=env, cwd=tmp_path)
    rows = {row["check"]: row for row in map(json.loads, checked.stdout.splitlines())}
    assert rows["config"]["passed"], rows["config"]
    assert not [w for w in warnings(checked.stderr) if "variable" in w["event"]]


@pytest.mark.parametrize(
    ("line", "shown", "problem"),
    [(b"'A=B'=1\n", "'A=B'", "a name with `=`"), (b"'MY NOTE'=1\n", "'MY NOTE'", "a space"),
     (b"MY_NOTE=a\0b\n", "'MY_NOTE'", "a value with a NUL")],
)  # fmt: skip
def test_a_dotenv_name_no_environment_can_hold_is_a_config_error(tmp_path, line, shown, problem):
    """python-dotenv takes quoted keys as written; `submit --backend local` then failed making
    the run's environment (ValueError, exit 70). Refused when read, naming file, line and name."""
    (tmp_path / ".env").write_bytes(b"EPOCHS=3\n" + line)
    proc = cli("config", env=job_env(), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    (error,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert error.startswith("error: ENV_FILE='.env' is invalid") and f"line 2, {shown}" in error
    assert problem in error and "\0" not in error


def test_an_empty_environment_value_hiding_dotenvs_is_said(tmp_path):
    """`EPOCHS=` (a templated manifest) wins over .env's EPOCHS=3 and means unset: the recipe's
    epochs are used. Said in a warning and in `sources`, never silently."""
    (tmp_path / ".env").write_text("EPOCHS=3\nBATCH_SIZE=64\n")
    proc = cli("config", env=job_env(EPOCHS="", BATCH_SIZE=" "), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["training"]["epochs"] != 3
    assert shown["sources"]["EPOCHS"] == (
        "recipe (EPOCHS is empty in the environment, hiding .env's)"
    )
    hidden = {w["name"]: w for w in warnings(proc.stderr) if w["event"] == "hidden_variable"}
    assert set(hidden) == {"EPOCHS", "BATCH_SIZE"}
    assert hidden["EPOCHS"]["where"] == "environment" and ".env" in hidden["EPOCHS"]["note"]
