"""Credentials against a real STS and S3 (moto's server): every path, every common failure.

Each test runs the real CLI as a subprocess. STS is reached only through sts_endpoint_url and
S3 only through endpoint_url (no AWS_ENDPOINT_URL), so a test passes only if the agent sends
STS calls where the configuration says. moto checks every request's signature and IAM policy
(tests/moto_support.py): a key moto does not know, a wrong secret or session token, or a
policy that does not allow the call fails as on AWS. Every captured output and termination
message is scanned for every secret the test used or moto issued.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import IO, Any, Iterator

import pytest
from conftest import IN_CI, Agent, Ran, agent_env, answer_json, log_events
from fakeclock import FakeClock, library
from moto_support import ACCOUNT, ADMIN_ARN, MotoServer, moto_server, start_moto  # noqa: F401

from catalog_agent.credentials import refresh_windows, session_name

IRSA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/irsa-role"
# Every token a test wrote into a file: assert_clean scans for all of them.
TOKENS: list[str] = []
NO_SUCH_ROLE = f"arn:aws:iam::{ACCOUNT}:role/catalog-writer"  # never created


def _jwt() -> str:
    """A JWT-shaped service-account token, unique per test (it is a secret too)."""
    token = ".".join(secrets.token_urlsafe(24) for _ in range(3))
    TOKENS.append(token)
    return token


@pytest.fixture
def moto_bucket(moto_server: MotoServer) -> str:  # noqa: F811
    name = "cred-" + secrets.token_hex(5)
    moto_server.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def cred_agent(tmp_path: Path, moto_server: MotoServer, moto_bucket: str) -> Agent:  # noqa: F811
    """The CLI with no credentials at all, pointed at moto for both S3 and STS."""
    env = agent_env(tmp_path, {
        "CATALOG_AGENT_S3_BUCKET": moto_bucket,
        "CATALOG_AGENT_PREFIX": "pipelines",
        "CATALOG_AGENT_REGION": "us-east-1",
        "CATALOG_AGENT_ENDPOINT_URL": moto_server.endpoint,
        "CATALOG_AGENT_STS_ENDPOINT_URL": moto_server.endpoint,
        "CATALOG_AGENT_ADDRESSING_STYLE": "path",
    })
    return Agent(env, tmp_path)


@pytest.fixture(scope="session")
def irsa_role(moto_server: MotoServer) -> str:  # noqa: F811
    """The pod's IRSA role in IAM: trusts the cluster's OIDC provider, may use S3 and
    assume other roles."""
    return moto_server.make_web_identity_role(IRSA_ROLE.rsplit("/", 1)[1])


@pytest.fixture
def irsa(tmp_path: Path, irsa_role: str) -> dict[str, str]:
    """What EKS injects for IRSA: the role and a projected token file."""
    token = tmp_path / "eks.amazonaws.com" / "serviceaccount" / "token"
    token.parent.mkdir(parents=True)
    token.write_text(_jwt())
    return {"AWS_ROLE_ARN": irsa_role, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token)}


@pytest.fixture
def fake_clock(tmp_path: Path) -> FakeClock:
    """A wall clock the test moves (libfaketime, scripts/setup.d/40-faketime.sh)."""
    if library() is None and not IN_CI:
        pytest.skip("libfaketime is not installed (scripts/setup.d/40-faketime.sh)")
    return FakeClock(tmp_path / "faketime")


# --- helpers ---


def assert_clean(ran: Ran, agent: Agent, server: MotoServer, *extra: str) -> None:  # noqa: F811
    """No secret in any output: the test's own, the token file's, and every one moto issued."""
    values = [v for v in extra if v] + TOKENS
    for role in server.issued():
        values += [role["secret_access_key"], role["session_token"]]
    termination = Path(agent.env["CATALOG_AGENT_TERMINATION_LOG"])
    texts = [ran.stdout, ran.stderr, termination.read_text() if termination.exists() else ""]
    for value in values:
        for text in texts:
            assert value not in text, "a secret value appears in the agent's output"


def events(ran: Ran) -> list[dict[str, Any]]:
    return log_events(ran.stderr)


def assert_one_error_line(ran: Ran, code: int, *needles: str) -> dict[str, Any]:
    """Exit ``code``, exactly one error event, no traceback, each needle in that line."""
    assert ran.code == code, ran.output
    assert "Traceback" not in ran.output
    errors = [e for e in events(ran) if e.get("level") == "error"]
    assert len(errors) == 1, ran.stderr
    line = errors[0]["event"]
    assert "\n" not in line
    for needle in needles:
        assert needle in line, line
    return errors[0]


def check_lines(ran: Ran) -> dict[str, tuple[str, str]]:
    """``config --check`` output: {check: (status, detail)}."""
    rows = {}
    for line in ran.stdout.splitlines():
        name, status, *detail = line.split(None, 2)
        rows[name] = (status, detail[0] if detail else "")
    return rows


def make_role(server: MotoServer, name: str, trusted: str, *,  # noqa: F811
              actions: list[str] | None = None) -> str:
    return server.make_role(name, trusted, actions=actions)


def make_user(server: MotoServer, name: str, actions: list[str]) -> tuple[str, str, str]:  # noqa: F811
    """An IAM user with an access key and a policy allowing ``actions``: (arn, key, secret)."""
    return server.make_user(name, actions)


@dataclass
class Running:
    """The CLI in the background, its output going to files (a held agent never blocks on a
    full pipe)."""

    process: subprocess.Popen[str]
    stdout: IO[str]
    stderr: IO[str]

    def finish(self, timeout: float = 300) -> Ran:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        texts = []
        for handle in (self.stdout, self.stderr):
            handle.seek(0)
            texts.append(handle.read())
            handle.close()
        return Ran(self.process.returncode, texts[0], texts[1])


def start_agent(agent: Agent, *args: str, env: dict[str, str]) -> Running:
    stdout = tempfile.TemporaryFile("w+")
    stderr = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, "-m", "catalog_agent", *args], cwd=agent.cwd,
                               env={**agent.env, **env}, stdout=stdout, stderr=stderr, text=True)
    return Running(process, stdout, stderr)


def unique(prefix: str) -> str:
    return prefix + "-" + secrets.token_hex(4)


# --- pure parts ---


def test_session_name_identifies_run_and_step_within_sts_limits() -> None:
    assert session_name("run-42", "train") == "catalog-agent.run-42.train"
    odd = session_name("2024/05:01 ü", "step one")
    assert odd == "catalog-agent.2024-05-01--.step-one"
    long_a = session_name("r" * 100 + "a", "s")
    long_b = session_name("r" * 100 + "b", "s")
    for name in (odd, long_a, long_b):
        assert 2 <= len(name) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "_+=,.@-") for c in name)
    assert long_a != long_b and long_a.startswith("catalog-agent.rrr")


def test_refresh_windows_scale_with_the_session() -> None:
    assert refresh_windows(900) == (300, 150)  # botocore's 15/10 min would refresh every call
    assert refresh_windows(3600) == (900, 600)
    assert refresh_windows(43200) == (900, 600)


def test_region_picks_the_regional_sts_endpoint_and_s3_region(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from catalog_agent import credentials
    from catalog_agent.aws import s3_client
    from catalog_agent.config import load

    for name in [n for n in os.environ if n.startswith(("AWS_", "CATALOG_AGENT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CATALOG_AGENT_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("")
    default = load(flags={"s3_bucket": "b"})
    assert default.region == "eu-west-1"
    sts = credentials._sts_creator(default)("sts", aws_access_key_id="AKIAX",
                                             aws_secret_access_key="x")
    assert sts.meta.endpoint_url == "https://sts.eu-west-1.amazonaws.com"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    assert s3_client(default, pool_size=1).meta.region_name == "eu-west-1"
    other = load(flags={"s3_bucket": "b", "region": "ap-southeast-2"})
    assert credentials._sts_creator(other)("sts").meta.endpoint_url == \
        "https://sts.ap-southeast-2.amazonaws.com"
    pointed = load(flags={"s3_bucket": "b", "sts_endpoint_url": "http://127.0.0.1:9"})
    assert credentials._sts_creator(pointed)("sts").meta.endpoint_url == "http://127.0.0.1:9"


def test_empty_aws_profile_means_the_default_chain(cred_agent: Agent, irsa: dict[str, str],
                                                   moto_server: MotoServer) -> None:  # noqa: F811
    ran = cred_agent("config", "--check", "--run-id", "r1",
                     env={**irsa, "CATALOG_AGENT_AWS_PROFILE": ""})
    assert ran.code == 0, ran.output
    assert check_lines(ran)["credentials"][1] == "irsa"
    assert_clean(ran, cred_agent, moto_server)


# --- every method that can win ---


def test_irsa_web_identity_by_default(cred_agent: Agent, irsa: dict[str, str],
                                      moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """Zero configuration: the pod's IRSA variables are enough, for check, put and get."""
    check = cred_agent("config", "--check", "--run-id", "r1", "--step", "s1", env=irsa)
    assert check.code == 0, check.output
    rows = check_lines(check)
    assert rows["credentials"][0] == "ok" and rows["credentials"][1].startswith("irsa"), rows
    assert f"assumed-role/irsa-role/{session_name('r1', 's1')}" in rows["identity"][1]
    assert [rows[k][0] for k in ("list", "write", "read", "delete")] == ["ok"] * 4, rows
    assert moto_server.assumed_sessions(session_name("r1", "s1")) >= 1
    assert_clean(check, cred_agent, moto_server)

    data = tmp_path / "out"
    data.mkdir()
    (data / "a.txt").write_bytes(b"via irsa\n")
    put = cred_agent("put", "a.txt", "--run-id", "r1", "--step", "s1",
                     "--compute-data-folder", str(data), env=irsa)
    assert put.code == 0, put.output
    got = cred_agent("get", "a.txt", "--run-id", "r1", "--compute-data-folder",
                     str(tmp_path / "in"), env=irsa)
    assert got.code == 0, got.output
    assert (tmp_path / "in" / "a.txt").read_bytes() == b"via irsa\n"
    assert_clean(put, cred_agent, moto_server)
    assert_clean(got, cred_agent, moto_server)


def test_environment_keys_win_without_configuration(cred_agent: Agent,
                                                    moto_server: MotoServer) -> None:  # noqa: F811
    _, key, secret = make_user(moto_server, unique("env-user"), ["s3:*"])
    ran = cred_agent("config", "--check", "--run-id", "r1",
                     env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == "environment", rows
    assert ":user/env-user-" in rows["identity"][1]
    assert_clean(ran, cred_agent, moto_server, secret)


def test_named_variables_and_profile(cred_agent: Agent, moto_server: MotoServer,  # noqa: F811
                                     tmp_path: Path) -> None:
    _, key, secret = make_user(moto_server, unique("named"), ["s3:*"])
    named = cred_agent("config", "--check", "--run-id", "r1", "--use-credentials",
                       "--aws-access-key-name", "CATALOG_KEY",
                       "--aws-secret-access-key-name", "CATALOG_SECRET",
                       env={"CATALOG_KEY": key, "CATALOG_SECRET": secret})
    assert named.code == 0, named.output
    assert check_lines(named)["credentials"][1] == "environment"
    assert_clean(named, cred_agent, moto_server, secret)

    _, pkey, psecret = make_user(moto_server, unique("profiled"), ["s3:*"])
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAWRONGWRONGWRONG1\n"
                     f"aws_secret_access_key = wrong\n\n[team]\naws_access_key_id = {pkey}\n"
                     f"aws_secret_access_key = {psecret}\n")
    profiled = cred_agent("config", "--check", "--run-id", "r1", "--aws-profile", "team",
                          "--aws-credentials-file", str(creds))
    assert profiled.code == 0, profiled.output
    rows = check_lines(profiled)
    assert rows["credentials"][1] == "profile"
    assert ":user/profiled-" in rows["identity"][1], rows
    assert_clean(profiled, cred_agent, moto_server, psecret)


class _PodIdentityAgent(BaseHTTPRequestHandler):
    """The EKS Pod Identity agent's protocol: token in, credentials out (from moto's STS)."""

    token = ""
    credentials: dict[str, str] = {}
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        if self.headers.get("Authorization") != cls.token:
            self.send_response(401)
            self.end_headers()
            return
        cls.calls += 1
        answer_json(self, cls.credentials)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def pod_identity_agent(moto_server: MotoServer) -> Iterator[type[_PodIdentityAgent]]:  # noqa: F811
    role = make_role(moto_server, unique("pod-role"), ADMIN_ARN)
    issued = moto_server.client("sts").assume_role(RoleArn=role, RoleSessionName="pod-identity",
                                                   DurationSeconds=3600)["Credentials"]
    handler = type("Handler", (_PodIdentityAgent,), {
        "token": _jwt(), "calls": 0,
        "credentials": {"AccessKeyId": issued["AccessKeyId"],
                        "SecretAccessKey": issued["SecretAccessKey"],
                        "Token": issued["SessionToken"],
                        "Expiration": issued["Expiration"].isoformat()}})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_port}/v1/credentials"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


def test_eks_pod_identity(cred_agent: Agent, moto_server: MotoServer, tmp_path: Path,  # noqa: F811
                          pod_identity_agent: Any) -> None:
    token = tmp_path / "pod-identity-token"
    token.write_text(pod_identity_agent.token)
    ran = cred_agent("config", "--check", "--run-id", "r1", env={
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": pod_identity_agent.url,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token)})
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == "pod-identity", rows
    assert "assumed-role/pod-role-" in rows["identity"][1]
    assert pod_identity_agent.calls >= 1
    assert_clean(ran, cred_agent, moto_server, pod_identity_agent.token)


# --- role assumption ---


def test_assume_role_on_top_of_irsa(cred_agent: Agent, irsa: dict[str, str],
                                    moto_server: MotoServer) -> None:  # noqa: F811
    name = session_name("r-on-irsa", "s1")
    # The target trusts the IRSA session (moto matches principals exactly, no role-wide match).
    target_name = unique("catalog-writer")
    target = make_role(moto_server, target_name,
                       f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-role/{name}")
    ran = cred_agent("config", "--check", "--run-id", "r-on-irsa", "--step", "s1",
                     "--role-arn", target, env=irsa)
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == f"assume-role {target} on irsa", rows
    assert f"assumed-role/{target_name}/{name}" in rows["identity"][1]
    assert [rows[k][0] for k in ("list", "write", "read", "delete")] == ["ok"] * 4, rows
    assert moto_server.assumed_sessions(name) == 2  # the IRSA hop, then the role
    assert_clean(ran, cred_agent, moto_server)


def test_role_chaining_beyond_an_hour_names_the_cap(cred_agent: Agent, irsa: dict[str, str],
                                                    moto_server: MotoServer) -> None:  # noqa: F811
    """role_arn on top of IRSA is role chaining: AWS caps it at 3,600 s whatever the role's
    MaxSessionDuration (moto_aws.py answers as AWS does). The hint blamed MaxSessionDuration."""
    name = session_name("r-chained", "s1")
    target = make_role(moto_server, unique("catalog-writer"),
                       f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-role/{name}")
    ran = cred_agent("config", "--check", "--run-id", "r-chained", "--step", "s1",
                     "--role-arn", target, "--session-duration-in-seconds", "7200", env=irsa)
    error = assert_one_error_line(ran, 4, "AssumeRole", "ValidationError", "role chaining")
    assert "session_duration_in_seconds to 3600 or less" in error["event"], error
    assert "MaxSessionDuration" in error["event"]  # named as what does not help
    assert_clean(ran, cred_agent, moto_server)
    ran = cred_agent("config", "--check", "--run-id", "r-chained", "--step", "s1",
                     "--role-arn", target, "--session-duration-in-seconds", "3600", env=irsa)
    assert ran.code == 0, ran.output


def test_assume_role_on_top_of_named_variables(cred_agent: Agent,
                                               moto_server: MotoServer) -> None:  # noqa: F811
    user_arn, key, secret = make_user(moto_server, unique("base"), ["sts:AssumeRole"])
    target_name = unique("catalog-writer")
    target = make_role(moto_server, target_name, user_arn)
    ran = cred_agent("config", "--check", "--run-id", "r-on-env", "--use-credentials",
                     "--aws-access-key-name", "K", "--aws-secret-access-key-name", "S",
                     "--role-arn", target, "--session-duration-in-seconds", "3600",
                     env={"K": key, "S": secret})
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == f"assume-role {target} on environment", rows
    assert f"assumed-role/{target_name}/{session_name('r-on-env', '')}" in rows["identity"][1]
    assert [rows[k][0] for k in ("list", "write", "read", "delete")] == ["ok"] * 4, rows
    assert_clean(ran, cred_agent, moto_server, secret)


def test_assume_role_on_top_of_a_profile(cred_agent: Agent, moto_server: MotoServer,  # noqa: F811
                                         tmp_path: Path) -> None:
    user_arn, key, secret = make_user(moto_server, unique("prof-base"), ["sts:AssumeRole"])
    target_name = unique("catalog-writer")
    target = make_role(moto_server, target_name, user_arn)
    creds = tmp_path / "credentials"
    creds.write_text(f"[ci]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    ran = cred_agent("config", "--check", "--run-id", "r-on-prof", "--aws-profile", "ci",
                     "--aws-credentials-file", str(creds), "--role-arn", target)
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == f"assume-role {target} on profile", rows
    assert f"assumed-role/{target_name}/" in rows["identity"][1]
    assert_clean(ran, cred_agent, moto_server, secret)


def test_same_role_uses_web_identity_directly(cred_agent: Agent, irsa: dict[str, str],
                                              moto_server: MotoServer) -> None:  # noqa: F811
    name = session_name("r-same", "s1")
    ran = cred_agent("config", "--check", "--run-id", "r-same", "--step", "s1",
                     "--role-arn", IRSA_ROLE, env=irsa)
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1].startswith(f"irsa {IRSA_ROLE}"), rows
    assert f"assumed-role/irsa-role/{name}" in rows["identity"][1]
    assert moto_server.assumed_sessions(name) == 1  # one hop, not two
    assert_clean(ran, cred_agent, moto_server)


def _files(folder: Path, names: list[str], size: int = 16 * 1024) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        written[name] = os.urandom(size)
        (folder / name).write_bytes(written[name])
    return written


def test_credentials_refreshed_during_a_transfer(cred_agent: Agent, tmp_path: Path,
                                                 fake_clock: FakeClock) -> None:
    """A put and a get that outlast their credentials refresh them and finish.

    STS never issues sessions under 900 s, so the test moves the clock instead of waiting:
    the agent and moto's server share a wall clock (libfaketime) that the test moves while
    the server holds one request of the transfer, so the transfer is provably mid-way. The put
    jumps 660 s into its 900 s session (inside the advisory window: one thread refreshes, the
    others carry on), the get 800 s (mandatory window: every request waits for the refresh).
    Everything else is the production path: botocore's RefreshableCredentials asks our
    fetcher for a new AssumeRole session, moto issues it and checks every request's signature
    against the session that signed it. A server of its own: moto cannot dump its state once
    it holds a completed multipart upload, which the other tests' secret scans need.
    """
    server = start_moto(env=fake_clock.env(dict(os.environ)))
    try:
        bucket = "refresh-" + secrets.token_hex(4)
        server.client("s3").create_bucket(Bucket=bucket)
        user_arn, key, secret = make_user(server, unique("refresher"), ["sts:AssumeRole"])
        role = make_role(server, unique("refresh-role"), user_arn)
        data = tmp_path / "out"
        # Uploaded in name order by one worker: a-* before the refresh, big.bin (multipart:
        # 3 parts) created before it and completed after it, z-* after it.
        payload = _files(data, [f"a-{i:02d}.txt" for i in range(10)])
        payload.update(_files(data, ["big.bin"], size=20 * 1024 * 1024))
        payload.update(_files(data, [f"z-{i:02d}.txt" for i in range(10)]))
        env = {**fake_clock.env(cred_agent.env), "K": key, "S": secret,
               "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_ENDPOINT_URL": server.endpoint,
               "CATALOG_AGENT_STS_ENDPOINT_URL": server.endpoint}
        args = ["--run-id", "r-refresh", "--step", "s1", "--use-credentials",
                "--aws-access-key-name", "K", "--aws-secret-access-key-name", "S",
                "--role-arn", role, "--session-duration-in-seconds", "900", "--concurrency", "1"]

        server.hold("POST", r"/r-refresh/big\.bin\?uploads")
        running = start_agent(cred_agent, "put", "**", "--compute-data-folder", str(data),
                              *args, env=env)
        server.wait_held(running.process)
        put_held = len(server.requests())
        fake_clock.advance(660)
        server.release()
        put = running.finish()
        assert put.code == 0, put.output[-3000:]
        put_requests = server.requests()

        server.hold("GET", r"/r-refresh/z-00\.txt$")
        running = start_agent(cred_agent, "get", "**", "--compute-data-folder",
                              str(tmp_path / "in"), *args, env=env)
        server.wait_held(running.process)
        get_held = len(server.requests())
        fake_clock.advance(800)
        server.release()
        got = running.finish()
        assert got.code == 0, got.output[-3000:]
        get_requests = server.requests()[len(put_requests):]
    finally:
        server.stop()

    for name, content in payload.items():
        assert (tmp_path / "in" / name).read_bytes() == content, name
    for ran, requests in ((put, put_requests), (got, get_requests)):
        refreshes = [e for e in events(ran) if e["event"] == "credentials.refreshed"]
        assert len(refreshes) == 1, refreshes
        # Two AssumeRole calls, signed by the user: the first session and the refresh.
        assume = [r for r in requests if r["service"] == "sts" and r["key"] == key]
        assert len(assume) == 2, requests
        assert secret not in ran.output and "Traceback" not in ran.output

    def signers(requests: list[dict[str, str]], method: str, pattern: str) -> set[str]:
        found = {r["key"] for r in requests
                 if r["method"] == method and re.search(pattern, r["target"])}
        assert found, f"no {method} {pattern} request"
        return found

    # put: a-* under the first session, big.bin created under it and completed under the
    # new one (its parts under either: advisory, the others carried on while one refreshed),
    # z-* under the new one. moto verified every signature against its session.
    (first,) = signers(put_requests, "PUT", r"/a-\d\d\.txt$")
    (new,) = signers(put_requests, "PUT", r"/z-\d\d\.txt$")
    assert first.startswith("ASIA") and new.startswith("ASIA") and first != new
    assert signers(put_requests, "POST", r"/big\.bin\?uploads=") == {first}
    assert signers(put_requests, "PUT", r"/big\.bin\?partNumber=") <= {first, new}
    assert signers(put_requests, "POST", r"/big\.bin\?uploadId=") == {new}
    # get: everything up to the held z-00 under its first session; every later request under
    # the new one (mandatory: all requests waited for the refresh).
    (first,) = signers(get_requests[:get_held - len(put_requests)], "GET", "/r-refresh/")
    later = {r["key"] for r in get_requests[get_held - len(put_requests):]
             if r["service"] == "s3"}
    assert len(later) == 1 and first not in later and signers(
        get_requests, "GET", r"/z-0[1-9]\.txt$") == later
    print(f"put: {len(put_requests)} requests, get: {len(get_requests)}; one refresh each")


def test_refresh_refused_mid_transfer_stops_with_exit_4(cred_agent: Agent, tmp_path: Path,
                                                        moto_server: MotoServer,  # noqa: F811
                                                        moto_bucket: str,
                                                        fake_clock: FakeClock) -> None:
    """The role's trust is withdrawn while a put runs: the refresh fails, the put stops.

    The server holds the 21st upload; meanwhile the test withdraws the role's trust and moves
    the agent's clock 800 s into its 900 s session, into the mandatory window where no request
    may go out on the old session. Exit 4 naming AssumeRole and the trust policy, and no
    manifest: the step never looks complete with credentials that could not be renewed.
    (Only the agent's clock moves: moto checks no request time, and 800 s is within AWS's
    15 minutes of allowed skew too.)
    """
    user_arn, key, secret = make_user(moto_server, unique("revoked"), ["sts:AssumeRole"])
    role = make_role(moto_server, unique("revoked-role"), user_arn)
    data = tmp_path / "many"
    _files(data, [f"f-{i:02d}.txt" for i in range(40)], size=4 * 1024)
    env = {**fake_clock.env(cred_agent.env), "K": key, "S": secret}
    moto_server.hold("PUT", r"/r-revoked/f-20\.txt$")
    running = start_agent(cred_agent, "put", "**", "--run-id", "r-revoked", "--step", "s1",
                          "--compute-data-folder", str(data), "--use-credentials",
                          "--aws-access-key-name", "K", "--aws-secret-access-key-name", "S",
                          "--role-arn", role, "--session-duration-in-seconds", "900",
                          "--concurrency", "1", env=env)
    try:
        moto_server.wait_held(running.process)
        # Now nobody may assume the role any more.
        moto_server.client("iam").update_assume_role_policy(
            RoleName=role.rsplit("/", 1)[1], PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "sts:AssumeRole",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/nobody"}}]}))
        fake_clock.advance(800)
    finally:
        moto_server.release()
    ran = running.finish()
    error = assert_one_error_line(ran, 4, "AssumeRole", "AccessDenied", "trust policy")
    assert role in error["event"]
    print(error["event"])
    assert any(e["event"] == "credentials.refresh_failed" for e in events(ran))
    keys = [o["Key"] for o in moto_server.client("s3").list_objects_v2(
        Bucket=moto_bucket, Prefix="pipelines/r-revoked/").get("Contents", [])]
    assert len(keys) >= 20, keys  # uploaded before the refresh was due
    assert not [k for k in keys if "/.catalog-agent/manifests/" in k], keys
    assert_clean(ran, cred_agent, moto_server, secret)


# --- failures: exit 4, one line, a hint, no secret ---


def test_no_credentials_at_all(cred_agent: Agent) -> None:
    ran = cred_agent("config", "--check", "--run-id", "r1")
    assert_one_error_line(ran, 4, "no AWS credentials found", "hint:", "IRSA")
    assert check_lines(ran)["credentials"][0] == "FAILED"
    data = cred_agent.cwd / "d"
    data.mkdir()
    (data / "x").write_text("x")
    put = cred_agent("put", "x", "--run-id", "r1", "--step", "s", "--compute-data-folder",
                     str(data))
    assert_one_error_line(put, 4, "no AWS credentials found")


def test_missing_named_variable_names_it(cred_agent: Agent, moto_server: MotoServer) -> None:  # noqa: F811
    key = "AKIA" + secrets.token_hex(8).upper()
    ran = cred_agent("config", "--check", "--run-id", "r1", "--use-credentials",
                     "--aws-access-key-name", "MY_KEY",
                     "--aws-secret-access-key-name", "MY_SECRET", env={"MY_KEY": key})
    assert_one_error_line(ran, 4, "MY_SECRET")
    assert key not in ran.output
    assert_clean(ran, cred_agent, moto_server)


def test_missing_profile_file_or_profile_names_both(cred_agent: Agent, tmp_path: Path,
                                                    moto_server: MotoServer) -> None:  # noqa: F811
    missing = tmp_path / "nope" / "credentials"
    ran = cred_agent("config", "--check", "--run-id", "r1", "--aws-profile", "team",
                     "--aws-credentials-file", str(missing))
    assert_one_error_line(ran, 4, "'team'", str(missing), "does not exist")
    secret = secrets.token_hex(20)
    creds = tmp_path / "credentials"
    creds.write_text(f"[other]\naws_access_key_id = AKIAOTHEROTHEROTHER1\n"
                     f"aws_secret_access_key = {secret}\n")
    ran = cred_agent("config", "--check", "--run-id", "r1", "--aws-profile", "team",
                     "--aws-credentials-file", str(creds))
    assert_one_error_line(ran, 4, "'team'", str(creds), "not in the file")
    assert_clean(ran, cred_agent, moto_server, secret)


@pytest.mark.parametrize("variable", ["AWS_WEB_IDENTITY_TOKEN_FILE",
                                      "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
def test_unreadable_token_file_hints_at_fsgroup(cred_agent: Agent, irsa: dict[str, str],
                                                moto_server: MotoServer,  # noqa: F811
                                                variable: str) -> None:
    """As on EKS without fsGroup: the token (IRSA or Pod Identity) is another user's, 0600.

    As root, the agent runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), so
    file permissions bind it as they bind a non-root container user.
    """
    if variable != "AWS_WEB_IDENTITY_TOKEN_FILE":
        irsa = {variable: irsa["AWS_WEB_IDENTITY_TOKEN_FILE"],
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/v1/credentials"}
    token = Path(irsa[variable])
    token.chmod(0o600)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's file capabilities")
        os.chown(token, 65534, 65534)
        done = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search",
                               "--inh-caps=-all", "--", sys.executable, "-m", "catalog_agent",
                               "config", "--check", "--run-id", "r1"], cwd=cred_agent.cwd,
                              env={**cred_agent.env, **irsa}, capture_output=True, text=True,
                              timeout=120)
        ran = Ran(done.returncode, done.stdout, done.stderr)
    else:
        token.chmod(0)
        ran = cred_agent("config", "--check", "--run-id", "r1", env=irsa)
        token.chmod(0o600)
    error = assert_one_error_line(ran, 4, str(token), "not readable", "fsGroup")
    assert variable in error["event"]
    assert_clean(ran, cred_agent, moto_server)


def test_assume_role_denied_by_trust_policy(cred_agent: Agent, moto_server: MotoServer) -> None:  # noqa: F811
    user_arn, key, secret = make_user(moto_server, unique("outsider"), ["sts:AssumeRole"])
    locked = make_role(moto_server, unique("locked"), f"arn:aws:iam::{ACCOUNT}:user/someone-else")
    ran = cred_agent("config", "--check", "--run-id", "r1", "--use-credentials",
                     "--role-arn", locked,
                     env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    error = assert_one_error_line(ran, 4, "AssumeRole", "AccessDenied", locked, "trust policy")
    assert "sts:AssumeRole" in error["event"]
    assert_clean(ran, cred_agent, moto_server, secret)
    del user_arn


def test_invalid_base_key_is_refused(cred_agent: Agent, moto_server: MotoServer) -> None:  # noqa: F811
    secret = secrets.token_hex(20)
    ran = cred_agent("config", "--check", "--run-id", "r1", "--role-arn", NO_SUCH_ROLE,
                     env={"AWS_ACCESS_KEY_ID": "AKIANOTAREALKEY00001",
                          "AWS_SECRET_ACCESS_KEY": secret})
    assert_one_error_line(ran, 4, "AssumeRole", "InvalidClientTokenId", "base credentials")
    assert_clean(ran, cred_agent, moto_server, secret)


def test_bucket_access_denied_hints_at_the_policy(cred_agent: Agent, moto_server: MotoServer,  # noqa: F811
                                                  moto_bucket: str, tmp_path: Path) -> None:
    _, key, secret = make_user(moto_server, unique("no-s3"), [])
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    data = tmp_path / "d"
    data.mkdir()
    (data / "x.txt").write_text("x")
    check = cred_agent("config", "--check", "--run-id", "r1", env=env)
    put = cred_agent("put", "x.txt", "--run-id", "r1", "--step", "s", "--compute-data-folder",
                     str(data), env=env)
    rows = check_lines(check)
    assert rows["credentials"][0] == "ok" and rows["identity"][0] == "ok", rows
    assert rows["list"][0] == "FAILED" and rows["write"][0] == "FAILED", rows
    assert_one_error_line(check, 4, "AccessDenied", f"s3:ListBucket on arn:aws:s3:::{moto_bucket}")
    assert_one_error_line(put, 4, "AccessDenied", "IAM policy")
    assert not [o for o in moto_server.client("s3").list_objects_v2(
        Bucket=moto_bucket).get("Contents", [])]
    assert_clean(check, cred_agent, moto_server, secret)
    assert_clean(put, cred_agent, moto_server, secret)


def _put_get(agent: Agent, run: str, data: Path, env: dict[str, str]) -> tuple[Ran, Ran]:
    put = agent("put", "x.txt", "--run-id", run, "--step", "s", "--compute-data-folder",
                str(data), env=env)
    got = agent("get", "x.txt", "--run-id", run, "--compute-data-folder",
                str(data.parent / f"in-{run}"), env=env)
    return put, got


def test_wrong_secret_is_refused(cred_agent: Agent, moto_server: MotoServer,  # noqa: F811
                                 moto_bucket: str, tmp_path: Path) -> None:
    """A real key with another secret: S3 and STS refuse the signature; exit 4, one line."""
    _, key, secret = make_user(moto_server, unique("signer"), ["s3:*"])
    wrong = secret[::-1]
    data = tmp_path / "d"
    _files(data, ["x.txt"])
    right = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    put, got = _put_get(cred_agent, "r-right", data, right)
    assert (put.code, got.code) == (0, 0), put.output + got.output  # the same setup works
    env = {**right, "AWS_SECRET_ACCESS_KEY": wrong}
    put, got = _put_get(cred_agent, "r-wrong", data, env)
    for ran in (put, got):
        assert_one_error_line(ran, 4, "SignatureDoesNotMatch", "secret access key")
        assert_clean(ran, cred_agent, moto_server, secret, wrong)
    check = cred_agent("config", "--check", "--run-id", "r-wrong", env=env)
    assert_one_error_line(check, 4, "GetCallerIdentity", "SignatureDoesNotMatch")
    assert_clean(check, cred_agent, moto_server, secret, wrong)
    assert not moto_server.client("s3").list_objects_v2(
        Bucket=moto_bucket, Prefix="pipelines/r-wrong/").get("Contents")


def test_dropped_or_wrong_session_token_is_refused(cred_agent: Agent, moto_server: MotoServer,  # noqa: F811
                                                   moto_bucket: str, tmp_path: Path) -> None:
    """Temporary keys (ASIA...) without their session token, or with another session's."""
    user_arn, key, secret = make_user(moto_server, unique("temp"), ["sts:AssumeRole"])
    role = make_role(moto_server, unique("temp-role"), user_arn)
    sts = moto_server.client("sts", key=key, secret=secret)
    one, other = (sts.assume_role(RoleArn=role, RoleSessionName=f"tests-{n}")["Credentials"]
                  for n in (1, 2))
    data = tmp_path / "d"
    _files(data, ["x.txt"])
    session = {"AWS_ACCESS_KEY_ID": one["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": one["SecretAccessKey"],
               "AWS_SESSION_TOKEN": one["SessionToken"]}
    put, got = _put_get(cred_agent, "r-token", data, session)
    assert (put.code, got.code) == (0, 0), put.output + got.output  # the whole session works
    secrets_used = (secret, one["SecretAccessKey"], one["SessionToken"], other["SessionToken"])
    dropped = {k: v for k, v in session.items() if k != "AWS_SESSION_TOKEN"}
    put, got = _put_get(cred_agent, "r-dropped", data, dropped)
    for ran in (put, got):
        assert_one_error_line(ran, 4, "InvalidAccessKeyId", "session token")
        assert_clean(ran, cred_agent, moto_server, *secrets_used)
    swapped = {**session, "AWS_SESSION_TOKEN": other["SessionToken"]}
    put, got = _put_get(cred_agent, "r-swapped", data, swapped)
    for ran in (put, got):
        assert_one_error_line(ran, 4, "InvalidToken", "session token")
        assert_clean(ran, cred_agent, moto_server, *secrets_used)
    stored = [o["Key"] for o in moto_server.client("s3").list_objects_v2(
        Bucket=moto_bucket, Prefix="pipelines/").get("Contents", [])]
    assert not [k for k in stored if "/r-dropped/" in k or "/r-swapped/" in k], stored


def test_wrong_region_names_the_buckets_region_end_to_end(
        cred_agent: Agent, moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """A bucket in ap-southeast-2, the agent set to us-east-1: S3 redirects (301
    PermanentRedirect, x-amz-bucket-region); get, put and ls stop with exit 4 and name the
    bucket's region; with that region set, the same commands work."""
    bucket = "far-" + secrets.token_hex(4)
    moto_server.client("s3", region="ap-southeast-2").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    _, key, secret = make_user(moto_server, unique("traveller"), ["s3:*"])
    data = tmp_path / "d"
    _files(data, ["x.txt"])
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
           "CATALOG_AGENT_S3_BUCKET": bucket}
    there = {**env, "CATALOG_AGENT_REGION": "ap-southeast-2"}
    put, got = _put_get(cred_agent, "r-far", data, there)
    assert (put.code, got.code) == (0, 0), put.output + got.output
    stored = moto_server.client("s3", region="ap-southeast-2").list_objects_v2(Bucket=bucket)
    before = sorted(o["Key"] for o in stored["Contents"])

    put, got = _put_get(cred_agent, "r-near", data, env)  # region us-east-1 (cred_agent's)
    listed = cred_agent("ls", "--run-id", "r-far", env=env)
    for ran in (put, got, listed):
        error = assert_one_error_line(ran, 4, f"wrong region for bucket {bucket!r}",
                                      "PermanentRedirect", "set region: ap-southeast-2")
        print(error["event"])
        assert_clean(ran, cred_agent, moto_server, secret)
    stored = moto_server.client("s3", region="ap-southeast-2").list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in stored["Contents"]) == before  # nothing written
    assert not (data.parent / "in-r-near").exists() or \
        not any((data.parent / "in-r-near").iterdir())
    listed = cred_agent("ls", "--run-id", "r-far", env=there)
    assert listed.code == 0 and "x.txt" in listed.stdout, listed.output


def test_web_identity_denied_hints_at_the_trust_policy(cred_agent: Agent, irsa: dict[str, str],
                                                       moto_server: MotoServer) -> None:  # noqa: F811
    """A role whose trust policy admits no web identity (it trusts an IAM user): STS refuses."""
    role = make_role(moto_server, unique("no-oidc"), ADMIN_ARN)
    ran = cred_agent("config", "--check", "--run-id", "r1", env={**irsa, "AWS_ROLE_ARN": role})
    error = assert_one_error_line(ran, 4, "AssumeRoleWithWebIdentity", "AccessDenied",
                                  role, "trust policy")
    assert "system:serviceaccount:" in error["event"]
    assert_clean(ran, cred_agent, moto_server)


def test_unreachable_sts_hints_at_region(cred_agent: Agent, irsa: dict[str, str],
                                         moto_server: MotoServer) -> None:  # noqa: F811
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    ran = cred_agent("config", "--check", "--run-id", "r1", "--max-attempts", "1",
                     "--sts-endpoint-url", f"http://127.0.0.1:{closed}", env=irsa)
    assert_one_error_line(ran, 4, "could not reach STS", "check region ('us-east-1')")
    assert_clean(ran, cred_agent, moto_server)


def test_wrong_region_names_the_buckets_region() -> None:
    from botocore.exceptions import ClientError

    from catalog_agent.aws import translate
    from catalog_agent.errors import AccessError

    response = {"Error": {"Code": "PermanentRedirect", "Message": "The bucket you are "
                          "attempting to access must be addressed using the specified endpoint."},
                "ResponseMetadata": {"HTTPStatusCode": 301,
                                     "HTTPHeaders": {"x-amz-bucket-region": "ap-southeast-2"}}}
    error = translate(ClientError(response, "ListObjectsV2"), "list s3://b/p/", bucket="b")
    assert isinstance(error, AccessError) and error.exit_code == 4
    assert "wrong region" in str(error) and "set region: ap-southeast-2" in str(error)


def test_check_needs_a_run_id(cred_agent: Agent) -> None:
    ran = cred_agent("config", "--check")
    assert_one_error_line(ran, 2, "run id is required")


def test_check_json_output(cred_agent: Agent, irsa: dict[str, str],
                           moto_server: MotoServer) -> None:  # noqa: F811
    ran = cred_agent("config", "--check", "--json", "--run-id", "r1", env=irsa)
    assert ran.code == 0, ran.output
    doc = json.loads(ran.stdout)
    assert doc["method"] == "irsa"
    assert {c["check"]: c["status"] for c in doc["checks"]} == {
        "credentials": "ok", "identity": "ok", "list": "ok", "write": "ok", "read": "ok",
        "delete": "ok"}
    assert_clean(ran, cred_agent, moto_server)



def test_check_writes_its_probe_as_put_would_encrypt(cred_agent: Agent, irsa: dict[str, str],
                                                     moto_server: MotoServer) -> None:  # noqa: F811
    """The probe carries the encryption put asks for, so a policy or key that refuses it fails
    the check. A bucket policy denying deletes keeps the probe, to be looked at."""
    s3 = moto_server.client("s3")
    bucket = unique("sse-only")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    ran = cred_agent("config", "--check", "--run-id", "r1", "--s3-bucket", bucket,
                     "--server-side-encryption", "aws:kms", "--sse-kms-key-id", "alias/catalog",
                     env=irsa)
    assert ran.code == 0, ran.output
    assert "write        ok" in ran.stdout and "delete       FAILED" in ran.stdout, ran.stdout
    probes = s3.list_objects_v2(Bucket=bucket, Prefix="pipelines/r1/.catalog-agent/check/")
    [probe] = [o["Key"] for o in probes["Contents"]]
    head = s3.head_object(Bucket=bucket, Key=probe)
    assert head.get("ServerSideEncryption") == "aws:kms"
    assert "alias/catalog" in head.get("SSEKMSKeyId", "")
    assert_clean(ran, cred_agent, moto_server)
