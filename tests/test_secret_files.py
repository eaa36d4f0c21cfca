"""Secrets given as files, `<NAME>_FILE` (Kubernetes and Docker secrets mounted as files): read
once at the edge, bounded, regular files only, checked like the variable itself, never shown."""

from __future__ import annotations

import json
import os

import pytest

from job import config
from job.config.environment import FILE_SUFFIX, MAX_SECRET_FILE_BYTES
from job.errors import EXIT_CONFIG, ConfigError
from job.launch.backend import forwarded
from tests.support.jobs import cli, job_env

# Distinctive, so every output can be searched for it.
VALUE = "CANARYFILESECRETq1w2e3r4t5y6u7i8o9p0"


def secret_file(tmp_path, content: bytes | str, name: str = "key") -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return str(path)


def section_value(cfg: config.Config, name: str) -> object:
    """The value the configuration holds for secret variable `name` (or a fallback of one)."""
    (var,) = [v for v in config.VARIABLES if name in (v.name, *v.fallbacks)]
    section = getattr(cfg, var.section) if var.section else cfg
    return getattr(section, var.attr)


# A secret whose parser wants more than a key's shape, holding VALUE.
SHAPED = {"NOTIFY_URL": f"https://hooks.example.com/services/{VALUE}"}


@pytest.mark.parametrize("name", sorted(config.SECRET_NAMES))
def test_every_secret_can_be_given_as_a_file(name, tmp_path):
    """Every name a secret is read under, derived from the settings table, not a list here."""
    value = SHAPED.get(name, VALUE)
    path = secret_file(tmp_path, value + "\n")
    env = config.read_environment({name + FILE_SUFFIX: path})
    assert env[name] == value and name + FILE_SUFFIX not in env, "the path does not travel on"
    cfg = config.from_env(env)
    assert section_value(cfg, name) == value
    assert value in cfg.secrets(), "scrubbed from every log event and error line"
    assert VALUE not in json.dumps(cfg.redacted())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (VALUE, VALUE),
        (VALUE + "\n", VALUE),
        (VALUE + "\r\n", VALUE),
        (f"  {VALUE}  \n", VALUE),  # stripped like any value
    ],
)
def test_the_trailing_newline_is_not_part_of_the_key(content, expected, tmp_path):
    path = secret_file(tmp_path, content)
    cfg = config.load({"COS_SECRET_ACCESS_KEY_FILE": path})
    assert cfg.storage.secret_access_key == expected


def test_a_file_as_kubernetes_mounts_it_is_followed_through_its_links(tmp_path):
    """A Secret volume: each key a link to `..data/<key>`, `..data` a link to a dated folder."""
    dated = tmp_path / "..2026_01_01_00_00_00.1"
    dated.mkdir()
    (dated / "secret_access_key").write_text(VALUE)
    (dated / "secret_access_key").chmod(0o400)
    (tmp_path / "..data").symlink_to(dated.name)
    (tmp_path / "secret_access_key").symlink_to("..data/secret_access_key")
    path = str(tmp_path / "secret_access_key")
    assert config.load({"COS_SECRET_ACCESS_KEY_FILE": path}).storage.secret_access_key == VALUE


def test_a_dotenv_file_may_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = secret_file(tmp_path, VALUE)
    (tmp_path / ".env").write_text(f"WML_APIKEY_FILE={path}\n")
    assert config.load({}).wml.apikey == VALUE


def test_the_largest_file_allowed_is_read_and_one_byte_more_is_refused(tmp_path):
    exact = secret_file(tmp_path, "k" * MAX_SECRET_FILE_BYTES, "exact")
    assert len(config.load({"WML_TOKEN_FILE": exact}).wml.token) == MAX_SECRET_FILE_BYTES
    big = secret_file(tmp_path, VALUE + "k" * MAX_SECRET_FILE_BYTES, "big")
    with pytest.raises(ConfigError) as err:
        config.load({"WML_TOKEN_FILE": big})
    assert err.value.variable == "WML_TOKEN_FILE" and err.value.exit_code == EXIT_CONFIG
    assert str(MAX_SECRET_FILE_BYTES) in str(err.value) and VALUE not in str(err.value)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a FIFO for reading would wait for a writer forever: it is opened non-blocking
    and refused as not a regular file (pytest-timeout is only the safety net)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="regular file") as err:
        config.load({"COS_ACCESS_KEY_ID_FILE": str(fifo)})
    assert err.value.variable == "COS_ACCESS_KEY_ID_FILE"


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_other_files_that_are_not_regular_are_refused(kind, tmp_path):
    path = str(tmp_path) if kind == "folder" else "/dev/zero"
    with pytest.raises(ConfigError, match="regular file") as err:
        config.load({"COS_SECRET_ACCESS_KEY_FILE": path})
    assert err.value.variable == "COS_SECRET_ACCESS_KEY_FILE"


def test_setting_a_secret_and_its_file_is_refused(tmp_path):
    path = secret_file(tmp_path, VALUE)
    with pytest.raises(ConfigError, match="COS_SECRET_ACCESS_KEY is set") as err:
        config.load(
            {"COS_SECRET_ACCESS_KEY": "other-secret-value", "COS_SECRET_ACCESS_KEY_FILE": path}
        )
    assert err.value.variable == "COS_SECRET_ACCESS_KEY_FILE"
    assert VALUE not in str(err.value) and "other-secret-value" not in str(err.value)


def test_empty_values_count_as_unset_for_the_file_variable_too(tmp_path):
    path = secret_file(tmp_path, VALUE)
    cfg = config.load({"COS_SECRET_ACCESS_KEY": "", "COS_SECRET_ACCESS_KEY_FILE": path})
    assert cfg.storage.secret_access_key == VALUE
    assert config.load({"COS_SECRET_ACCESS_KEY_FILE": " "}).storage.secret_access_key is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\n", "empty"),
        (b"\xff\xfe" + VALUE.encode(), "UTF-8"),
        # Checked like the variable itself, the error naming the file's variable.
        (f"{VALUE}\n{VALUE}".encode(), "a file holding"),
        (f"{VALUE} two".encode(), "a file holding"),
    ],
)
def test_a_bad_file_is_refused_without_showing_its_content(content, expected, tmp_path):
    path = secret_file(tmp_path, content)
    with pytest.raises(ConfigError, match=expected) as err:
        config.load({"COS_SECRET_ACCESS_KEY_FILE": path})
    assert err.value.variable == "COS_SECRET_ACCESS_KEY_FILE"
    assert VALUE not in str(err.value)


def test_a_missing_file_is_exit_78_naming_the_variable(tmp_path):
    missing = str(tmp_path / "nowhere" / "key")
    proc = cli("config", env=job_env(COS_SECRET_ACCESS_KEY_FILE=missing), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    (line,) = proc.stderr.strip().splitlines()
    assert "COS_SECRET_ACCESS_KEY_FILE" in line and missing in line


def test_an_unreadable_file_is_exit_78_naming_the_variable(tmp_path):
    proc = cli("config", env=job_env(WML_APIKEY_FILE=str(tmp_path)), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and "WML_APIKEY_FILE" in proc.stderr


def test_the_value_never_appears_in_config_output_or_logs(tmp_path):
    key_id = secret_file(tmp_path, "CANARYKEYID" + VALUE + "\n", "key_id")
    key = secret_file(tmp_path, VALUE + "\n", "key")
    env = job_env(
        COS_ACCESS_KEY_ID_FILE=key_id, COS_SECRET_ACCESS_KEY_FILE=key, LOG_LEVEL="debug",
        OUTPUT_URI="s3://bucket-1/runs", COS_ENDPOINT="http://127.0.0.1:1", COS_MAX_ATTEMPTS="1",
    )  # fmt: skip
    shown = cli("config", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    storage = json.loads(shown.stdout)["storage"]
    assert storage["access_key_id"] == storage["secret_access_key"] == "***"
    # A command that logs and fails on the store (nothing listens there): its log events and
    # error line carry neither the values nor the files' content.
    failed = cli("runs", env=env, cwd=tmp_path)
    assert failed.returncode != 0 and failed.stderr
    for proc in (shown, failed):
        assert VALUE not in proc.stdout + proc.stderr


def test_the_submitter_forwards_values_never_paths(tmp_path):
    """docker gets the value in its 0600 env file, as for a secret given directly; Kubernetes
    gets neither (its pods read the Secret's own files); a host path would mean nothing there."""
    path = secret_file(tmp_path, VALUE)
    env = config.read_environment({"COS_SECRET_ACCESS_KEY_FILE": path, "RUN_ID": "fwd-1"})
    cfg = config.from_env(env)
    docker = forwarded(cfg, env, secrets=True)
    assert docker["COS_SECRET_ACCESS_KEY"] == VALUE
    assert not [k for k in docker if k.endswith(FILE_SUFFIX)] and path not in docker.values()
    k8s = forwarded(cfg, env, secrets=False)
    assert not set(k8s) & config.SECRET_NAMES and path not in k8s.values()
