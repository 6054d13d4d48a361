"""Object keys planted by someone else must never make get write outside its data folder.

SeaweedFS refuses keys with '.'/'..' segments and backslashes, so these keys are planted in
moto's S3 server (which stores keys as given, like AWS S3), started here on a free loopback
port. The agent must refuse each with exit 6 and write nothing, anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Agent, clean_env

SECRET = "hostile-keys-secret-value-4242"
BUCKET = "hostile"

HOSTILE = {
    "dot-dot": "../../escaped.txt",
    "dot-dot-inside": "a/../../escaped.txt",
    "dot-dot-alone": "..",
    "dot": "./escaped.txt",
    "absolute": "/tmp/escaped.txt",
    "backslash": "..\\escaped.txt",
    "backslash-inside": "a\\..\\..\\escaped.txt",
    "nul": "a\x00escaped.txt",
    "overlong-name": "n" * 300,
    "empty-segment": "a//escaped.txt",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or \
        shutil.which("moto_server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("moto_server is missing (pip install -e .[dev])")
        pytest.skip("moto_server is missing")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.2)
    client = _client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="AKIAHOSTILEKEYS00001", aws_secret_access_key=SECRET,
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def moto_agent(moto: str, tmp_path: Path) -> Agent:
    env = clean_env(tmp_path / "home")
    env.update({"AWS_ACCESS_KEY_ID": "AKIAHOSTILEKEYS00001", "AWS_SECRET_ACCESS_KEY": SECRET,
                "CATALOG_AGENT_ENDPOINT_URL": moto, "CATALOG_AGENT_S3_BUCKET": BUCKET,
                "CATALOG_AGENT_REGION": "us-east-1", "CATALOG_AGENT_ADDRESSING_STYLE": "path",
                "CATALOG_AGENT_LOG_FORMAT": "json",
                "CATALOG_AGENT_TERMINATION_LOG": str(tmp_path / "termination-log"),
                "CATALOG_AGENT_CONFIG": str(tmp_path / "no-config.yaml")})
    (tmp_path / "no-config.yaml").write_text("")
    return Agent(env, tmp_path)


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  or p.is_symlink())


def assert_refused(ran: Any, tmp_path: Path) -> dict:
    assert ran.code == 6, ran.output[-3000:]
    assert "Traceback" not in ran.output
    errors = [json.loads(line) for line in ran.stderr.splitlines()
              if line.startswith("{") and json.loads(line).get("level") == "error"]
    assert len(errors) == 1, ran.stderr
    assert "refusing" in errors[0]["event"]
    message = (tmp_path / "termination-log").read_text()
    assert SECRET not in ran.output + message
    return errors[0]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_get_refuses_a_hostile_key_and_writes_nothing(moto: str, moto_agent: Agent,
                                                      tmp_path: Path, name: str) -> None:
    run = f"get-{name}"
    client = _client(moto)
    client.put_object(Bucket=BUCKET, Key=f"{run}/ok.txt", Body=b"fine")
    client.put_object(Bucket=BUCKET, Key=f"{run}/{HOSTILE[name]}", Body=b"evil")
    before = all_files(tmp_path)
    folder = tmp_path / "work" / "deep" / "data"
    ran = moto_agent("get", "**", "--run-id", run, "--compute-data-folder", str(folder))
    assert_refused(ran, tmp_path)
    # Nothing anywhere: not in the data folder, not beside it, not in /tmp.
    assert not folder.exists() or all_files(folder) == []
    after = [f for f in all_files(tmp_path) if f != "termination-log"]
    assert after == [f for f in before if f != "termination-log"]
    assert not Path("/tmp/escaped.txt").exists()


def test_a_hostile_key_outside_the_patterns_does_not_stop_a_get(moto: str, moto_agent: Agent,
                                                                 tmp_path: Path) -> None:
    """Only matched keys are checked: a planted key elsewhere in the run is never touched."""
    run = "get-unmatched"
    client = _client(moto)
    client.put_object(Bucket=BUCKET, Key=f"{run}/in/ok.txt", Body=b"fine")
    client.put_object(Bucket=BUCKET, Key=f"{run}/../../escaped.txt", Body=b"evil")
    folder = tmp_path / "data"
    ran = moto_agent("get", "in/**", "--run-id", run, "--compute-data-folder", str(folder))
    assert ran.code == 0, ran.output
    assert all_files(folder) == ["in/ok.txt"]


def test_sync_refuses_to_copy_a_hostile_key(moto: str, moto_agent: Agent,
                                            tmp_path: Path) -> None:
    client = _client(moto)
    client.put_object(Bucket=BUCKET, Key="sync-from/ok.txt", Body=b"fine")
    client.put_object(Bucket=BUCKET, Key="sync-from/a/../../escaped.txt", Body=b"evil")
    ran = moto_agent("sync", "--from-run", "sync-from", "--run-id", "sync-to")
    assert_refused(ran, tmp_path)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="sync-to/").get("KeyCount", 0)
    assert listed == 0


def test_a_manifest_naming_a_hostile_path_writes_nothing_outside(moto: str, moto_agent: Agent,
                                                                 tmp_path: Path) -> None:
    """A forged manifest cannot add paths: only listed keys are fetched, each checked."""
    run = "forged-manifest"
    client = _client(moto)
    client.put_object(Bucket=BUCKET, Key=f"{run}/ok.txt", Body=b"fine")
    forged = {"format": "catalog-agent/manifest/v1", "run_id": run, "step": "s",
              "files": [{"name": "../../escaped.txt", "data_hash": "0" * 64, "size": 4},
                        {"name": "/tmp/escaped.txt", "data_hash": "0" * 64, "size": 4}]}
    client.put_object(Bucket=BUCKET, Key=f"{run}/.catalog-agent/manifests/s.json",
                      Body=json.dumps(forged).encode())
    folder = tmp_path / "work" / "data"
    ran = moto_agent("get", "**", "--run-id", run, "--compute-data-folder", str(folder))
    assert ran.code == 0, ran.output
    assert all_files(tmp_path / "work") == ["data/ok.txt"]
    assert not Path("/tmp/escaped.txt").exists()
