"""Kubernetes manifests and the Dockerfile, checked as far as these machines allow: rendered with
kustomize, validated against the Kubernetes schemas, checked for what a schema cannot say, and
their environment wiring proven by running the job with exactly that environment."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from job.errors import EXIT_CONFIG, EXIT_DATA
from tests.support.jobs import ROOT, cli, job_env, run_job
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, all_objects, s3_client

OVERLAYS = ["cpu", "gpu", "multiworker"]
GPU_OVERLAYS = {"gpu", "multiworker"}
K8S_VERSION = "1.32"
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def venv_tool(name: str) -> str:
    """A command installed in this virtual environment (dev dependencies), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def job_specs(docs: list[dict]) -> list[dict]:
    """The Job spec of the Job and of the CronJob's template."""
    specs = [d["spec"] for d in docs if d["kind"] == "Job"]
    specs += [d["spec"]["jobTemplate"]["spec"] for d in docs if d["kind"] == "CronJob"]
    assert specs
    return specs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_schema_valid(overlay, tmp_path):
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(overlay)))
    proc = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_policy(overlay):
    for spec in job_specs(render(overlay)):
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert 0 < spec["backoffLimit"] <= 6
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        assert pod["terminationGracePeriodSeconds"] >= 30
        rules = spec["podFailurePolicy"]["rules"]
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert len(fail) == 1 and fail[0]["onExitCodes"]["operator"] == "In"
        # The job's own constants, not copies: a renumbered exit code fails this test.
        assert set(fail[0]["onExitCodes"]["values"]) == {EXIT_CONFIG, EXIT_DATA}
        assert fail[0]["onExitCodes"]["containerName"] == pod["containers"][0]["name"]
        ignore = [r for r in rules if r["action"] == "Ignore"]
        assert ignore == [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            }
        ]
        assert {r["action"] for r in rules} <= {"FailJob", "Ignore", "Count", "FailIndex"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_and_resources(overlay):
    for spec in job_specs(render(overlay)):
        pod = spec["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["imagePullPolicy"] in {"Always", "IfNotPresent", "Never"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        res = container["resources"]
        for section in ("requests", "limits"):
            for name in ("cpu", "memory"):
                assert QUANTITY.match(str(res[section][name])), (section, name)
        assert _bytes(res["requests"]["memory"]) <= _bytes(res["limits"]["memory"])
        gpu = res["limits"].get("nvidia.com/gpu")
        assert "nvidia.com/gpu" not in res["requests"], "GPU in limits only"
        tolerations = pod.get("tolerations", [])
        if overlay in GPU_OVERLAYS:
            assert gpu == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                tolerations
            )
        else:
            assert gpu is None and not tolerations


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    units.update({"G": 10**9, "T": 10**12})
    number, unit = re.match(r"^([0-9.]+)([A-Za-z]*)$", quantity).groups()
    return int(float(number) * units.get(unit, 1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_match_the_overlay(overlay):
    for spec in job_specs(render(overlay)):
        image = spec["template"]["spec"]["containers"][0]["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" in name
        assert tag.endswith("-gpu" if overlay in GPU_OVERLAYS else "-cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_only_from_the_secret(overlay):
    docs = render(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret with values in the overlay"
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    for cm in configmaps:
        assert not [k for k in cm["data"] if "SECRET" in k or "ACCESS_KEY" in k]
    for spec in job_specs(docs):
        env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
        for name in ("COS_ACCESS_KEY_ID", "COS_SECRET_ACCESS_KEY"):
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mnist-job-cos"
        literal = [e for e in env.values() if "value" in e]
        assert not [e for e in literal if re.search(r"SECRET|KEY|TOKEN|PASSWORD", e["name"])]
        run_id = env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert run_id == "metadata.labels['batch.kubernetes.io/job-name']"


def test_multiworker_is_an_indexed_job_behind_a_headless_service(tmp_path):
    docs = render("multiworker")
    assert not [d for d in docs if d["kind"] == "CronJob"]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["WORKERS"]["value"]) > 1
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert pod["subdomain"] == service["metadata"]["name"] == env["WORKER_SERVICE"]["value"]
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    port = int(env["WORKER_PORT"]["value"])
    assert service["spec"]["ports"][0]["port"] == port
    assert pod["containers"][0]["ports"][0]["containerPort"] == port

    # Each index's environment, as Kubernetes sets it, gives the job the same cluster.
    job_name = job["metadata"]["name"]
    expected = [f"{job_name}-{i}.mnist-workers:{port}" for i in range(spec["completions"])]
    for index in range(spec["completions"]):
        pod_env = container_env(docs, SECRETS, job_name)
        pod_env["JOB_COMPLETION_INDEX"] = str(index)
        proc = cli("config", env=job_env(**pod_env), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        cluster = json.loads(proc.stdout)["distribution"]["cluster"]
        assert cluster == {"spec": {"worker": expected}, "task_type": "worker", "task_index": index}


def test_cronjob_settings():
    (cron,) = [d for d in render("gpu") if d["kind"] == "CronJob"]
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0 and spec["timeZone"]
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert len(spec["schedule"].split()) == 5


def test_secret_example_holds_placeholders_only():
    secret = yaml.safe_load((ROOT / "k8s" / "secret.example.yaml").read_text())
    assert set(secret["stringData"]) == {"access_key_id", "secret_access_key"}
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())


SECRETS = {"mnist-job-cos/access_key_id": ACCESS_KEY, "mnist-job-cos/secret_access_key": SECRET_KEY}


def container_env(docs: list[dict], secrets: dict[str, str], job_name: str) -> dict[str, str]:
    """The environment Kubernetes would give the Job's container."""
    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    labels = {"batch.kubernetes.io/job-name": job_name}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
        else:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = labels[re.match(r"metadata\.labels\['(.+)'\]", path).group(1)]
    return env


@pytest.mark.slow
def test_job_runs_with_exactly_the_manifest_environment(s3_endpoint, tmp_path, mnist_dir):
    docs = render("cpu")
    secrets = {
        "mnist-job-cos/access_key_id": ACCESS_KEY,
        "mnist-job-cos/secret_access_key": SECRET_KEY,
    }
    env = container_env(docs, secrets, job_name="mnist-train")
    bucket = env["OUTPUT_URI"].removeprefix("s3://").split("/")[0]
    s3_client(s3_endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    # The only substitutions: the test S3 server for IBM's endpoint, and a small real slice
    # (the image has MNIST baked in; here it is read from data/).
    env.update(COS_ENDPOINT=s3_endpoint, DATA_URI=str(mnist_dir))
    env.update(TRAIN_LIMIT="1000", TEST_LIMIT="200", EPOCHS="1", BATCH_SIZE="128")
    proc = run_job("train", env=job_env(**env), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    objects = all_objects(s3_endpoint, bucket)
    assert "runs/mnist-train/_SUCCESS" in objects, (
        "run id from the Job's name, results in the bucket"
    )
    assert json.loads(objects["runs/mnist-train/metrics.json"])["params"]["recipe"] == env["RECIPE"]


def test_dockerfile_passes_hadolint():
    proc = subprocess.run(
        [venv_tool("hadolint"), str(ROOT / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cpu_request_equals_the_limit_the_job_sizes_its_threads_from(overlay, tmp_path):
    from job.training import cpus

    for spec in job_specs(render(overlay)):
        res = spec["template"]["spec"]["containers"][0]["resources"]
        request, limit = res["requests"]["cpu"], res["limits"]["cpu"]
        assert request == limit and limit.isdigit(), "whole cores, request = limit"
        # The limit as the container sees it (cgroup v2 cpu.max) on a 64-core node.
        (tmp_path / "cpu.max").write_text(f"{int(limit) * 100000} 100000\n")
        assert cpus.usable(None, tmp_path, cpus=64) == (int(limit), "cgroup quota")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_only_the_cronjob_promotes(overlay):
    docs = render(overlay)
    for doc in docs:
        if doc["kind"] not in ("Job", "CronJob"):
            continue
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
        assert env.get("PROMOTE") == ("if-better" if doc["kind"] == "CronJob" else None)
