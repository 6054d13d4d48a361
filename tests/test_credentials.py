"""Credentials against a real STS and S3 (moto's server): every path, every common failure.

Each test runs the real CLI as a subprocess. STS is reached only through sts_endpoint_url and
S3 only through endpoint_url (no AWS_ENDPOINT_URL), so a test passes only if the agent sends
STS calls where the configuration says. Every captured output and termination message is
scanned for every secret the test used or moto issued.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Agent, Ran, agent_env, log_events
from moto_support import ACCOUNT, MotoServer, moto_server, start_moto  # noqa: F401 - the fixture

from catalog_agent.credentials import REFRESH_HOOK, refresh_windows, session_name

IRSA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/irsa-role"
# Every token a test wrote into a file: assert_clean scans for all of them.
TOKENS: list[str] = []
TARGET_ROLE = f"arn:aws:iam::{ACCOUNT}:role/catalog-writer"


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


@pytest.fixture
def irsa(tmp_path: Path) -> dict[str, str]:
    """What EKS injects for IRSA: the role and a projected token file."""
    token = tmp_path / "eks.amazonaws.com" / "serviceaccount" / "token"
    token.parent.mkdir(parents=True)
    token.write_text(_jwt())
    return {"AWS_ROLE_ARN": IRSA_ROLE, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token)}


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
              s3_actions: str | None = "s3:*") -> str:
    iam = server.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": trusted},
        "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    if s3_actions:
        iam.put_role_policy(RoleName=name, PolicyName="catalog", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": s3_actions, "Resource": "*"}]}))
    return arn


def make_user(server: MotoServer, name: str, actions: list[str]) -> tuple[str, str, str]:  # noqa: F811
    """An IAM user with an access key and a policy allowing ``actions``: (arn, key, secret)."""
    iam = server.client("iam")
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    if actions:
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return arn, key["AccessKeyId"], key["SecretAccessKey"]


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
        body = json.dumps(cls.credentials).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def pod_identity_agent(moto_server: MotoServer) -> Iterator[type[_PodIdentityAgent]]:  # noqa: F811
    role = make_role(moto_server, unique("pod-role"), f"arn:aws:iam::{ACCOUNT}:root")
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
    ran = cred_agent("config", "--check", "--run-id", "r-on-irsa", "--step", "s1",
                     "--role-arn", TARGET_ROLE, env=irsa)
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == f"assume-role {TARGET_ROLE} on irsa", rows
    assert f"assumed-role/catalog-writer/{name}" in rows["identity"][1]
    assert moto_server.assumed_sessions(name) == 2  # the IRSA hop, then the role
    assert_clean(ran, cred_agent, moto_server)


def test_assume_role_on_top_of_named_variables(cred_agent: Agent,
                                               moto_server: MotoServer) -> None:  # noqa: F811
    _, key, secret = make_user(moto_server, unique("base"), ["sts:AssumeRole"])
    ran = cred_agent("config", "--check", "--run-id", "r-on-env", "--use-credentials",
                     "--aws-access-key-name", "K", "--aws-secret-access-key-name", "S",
                     "--role-arn", TARGET_ROLE, "--session-duration-in-seconds", "3600",
                     env={"K": key, "S": secret})
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == f"assume-role {TARGET_ROLE} on environment", rows
    assert f"assumed-role/catalog-writer/{session_name('r-on-env', '')}" in rows["identity"][1]
    assert_clean(ran, cred_agent, moto_server, secret)


def test_assume_role_on_top_of_a_profile(cred_agent: Agent, moto_server: MotoServer,  # noqa: F811
                                         tmp_path: Path) -> None:
    _, key, secret = make_user(moto_server, unique("prof-base"), ["sts:AssumeRole"])
    creds = tmp_path / "credentials"
    creds.write_text(f"[ci]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    ran = cred_agent("config", "--check", "--run-id", "r-on-prof", "--aws-profile", "ci",
                     "--aws-credentials-file", str(creds), "--role-arn", TARGET_ROLE)
    assert ran.code == 0, ran.output
    rows = check_lines(ran)
    assert rows["credentials"][1] == f"assume-role {TARGET_ROLE} on profile", rows
    assert "assumed-role/catalog-writer/" in rows["identity"][1]
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


def test_credentials_refreshed_during_a_transfer(cred_agent: Agent, tmp_path: Path) -> None:
    """A put and a get that outlast their credentials refresh them and finish.

    STS never issues sessions under 900 s, so the test hook REFRESH_HOOK makes the agent treat
    credentials as due one second after issue; everything else is the production path:
    botocore's RefreshableCredentials asks our fetcher for a new AssumeRole session while
    single-object requests and s3transfer's multipart parts are in flight. moto checks every
    request's signature against the session that signed it (auth enforced), and its request
    log counts the AssumeRole calls. A server of its own: moto cannot dump its state once it
    holds a completed multipart upload, which the other tests' secret scans need.
    """
    server = start_moto()
    try:
        bucket = "refresh-" + secrets.token_hex(4)
        server.client("s3").create_bucket(Bucket=bucket)
        user_arn, key, secret = make_user(server, unique("refresher"), ["sts:AssumeRole"])
        role = make_role(server, unique("refresh-role"), user_arn)
        data = tmp_path / "big"
        data.mkdir()
        payload = os.urandom(64 * 1024 * 1024)  # multipart: parts signed across refreshes
        (data / "big.bin").write_bytes(payload)
        for i in range(400):  # one request each, one at a time: the transfer lasts seconds
            (data / f"small-{i:03d}.txt").write_bytes(os.urandom(16 * 1024))
        env = {"K": key, "S": secret, REFRESH_HOOK: "1",
               "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_ENDPOINT_URL": server.endpoint,
               "CATALOG_AGENT_STS_ENDPOINT_URL": server.endpoint}
        args = ["--run-id", "r-refresh", "--step", "s1", "--use-credentials",
                "--aws-access-key-name", "K", "--aws-secret-access-key-name", "S",
                "--role-arn", role, "--concurrency", "1"]
        sts_calls_before = server.sts_calls()
        with server.enforce_auth():
            put = cred_agent("put", "**", "--compute-data-folder", str(data), *args, env=env)
            assert put.code == 0, put.output[-3000:]
            got = cred_agent("get", "**", "--compute-data-folder", str(tmp_path / "in"), *args,
                             env=env)
        assert got.code == 0, got.output[-3000:]
        sts_calls = server.sts_calls() - sts_calls_before
    finally:
        server.stop()
    assert (tmp_path / "in" / "big.bin").read_bytes() == payload
    assert (tmp_path / "in" / "small-399.txt").read_bytes() == (data / "small-399.txt").read_bytes()
    put_events, got_events = events(put), events(got)
    put_refreshes = [e for e in put_events if e["event"] == "credentials.refreshed"]
    got_refreshes = [e for e in got_events if e["event"] == "credentials.refreshed"]
    put_done = next(e for e in put_events if e["event"] == "put.done")
    assert put_refreshes, f"no refresh in a {put_done['seconds']} s put"
    assert got_refreshes, "no refresh during the get"
    assert all(e["timestamp"] <= put_done["timestamp"] for e in put_refreshes)
    # One AssumeRole per command to start, then one per refresh, each a real STS call.
    assert sts_calls == 2 + len(put_refreshes) + len(got_refreshes), sts_calls
    for ran in (put, got):
        assert secret not in ran.output and "Traceback" not in ran.output
        for token in TOKENS:
            assert token not in ran.output
    print(f"put {put_done['seconds']} s: {len(put_refreshes)} refreshes; get: "
          f"{len(got_refreshes)} refreshes; {sts_calls} STS calls")


def test_refresh_refused_mid_transfer_stops_with_exit_4(cred_agent: Agent, tmp_path: Path,
                                                        moto_server: MotoServer,  # noqa: F811
                                                        moto_bucket: str) -> None:
    """The role's trust is withdrawn while a put runs: the refresh fails, the put stops.

    Exit 4 naming AssumeRole and the trust policy, and no manifest: the step never looks
    complete with credentials that could not be renewed.
    """
    user_arn, key, secret = make_user(moto_server, unique("revoked"), ["sts:AssumeRole"])
    role = make_role(moto_server, unique("revoked-role"), user_arn)
    data = tmp_path / "many"
    data.mkdir()
    # Long enough to outlast the mandatory refresh (2 s after issue with the hook at 1 s) on a
    # quiet machine too: 400 files once finished in 1.8 s, before any refresh was needed.
    for i in range(2000):
        (data / f"f-{i:04d}.txt").write_bytes(os.urandom(4 * 1024))
    env = {**cred_agent.env, "K": key, "S": secret, REFRESH_HOOK: "1"}
    before = moto_server.sts_calls()
    with moto_server.enforce_auth():
        process = subprocess.Popen(
            [sys.executable, "-m", "catalog_agent", "put", "**", "--run-id", "r-revoked",
             "--step", "s1", "--compute-data-folder", str(data), "--use-credentials",
             "--aws-access-key-name", "K", "--aws-secret-access-key-name", "S",
             "--role-arn", role, "--concurrency", "1"], cwd=cred_agent.cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while moto_server.sts_calls() == before and process.poll() is None:
                assert time.monotonic() < deadline, "the agent never assumed the role"
                time.sleep(0.05)
            # The first session is issued: now nobody may assume the role any more.
            with moto_server.auth_paused():
                moto_server.client("iam").update_assume_role_policy(
                    RoleName=role.rsplit("/", 1)[1], PolicyDocument=json.dumps({
                        "Version": "2012-10-17", "Statement": [{
                            "Effect": "Allow", "Action": "sts:AssumeRole",
                            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/nobody"}}]}))
            stdout, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    ran = Ran(process.returncode, stdout, stderr)
    error = assert_one_error_line(ran, 4, "AssumeRole", "AccessDenied", "trust policy")
    assert role in error["event"]
    print(error["event"])
    assert any(e["event"] == "credentials.refresh_failed" for e in events(ran))
    keys = [o["Key"] for o in moto_server.client("s3").list_objects_v2(
        Bucket=moto_bucket, Prefix="pipelines/r-revoked/").get("Contents", [])]
    assert keys, "nothing was uploaded before the refresh: the test proves nothing"
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
    with moto_server.enforce_auth():
        ran = cred_agent("config", "--check", "--run-id", "r1", "--use-credentials",
                         "--role-arn", locked,
                         env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    error = assert_one_error_line(ran, 4, "AssumeRole", "AccessDenied", locked, "trust policy")
    assert "sts:AssumeRole" in error["event"]
    assert_clean(ran, cred_agent, moto_server, secret)
    del user_arn


def test_invalid_base_key_is_refused(cred_agent: Agent, moto_server: MotoServer) -> None:  # noqa: F811
    secret = secrets.token_hex(20)
    with moto_server.enforce_auth():
        ran = cred_agent("config", "--check", "--run-id", "r1", "--role-arn", TARGET_ROLE,
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
    with moto_server.enforce_auth():
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


class _DenyingSts(BaseHTTPRequestHandler):
    """STS's documented AccessDenied reply to AssumeRoleWithWebIdentity.

    moto never denies a web identity (it checks no trust policy for it, and with auth
    enforced it fails the unsigned call with a 500), so this one error comes from a stub
    speaking STS's wire format.
    """

    body = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
            b'<Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform '
            b'sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>c6104cbe-af31-11e0-8154'
            b'-cbc7ccf896c7</RequestId></ErrorResponse>')

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: Any) -> None:
        pass


def test_web_identity_denied_hints_at_the_trust_policy(cred_agent: Agent, irsa: dict[str, str],
                                                       moto_server: MotoServer) -> None:  # noqa: F811
    server = HTTPServer(("127.0.0.1", 0), _DenyingSts)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ran = cred_agent("config", "--check", "--run-id", "r1", "--sts-endpoint-url",
                         f"http://127.0.0.1:{server.server_port}", env=irsa)
    finally:
        server.shutdown()
        server.server_close()
    error = assert_one_error_line(ran, 4, "AssumeRoleWithWebIdentity", "AccessDenied",
                                  IRSA_ROLE, "trust policy")
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
