"""The pod runner on hand-written pods: first its kubelet semantics on the plain Debian image, then
the agent's pod layouts end to end against the session's SeaweedFS:

- a plain pod: get (init) -> the step's own image wrapped by ``entrypoint`` -> ``put --wait``,
  twice, the second step consuming what the first produced;
- the native-sidecar layout: ``put --on-sigterm`` as an init container with restartPolicy Always;
- a failing main container: the put is skipped and the pod fails.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from podman_support import BASE_IMAGE, agent_image, base_image  # noqa: F401 - fixtures
from podrunner import PodResult, PodRunner, PodSpecError

AGENT_USER = 65532
STEP_USER = 1000
STATUS = "/var/run/catalog-agent"
WRAPPER = f"{STATUS}/entrypoint"


@pytest.fixture
def runner(tmp_path: Path) -> PodRunner:
    return PodRunner(tmp_path / "pods", timeout=600)


def _succeeded(result: PodResult) -> None:
    assert result.phase == "Succeeded", result.describe()
    assert all(s.exit_code == 0 for s in result.containers), result.describe()


# ---- the runner itself ------------------------------------------------------------------------

def test_runner_order_env_volumes_security_and_sidecar(base_image, runner) -> None:  # noqa: F811
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                 "data": {"GREETING": "hello", "config.yaml": "answer: 42\n"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "data": {"TOKEN": base64.b64encode(b"s3cr3t-value").decode()}}
    sidecar = ("trap 'echo term >> /shared/log; exit 0' TERM; echo sidecar >> /shared/log; "
               "while :; do sleep 0.2; done")
    main = ("echo main >> /shared/log; id -u > /shared/uid; "
            "touch /tmp/x 2>/shared/tmp-error; touch /x 2>/shared/root-error; "
            "cat /etc/settings/app.yaml > /shared/config; "
            "echo \"$GREETING $APP_TOKEN $POD $FULL\" > /shared/env; "
            "printf '{\"done\": true}' > /dev/termination-log")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "semantics"}, "spec": {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 10,
        "securityContext": {"runAsUser": 4321, "runAsGroup": 4321},
        "volumes": [{"name": "shared", "emptyDir": {}},
                    {"name": "settings", "configMap": {"name": "settings", "items": [
                        {"key": "config.yaml", "path": "app.yaml"}]}}],
        "initContainers": [
            {"name": "first", "image": BASE_IMAGE, "command": ["/bin/sh", "-c"],
             "args": ["umask 0; echo first >> /shared/log"],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
            {"name": "sidecar", "image": BASE_IMAGE, "restartPolicy": "Always",
             "command": ["/bin/sh", "-c", sidecar],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
            {"name": "second", "image": BASE_IMAGE, "command": ["/bin/sh", "-c",
                                                                "echo second >> /shared/log"],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
        "containers": [
            {"name": "main", "image": BASE_IMAGE, "command": ["/bin/sh", "-c", main],
             "securityContext": {"runAsUser": 1234, "readOnlyRootFilesystem": True},
             "envFrom": [{"configMapRef": {"name": "settings"}},
                         {"secretRef": {"name": "creds"}, "prefix": "APP_"}],
             "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                     {"name": "FULL", "value": "$(GREETING)-$(POD)"}],
             "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                              {"name": "settings", "mountPath": "/etc/settings"}]}]}}
    result = runner.run(yaml.safe_dump(pod), objects=[configmap, secret])
    _succeeded(result)
    shared = result.volumes["shared"]
    assert (shared / "log").read_text().split() == ["first", "sidecar", "second", "main", "term"]
    assert (shared / "uid").read_text().strip() == "1234"
    assert "Read-only file system" in (shared / "tmp-error").read_text()
    assert "Read-only file system" in (shared / "root-error").read_text()
    assert (shared / "config").read_text() == "answer: 42\n"
    assert (shared / "env").read_text().split() == ["hello", "s3cr3t-value", "semantics",
                                                    "hello-semantics"]
    assert result.status("main").message == '{"done": true}'
    assert result.status("sidecar").kind == "sidecar"
    assert result.status("sidecar").signalled == "SIGTERM"
    assert not result.status("sidecar").exited_early


def test_runner_failed_init_stops_the_pod_and_non_root_is_enforced(base_image,  # noqa: F811
                                                                   runner) -> None:
    failing = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "broken"}, "spec": {
        "template": {"spec": {"restartPolicy": "Never", "initContainers": [
            {"name": "init", "image": BASE_IMAGE, "command": ["/bin/sh", "-c", "exit 3"]}],
            "containers": [{"name": "main", "image": BASE_IMAGE, "command": ["true"]}]}}}}
    result = runner.run(failing)
    assert result.phase == "Failed", result.describe()
    assert result.status("init").exit_code == 3
    assert [s.name for s in result.containers] == ["init"]

    rooted = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rooted"}, "spec": {
        "securityContext": {"runAsNonRoot": True},
        "containers": [{"name": "main", "image": BASE_IMAGE, "command": ["true"]}]}}
    result = runner.run(rooted)
    assert result.phase == "Pending", result.describe()
    assert result.status("main").reason == "CreateContainerConfigError"
    assert result.status("main").exit_code is None


def test_runner_refuses_what_it_cannot_do_by_name(tmp_path: Path) -> None:
    """No podman needed: these are refused before any container starts."""
    runner = PodRunner(tmp_path)
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": "x"}}],
        "containers": [{"name": "main", "image": BASE_IMAGE}]}}
    with pytest.raises(PodSpecError, match=r"volume claim: type \['persistentVolumeClaim'\]"):
        runner.run(pod)
    two = [{**pod, "metadata": {"name": "a"}}, {**pod, "metadata": {"name": "b"}}]
    with pytest.raises(PodSpecError, match=r"exactly one Pod or Job.*Pod/a"):
        runner.run(two)
    with pytest.raises(PodSpecError, match="configmap 'missing' was not given"):
        runner.run({"kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "volumes": [{"name": "c", "configMap": {"name": "missing"}}],
            "containers": [{"name": "main", "image": BASE_IMAGE}]}})


# ---- the agent's pod layouts ------------------------------------------------------------------

def _objects(s3_server, bucket: str, run_id: str) -> list[dict[str, Any]]:
    """The catalog ConfigMap (magnus shape) and the S3 keys Secret every agent container uses."""
    config = {"catalog": {"type": "s3", "config": {
        "s3_bucket": bucket, "prefix": "pipelines", "region": "us-east-1",
        "endpoint_url": s3_server.endpoint, "addressing_style": "path",
        "compute_data_folder": "/data"}},
        "dag": {"steps": {
            "train": {"catalog": {"get": ["raw/**"], "put": ["model/**"]}},
            "evaluate": {"catalog": {"get": ["model/**"], "put": ["report.txt"]}}}}}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "catalog"},
         "data": {"config.yaml": yaml.safe_dump(config)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"},
         "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}},
    ]


def _agent(name: str, image: str, args: list[str], step: str, run_id: str,
           **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "args": args,
            "env": [{"name": "CATALOG_AGENT_RUN_ID", "value": run_id},
                    {"name": "CATALOG_AGENT_STEP", "value": step},
                    {"name": "CATALOG_AGENT_LOG_FORMAT", "value": "json"},
                    {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}],
            "envFrom": [{"secretRef": {"name": "s3-keys"}}],
            "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "status", "mountPath": STATUS},
                             {"name": "catalog", "mountPath": "/etc/catalog-agent"}],
            **extra}


def _step_pod(step: str, run_id: str, image: str, script: str, *, sidecar: bool) -> dict[str, Any]:
    """get (init) -> the step's own image wrapped by the entrypoint -> put (after it)."""
    install = _agent("install-entrypoint", image, ["install-entrypoint", STATUS], step, run_id)
    get = _agent("get", image, ["get"], step, run_id)
    main = {"name": "main", "image": BASE_IMAGE,
            "command": [WRAPPER, "--", "/bin/sh", "-c", script],
            "securityContext": {"runAsUser": STEP_USER, "readOnlyRootFilesystem": True},
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "status", "mountPath": STATUS}]}
    if sidecar:
        put = _agent("put", image, ["put", "--on-sigterm"], step, run_id,
                     restartPolicy="Always")
        init, containers = [install, get, put], [main]
    else:
        put = _agent("put", image, ["put", "--wait", "--wait-timeout", "300"], step, run_id)
        init, containers = [install, get], [main, put]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{step}-{run_id}"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 120,
                "securityContext": {"runAsUser": AGENT_USER, "runAsGroup": AGENT_USER},
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "status", "emptyDir": {}},
                            {"name": "catalog", "configMap": {"name": "catalog"}}],
                "initContainers": init, "containers": containers}}}}


TRAIN = "mkdir -p /data/model && sort -n /data/raw/numbers.csv > /data/model/sorted.csv"
EVALUATE = ("test \"$(head -n 1 /data/model/sorted.csv)\" = 1 && "
            "wc -l < /data/model/sorted.csv > /data/report.txt")


def _seed(s3, bucket: str, run_id: str) -> bytes:
    numbers = b"".join(f"{n}\n".encode() for n in (5, 3, 9, 1, 7))
    s3.put_object(Bucket=bucket, Key=f"pipelines/{run_id}/raw/numbers.csv", Body=numbers)
    return numbers


def _read(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _summary(result: PodResult, name: str) -> dict[str, Any]:
    return json.loads(result.status(name).message)


def test_two_step_pipeline_get_main_put_wait(agent_image, s3_server, bucket, s3,  # noqa: F811
                                             runner) -> None:
    run_id = "run-" + secrets.token_hex(3)
    _seed(s3, bucket, run_id)
    objects = _objects(s3_server, bucket, run_id)

    train = runner.run(_step_pod("train", run_id, agent_image.tag, TRAIN, sidecar=False), objects)
    _succeeded(train)
    assert _read(s3, bucket, f"pipelines/{run_id}/model/sorted.csv") == b"1\n3\n5\n7\n9\n"
    manifest = json.loads(_read(s3, bucket, f"pipelines/{run_id}/.catalog-agent/manifests/train.json"))
    assert "model/sorted.csv" in json.dumps(manifest)
    assert _summary(train, "put")["exit_code"] == 0
    assert _summary(train, "get")["files"] == 1

    evaluate = runner.run(_step_pod("evaluate", run_id, agent_image.tag, EVALUATE, sidecar=False),
                          objects)
    _succeeded(evaluate)
    assert (evaluate.volumes["data"] / "model" / "sorted.csv").read_bytes() == b"1\n3\n5\n7\n9\n"
    assert _read(s3, bucket, f"pipelines/{run_id}/report.txt").strip() == b"5"
    assert (evaluate.volumes["status"] / "exit-code").read_text() == "0\n"


def test_native_sidecar_puts_after_sigterm(agent_image, s3_server, bucket, s3,  # noqa: F811
                                           runner) -> None:
    run_id = "run-" + secrets.token_hex(3)
    _seed(s3, bucket, run_id)
    result = runner.run(_step_pod("train", run_id, agent_image.tag, TRAIN, sidecar=True),
                        _objects(s3_server, bucket, run_id))
    _succeeded(result)
    put = result.status("put")
    assert put.kind == "sidecar" and put.signalled == "SIGTERM", result.describe()
    assert not put.exited_early, result.describe()
    assert _read(s3, bucket, f"pipelines/{run_id}/model/sorted.csv") == b"1\n3\n5\n7\n9\n"
    assert _summary(result, "put")["files"] == 1


def test_failed_main_skips_the_put_and_fails_the_pod(agent_image, s3_server, bucket, s3,  # noqa: F811
                                                     runner) -> None:
    run_id = "run-" + secrets.token_hex(3)
    _seed(s3, bucket, run_id)
    script = "mkdir -p /data/model && echo partial > /data/model/half.csv && exit 3"
    result = runner.run(_step_pod("train", run_id, agent_image.tag, script, sidecar=False),
                        _objects(s3_server, bucket, run_id))
    assert result.phase == "Failed", result.describe()
    assert result.status("main").exit_code == 3
    assert result.status("put").exit_code == 0, result.describe()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [f"pipelines/{run_id}/raw/numbers.csv"], keys
