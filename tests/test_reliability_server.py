"""The server or the agent dies mid-transfer: nothing partial may look complete.

Each test that kills a server runs its own SeaweedFS (catalog_agent.devserver.start), never the
session's shared one, and restarts it on the same folder and ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Agent, clean_env

from catalog_agent import devserver
from catalog_agent.local import PART_SUFFIX


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[devserver.SeaweedServer]:
    server = devserver.start(tmp_path / "weed")
    yield server
    if server.process.poll() is None:
        kill_server(server)  # SIGTERM takes SeaweedFS 15 s; its data is thrown away anyway
    server.stop()


def kill_server(server: devserver.SeaweedServer) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


def restart_server(server: devserver.SeaweedServer, timeout: float = 90) -> None:
    """Start the same command on the same folder and ports; wait until listing answers."""
    with open(server.folder / "weed.log", "ab") as log:
        server.process = subprocess.Popen(server.process.args, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Listing answers before the volumes are back: read an object too (the agent's
            # retries are botocore's standard ones, well under a second for a 5xx).
            for bucket in client.list_buckets().get("Buckets", []):
                for item in client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1).get(
                        "Contents", []):
                    client.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
            return
        except Exception:  # noqa: BLE001 - not ready yet
            assert server.process.poll() is None, "SeaweedFS did not restart"
            assert time.monotonic() < deadline, "SeaweedFS did not answer after its restart"
            time.sleep(0.3)


def agent_for(server: devserver.SeaweedServer, tmp_path: Path, bucket: str) -> Agent:
    env = clean_env(tmp_path / "home")
    env.update(server.env)
    env.update({"CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_REGION": "us-east-1",
                "CATALOG_AGENT_ADDRESSING_STYLE": "path", "CATALOG_AGENT_LOG_FORMAT": "json",
                "CATALOG_AGENT_TERMINATION_LOG": str(tmp_path / "termination-log"),
                "CATALOG_AGENT_CONFIG": str(tmp_path / "no-config.yaml")})
    (tmp_path / "no-config.yaml").write_text("")
    return Agent(env, tmp_path)


def spawn(agent: Agent, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "catalog_agent", *args], cwd=agent.cwd,
                            env={**agent.env, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float = 120, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def make_files(folder: Path, count: int, size: int) -> dict[str, str]:
    hashes = {}
    for index in range(count):
        data = os.urandom(size)
        path = folder / f"d{index % 5}" / f"f{index:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return hashes


def stored_count(client, bucket: str, prefix: str) -> int:  # noqa: ANN001
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(page.get("Contents", [])) for page in pages)
    except Exception:  # noqa: BLE001 - a dead server counts nothing
        return 0


def manifest_exists(client, bucket: str, run: str, step: str) -> bool:  # noqa: ANN001
    try:
        client.head_object(Bucket=bucket, Key=f"{run}/.catalog-agent/manifests/{step}.json")
        return True
    except client.exceptions.ClientError:
        return False


def done_event(stderr: str, command: str) -> dict:
    for line in reversed(stderr.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == f"{command}.done":
            return event
    raise AssertionError(f"no {command}.done event in:\n{stderr[-3000:]}")


def local_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_server_killed_mid_put_then_restarted_completes_within_retries(
        own_server, tmp_path: Path) -> None:
    client = own_server.client()
    client.create_bucket(Bucket="kill-put")
    agent = agent_for(own_server, tmp_path, "kill-put")
    out = tmp_path / "out"
    hashes = make_files(out, 400, 64 * 1024)
    proc = spawn(agent, "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                 str(out), env={"CATALOG_AGENT_CONCURRENCY": "2",
                                "CATALOG_AGENT_MAX_ATTEMPTS": "20"})
    wait_until(lambda: stored_count(client, "kill-put", "r/") >= 20 or proc.poll() is not None,
               what="the first objects")
    assert proc.poll() is None, "the put finished before the server could be killed"
    kill_server(own_server)
    time.sleep(1.0)
    restart_server(own_server)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert done_event(stderr, "put")["retries"] > 0
    assert manifest_exists(client, "kill-put", "r", "s")
    stored = {}
    for relative in hashes:
        body = client.get_object(Bucket="kill-put", Key=f"r/{relative}")["Body"].read()
        stored[relative] = hashlib.sha256(body).hexdigest()
    assert stored == hashes
    assert own_server.secret_key not in stdout + stderr


def test_server_killed_mid_put_and_gone_exits_5_without_manifest(own_server,
                                                                  tmp_path: Path) -> None:
    client = own_server.client()
    client.create_bucket(Bucket="gone-put")
    agent = agent_for(own_server, tmp_path, "gone-put")
    out = tmp_path / "out"
    make_files(out, 400, 64 * 1024)
    proc = spawn(agent, "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                 str(out), env={"CATALOG_AGENT_CONCURRENCY": "2",
                                "CATALOG_AGENT_MAX_ATTEMPTS": "2"})
    wait_until(lambda: stored_count(client, "gone-put", "r/") >= 20 or proc.poll() is not None,
               what="the first objects")
    assert proc.poll() is None, "the put finished before the server could be killed"
    kill_server(own_server)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 5, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [json.loads(line) for line in stderr.splitlines()
              if line.startswith("{") and '"level": "error"' in line]
    assert len(errors) == 1 and errors[0]["exit_code"] == 5, stderr[-2000:]
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["exit_code"] == 5 and message["error"]
    restart_server(own_server)
    assert not manifest_exists(client, "gone-put", "r", "s")
    assert 0 < stored_count(client, "gone-put", "r/") < 400
    assert own_server.secret_key not in stdout + stderr + json.dumps(message)


def test_server_killed_mid_get_leaves_no_partial_file_and_second_get_resumes(
        own_server, tmp_path: Path) -> None:
    client = own_server.client()
    client.create_bucket(Bucket="kill-get")
    agent = agent_for(own_server, tmp_path, "kill-get")
    out, into = tmp_path / "out", tmp_path / "in"
    hashes = make_files(out, 400, 64 * 1024)
    put = agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder", str(out))
    assert put.code == 0, put.output[-2000:]

    proc = spawn(agent, "get", "**", "--run-id", "r", "--compute-data-folder", str(into),
                 env={"CATALOG_AGENT_CONCURRENCY": "2", "CATALOG_AGENT_MAX_ATTEMPTS": "2"})
    wait_until(lambda: (into.is_dir() and sum(1 for _ in into.rglob("f*.bin")) >= 30)
               or proc.poll() is not None, what="the first files")
    assert proc.poll() is None, "the get finished before the server could be killed"
    kill_server(own_server)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 5, stderr[-3000:]
    assert "Traceback" not in stderr

    first = local_files(into)
    assert not [p for p in first if p.endswith(PART_SUFFIX)], "a temporary file was left"
    assert 30 <= len(first) < len(hashes)
    for relative, digest in first.items():  # whatever is at a final path is whole and right
        assert hashes[relative] == digest

    restart_server(own_server)
    again = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(into))
    assert again.code == 0, again.output[-2000:]
    done = done_event(again.stderr, "get")
    assert done["skipped"] == len(first)
    assert done["files"] == len(hashes) - len(first)
    assert local_files(into) == hashes
    assert own_server.secret_key not in stdout + stderr + again.output


def test_agent_killed_mid_multipart_put_then_put_again_leaves_no_unfinished_upload(
        agent, s3, bucket, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hashes = make_files(out, 3, 40 * 1024 * 1024)  # above the 16 MiB multipart threshold
    proc = spawn(agent, "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                 str(out), env={"CATALOG_AGENT_CONCURRENCY": "1"})

    def uploads() -> list[dict]:
        return s3.list_multipart_uploads(Bucket=bucket, Prefix="r/").get("Uploads", [])

    wait_until(lambda: bool(uploads()) or proc.poll() is not None, what="a multipart upload")
    assert proc.poll() is None, "the put finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stale = uploads()
    assert stale, "the killed put left no unfinished upload: the test proves nothing"
    assert not manifest_exists(s3, bucket, "r", "s")

    again = agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder", str(out))
    assert again.code == 0, again.output[-3000:]
    assert uploads() == []
    warned = [json.loads(line) for line in again.stderr.splitlines()
              if "aborted unfinished multipart uploads" in line]
    assert warned and warned[0]["count"] >= len(stale)
    assert manifest_exists(s3, bucket, "r", "s")
    for relative, digest in hashes.items():
        body = s3.get_object(Bucket=bucket, Key=f"r/{relative}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
