"""The bucket store against a real S3 server on loopback, through boto3 with COS settings."""

from __future__ import annotations

import hashlib
import json
import signal
import time

import numpy as np
import pytest

from job import config
from job.errors import EXIT_CONFIG, EXIT_PREEMPTED, EXIT_TRANSIENT, ConfigError, TransientError
from job.runstore import layout
from job.runstore import s3 as bucket_mod
from job.training import data
from job.training.data import idx_bytes
from tests.support.faultproxy import FaultProxy, Faults
from tests.support.jobs import cli, job_env, run_job, start_job, train_with
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, all_objects, cos_env, s3_client


def store_for(endpoint: str, uri: str, **env: str):
    cfg = config.from_env({**cos_env(endpoint, **env), "OUTPUT_URI": uri})
    return bucket_mod.S3Store(cfg.storage, layout.parse("OUTPUT_URI", uri))


@pytest.fixture(scope="module")
def mnist_slice(mnist_dir):
    ds = data.load("mnist", str(mnist_dir)).limited(3000, 500)
    return {k: getattr(ds, k) for k in data.IDX_FILES}


def upload_slice(endpoint: str, bucket: str, arrays: dict, prefix: str = "mnist") -> str:
    client = s3_client(endpoint)
    for key, stem in data.IDX_FILES.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{stem}", Body=idx_bytes(arrays[key]))
    return f"s3://{bucket}/{prefix}"


def train_env(endpoint: str, bucket: str, data_uri: str, run_id: str, **extra: str):
    base = {
        "RUN_ID": run_id,
        "RECIPE": "seed",
        "DATA_URI": data_uri,
        "OUTPUT_URI": f"s3://{bucket}/runs",
        "EPOCHS": "2",
    }
    return job_env(**cos_env(endpoint), **{**base, **extra})


def assert_published(endpoint: str, bucket: str, run_id: str) -> dict:
    """_SUCCESS lists every object of the run, and each object matches its size and hash."""
    objects = all_objects(endpoint, bucket)
    prefix = f"runs/{run_id}/"
    manifest = json.loads(objects[prefix + "_SUCCESS"])
    for entry in manifest["files"]:
        body = objects[prefix + entry["path"]]
        assert len(body) == entry["size"] and hashlib.sha256(body).hexdigest() == entry["sha256"]
    run_keys = {k[len(prefix) :] for k in objects if k.startswith(prefix)}
    assert run_keys == {e["path"] for e in manifest["files"]} | {"_SUCCESS", "status.json"}
    assert json.loads(objects[prefix + "status.json"])["state"] == "succeeded"
    return json.loads(objects[prefix + "metrics.json"])


# --- the store itself ---


def test_store_operations(s3_endpoint, bucket, tmp_path):
    store = store_for(s3_endpoint, f"s3://{bucket}/some/prefix")
    store.put_bytes("run/a.json", b"{}")
    assert store.get_bytes("run/a.json", limit=2**20) == b"{}" and store.exists("run/a.json")
    assert store.get_bytes("run/missing", limit=2**20) is None and not store.exists("run/missing")
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(bucket_mod.MULTIPART_THRESHOLD + 1_000_000))
    store.put_file("run/big.bin", big)
    assert store.get_bytes("run/big.bin", limit=2**30) == big.read_bytes()
    head = s3_client(s3_endpoint).head_object(Bucket=bucket, Key="some/prefix/run/big.bin")
    assert "-" in head["ETag"], "went up as a multipart upload"
    assert store.list("run") == ["run/a.json", "run/big.bin"]
    store.delete("run/a.json")
    assert store.list("run") == ["run/big.bin"]


def test_unknown_bucket_names_output_uri(s3_endpoint):
    with pytest.raises(ConfigError, match="OUTPUT_URI") as err:
        store_for(s3_endpoint, "s3://no-such-bucket-here/x").put_bytes("k", b"v")
    assert err.value.exit_code == EXIT_CONFIG


def test_wrong_keys_are_a_configuration_error(s3_endpoint, bucket):
    with FaultProxy(s3_endpoint, Faults(access_key="SOMEONEELSE")) as proxy:
        store = store_for(proxy.url, f"s3://{bucket}/x")
        with pytest.raises(ConfigError, match="COS_ACCESS_KEY_ID") as err:
            store.put_bytes("k", b"v")
    assert ACCESS_KEY not in str(err.value) and SECRET_KEY not in str(err.value)


def test_unreachable_endpoint_is_transient(bucket):
    store = store_for("http://127.0.0.1:9", f"s3://{bucket}/x", COS_MAX_ATTEMPTS="2")
    with pytest.raises(TransientError, match=r"COS_ENDPOINT=http://127\.0\.0\.1:9"):
        store.put_bytes("k", b"v")


@pytest.mark.parametrize("condition", [{}, {"if_none_match": True}, {"if_match": '"abc"'}])
def test_a_dropped_connection_is_transient_not_a_bug(s3_endpoint, bucket, condition):
    """Every connection dropped and no retry left: botocore's ConnectionClosedError carries no
    response, and a write (conditional or not) must still be exit 75, never 70."""
    with FaultProxy(s3_endpoint, Faults(every_drop=1)) as proxy:
        store = store_for(proxy.url, f"s3://{bucket}/x", COS_MAX_ATTEMPTS="1")
        with pytest.raises(TransientError, match="cannot write"):
            store.put_bytes("k", b"v", **condition)


@pytest.mark.parametrize(
    ("variable", "uri"),
    [
        ("OUTPUT_URI", "s3://"),
        ("OUTPUT_URI", "s3://Upper_Case/x"),
        ("OUTPUT_URI", "s3://ab/x"),
        ("DATA_URI", "s3://bad..name/x"),
        ("DATA_URI", "gs://bucket/x"),
        ("OUTPUT_URI", "s3:/bucket/x"),  # a typo must not become a local folder "s3:"
        ("OUTPUT_URI", "S3://bucket/x"),
        ("OUTPUT_URI", "s3://bucket/../x"),
        ("OUTPUT_URI", "/tmp/" + "x" * 2000),
    ],
)
def test_malformed_uris_fail_before_anything_runs(variable, uri):
    with pytest.raises(ConfigError) as err:
        layout.check(config.from_env({**cos_env("http://127.0.0.1:1"), variable: uri}))
    assert err.value.variable == variable


def test_s3_uri_needs_keys():
    with pytest.raises(ConfigError, match="COS_ACCESS_KEY_ID"):
        layout.check(config.from_env({"OUTPUT_URI": "s3://bucket/x"}))


def test_aws_variables_are_fallbacks():
    cfg = config.from_env(
        {"AWS_ACCESS_KEY_ID": "akid-0001", "AWS_SECRET_ACCESS_KEY": "secret-0001",
         "AWS_ENDPOINT_URL": "http://h:1"}
    )  # fmt: skip
    s = cfg.storage
    assert (s.access_key_id, s.secret_access_key, s.endpoint) == (
        "akid-0001", "secret-0001", "http://h:1",
    )  # fmt: skip
    assert cfg.redacted()["storage"]["secret_access_key"] == "***"


# --- the job end to end ---


@pytest.mark.slow
def test_train_from_bucket_to_bucket(s3_endpoint, bucket, mnist_slice, tmp_path):
    data_uri = upload_slice(s3_endpoint, bucket, mnist_slice)
    result = train_with(train_env(s3_endpoint, bucket, data_uri, "s3-e2e"))
    metrics = assert_published(s3_endpoint, bucket, "s3-e2e")
    assert result["run_id"] == metrics["run_id"] == "s3-e2e"
    assert metrics["data_source"] == data_uri and metrics["n_train"] == 3000
    assert metrics["test_accuracy"] > 0.8
    assert not [k for k in all_objects(s3_endpoint, bucket) if "/checkpoints/" in k]


def wait_for_checkpoint(endpoint, bucket, run_id, epoch: int, proc) -> None:
    client = s3_client(endpoint)
    key = f"runs/{run_id}/checkpoints/latest.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            meta = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            if meta["epoch"] >= epoch:
                return
        except client.exceptions.NoSuchKey:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint for epoch {epoch} (exit {proc.poll()})")


def checkpoint_epoch(endpoint, bucket, run_id) -> int:
    key = f"runs/{run_id}/checkpoints/latest.json"
    return json.loads(s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read())[
        "epoch"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3])
def test_sigkill_then_rerun_resumes(kill_after, s3_endpoint, bucket, mnist_slice, tmp_path):
    run_id = f"kill-{kill_after}"
    env = train_env(
        s3_endpoint, bucket, upload_slice(s3_endpoint, bucket, mnist_slice), run_id, EPOCHS="8"
    )
    proc = start_job("train", env=env, cwd=tmp_path)
    wait_for_checkpoint(s3_endpoint, bucket, run_id, kill_after, proc)
    proc.kill()
    proc.communicate()
    saved = checkpoint_epoch(s3_endpoint, bucket, run_id)
    assert kill_after <= saved < 8, "killed mid-run, after the checkpoint reached the bucket"

    rerun = run_job("train", env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    events = [json.loads(line) for line in rerun.stderr.splitlines() if line.startswith("{")]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[0]["from_epoch"] == saved
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(saved + 1, 9))
    metrics = assert_published(s3_endpoint, bucket, run_id)
    assert metrics["resumed_from_epoch"] == saved
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 9))


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(s3_endpoint, bucket, mnist_slice, tmp_path):
    run_id = "term"
    env = train_env(
        s3_endpoint, bucket, upload_slice(s3_endpoint, bucket, mnist_slice), run_id, EPOCHS="8"
    )
    proc = start_job("train", env=env, cwd=tmp_path)
    wait_for_checkpoint(s3_endpoint, bucket, run_id, 1, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 30, "well inside the grace period"
    assert proc.returncode == EXIT_PREEMPTED, stderr[-2000:]
    objects = all_objects(s3_endpoint, bucket)
    status = json.loads(objects[f"runs/{run_id}/status.json"])
    assert status["state"] == "preempted"
    saved = checkpoint_epoch(s3_endpoint, bucket, run_id)
    assert status["epoch"] == saved >= 1
    assert f"runs/{run_id}/_SUCCESS" not in objects and f"runs/{run_id}/_FAILURE" not in objects

    rerun = run_job("train", env=env, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert '"event": "resumed"' in rerun.stderr
    assert assert_published(s3_endpoint, bucket, run_id)["resumed_from_epoch"] == saved


@pytest.mark.slow
def test_flaky_storage_still_publishes(s3_endpoint, bucket, mnist_slice, tmp_path):
    data_uri = upload_slice(s3_endpoint, bucket, mnist_slice)
    faults = Faults(every_503=4, every_drop=7, latency_s=0.01)
    with FaultProxy(s3_endpoint, faults) as proxy:
        train_with(train_env(proxy.url, bucket, data_uri, "flaky"))
    assert faults.counts["503"] > 3 and faults.counts["dropped"] > 2
    assert_published(s3_endpoint, bucket, "flaky")


@pytest.mark.slow
def test_permanent_fault_fails_with_75_and_no_success(s3_endpoint, bucket, mnist_slice, tmp_path):
    data_uri = upload_slice(s3_endpoint, bucket, mnist_slice)
    with FaultProxy(s3_endpoint, Faults(fail_path="/model/")) as proxy:
        env = train_env(proxy.url, bucket, data_uri, "broken", COS_MAX_ATTEMPTS="2")
        proc = run_job("train", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_TRANSIENT, proc.stderr[-2000:]
    assert "error: cannot write" in proc.stderr and "model/" in proc.stderr
    objects = all_objects(s3_endpoint, bucket)
    assert "runs/broken/_SUCCESS" not in objects
    failure = json.loads(objects["runs/broken/_FAILURE"])
    assert "TransientError" in failure["reason"] and len(failure["reason"]) <= 1000
    assert failure["last_log"], "the last log lines travel with the failure"


@pytest.fixture(scope="module")
def kept_run(s3_endpoint, mnist_slice, tmp_path_factory):
    """A finished run that the bad-input cases below must leave exactly as it is."""
    bucket = "kept-run"
    s3_client(s3_endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-south"}
    )
    good = train_env(s3_endpoint, bucket, upload_slice(s3_endpoint, bucket, mnist_slice), "keep")
    assert run_job("train", env=good, cwd=tmp_path_factory.mktemp("kept")).returncode == 0
    return s3_endpoint, bucket, good


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "overrides", "code", "culprit"),
    [
        (
            "endpoint",
            {"COS_ENDPOINT": "http://127.0.0.1:9", "COS_MAX_ATTEMPTS": "2"},
            75,
            "COS_ENDPOINT",
        ),
        ("bucket", {"OUTPUT_URI": "s3://no-such-bucket-xyz/runs"}, 78, "OUTPUT_URI"),
        ("uri", {"OUTPUT_URI": "s3://Bad_Bucket/runs"}, 78, "OUTPUT_URI"),
        ("endpoint-url", {"COS_ENDPOINT": "not a url"}, 78, "COS_ENDPOINT"),
        ("no-secret", {"COS_SECRET_ACCESS_KEY": ""}, 78, "COS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_storage_input_loses_nothing(case, overrides, code, culprit, kept_run, tmp_path):
    s3_endpoint, bucket, good = kept_run
    before = all_objects(s3_endpoint, bucket)

    proc = run_job("train", env={**good, "RUN_ID": f"bad-{case}", **overrides}, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and culprit in errors[0]
    after = all_objects(s3_endpoint, bucket)
    assert {k: v for k, v in after.items() if k.startswith("runs/keep/")} == {
        k: v for k, v in before.items() if k.startswith("runs/keep/")
    }
    assert not [k for k in after if k.startswith(f"runs/bad-{case}/_SUCCESS")]


@pytest.mark.slow
def test_wrong_keys_end_to_end(s3_endpoint, bucket, mnist_slice, tmp_path):
    data_uri = upload_slice(s3_endpoint, bucket, mnist_slice)
    with FaultProxy(s3_endpoint, Faults(access_key="THEREALKEY")) as proxy:
        proc = run_job("train", env=train_env(proxy.url, bucket, data_uri, "keys"), cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]
    assert "COS_ACCESS_KEY_ID" in proc.stderr and ACCESS_KEY not in proc.stderr


@pytest.mark.slow
def test_no_credential_appears_anywhere(s3_endpoint, bucket, mnist_slice, tmp_path):
    """The canary: distinctive keys, a good run and a failing one, then search everything."""
    data_uri = upload_slice(s3_endpoint, bucket, mnist_slice)
    env = train_env(s3_endpoint, bucket, data_uri, "canary", LOG_LEVEL="info")
    outputs = [run_job("train", env=env, cwd=tmp_path)]
    outputs.append(cli("config", env=env, cwd=tmp_path))
    failing = {**env, "RUN_ID": "canary-fail", "DATA_URI": f"s3://{bucket}/nothing-here"}
    outputs.append(run_job("train", env=failing, cwd=tmp_path))
    assert outputs[0].returncode == 0 and outputs[2].returncode == 65
    texts = [p.stdout + p.stderr for p in outputs]
    texts += [body.decode("latin-1") for body in all_objects(s3_endpoint, bucket).values()]
    for text in texts:
        assert ACCESS_KEY not in text and SECRET_KEY not in text
    assert "***" in outputs[1].stdout


@pytest.mark.slow
def test_wml_result_dir_is_the_default_output(tmp_path, mnist_dir):
    env = job_env(
        RESULT_DIR=str(tmp_path / "results"),
        DATA_DIR=str(mnist_dir),
        TRAINING_ID="training-AbC123",
        TRAIN_LIMIT="500",
        TEST_LIMIT="100",
        EPOCHS="1",
        RECIPE="seed",
    )
    train_with(env)  # the platform's names, read as the command line reads them
    assert (tmp_path / "results" / "training-abc123" / "_SUCCESS").is_file()
