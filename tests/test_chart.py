"""The Helm chart: lint, render, validate against the real schemas, and check the wiring.

Real tools only: helm (scripts/setup.d/30-helm.sh), kubernetes-validate (dev extra) with the
oldest and newest Kubernetes versions the chart supports, Argo's own JSON schema made strict,
and the agent's own CLI for everything the chart hands to it (config file, arguments, env).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from catalog_agent.config import CATALOG, DEFAULT_CONFIG_PATH, KEYS, OTHER_ENV, STEP
from catalog_agent import __version__
from test_magnus import interop, magnus_bin  # noqa: F401 - fixtures: the real magnus

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "catalog-agent"
EXAMPLES = CHART / "examples"
VALUES = REPO / "tests" / "chart_values"
GOOD_VALUES = sorted(VALUES.glob("*.yaml"))
BAD_VALUES = sorted((VALUES / "bad").glob("*.yaml"))
# Argo's own schema, kept in the repository (tests/schemas/README.md: source and licence).
ARGO_SCHEMA = REPO / "tests" / "schemas" / "argo-workflows-v4.1.2.schema.json"
ARGO_WORKFLOW_TEMPLATE = "io.argoproj.workflow.v1alpha1.WorkflowTemplate"
# The oldest (native sidecars: restartPolicy Always on init containers, beta and on by default)
# and the newest Kubernetes versions the chart supports; Chart.yaml's kubeVersion says the same.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
IN_CI = os.environ.get("CI", "").lower() == "true"


# --- tools ------------------------------------------------------------------------------------

def _tool(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} is not installed (scripts/bootstrap installs it)")


@pytest.fixture(scope="session")
def helm() -> str:
    return _tool("helm", REPO / ".tools" / "bin" / "helm")


@pytest.fixture(scope="session")
def kube_validate() -> str:
    return _tool("kubernetes-validate", Path(sys.executable).parent / "kubernetes-validate")


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


def render(helm: str, chart: Path, *values: Path, sets: tuple[str, ...] = (),
           extra: tuple[str, ...] = (), release: str = "rel") -> list[dict[str, Any]]:
    """``helm template`` into a list of objects; a failure fails the test with helm's words."""
    args = [helm, "template", release, str(chart)]
    for file in values:
        args += ["-f", str(file)]
    for item in sets:
        args += ["--set", item]
    done = run(*args, *extra)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


@pytest.fixture(scope="session")
def packaged_chart(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart packaged as a user's `helm dependency build` would fetch it."""
    out = tmp_path_factory.mktemp("package")
    done = run(helm, "package", str(CHART), "-d", str(out))
    assert done.returncode == 0, done.stderr
    (package,) = out.glob("catalog-agent-*.tgz")
    return package


@pytest.fixture
def example(packaged_chart: Path, tmp_path: Path):  # noqa: ANN201 - a factory
    """Copy an example chart and place the packaged dependency in its charts/ folder."""
    def make(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target)
        (target / "charts").mkdir(exist_ok=True)
        shutil.copy(packaged_chart, target / "charts")
        return target
    return make


def kube_validate_docs(kube_validate: str, docs: list[dict[str, Any]], folder: Path) -> None:
    """Every object through kubernetes-validate --strict, for the oldest and newest version."""
    path = folder / "objects.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    for version in KUBE_VERSIONS:
        done = run(kube_validate, "--strict", "-k", version, str(path))
        assert done.returncode == 0, f"kubernetes {version}:\n{done.stdout}{done.stderr}"
        passed = done.stdout.count(" passed ")
        assert passed == len(docs), f"kubernetes {version}: {passed} of {len(docs)} passed\n" \
                                    f"{done.stdout}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"] if doc["kind"] == "Job" else doc["spec"]


def agent_containers(spec_containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in spec_containers if c.get("command") == ["catalog-agent"]]


def image_user() -> int:
    """The numeric USER of the Dockerfile's final stage."""
    users = re.findall(r"^USER\s+(\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "Dockerfile has no numeric USER"
    return int(users[-1])


# --- the chart itself -------------------------------------------------------------------------

def test_app_version_is_the_agent_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


@pytest.mark.parametrize("values", GOOD_VALUES, ids=lambda p: p.stem)
def test_lint_strict(helm: str, values: Path) -> None:
    done = run(helm, "lint", "--strict", str(CHART), "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_default_values_alone_name_the_missing_bucket(helm: str) -> None:
    done = run(helm, "template", "rel", str(CHART))
    assert done.returncode != 0
    assert "missing property 's3_bucket'" in done.stderr
    assert "panic" not in done.stderr
    docs = render(helm, CHART, sets=("catalog.config.s3_bucket=my-catalog",))
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Pod", "ServiceAccount"]


@pytest.mark.parametrize("values", GOOD_VALUES, ids=lambda p: p.stem)
def test_rendered_objects_are_valid_kubernetes(helm: str, kube_validate: str, values: Path,
                                               tmp_path: Path) -> None:
    docs = render(helm, CHART, values)
    kube_validate_docs(kube_validate, docs, tmp_path)


def test_kubernetes_validate_refuses_a_misspelt_field(helm: str, kube_validate: str,
                                                      tmp_path: Path) -> None:
    """The validation above can fail: a misspelt field in a rendered object is refused."""
    docs = render(helm, CHART, VALUES / "minimal.yaml")
    pod = of_kind(docs, "Pod")[0]
    pod["spec"]["containers"][0]["volumeMount"] = pod["spec"]["containers"][0].pop("volumeMounts")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(pod))
    for version in KUBE_VERSIONS:
        done = run(kube_validate, "--strict", "-k", version, str(path))
        assert done.returncode != 0, done.stdout
        assert "volumeMount" in done.stdout + done.stderr


def test_kubernetes_older_than_1_29_is_refused(helm: str) -> None:
    done = run(helm, "template", "rel", str(CHART), "-f", str(VALUES / "minimal.yaml"),
               "--kube-version", "1.28.9")
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr or ">=1.29.0-0" in done.stderr, done.stderr


@pytest.mark.parametrize("values", BAD_VALUES, ids=lambda p: p.stem)
def test_bad_values_are_refused_with_a_clear_message(helm: str, values: Path) -> None:
    expected = values.read_text().splitlines()[0].removeprefix("# expect: ")
    done = run(helm, "template", "rel", str(CHART), "-f", str(values))
    assert done.returncode != 0, f"{values.name} was accepted"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert expected in done.stderr, done.stderr


def test_schema_knows_exactly_the_agents_keys() -> None:
    """catalog.config and step entries in the schema are the agent's keys, same types."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    catalog = schema["properties"]["catalog"]["properties"]["config"]["properties"]
    step = (schema["properties"]["dag"]["properties"]["steps"]["additionalProperties"]
            ["properties"]["catalog"]["properties"])
    assert set(catalog) == {k for k, s in KEYS.items() if CATALOG in s.where and k != "type"}
    assert set(step) == {k for k, s in KEYS.items() if STEP in s.where}
    kinds = {"bool": "boolean", "int": "integer", "list": "array", "choice": "string",
             "str": "string"}
    for name, prop in [*catalog.items(), *step.items()]:
        spec = KEYS[name]
        assert prop["type"] == kinds[spec.kind], name
        if spec.kind == "choice":
            assert prop["enum"] == list(spec.choices), name
        if spec.kind == "int":
            assert (prop.get("minimum"), prop.get("maximum")) == (spec.minimum, spec.maximum)
    type_enum = schema["properties"]["catalog"]["properties"]["type"]["enum"]
    assert type_enum == list(KEYS["type"].choices)


@pytest.mark.parametrize("values", GOOD_VALUES, ids=lambda p: p.stem)
def test_the_agent_accepts_the_configmap(helm: str, values: Path, offline_agent,  # noqa: ANN001
                                         tmp_path: Path) -> None:
    """The rendered config.yaml, read by the real CLI for every step (and none), is valid."""
    docs = render(helm, CHART, values)
    (configmap,) = of_kind(docs, "ConfigMap")
    text = configmap["data"]["config.yaml"]
    document = yaml.safe_load(text)
    given = yaml.safe_load(values.read_text())
    assert document["catalog"]["type"] == given["catalog"].get("type", "s3")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    steps = list((given.get("dag") or {}).get("steps") or {})
    for step in ["", *steps]:
        env = {"CATALOG_AGENT_STEP": step} if step else {}
        ran = offline_agent("config", "--json", "--config", str(path), env=env)
        assert ran.code == 0, ran.output
        effective = json.loads(ran.stdout)
        for key, value in given["catalog"]["config"].items():
            if key in {"compute_data_folder", "when", "allow_missing"} and step:
                continue  # a step entry may override these
            shown = effective[key]["value"]
            assert shown == shown_as(value), (key, shown, value)
            if KEYS[key].env not in offline_agent.env:  # the fixture sets the log format
                assert effective[key]["source"].startswith("file"), key
        if step:
            for key, value in (given["dag"]["steps"][step].get("catalog") or {}).items():
                shown = effective[key]["value"]
                assert shown == shown_as(value), (step, key, shown, value)
                assert "dag.steps" in effective[key]["source"]


def test_region_is_left_to_the_pods_aws_region_unless_set(helm: str, offline_agent,  # noqa: ANN001
                                                           tmp_path: Path) -> None:
    """The chart wrote region: eu-west-1 by default, overriding the AWS_REGION EKS injects."""
    for sets, region, source in (((), "us-east-2", "variable AWS_REGION"),
                                 (("catalog.config.region=eu-west-1",), "eu-west-1", "file")):
        docs = render(helm, CHART, sets=("catalog.config.s3_bucket=my-catalog", *sets))
        (configmap,) = of_kind(docs, "ConfigMap")
        path = tmp_path / "config.yaml"
        path.write_text(configmap["data"]["config.yaml"])
        assert ("region" in yaml.safe_load(path.read_text())["catalog"]["config"]) == bool(sets)
        ran = offline_agent("config", "--json", "--config", str(path),
                            env={"AWS_REGION": "us-east-2"})
        assert ran.code == 0, ran.output
        shown = json.loads(ran.stdout)["region"]
        assert shown["value"] == region and shown["source"].startswith(source), shown


def shown_as(value: Any) -> str:
    """A value as `catalog-agent config` prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def test_serviceaccount_irsa_and_pull_secrets(helm: str) -> None:
    docs = render(helm, CHART, VALUES / "full.yaml")
    (account,) = of_kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "pipelines-catalog"
    annotations = account["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"] == \
        "arn:aws:iam::123456789012:role/catalog-agent"
    assert annotations["eks.amazonaws.com/sts-regional-endpoints"] == "true"
    assert annotations["team"] == "forecasting"
    assert account["automountServiceAccountToken"] is False
    assert account["imagePullSecrets"] == [{"name": "registry-credentials"}]
    (test_pod,) = of_kind(docs, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == \
        "registry.example.com/data/catalog-agent:0.1.0-rc1"
    # Without a role there is no IRSA annotation; with create: false there is no account.
    docs = render(helm, CHART, VALUES / "minimal.yaml")
    assert "annotations" not in of_kind(docs, "ServiceAccount")[0]["metadata"]
    docs = render(helm, CHART, VALUES / "file-system.yaml")
    assert of_kind(docs, "ServiceAccount") == []
    assert of_kind(docs, "Pod")[0]["spec"]["serviceAccountName"] == "pipelines"


def test_notes_tell_what_was_installed(helm: str) -> None:
    done = run(helm, "install", "rel", str(CHART), "--dry-run=client", "-f",
               str(VALUES / "full.yaml"))
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "ConfigMap       pipelines-catalog" in notes
    assert "s3://my-catalog.eu/teams/forecasting/<run_id>/" in notes
    assert "arn:aws:iam::123456789012:role/catalog-agent" in notes
    assert "prepare, train" in notes
    for name in ("getInitContainer", "putContainer", "wrapCommand", "volumes"):
        assert f'include "catalog-agent.{name}"' in notes
    done = run(helm, "install", "rel", str(CHART), "--dry-run=client", "-f",
               str(VALUES / "minimal.yaml"))
    assert "create-pod-identity-association" in done.stdout


# --- the examples and the named templates -----------------------------------------------------

@pytest.mark.parametrize("name", ["job", "native-sidecar-pod", "argo-workflowtemplate",
                                  "magnus-job"])
def test_example_charts_lint_strict(helm: str, example, name: str) -> None:  # noqa: ANN001
    done = run(helm, "lint", "--strict", str(example(name)))
    assert done.returncode == 0, done.stdout + done.stderr


def test_job_example(helm: str, kube_validate: str, example, tmp_path: Path) -> None:  # noqa: ANN001
    docs = render(helm, example("job"))
    kube_validate_docs(kube_validate, docs, tmp_path)
    (job,) = of_kind(docs, "Job")
    spec = pod_spec(job)
    assert [c["name"] for c in spec["initContainers"]] == ["catalog-get-entrypoint",
                                                           "catalog-get"]
    assert [c["name"] for c in spec["containers"]] == ["main", "catalog-put"]
    assert spec["containers"][1]["args"][:2] == ["put", "--wait"]
    check_wiring(job, docs)


def _readme_job() -> tuple[str, list[str], dict[str, Any]]:
    """The README's complete Job: the release and --set values of its first line, the Job."""
    import shlex

    readme = (REPO / "README.md").read_text()
    block = readme.split("### A complete Job", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    command = block.splitlines()[0]
    words = shlex.split(command[1:])
    assert words[:2] == ["helm", "template"] and words[3] == ".", command
    sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    return words[2], sets, yaml.safe_load(block)


def _without_extras(job: dict[str, Any]) -> dict[str, Any]:
    """The Job as the README shows it: no resources, security contexts, pull policies, labels."""
    job = copy.deepcopy(job)
    job["metadata"].pop("labels", None)
    template = job["spec"]["template"]
    template.pop("metadata", None)
    template["spec"].pop("securityContext", None)
    for container in template["spec"]["initContainers"] + template["spec"]["containers"]:
        for extra in ("resources", "securityContext", "imagePullPolicy",
                      "terminationMessagePolicy"):
            container.pop(extra, None)
    return job


def test_the_readme_job_is_the_rendered_job_example(helm: str, kube_validate: str, example,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    release, sets, shown = _readme_job()
    assert sets, "the README's Job names no --set values"
    docs = render(helm, example("job"), sets=tuple(sets), release=release)
    (job,) = of_kind(docs, "Job")
    assert _without_extras(job) == shown
    kube_validate_docs(kube_validate, [shown], tmp_path)
    readme = (REPO / "README.md").read_text()
    values = readme.split("## Install with Helm", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    example_values = yaml.safe_load((EXAMPLES / "job" / "values.yaml").read_text())
    assert yaml.safe_load(values) == {"catalog-agent": example_values["catalog-agent"]}


def test_native_sidecar_pod_example(helm: str, kube_validate: str, example,  # noqa: ANN001
                                    tmp_path: Path) -> None:
    docs = render(helm, example("native-sidecar-pod"))
    kube_validate_docs(kube_validate, docs, tmp_path)
    pod = [d for d in of_kind(docs, "Pod") if "helm.sh/hook" not in
           (d["metadata"].get("annotations") or {})][0]
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["catalog-get-entrypoint", "catalog-get", "catalog-put"]
    assert init[2]["restartPolicy"] == "Always"
    assert init[2]["args"][:2] == ["put", "--on-sigterm"]
    assert init[2]["startupProbe"]["exec"]["command"][0] == "/opt/catalog-agent/bin/python"
    assert "restartPolicy" not in init[0] and "restartPolicy" not in init[1]
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60
    check_wiring(pod, docs)


def test_magnus_job_example(helm: str, kube_validate: str, example, offline_agent,  # noqa: ANN001
                            tmp_path: Path) -> None:
    """layout magnus: every container runs in workingDir, where the relative data folder is the
    data volume's mount point; the ConfigMap carries layout and run_log_store to the agent."""
    docs = render(helm, example("magnus-job"))
    kube_validate_docs(kube_validate, docs, tmp_path)
    (job,) = of_kind(docs, "Job")
    (configmap,) = of_kind(docs, "ConfigMap")
    document = yaml.safe_load(configmap["data"]["config.yaml"])
    assert document["catalog"]["config"]["layout"] == "magnus"
    assert document["run_log_store"] == {"type": "s3", "config": {"s3_bucket": "my-catalog",
                                                                  "prefix": "logs"}}
    spec = pod_spec(job)
    every = spec["initContainers"] + spec["containers"]
    assert {c["name"]: c.get("workingDir") for c in every} == {
        "catalog-get-entrypoint": "/work", "catalog-get": "/work", "main": "/work",
        "catalog-put": "/work"}
    data = next(v["name"] for v in spec["volumes"] if v["name"] == "catalog-agent-data")
    for container in every:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[data] == "/work/data", container["name"]
    # The agent reads the rendered file as the pods would: keys under <run>/data/.
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    ran = offline_agent("config", "--json", "--config", str(path),
                        env={"CATALOG_AGENT_STEP": "train"})
    assert ran.code == 0, ran.output
    effective = json.loads(ran.stdout)
    assert (effective["layout"]["value"], effective["compute_data_folder"]["value"]) == (
        "magnus", "data")
    check_args_with_the_cli(agent_containers(every))


@pytest.mark.parametrize("folder, mount", [("data", "/w/data"), ("./data/", "/w/data"),
                                           (".", "/w"), ("a/b", "/w/a/b")])
def test_magnus_layout_mounts_the_data_volume_under_the_working_directory(
        helm: str, caller, folder: str, mount: str) -> None:  # noqa: ANN001
    chart = caller(
        'items:\n'
        '  {{- include "catalog-agent.getInitContainer" (dict "ctx" $ca "step" "s" "runId" "r" '
        '"installEntrypoint" false) | nindent 2 }}\n'
        'main:\n'
        '  workingDir: {{ include "catalog-agent.workingDir" $ca }}\n'
        '  volumeMounts:\n'
        '    {{- include "catalog-agent.mainVolumeMounts" (dict "ctx" $ca) | nindent 4 }}\n')
    done = run(helm, "template", "rel", str(chart), "--show-only", "templates/pod.yaml",
               "--set", "catalog-agent.catalog.config.layout=magnus",
               "--set", "catalog-agent.workingDir=/w",
               "--set", f"catalog-agent.catalog.config.compute_data_folder={folder}")
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    (get,) = rendered["items"]
    assert get["workingDir"] == "/w" and rendered["main"]["workingDir"] == "/w"
    for mounts in (get["volumeMounts"], rendered["main"]["volumeMounts"]):
        assert {m["name"]: m["mountPath"] for m in mounts}["catalog-agent-data"] == mount
    plain = run(helm, "template", "rel", str(chart), "--show-only", "templates/pod.yaml",
                "--set", "catalog-agent.catalog.config.compute_data_folder=/d")
    assert plain.returncode == 0, plain.stderr
    assert "workingDir" not in yaml.safe_load(plain.stdout)["items"][0]  # layout run: as before


def check_wiring(workload: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """What the pod hands the agent must be what the agent reads, checked against its code."""
    spec = pod_spec(workload)
    every = spec.get("initContainers", []) + spec["containers"]
    agents = agent_containers(every)
    main = next(c for c in every if c["name"] == "main")
    volumes = {v["name"]: v for v in spec["volumes"]}
    (configmap,) = of_kind(docs, "ConfigMap")
    config_dir, config_file = os.path.split(DEFAULT_CONFIG_PATH)
    known_env = {s.env for s in KEYS.values()} | OTHER_ENV
    installer = next(c for c in agents if c["args"][0] == "install-entrypoint")
    status_dir = installer["args"][1]
    # the wrapper is called where install-entrypoint puts it, on a volume main mounts
    assert main["command"][:2] == [status_dir + "/entrypoint", "--"]
    main_mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert volumes[main_mounts[status_dir]].get("emptyDir") is not None
    assert status_dir == "/var/run/catalog-agent"  # the default of the wrapper and of put
    for container in agents:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[config_dir]]["configMap"]["name"] == configmap["metadata"]["name"]
        assert config_file in configmap["data"]
        assert mounts[status_dir] == main_mounts[status_dir]
        names = [e["name"] for e in container.get("env", [])]
        assert {"CATALOG_AGENT_RUN_ID", "CATALOG_AGENT_STEP"} <= set(names)
        unknown = [n for n in names if n.startswith("CATALOG_AGENT_") and n not in known_env]
        assert not unknown, unknown
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        assert context["runAsUser"] == image_user()
        assert mounts["/tmp"]
    data_dir = yaml.safe_load(configmap["data"]["config.yaml"])["catalog"]["config"][
        "compute_data_folder"]
    assert volumes[main_mounts[data_dir]].get("emptyDir") is not None
    for container in agents:
        if container["args"][0] in {"get", "put"}:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts[data_dir] == main_mounts[data_dir]
    assert spec["securityContext"]["fsGroup"] == image_user()
    check_args_with_the_cli(agents)


def check_args_with_the_cli(containers: list[dict[str, Any]]) -> None:
    """Each agent container's arguments parse with the real CLI (an unknown option exits 2)."""
    for container in containers:
        args = [a for a in container["args"] if not a.startswith("{{")]
        done = run(sys.executable, "-m", "catalog_agent", *args, "--help")
        assert done.returncode == 0, f"{container['name']}: {args}: {done.stderr}"


def argo_validator() -> jsonschema.protocols.Validator:
    if not ARGO_SCHEMA.is_file():
        message = f"the Argo Workflows schema is missing: {ARGO_SCHEMA} (tests/schemas/README.md)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    schema = json.loads(ARGO_SCHEMA.read_text())

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    for definition in schema["definitions"].values():
        strict(definition)
    root = {"$schema": schema["$schema"], "definitions": schema["definitions"],
            "$ref": f"#/definitions/{ARGO_WORKFLOW_TEMPLATE}"}
    return jsonschema.Draft202012Validator(root)


def argo_errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in validator.iter_errors(doc)]


def test_argo_workflowtemplate_example(helm: str, kube_validate: str, example,  # noqa: ANN001
                                       tmp_path: Path) -> None:
    chart = example("argo-workflowtemplate")
    docs = render(helm, chart)
    (template,) = of_kind(docs, "WorkflowTemplate")
    validator = argo_validator()
    assert argo_errors(validator, template) == []
    kube_validate_docs(kube_validate, [d for d in docs if d["kind"] != "WorkflowTemplate"],
                       tmp_path)
    # The pods run as the agent's ServiceAccount, which has no token mounted and no Role: Argo's
    # executor (the wait container) reports results with an account of its own, and Argo
    # refuses automountServiceAccountToken: false without one.
    (account,) = of_kind(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert template["spec"]["automountServiceAccountToken"] is False
    assert template["spec"]["executor"] == {"serviceAccountName": "argo-executor"}
    done = run(helm, "template", "rel", str(chart), "--set", "executorServiceAccount=")
    assert done.returncode != 0 and "executorServiceAccount" in done.stderr, done.stderr
    templates = {t["name"]: t for t in template["spec"]["templates"]}
    tasks = templates[template["spec"]["entrypoint"]]["dag"]["tasks"]
    assert [t["name"] for t in tasks] == ["prepare", "train"]
    assert tasks[1]["depends"] == "prepare"
    step = templates[tasks[0]["template"]]
    containers = step["containerSet"]["containers"]
    assert [c["name"] for c in containers] == ["get", "main", "put"]
    assert "dependencies" not in containers[0]
    assert containers[1]["dependencies"] == ["get"]
    assert containers[2]["dependencies"] == ["main"]
    assert containers[2]["args"] == ["put"]
    env = {e["name"]: e["value"] for e in containers[0]["env"]}
    assert env["CATALOG_AGENT_RUN_ID"] == "{{workflow.parameters.run-id}}"
    assert env["CATALOG_AGENT_STEP"] == "{{inputs.parameters.step}}"
    assert containers[1]["command"] == ["sh", "-c", "{{inputs.parameters.script}}"]
    volumes = {v["name"] for v in step["volumes"]}
    for container in containers:
        assert {m["name"] for m in container["volumeMounts"]} <= volumes
    check_args_with_the_cli(agent_containers(containers))


@pytest.mark.parametrize("name", ["job", "native-sidecar-pod", "argo-workflowtemplate"])
def test_only_the_agents_containers_must_run_as_non_root(helm: str, example,  # noqa: ANN001
                                                         name: str) -> None:
    """runAsNonRoot on the pod bound the step's own containers too, and most step images run
    as root: such a pod never started (CreateContainerConfigError) and put --wait waited 1,800 s
    for a heartbeat, then exited 8. The agent's containers keep it in their own context."""
    docs = render(helm, example(name))
    (workload,) = [d for d in docs if d["kind"] in {"Job", "Pod", "WorkflowTemplate"}
                   and "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    if workload["kind"] == "WorkflowTemplate":
        pod_context = workload["spec"]["securityContext"]
        (step,) = [t for t in workload["spec"]["templates"] if "containerSet" in t]
        containers = step["containerSet"]["containers"]
    else:
        spec = pod_spec(workload)
        pod_context = spec["securityContext"]
        containers = [*spec.get("initContainers", []), *spec["containers"]]
    assert "runAsNonRoot" not in pod_context and pod_context["fsGroup"] == image_user()
    main = next(c for c in containers if c["name"] == "main")
    assert "runAsNonRoot" not in main.get("securityContext", {})
    agents = agent_containers(containers)
    assert agents and all(c["securityContext"]["runAsNonRoot"] is True for c in agents)


def test_argo_validation_is_strict(helm: str, example) -> None:  # noqa: ANN001
    """The strict schema can fail: a misspelt field deep in a containerSet is refused."""
    docs = render(helm, example("argo-workflowtemplate"))
    (template,) = of_kind(docs, "WorkflowTemplate")
    validator = argo_validator()
    bad = copy.deepcopy(template)
    main = bad["spec"]["templates"][1]["containerSet"]["containers"][1]
    main["dependencys"] = main.pop("dependencies")
    errors = argo_errors(validator, bad)
    assert any("dependencys" in e for e in errors), errors
    bad = copy.deepcopy(template)
    bad["spec"]["templates"][0]["dag"]["tasks"][1]["depend"] = "prepare"
    assert argo_errors(validator, bad)


@pytest.fixture
def caller(packaged_chart: Path, tmp_path: Path):  # noqa: ANN201 - a factory
    """A user's chart whose one template calls the named templates as written."""
    def make(body: str) -> Path:
        chart = tmp_path / "user"
        (chart / "templates").mkdir(parents=True)
        (chart / "charts").mkdir()
        shutil.copy(packaged_chart, chart / "charts")
        (chart / "Chart.yaml").write_text(
            "apiVersion: v2\nname: user\nversion: 0.1.0\ndependencies:\n"
            "  - name: catalog-agent\n    version: 0.1.0\n")
        (chart / "values.yaml").write_text(
            "catalog-agent:\n  catalog:\n    config:\n      s3_bucket: my-catalog\n")
        (chart / "templates" / "pod.yaml").write_text(
            '{{- $ca := index .Subcharts "catalog-agent" -}}\n' + body)
        return chart
    return make


@pytest.mark.parametrize("call, message", [
    ('{{ include "catalog-agent.getInitContainer" (dict "ctx" $ca "step" "s") }}',
     '"runId" is required'),
    ('{{ include "catalog-agent.putContainer" (dict "ctx" $ca "runId" "r") }}',
     '"step" is required'),
    ('{{ include "catalog-agent.putContainer" (dict "step" "s" "runId" "r") }}',
     'pass this chart\'s context as "ctx"'),
    ('{{ include "catalog-agent.putContainer" (dict "ctx" $ca "step" "s" "runId" "r" '
     '"mode" "sidecar") }}', 'mode "sidecar" is not one of wait, native, after'),
    ('{{ include "catalog-agent.putContainer" (dict "ctx" $ca "step" "s" "runId" "r" '
     '"when" "never") }}', 'when "never" is not one of success, failure, always'),
    ('{{ include "catalog-agent.wrapCommand" (dict "ctx" $ca "command" "python x.py") }}',
     '"command" must be a list'),
    ('{{ include "catalog-agent.podAnnotations" (dict "ctx" $ca "containers" "main") }}',
     '"containers" must be a list'),
    ('{{ include "catalog-agent.podAnnotations" (dict "containers" (list "main")) }}',
     'pass this chart\'s context as "ctx"'),
])
def test_named_templates_refuse_bad_calls(helm: str, caller, call: str,  # noqa: ANN001
                                          message: str) -> None:
    done = run(helm, "template", "rel", str(caller(call)))
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_named_template_options(helm: str, caller) -> None:  # noqa: ANN001
    """patterns, when, names, data: false and env reach the rendered containers."""
    chart = caller(
        'items:\n'
        '  {{- include "catalog-agent.putContainer" (dict "ctx" $ca "step" "s" "runId" "r" '
        '"mode" "native" "when" "always" "patterns" (list "model/**" "a b.txt") "name" "save" '
        '"data" false "env" (list (dict "name" "CATALOG_AGENT_LOG_LEVEL" "value" "debug"))) '
        '| nindent 2 }}\n'
        '  {{- include "catalog-agent.getInitContainer" (dict "ctx" $ca "step" "s" "runId" "r" '
        '"installEntrypoint" false "patterns" (list "raw/**")) | nindent 2 }}\n')
    done = run(helm, "template", "rel", str(chart))
    assert done.returncode == 0, done.stderr
    items = yaml.safe_load(run(helm, "template", "rel", str(chart), "--show-only",
                               "templates/pod.yaml").stdout)["items"]
    put, get = items
    assert put["name"] == "save" and put["restartPolicy"] == "Always"
    assert put["args"] == ["put", "--on-sigterm", "--when", "always", "model/**", "a b.txt"]
    assert "/data" not in {m["mountPath"] for m in put["volumeMounts"]}
    assert {"name": "CATALOG_AGENT_LOG_LEVEL", "value": "debug"} in put["env"]
    assert get["name"] == "catalog-get" and get["args"] == ["get", "raw/**"]
    check_args_with_the_cli([put, get])


SKIP_CONTAINERS = "eks.amazonaws.com/skip-containers"


def pod_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["metadata"] if doc["kind"] == "Job" else doc["metadata"]


@pytest.mark.parametrize("name,kind", [("job", "Job"), ("native-sidecar-pod", "Pod")])
def test_irsa_can_be_kept_out_of_the_main_container(helm: str, kube_validate: str, example,  # noqa: ANN001
                                                    tmp_path: Path, name: str, kind: str) -> None:
    """irsa.keepOutOfMain: the pod (not the ServiceAccount) carries skip-containers naming
    exactly the containers that run the step's code, never an agent container."""
    chart = example(name)
    sets = ("catalog-agent.irsa.roleArn=arn:aws:iam::123456789012:role/catalog",
            "catalog-agent.irsa.keepOutOfMain=true")
    docs = render(helm, chart, sets=sets)
    kube_validate_docs(kube_validate, docs, tmp_path)
    (workload,) = [d for d in of_kind(docs, kind)
                   if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    annotations = pod_metadata(workload)["annotations"]
    spec = pod_spec(workload)
    every = spec.get("initContainers", []) + spec["containers"]
    step_code = {c["name"] for c in every if c not in agent_containers(every)}
    assert step_code == {"main"}
    assert set(annotations[SKIP_CONTAINERS].split(",")) == step_code
    (account,) = of_kind(docs, "ServiceAccount")
    assert SKIP_CONTAINERS not in account["metadata"]["annotations"]  # a pod annotation
    # Off by default: no annotation, no empty annotations block.
    docs = render(helm, chart, sets=sets[:1])
    (workload,) = [d for d in of_kind(docs, kind)
                   if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    assert SKIP_CONTAINERS not in (pod_metadata(workload).get("annotations") or {})
    # Other names for the step's containers.
    docs = render(helm, chart, sets=(*sets, "catalog-agent.irsa.mainContainers={main,eval}"))
    (workload,) = [d for d in of_kind(docs, kind)
                   if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    assert pod_metadata(workload)["annotations"][SKIP_CONTAINERS] == "main,eval"


def test_irsa_kept_out_of_main_in_the_argo_template(helm: str, example) -> None:  # noqa: ANN001
    docs = render(helm, example("argo-workflowtemplate"),
                  sets=("catalog-agent.irsa.keepOutOfMain=true",))
    (template,) = of_kind(docs, "WorkflowTemplate")
    assert argo_errors(argo_validator(), template) == []
    step = {t["name"]: t for t in template["spec"]["templates"]}["catalog-step"]
    assert step["metadata"]["annotations"] == {SKIP_CONTAINERS: "main"}
    names = [c["name"] for c in step["containerSet"]["containers"]
             if c.get("command") != ["catalog-agent"]]
    assert names == ["main"]


def test_pod_annotations_template_options(helm: str, caller) -> None:  # noqa: ANN001
    chart = caller(
        'metadata:\n'
        '  annotations:\n'
        '    {{- include "catalog-agent.podAnnotations" (dict "ctx" $ca "containers" '
        '(list "trainer" "evaluate")) | nindent 4 }}\n')
    done = run(helm, "template", "rel", str(chart), "--set",
               "catalog-agent.irsa.keepOutOfMain=true", "--show-only", "templates/pod.yaml")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["metadata"]["annotations"] == {
        SKIP_CONTAINERS: "trainer,evaluate"}


def iter_values_comments() -> Iterator[tuple[int, str, bool]]:
    """(line number, line, whether a comment line precedes it) for every key in values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w-]*:", line):
            above = lines[number - 1].strip() if number else ""
            inline = "#" in line.split(":", 1)[1]
            # a parent key (no value) is described by the comment of its first child
            below = lines[number + 1] if number + 1 < len(lines) else ""
            parent = line.rstrip().endswith(":") and "#" in below
            yield number + 1, line, above.startswith("#") or inline or parent


def test_every_value_is_commented() -> None:
    bare = [f"{n}: {line}" for n, line, commented in iter_values_comments() if not commented]
    assert bare == []


# --- the rendered manifests run: pod runner (podman, the real image) against SeaweedFS ------------

@pytest.fixture(scope="session")
def chart_image() -> str:
    """The agent image built from the Dockerfile (tests/podman_support.py)."""
    support = pytest.importorskip("podman_support", reason="tests/podman_support.py is missing")
    support.require_podman()
    return support.build_agent_image().tag


@pytest.fixture
def pod_runner():  # noqa: ANN201 - the runner module
    return pytest.importorskip("podrunner", reason="tests/podrunner.py is missing")


def seed_run(agent, tmp_path: Path, run_id: str) -> None:  # noqa: ANN001
    """The run's inputs, put by the real agent as an earlier step would: raw/input.csv."""
    seed = tmp_path / "seed"
    (seed / "raw").mkdir(parents=True)
    (seed / "raw" / "input.csv").write_text("a,1\nb,2\nc,3\n")
    ran = agent("put", "raw/**", "--run-id", run_id, "--step", "seed", "--prefix", "pipelines",
                "--compute-data-folder", str(seed))
    assert ran.code == 0, ran.output


def run_values(tmp_path: Path, image: str, s3_server, bucket: str, run_id: str,  # noqa: ANN001
               command: list[str] | None = None, main_image: str = ""
               ) -> tuple[Path, dict[str, Any]]:
    """Values pointing an example at the session's SeaweedFS, keys from a Secret via envFrom."""
    repository, tag = image.rsplit(":", 1)
    values: dict[str, Any] = {
        "runId": run_id,
        "step": "train",
        "main": {"image": main_image or image},
        "catalog-agent": {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "catalog": {"config": {"s3_bucket": bucket, "prefix": "pipelines",
                                   "region": "us-east-1", "endpoint_url": s3_server.endpoint,
                                   "addressing_style": "path"}},
            "envFrom": [{"secretRef": {"name": "s3-keys"}}],
        },
    }
    if command:
        values["main"]["command"] = command
    path = tmp_path / "run-values.yaml"
    path.write_text(yaml.safe_dump(values))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"},
              "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}}
    return path, secret


def workload_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `helm install` creates (not the `helm test` hook pod)."""
    return [d for d in docs if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
def run_example(helm: str, example, chart_image: str, pod_runner, agent, s3_server,  # noqa: ANN001, ANN201
                bucket: str, tmp_path: Path):
    """``run_example(name, run_id, command=..., main_image=...)``: the run's inputs put (as an
    earlier step would), the example rendered against the session's SeaweedFS, its pod run."""
    def run(name: str, run_id: str, *, command: list[str] | None = None,
            main_image: str = "") -> Any:
        seed_run(agent, tmp_path, run_id)
        values, secret = run_values(tmp_path, chart_image, s3_server, bucket, run_id,
                                    command=command, main_image=main_image)
        docs = workload_objects(render(helm, example(name), values))
        return pod_runner.run_pod(tmp_path / "pod", docs, [secret], timeout=300)

    return run


@pytest.mark.parametrize("example_name, put_name", [("job", "catalog-put"),
                                                   ("native-sidecar-pod", "catalog-put")])
def test_rendered_example_runs_get_main_put(run_example, s3: Any, bucket: str,  # noqa: ANN001
                                            example_name: str, put_name: str) -> None:
    """The job's main is a step image running as root (the base image), as most are: the
    pod-level runAsNonRoot the chart gave kept it from starting (CreateContainerConfigError)."""
    from podman_support import BASE_IMAGE

    run_id = f"run-{example_name}"
    result = run_example(example_name, run_id,
                         main_image=BASE_IMAGE if example_name == "job" else "")
    assert result.phase == "Succeeded", result.describe()
    for status in result.containers:
        assert status.exit_code == 0, result.describe()
    put = result.status(put_name)
    if example_name == "native-sidecar-pod":
        assert put.kind == "sidecar" and put.signalled == "SIGTERM", result.describe()
        assert not put.exited_early and put.probes >= 1
    message = json.loads(put.message)
    assert message["command"] == "put" and message["exit_code"] == 0, put.message
    body = s3.get_object(Bucket=bucket, Key=f"pipelines/{run_id}/model/lines.txt")["Body"].read()
    assert body.split() == [b"3", b"/data/raw/input.csv"]
    manifests = keys_under(s3, bucket, f"pipelines/{run_id}/.catalog-agent/manifests/")
    assert f"pipelines/{run_id}/.catalog-agent/manifests/train.json" in manifests
    get = json.loads(result.status("catalog-get").message)
    assert get["command"] == "get" and get["files"] == 1, get


def test_rendered_job_with_a_failing_step_puts_nothing(run_example, s3: Any,  # noqa: ANN001
                                                       bucket: str) -> None:
    run_id = "run-failing"
    result = run_example("job", run_id, command=[
        "sh", "-c", "mkdir -p /data/model && echo partial > /data/model/lines.txt && exit 3"])
    assert result.phase == "Failed", result.describe()
    assert result.status("main").exit_code == 3, result.describe()
    put = result.status("catalog-put")
    assert put.exit_code == 0, result.describe()
    assert json.loads(put.message)["decision"] == "skipped", put.message
    assert keys_under(s3, bucket, f"pipelines/{run_id}/model/") == []
    assert keys_under(s3, bucket, f"pipelines/{run_id}/.catalog-agent/manifests/train") == []


def test_rendered_magnus_job_verifies_magnus_files_and_puts_in_its_layout(
        helm: str, example, chart_image: str, pod_runner, interop, s3_server,  # noqa: ANN001
        s3: Any, bucket: str, tmp_path: Path) -> None:
    """The real magnus puts the input (run log in S3); the rendered magnus-job pod gets it
    verified from that run log, runs main in /work and puts under magnus's layout."""
    interop.config()
    source = interop.root / "src" / "raw"
    source.mkdir(parents=True)
    (source / "input.csv").write_bytes(b"a,1\nb,2\nc,3\n")
    interop.magnus([{"name": "make", "command": "mkdir -p data && cp -R src/. data/",
                     "catalog": {"put": ["**/*"]}}])
    repository, tag = chart_image.rsplit(":", 1)
    config = yaml.safe_load((interop.root / "config.yaml").read_text())
    values = {
        "runId": interop.run_id, "step": "train", "main": {"image": chart_image},
        "catalog-agent": {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "catalog": {"config": {"s3_bucket": bucket, "prefix": "pipes", "region": "us-east-1",
                                   "endpoint_url": s3_server.endpoint,
                                   "addressing_style": "path"}},
            "run_log_store": {"type": "s3", "config": config["run_log_store"]["config"]},
            "envFrom": [{"secretRef": {"name": "s3-keys"}}]}}
    path = tmp_path / "run-values.yaml"
    path.write_text(yaml.safe_dump(values))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys"},
              "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}}
    docs = workload_objects(render(helm, example("magnus-job"), path))
    result = pod_runner.run_pod(tmp_path / "pod", docs, [secret], timeout=300)
    assert result.phase == "Succeeded", result.describe()
    get = json.loads(result.status("catalog-get").message)
    assert (get["files"], get["unverified"], get["verified_by_run_log"]) == (1, 0, 1), get
    key = f"pipes/{interop.run_id}/data/model/lines.txt"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read().split() == [
        b"3", b"data/raw/input.csv"]
    assert json.loads(result.status("catalog-put").message)["exit_code"] == 0


def test_helm_test_pod_reads_the_installed_config(helm: str, chart_image: str,  # noqa: ANN001
                                                  pod_runner, tmp_path: Path) -> None:
    """`helm test`'s pod: the real image reads the rendered ConfigMap at the default path."""
    repository, tag = chart_image.rsplit(":", 1)
    docs = render(helm, CHART, VALUES / "full.yaml", sets=(
        f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never",
        "envFrom=null"))
    pod = [d for d in of_kind(docs, "Pod")]
    result = pod_runner.run_pod(tmp_path / "pod", [*pod, *of_kind(docs, "ConfigMap")],
                                timeout=120)
    assert result.phase == "Succeeded", result.describe()
    logs = result.status("config").output
    assert "my-catalog.eu" in logs and "file /etc/catalog-agent/config.yaml" in logs, logs


def startup_probe(helm: str, example) -> list[str]:  # noqa: ANN001
    (pod,) = [d for d in workload_objects(render(helm, example("native-sidecar-pod")))
              if d["kind"] == "Pod"]
    (put,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "catalog-put"]
    return put["startupProbe"]["exec"]["command"]


def test_the_native_sidecars_startup_probe_waits_for_its_sigterm_handler(
        helm: str, example, chart_image: str, tmp_path: Path) -> None:  # noqa: ANN001
    """The kubelet starts the main only once the sidecar's startup probe passes: it must fail
    while PID 1 would still discard SIGTERM, and pass once put has its handler."""
    from podman_support import RUN_FLAGS, podman

    probe = startup_probe(helm, example)
    name = f"probe-{os.getpid()}-{secrets.token_hex(3)}"
    plain = ["run", "-d", "--rm", *RUN_FLAGS, "--name", name, "--read-only"]
    try:  # PID 1 without a SIGTERM handler (a Python that has not installed one)
        podman(*plain, "--entrypoint", '["/opt/catalog-agent/bin/python", "-c", '
               '"import time; time.sleep(120)"]', chart_image)
        assert podman("exec", name, *probe, check=False).returncode == 1
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
    try:  # put --on-sigterm: passes once its handler is in
        podman(*plain, "-e", "CATALOG_AGENT_S3_BUCKET=b", "-e", "CATALOG_AGENT_RUN_ID=r",
               "-e", "CATALOG_AGENT_STEP=s", "-e", "CATALOG_AGENT_STATUS_DIR=/tmp",
               chart_image, "put", "--on-sigterm", "**")
        deadline = time.monotonic() + 60
        while podman("exec", name, *probe, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the probe never passed"
            time.sleep(0.2)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_a_main_that_ends_at_once_beside_the_native_sidecar_is_put(
        run_example, s3: Any, bucket: str) -> None:  # noqa: ANN001
    """The step is done within milliseconds: the sidecar's SIGTERM follows at once, and the
    startup probe has made sure put catches it."""
    run_id = "run-at-once"
    result = run_example("native-sidecar-pod", run_id, command=[
        "sh", "-c", "mkdir -p /data/model && echo done > /data/model/lines.txt"])
    assert result.phase == "Succeeded", result.describe()
    put = result.status("catalog-put")
    assert put.probes >= 1 and put.signalled == "SIGTERM" and put.exit_code == 0, \
        result.describe()
    assert json.loads(put.message)["decision"] == "put", put.message
    body = s3.get_object(Bucket=bucket, Key=f"pipelines/{run_id}/model/lines.txt")["Body"].read()
    assert body == b"done\n"


@pytest.mark.parametrize("status, passes", [
    ("Name:\tpython\nSigCgt:\t0000000000000000\n", False),  # no handler yet: would discard
    ("Name:\tpython\nSigCgt:\t0000000180004002\n", True),  # SIGTERM (bit 14) caught
    ("Name:\tpython\nSigCgt:\t0000000180000002\n", False),  # SIGINT only
    ("Name:\tpython\nState:\tS (sleeping)\n", True),  # gVisor: no SigCgt line, never blocks
])
def test_the_startup_probes_reading_of_proc_status(helm: str, example, tmp_path: Path,  # noqa: ANN001
                                                    status: str, passes: bool) -> None:
    command = startup_probe(helm, example)
    code = command[-1].replace("/proc/1/status", str(tmp_path / "status"))
    (tmp_path / "status").write_text(status)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode == 0) is passes, done.stderr
