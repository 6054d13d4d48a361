"""The container image: built from the Dockerfile with podman over a Debian base, then run the way
a locked-down pod runs it (non-root, read-only root file system, no writable /tmp) against the
session's SeaweedFS on the host's loopback, and against moto's STS for the trimmed botocore.
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from moto_support import moto_server  # noqa: F401 - fixture
from tls_support import pki, tls_bucket, tls_s3_server  # noqa: F401 - fixtures
from podman_support import (AGENT_IMAGE, CONTEXT_FILES, CONTEXT_TREES, ROOT, agent_image,  # noqa: F401
                            package_version, podman, run_image)

UID = "65532"
VENV_SITE = "/opt/catalog-agent/lib/python3*/site-packages"


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) from a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\]+)", block)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            pins[name] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_lock_pins_every_dependency_exactly_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock(ROOT / "requirements.lock")
    assert pins, "requirements.lock holds no pins"
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in the lock: " \
                             "run scripts/lock-requirements"
        assert requirement.specifier.contains(pins[name][0]), \
            f"lock pins {name}=={pins[name][0]}, outside {requirement}: run scripts/lock-requirements"
    for lock in ("requirements.lock", "requirements-build.lock"):
        for name, (_version, hashes) in _lock(ROOT / lock).items():
            assert hashes, f"{lock}: {name} has no hash"
    assert "setuptools" in _lock(ROOT / "requirements-build.lock")


def test_dockerignore_admits_exactly_what_the_build_hash_covers() -> None:
    """podman_support caches the image by hashing these files: they must be the context."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == set(CONTEXT_FILES) | set(CONTEXT_TREES)
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M))
    sources = {word for line in copied for word in line.split()}
    assert sources <= admitted, f"the Dockerfile copies files .dockerignore excludes: {sources - admitted}"


def test_image_metadata(agent_image) -> None:  # noqa: F811
    config = json.loads(podman("image", "inspect", agent_image.tag).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["catalog-agent"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == package_version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"]


FACTS_SCRIPT = f"""
echo '== uid'; id -u
echo '== writes'; touch /tmp/x 2>&1; touch /x 2>&1
echo '== build tools'
cd {VENV_SITE} && ls -d pip setuptools wheel _distutils_hack 2>/dev/null
ls -d /opt/build /wheels /src /root/.cache/pip 2>/dev/null; command -v gcc cc pip pip3
echo '== pip'; python3 -m pip --version 2>&1
echo '== botocore data'; ls botocore/data
echo '== boto3 data'; ls boto3/data
echo '== wrapper'; command -v entrypoint
echo '== tls'; ls botocore/cacert.pem; ls -d certifi 2>/dev/null
echo '== ca variables'; env | grep -E 'CA_BUNDLE|SSL_CERT|CA_CERT' || true
"""


@pytest.fixture(scope="module")
def image_facts(agent_image) -> dict[str, list[str]]:  # noqa: F811
    """What one run of a shell in the image (non-root, read-only root) finds, by section."""
    ran = run_image(agent_image.tag, entrypoint=["/bin/sh", "-c", FACTS_SCRIPT])
    sections: dict[str, list[str]] = {}
    current = ""
    for line in ran.stdout.splitlines():
        if line.startswith("== "):
            current = line[3:]
            sections[current] = []
        elif current:
            sections[current].append(line)
    assert "wrapper" in sections, ran.stdout + ran.stderr
    return sections


def test_help_runs_as_non_root_on_a_read_only_root(agent_image, image_facts) -> None:  # noqa: F811
    ran = run_image(agent_image.tag, "--help")
    assert ran.returncode == 0, ran.stderr
    assert "get" in ran.stdout and "put" in ran.stdout and "Exit codes" in ran.stdout
    assert image_facts["uid"] == [UID]
    writes = image_facts["writes"]
    assert len(writes) == 2 and all("Read-only file system" in w for w in writes), writes


def test_final_stage_holds_no_build_tools(image_facts) -> None:
    assert image_facts["build tools"] == [], image_facts["build tools"]
    assert "No module named pip" in " ".join(image_facts["pip"])
    assert image_facts["wrapper"] == ["/usr/local/bin/entrypoint"]


def test_botocore_is_trimmed_to_s3_and_sts(image_facts) -> None:
    entries = set(image_facts["botocore data"])
    services = {e for e in entries if "." not in e}
    assert services == {"s3", "sts"}
    assert {"partitions.json", "_retry.json", "sdk-default-configuration.json"} <= entries
    assert "endpoints.json" in entries or "endpoints.json.gz" in entries
    assert set(image_facts["boto3 data"]) == {"s3"}


def test_image_trusts_botocores_ca_bundle_without_certifi(image_facts) -> None:
    """No certifi (it is not a locked dependency): botocore's cacert.pem is the default bundle,
    and the trimming keeps it. The image sets no CA variable of its own."""
    assert image_facts["tls"] == ["botocore/cacert.pem"], image_facts["tls"]
    assert image_facts["ca variables"] == []


def _data_folder(path: Path) -> Path:
    """A host folder the image's non-root user may write, as an emptyDir is."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def _agent_env(s3_server, bucket: str) -> dict[str, str]:
    return {**s3_server.env, "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_REGION": "us-east-1",
            "CATALOG_AGENT_ADDRESSING_STYLE": "path", "CATALOG_AGENT_LOG_FORMAT": "json",
            "CATALOG_AGENT_RUN_ID": "run-1", "AWS_EC2_METADATA_DISABLED": "true"}


def test_put_and_get_against_seaweedfs(agent_image, s3_server, bucket, s3,  # noqa: F811
                                       tmp_path: Path) -> None:
    out = _data_folder(tmp_path / "out")
    (out / "model").mkdir()
    payload = secrets.token_bytes(300_000)
    (out / "model" / "weights.bin").write_bytes(payload)
    (out / "metrics.json").write_text('{"auc": 0.9}\n')
    env = _agent_env(s3_server, bucket)
    put = run_image(agent_image.tag, "put", "model/**", "metrics.json", "--step", "train",
                    "--compute-data-folder", "/data", volumes=[(out, "/data")], env=env)
    assert put.returncode == 0, put.stderr
    assert '"put.done"' in put.stderr
    stored = s3.get_object(Bucket=bucket, Key="run-1/model/weights.bin")["Body"].read()
    assert stored == payload
    manifest = json.loads(s3.get_object(
        Bucket=bucket, Key="run-1/.catalog-agent/manifests/train.json")["Body"].read())
    assert "model/weights.bin" in json.dumps(manifest)

    into = _data_folder(tmp_path / "in")
    get = run_image(agent_image.tag, "get", "**", "--compute-data-folder", "/data",
                    volumes=[(into, "/data")], env=env)
    assert get.returncode == 0, get.stderr
    assert (into / "model" / "weights.bin").read_bytes() == payload
    assert (into / "metrics.json").read_text() == '{"auc": 0.9}\n'
    assert (into / "model" / "weights.bin").stat().st_uid == int(UID)


def test_bad_input_in_the_image_is_one_line_and_the_documented_code(agent_image, s3_server,  # noqa: F811
                                                                    bucket, tmp_path: Path) -> None:
    into = _data_folder(tmp_path / "in")
    env = _agent_env(s3_server, bucket)
    ran = run_image(agent_image.tag, "get", "nothing/**", "--compute-data-folder", "/data",
                    volumes=[(into, "/data")], env=env)
    assert ran.returncode == 3, ran.stderr
    assert "Traceback" not in ran.stderr
    assert list(into.iterdir()) == []


def test_trimmed_image_assumes_a_role_by_web_identity_with_sts(agent_image, moto_server,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """The IRSA path through the trimmed botocore: STS AssumeRoleWithWebIdentity, then S3."""
    bucket = "irsa-" + secrets.token_hex(4)
    moto_server.client("s3").create_bucket(Bucket=bucket)
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "token").write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    (token_dir / "token").chmod(0o644)
    out = _data_folder(tmp_path / "out")
    (out / "result.txt").write_text("assumed\n")
    session = "image-irsa-" + secrets.token_hex(3)
    role = moto_server.make_web_identity_role("catalog-agent-" + secrets.token_hex(3))
    env = {"AWS_ROLE_ARN": role,
           "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token",
           "AWS_ROLE_SESSION_NAME": session,
           "AWS_ENDPOINT_URL": moto_server.endpoint, "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true",
           "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_REGION": "us-east-1",
           "CATALOG_AGENT_ADDRESSING_STYLE": "path", "CATALOG_AGENT_RUN_ID": "r",
           "CATALOG_AGENT_LOG_FORMAT": "json"}
    put = run_image(agent_image.tag, "put", "result.txt", "--step", "s",
                    "--compute-data-folder", "/data",
                    volumes=[(out, "/data"), (token_dir, "/var/run/secrets/eks")], env=env)
    assert put.returncode == 0, put.stderr
    body = moto_server.client("s3").get_object(Bucket=bucket, Key="r/result.txt")["Body"].read()
    assert body == b"assumed\n"
    assert moto_server.assumed_sessions(session) >= 1


def test_image_entrypoint_wrapper_is_on_path(agent_image, tmp_path: Path) -> None:  # noqa: F811
    status = _data_folder(tmp_path / "status")
    ran = run_image(agent_image.tag, entrypoint=["entrypoint", "--", "/bin/sh", "-c", "exit 7"],
                    volumes=[(status, "/var/run/catalog-agent")])
    assert ran.returncode == 7, ran.stderr
    assert (status / "exit-code").read_text() == "7\n"


def test_install_entrypoint_copies_the_wrapper_into_a_volume(agent_image,  # noqa: F811
                                                             tmp_path: Path) -> None:
    shared = _data_folder(tmp_path / "shared")
    ran = run_image(agent_image.tag, "install-entrypoint", "/shared",
                    volumes=[(shared, "/shared")])
    assert ran.returncode == 0, ran.stderr
    installed = shared / "entrypoint"
    assert installed.read_bytes() == (ROOT / "entrypoint").read_bytes()
    assert installed.stat().st_mode & 0o755 == 0o755


CA_IN_IMAGE = "/etc/catalog-agent/tls/ca.pem"


def _tls_env(server, bucket: str) -> dict[str, str]:
    """The agent pointed at SeaweedFS's https endpoint; no CA variable (podman passes none)."""
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "CATALOG_AGENT_ENDPOINT_URL": server.https_endpoint,
            "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_REGION": "us-east-1",
            "CATALOG_AGENT_ADDRESSING_STYLE": "path", "CATALOG_AGENT_LOG_FORMAT": "json",
            "CATALOG_AGENT_RUN_ID": "run-1", "AWS_EC2_METADATA_DISABLED": "true"}


def test_image_talks_https_with_a_mounted_ca_bundle(agent_image, tls_s3_server, tls_bucket,  # noqa: F811
                                                    pki, tmp_path: Path) -> None:  # noqa: F811
    """SeaweedFS over https with the tests' CA, mounted read-only as a Secret would be: put
    (ca_bundle; small and multipart), sync (botocore's client; AWS_CA_BUNDLE) and get
    (AWS_CA_BUNDLE) work, every byte right; so does get with verify_tls false and no CA."""
    out = _data_folder(tmp_path / "out")
    files = {"small.txt": b"over https\n", "large.bin": secrets.token_bytes(17 * 1024 * 1024)}
    for name, data in files.items():
        (out / name).write_bytes(data)
    env = _tls_env(tls_s3_server, tls_bucket)
    ca = [(f"{pki.ca}", f"{CA_IN_IMAGE}:ro")]

    put = run_image(agent_image.tag, "put", "*", "--step", "s", "--compute-data-folder", "/data",
                    volumes=[(out, "/data"), *ca],
                    env={**env, "CATALOG_AGENT_CA_BUNDLE": CA_IN_IMAGE})
    assert put.returncode == 0, put.stderr
    plain = tls_s3_server.client()
    for name, data in files.items():
        assert plain.get_object(Bucket=tls_bucket, Key=f"run-1/{name}")["Body"].read() == data
    sync = run_image(agent_image.tag, "sync", "--from-run", "run-1", "--run-id", "run-2",
                     volumes=ca, env={**env, "AWS_CA_BUNDLE": CA_IN_IMAGE})
    assert sync.returncode == 0, sync.stderr
    into = _data_folder(tmp_path / "in")
    get = run_image(agent_image.tag, "get", "*", "--run-id", "run-2", "--compute-data-folder",
                    "/data", volumes=[(into, "/data"), *ca],
                    env={**env, "AWS_CA_BUNDLE": CA_IN_IMAGE})
    assert get.returncode == 0, get.stderr
    for name, data in files.items():
        assert (into / name).read_bytes() == data, name
    unchecked = _data_folder(tmp_path / "unchecked")
    get = run_image(agent_image.tag, "get", "*", "--run-id", "run-2", "--compute-data-folder",
                    "/data", volumes=[(unchecked, "/data")],
                    env={**env, "CATALOG_AGENT_VERIFY_TLS": "false"})
    assert get.returncode == 0, get.stderr
    assert [json.loads(line)["event"] for line in get.stderr.splitlines()
            if '"warning"' in line] == ["TLS certificates are not checked"], get.stderr
    for name, data in files.items():
        assert (unchecked / name).read_bytes() == data, name


def test_image_without_a_ca_refuses_the_certificate_in_one_line(agent_image, tls_s3_server,  # noqa: F811
                                                               tls_bucket,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """No ca_bundle, no AWS_CA_BUNDLE: the image's own trust (botocore's cacert.pem; certifi is
    not installed) refuses the tests' CA: exit 4 and one line, for get and put alike."""
    env = _tls_env(tls_s3_server, tls_bucket)
    out = _data_folder(tmp_path / "out")
    (out / "a.txt").write_text("a\n")
    empty = _data_folder(tmp_path / "empty")
    for args in (["get", "*"], ["put", "*", "--step", "t"]):
        ran = run_image(agent_image.tag, *args, "--compute-data-folder", "/data",
                        volumes=[(out if args[0] == "put" else empty, "/data")], env=env)
        assert ran.returncode == 4, ran.stderr
        assert "Traceback" not in ran.stderr and "ModuleNotFoundError" not in ran.stderr
        lines = [line for line in ran.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, ran.stderr
        error = json.loads(lines[0])
        assert error["event"].startswith(f"TLS certificate of {tls_s3_server.https_endpoint} "
                                         f"not trusted: unable to get local issuer certificate")
    assert list(empty.iterdir()) == []
    assert tls_s3_server.client().list_objects_v2(Bucket=tls_bucket).get("KeyCount", 0) == 0
