"""Shared fixtures: one real SeaweedFS per test session, a bucket per test, the real CLI."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from catalog_agent import devserver

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skipped test is a failure: a missing tool must not hide a test."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devserver.SeaweedServer]:
    server = devserver.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server: devserver.SeaweedServer) -> Iterator[str]:
    name = "t-" + secrets.token_hex(6)
    s3_server.create_bucket(name)
    yield name
    _delete_bucket(s3_server, name)


def _delete_bucket(server: devserver.SeaweedServer, name: str) -> None:
    """Free the bucket's volumes: the session's server holds only about 29 live buckets (each
    takes a collection of volumes, -volume.max=200); after that every PutObject fails with
    InternalError, so without this the whole suite failed from roughly its 30th bucket on."""
    client = server.client()
    try:
        try:
            client.delete_bucket(Bucket=name)  # SeaweedFS deletes non-empty buckets
            return
        except Exception:  # noqa: BLE001 - an S3 that wants it empty first
            pass
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=name)
    except Exception:  # noqa: BLE001 - a test may have broken the server: nothing to free
        pass


@pytest.fixture
def s3(s3_server: devserver.SeaweedServer):  # noqa: ANN201 - a boto3 client
    return s3_server.client()


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def clean_env(home: Path) -> dict[str, str]:
    """The process environment without any AWS or CATALOG_AGENT_ setting of the developer's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CATALOG_AGENT_"))}
    env["HOME"] = str(home)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def agent_env(tmp_path: Path, *settings: dict[str, str]) -> dict[str, str]:
    """A clean environment for the CLI: JSON logs, a termination log and an empty config file
    in ``tmp_path``, then ``settings`` (a server's credentials, the catalog's keys)."""
    config = tmp_path / "no-config.yaml"
    config.write_text("")
    env = clean_env(tmp_path / "home")
    env.update({"CATALOG_AGENT_LOG_FORMAT": "json",
                "CATALOG_AGENT_TERMINATION_LOG": str(tmp_path / "termination-log"),
                "CATALOG_AGENT_CONFIG": str(config)})
    for setting in settings:
        env.update(setting)
    return env


def answer_json(handler: Any, document: Any) -> None:
    """Answer a request of a test's ``BaseHTTPRequestHandler`` with 200 and a JSON body."""
    body = json.dumps(document).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log events in an agent's output; other lines are skipped."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


@dataclass
class Agent:
    """Runs the real CLI (``python -m catalog_agent``) as a separate process."""

    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
                 input: str | None = None) -> Ran:
        full_env = {**self.env, **(env or {})}
        full_env = {k: v for k, v in full_env.items() if v is not None}
        done = subprocess.run([sys.executable, "-m", "catalog_agent", *args], cwd=self.cwd,
                              env=full_env, capture_output=True, text=True, timeout=timeout,
                              input=input)
        return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def agent(tmp_path: Path, s3_server: devserver.SeaweedServer, bucket: str) -> Agent:
    """The CLI configured by environment for this test's bucket on the session's server."""
    env = agent_env(tmp_path, s3_server.env, {
        "CATALOG_AGENT_S3_BUCKET": bucket,
        "CATALOG_AGENT_REGION": "us-east-1",
        "CATALOG_AGENT_ADDRESSING_STYLE": "path",
    })
    return Agent(env, tmp_path)


@pytest.fixture
def offline_agent(tmp_path: Path) -> Agent:
    """The CLI with no server: for configuration and usage errors."""
    env = clean_env(tmp_path / "home")
    env["CATALOG_AGENT_LOG_FORMAT"] = "json"
    env["CATALOG_AGENT_TERMINATION_LOG"] = str(tmp_path / "termination-log")
    return Agent(env, tmp_path)
