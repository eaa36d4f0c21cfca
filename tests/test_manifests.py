"""Kubernetes manifests and the Dockerfile, checked as far as these machines allow: rendered with
kustomize, validated against the Kubernetes schemas, checked for what a schema cannot say, and
their environment wiring proven by running the job with exactly that environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from job import config
from job.errors import EXIT_CONFIG, EXIT_DATA
from job.launch import k8s
from tests.support.jobs import ROOT, cli, job_env, run_job
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, all_objects, s3_client

OVERLAYS = ["cpu", "gpu", "multiworker"]
GPU_OVERLAYS = {"gpu", "multiworker"}
K8S_VERSION = "1.32"
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
PINNED = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)+:[\w.-]+@sha256:[0-9a-f]{64}$")
CLUSTER_SCOPED = {"Namespace"}
NAME = "app.kubernetes.io/name"
NOTIFY_SECRET = "mnist-job-notify"  # the optional Secret of the CronJob's webhook


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


def pod_templates(docs: list[dict]) -> list[dict]:
    """Every pod template: the Job's and the CronJob's."""
    return [spec["template"] for spec in job_specs(docs)]


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
def test_images_are_pinned_by_digest_and_match_the_overlay(overlay):
    for template in pod_templates(render(overlay)):
        pod = template["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            image = container["image"]
            assert PINNED.match(image), f"{image}: name:tag@sha256:<64 hex>"
            tag = image.split("@")[0].rpartition(":")[2]
            assert tag != "latest" and tag.endswith("-gpu" if overlay in GPU_OVERLAYS else "-cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_only_from_the_secret_as_files(overlay):
    docs = render(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret with values in the overlay"
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    for cm in configmaps:
        assert not set(cm["data"]) & config.SECRET_NAMES
        assert not [k for k in cm["data"] if "SECRET" in k or "ACCESS_KEY" in k]
    example = yaml.safe_load((ROOT / "k8s" / "secret.example.yaml").read_text())
    for template in pod_templates(docs):
        pod = template["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        # No secret as a variable: neither by name, nor from a Secret by reference.
        assert not set(env) & config.SECRET_NAMES
        assert not [e for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
        assert not [s for s in container.get("envFrom", []) if "secretRef" in s]
        literal = [e for e in env.values() if "value" in e and not e["name"].endswith("_FILE")]
        assert not [e for e in literal if re.search(r"SECRET|KEY|TOKEN|PASSWORD", e["name"])]
        # The COS keys as files of a read-only 0400 volume of the Secret mnist-job-cos (and the
        # CronJob's webhook from its own Secret: test_the_cronjob_notifies_from_an_optional_secret).
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret_mounts = {
            m["mountPath"]: volumes[m["name"]]["secret"]
            for m in container["volumeMounts"]
            if "secret" in volumes[m["name"]]
        }
        assert all(m["readOnly"] for m in container["volumeMounts"] if "secret" in
                   volumes[m["name"]])  # fmt: skip
        for path in [p for p, s in secret_mounts.items() if s["secretName"] == NOTIFY_SECRET]:
            del secret_mounts[path]
            assert env.pop("NOTIFY_URL_FILE")["value"].startswith(path + "/")
        ((mount, secret),) = secret_mounts.items()
        assert secret["secretName"] == example["metadata"]["name"] == "mnist-job-cos"
        assert secret["defaultMode"] == 0o400
        files = {f"{mount}/{item['path']}": item["key"] for item in secret["items"]}
        assert set(files.values()) == set(example["stringData"])
        given = {e["name"]: e["value"] for e in env.values() if e["name"].endswith("_FILE")}
        assert {n.removesuffix("_FILE") for n in given} <= config.SECRET_NAMES
        assert {files[path] for path in given.values()} == set(example["stringData"])
        assert {n: files[p] for n, p in given.items()} == {
            "COS_ACCESS_KEY_ID_FILE": "access_key_id",
            "COS_SECRET_ACCESS_KEY_FILE": "secret_access_key",
        }
        run_id = env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert run_id == "metadata.labels['batch.kubernetes.io/job-name']"


def test_the_cronjob_notifies_from_an_optional_secret(tmp_path):
    """NOTIFY_URL_FILE names the key `url` of the optional Secret mnist-job-notify, mounted
    read-only 0400 like the COS keys; without that Secret the job starts and tells nobody."""
    (cron,) = [d for d in render("gpu") if d["kind"] == "CronJob"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (volume,) = [
        v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == NOTIFY_SECRET
    ]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert volume["secret"]["optional"] is True and volume["secret"]["defaultMode"] == 0o400
    assert volume["secret"]["items"] == [{"key": "url", "path": "url"}] and mount["readOnly"]
    assert env["NOTIFY_URL_FILE"] == f"{mount['mountPath']}/url"
    # The Secret absent: the kubelet mounts an empty folder, and the job has no webhook.
    (tmp_path / "notify").mkdir()
    absent = {"NOTIFY_URL_FILE": str(tmp_path / "notify" / "url")}
    assert config.load(absent).notify_url is None
    # Only the nightly CronJob tells: one-off Jobs and the other overlays do not mount it.
    for overlay in OVERLAYS:
        for d in render(overlay):
            if d["kind"] == "Job":
                assert NOTIFY_SECRET not in json.dumps(d)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_in_the_job_namespace(overlay):
    docs = render(overlay)
    namespace = k8s.namespace()
    assert namespace != "default"
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == namespace
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    # Set in one place: the component every overlay includes, nowhere else.
    for path in (ROOT / "k8s").rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        if path.parent.name == "namespace":
            assert kustomization["namespace"] == namespace
        else:
            assert "namespace" not in kustomization, path


def _policies(docs: list[dict], labels: dict[str, str]) -> list[dict]:
    """The NetworkPolicies that select a pod with these labels (same namespace: all are)."""
    return [
        d["spec"]
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and all(
            labels.get(k) == v for k, v in d["spec"]["podSelector"].get("matchLabels", {}).items()
        )
    ]


def _allowed(policies: list[dict], direction: str) -> set[tuple[str, int]]:
    """(protocol, port) pairs some rule of `direction` allows; a rule without ports would
    allow every port and fails the test."""
    allowed = set()
    for spec in policies:
        for rule in spec.get(direction, []):
            assert rule.get("ports"), f"an {direction} rule open on every port"
            allowed |= {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
    return allowed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_denies_all_but_dns_the_object_store_and_peers(overlay):
    docs = render(overlay)
    (deny,) = [
        d["spec"] for d in docs if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"] == {}
    ]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, "default deny"
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    endpoint = urlsplit(cm["data"]["COS_ENDPOINT"])
    endpoint_port = endpoint.port or {"https": 443, "http": 80}[endpoint.scheme]
    for template in pod_templates(docs):
        labels = template["metadata"]["labels"]
        policies = _policies(docs, labels)
        assert all(set(p["policyTypes"]) == {"Ingress", "Egress"} for p in policies)
        egress, ingress = _allowed(policies, "egress"), _allowed(policies, "ingress")
        expected = {
            ("UDP", 53),
            ("TCP", 53),
            ("TCP", k8s.OBJECT_STORE_PORT),
            ("TCP", endpoint_port),
        }
        if overlay == "multiworker":
            env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
            peers = {("TCP", int(env["WORKER_PORT"]))}
            assert ingress == peers and egress == expected | peers
            # Peers only: the rules on the worker port name the worker pods, nothing wider.
            for spec in policies:
                for rule in spec.get("ingress", []):
                    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [
                        spec["podSelector"]["matchLabels"]
                    ]
        else:
            assert ingress == set() and egress == expected
        (job_policy,) = [
            p for p in policies if p["podSelector"].get("matchLabels") == {NAME: "mnist-job"}
        ]
        dns, store = job_policy["egress"]
        assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}
        # The rule submit adds a custom endpoint port to (job/launch/k8s.py).
        assert store == _at(job_policy, k8s.OBJECT_STORE_RULE.removeprefix("/spec"))
        ((block,),) = [[t["ipBlock"] for t in store["to"]]]
        assert "169.254.0.0/16" in block.get("except", []), "no cloud metadata service"


def _at(doc: dict, pointer: str) -> object:
    for part in pointer.strip("/").split("/"):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


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
    (workers,) = [d for d in docs if d["metadata"]["name"] == "mnist-workers" and
                  d["kind"] == "NetworkPolicy"]  # fmt: skip
    ports = [p["port"] for rules in ("ingress", "egress") for r in workers["spec"][rules]
             for p in r["ports"]]  # fmt: skip
    assert ports == [port, port], "the NetworkPolicy admits the peers on the worker port"

    # Each index's environment, as Kubernetes sets it, gives the job the same cluster.
    job_name = job["metadata"]["name"]
    expected = [f"{job_name}-{i}.mnist-workers:{port}" for i in range(spec["completions"])]
    for index in range(spec["completions"]):
        pod_env = container_env(docs, SECRETS, job_name, tmp_path / f"volumes-{index}")
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
    # Created with `-n <namespace>` (docs/deployment.md): the namespace is named in one place.
    assert "namespace" not in secret["metadata"]


SECRETS = {"mnist-job-cos/access_key_id": ACCESS_KEY, "mnist-job-cos/secret_access_key": SECRET_KEY}


def container_env(
    docs: list[dict], secrets: dict[str, str], job_name: str, volumes: Path
) -> dict[str, str]:
    """The environment Kubernetes would give the Job's container. Secret volumes are laid out
    under `volumes` as the kubelet lays them out (each key a link into a data folder, with the
    volume's mode), and a variable naming a file in one points there instead."""
    (job,) = [d for d in docs if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    mounted = {}
    by_name = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        secret = by_name[mount["name"]].get("secret")
        if secret is None:
            continue
        folder = volumes / mount["mountPath"].lstrip("/")
        (folder / "..data").mkdir(parents=True)
        for item in secret["items"]:
            data = folder / "..data" / item["path"]
            data.write_text(secrets[f"{secret['secretName']}/{item['key']}"])
            data.chmod(item.get("mode", secret["defaultMode"]))
            (folder / item["path"]).symlink_to(Path("..data") / item["path"])
        mounted[mount["mountPath"] + "/"] = str(folder) + "/"
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    labels = {"batch.kubernetes.io/job-name": job_name}
    for entry in container["env"]:
        if "value" in entry:
            value = entry["value"]
            for mount_path, folder in mounted.items():
                if value.startswith(mount_path):
                    value = folder + value.removeprefix(mount_path)
            env[entry["name"]] = value
        else:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = labels[re.match(r"metadata\.labels\['(.+)'\]", path).group(1)]
    return env


def test_the_job_reads_the_keys_from_the_secret_volume(tmp_path):
    """The container's environment, its Secret volume laid out as the kubelet does: the keys
    are read from the files, and `config` shows neither them nor their paths' content."""
    docs = render("cpu")
    env = container_env(docs, SECRETS, "mnist-train", tmp_path / "volumes")
    assert not set(env) & config.SECRET_NAMES
    proc = cli("config", env=job_env(**env), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    storage = json.loads(proc.stdout)["storage"]
    assert storage["access_key_id"] == storage["secret_access_key"] == "***"
    assert ACCESS_KEY not in proc.stdout + proc.stderr and SECRET_KEY not in proc.stdout
    cfg = config.load(env)
    assert (cfg.storage.access_key_id, cfg.storage.secret_access_key) == (ACCESS_KEY, SECRET_KEY)


@pytest.mark.slow
def test_job_runs_with_exactly_the_manifest_environment(s3_endpoint, tmp_path, mnist_dir):
    docs = render("cpu")
    env = container_env(docs, SECRETS, job_name="mnist-train", volumes=tmp_path / "volumes")
    bucket = env["OUTPUT_URI"].removeprefix("s3://").split("/")[0]
    s3_client(s3_endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    # The only substitutions: the test S3 server for IBM's endpoint, a small real slice (the
    # image has MNIST baked in; here it is read from data/), and the Secret's volume under
    # tmp_path rather than at its mount path.
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


def _submitted(overlay: str, image: str | None = None, **env: str) -> list[dict]:
    """What `submit --backend k8s` applies for a run (kustomize for real, no API server)."""
    env = {"OUTPUT_URI": "s3://mnist-results/runs", "RUN_ID": "sub-1", **env}
    rendered = k8s.render_job(config.from_env(env), env, overlay, image)
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_submit_renders_into_the_namespace_with_the_policies(overlay, tmp_path):
    docs = _submitted(overlay)
    namespace = k8s.namespace()
    # The Namespace itself is created once, with the Secret, by someone allowed to: creating
    # one needs cluster-wide rights a submitter need not have.
    assert not [d for d in docs if d["kind"] in CLUSTER_SCOPED | {"CronJob", "Secret"}]
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert job["metadata"]["name"] == "sub-1"
    assert _policies(docs, job["spec"]["template"]["metadata"]["labels"])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert PINNED.match(container["image"]), "the overlay's pinned image"
    env = {e["name"] for e in container["env"]}
    assert {"COS_ACCESS_KEY_ID_FILE", "COS_SECRET_ACCESS_KEY_FILE"} <= env
    assert not env & config.SECRET_NAMES
    rendered = tmp_path / "submitted.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(rendered)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("endpoint", "ports"),
    [
        ("https://s3.example.com", [443]),
        ("https://minio.example.com:9000", [443, 9000]),
        ("http://minio.example.com", [443, 80]),
    ],
)
def test_submit_opens_the_endpoints_port_in_the_object_store_rule(endpoint, ports):
    docs = _submitted("cpu", COS_ENDPOINT=endpoint)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and
                 d["metadata"]["name"] == "mnist-job"]  # fmt: skip
    rule = _at(policy, k8s.OBJECT_STORE_RULE)
    assert [p["port"] for p in rule["ports"]] == ports and rule["to"][0]["ipBlock"]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("reg.example/mnist:2.0", "reg.example/mnist:2.0"),
        ("reg.example/mnist@sha256:" + "a" * 64, "reg.example/mnist@sha256:" + "a" * 64),
        ("reg.example:5000/mnist:2.0@sha256:" + "b" * 64,
         "reg.example:5000/mnist:2.0@sha256:" + "b" * 64),
    ],
)  # fmt: skip
def test_submit_image_replaces_the_overlays_tag_and_digest(image, expected):
    (job,) = [d for d in _submitted("gpu", image) if d["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == expected


def test_cancel_deletes_the_job_in_the_manifests_namespace(tmp_path, monkeypatch):
    """A stand-in `kubectl` records its arguments: no API server can run here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(tmp_path / 'argv')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    (bin_dir / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    k8s.Kubernetes().cancel("sub-1", config.from_env({"RUN_ID": "sub-1"}))
    argv = json.loads((tmp_path / "argv").read_text())
    assert argv == ["delete", "job", "sub-1", "--namespace", k8s.namespace(), "--wait=false"]


def test_the_scanners_skip_list_is_the_documented_one():
    """`make lint` runs checkov over each rendered overlay; a check it skips has a reason in
    the Makefile and a row in docs/deployment.md, and the two lists agree."""
    makefile = (ROOT / "Makefile").read_text()
    skipped = re.findall(r"^CHECKOV_SKIP \+= (CKV2?_K8S_\d+) +# \S", makefile, re.M)
    assert not re.findall(r"^CHECKOV_SKIP \+= (?!CKV2?_K8S_\d+ +# \S)", makefile, re.M)
    assert re.search(r"^CHECKOV_SKIP :=\s*$", makefile, re.M)
    docs = (ROOT / "docs" / "deployment.md").read_text()
    section = docs.split("### Policy scan", 1)[1].split("\n#", 1)[0]
    documented = re.findall(r"^\| `(CKV2?_K8S_\d+)` \|", section, re.M)
    assert sorted(skipped) == sorted(documented)
    assert "checkov" in section and "--skip-check" in makefile
