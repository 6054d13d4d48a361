"""TLS against real servers: SeaweedFS and moto serving https with a CA the tests made.

Every test runs the real CLI with every CA variable of this machine removed (the image sees
none): what it trusts comes from ``ca_bundle``, ``AWS_CA_BUNDLE`` or botocore's own bundle
only. Covered: both ways of naming a CA, on the lean S3 path (get, put, ls, multipart) and on
botocore's (sync's server-side copies, ``config --check``, STS); ``verify_tls: false``; and
each way a certificate is refused (unknown CA, another CA, wrong host name, expired), which
must be exit 4 with one line naming the endpoint and the problem, at once, not after retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from conftest import Agent, Ran, agent_env, log_events
from tls_support import (HandshakeServer, TestPki, moto_tls_server, pki,  # noqa: F401 - fixtures
                         tls_bucket, tls_s3_server, without_ca_variables)

from catalog_agent import devserver

LARGE = 17 * 1024 * 1024  # above the 16 MiB multipart threshold: a multipart upload
UNKNOWN_CA = "unable to get local issuer certificate"  # the server sends its leaf only


def tls_agent(tmp_path: Path, endpoint: str, *settings: dict[str, str]) -> Agent:
    """The CLI pointed at ``endpoint`` with no CA variable at all in its environment."""
    env = without_ca_variables(agent_env(tmp_path, {
        "CATALOG_AGENT_ENDPOINT_URL": endpoint,
        "CATALOG_AGENT_REGION": "us-east-1",
        "CATALOG_AGENT_ADDRESSING_STYLE": "path",
        "CATALOG_AGENT_RUN_ID": "run-1",
        "CATALOG_AGENT_MAX_ATTEMPTS": "5",
    }))
    assert not {"AWS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE"} & set(env)
    for setting in settings:  # after the removal: a test may name a CA on purpose
        env.update(setting)
    return Agent(env, tmp_path)


def seaweed_agent(tmp_path: Path, server: devserver.SeaweedServer, bucket: str,
                  *settings: dict[str, str]) -> Agent:
    keys = {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "CATALOG_AGENT_S3_BUCKET": bucket}
    return tls_agent(tmp_path, server.https_endpoint, keys, *settings)


def make_outputs(folder: Path) -> dict[str, str]:
    """A step's outputs: small files and one large enough for a multipart upload; their hashes."""
    files = {"metrics.json": b'{"auc": 0.91}\n', "model/weights.bin": secrets.token_bytes(300_000),
             "model/empty": b"", "model/large.bin": secrets.token_bytes(LARGE)}
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return {relative: hashlib.sha256(data).hexdigest() for relative, data in files.items()}


def hashes_of(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def assert_refused(ran: Ran, endpoint: str, problem: str) -> dict[str, Any]:
    """Exit 4, one error line naming the endpoint and the certificate problem (a regular
    expression), no traceback."""
    assert ran.code == 4, ran.output
    assert "Traceback" not in ran.output and "ModuleNotFoundError" not in ran.output, ran.output
    errors = [e for e in log_events(ran.stderr) if e.get("level") == "error"]
    assert len(errors) == 1, ran.stderr
    line = errors[0]["event"]
    assert "\n" not in line
    assert re.search(f"TLS certificate of {re.escape(endpoint)} not trusted: {problem}", line), line
    assert errors[0]["error_kind"] == "tls" and errors[0]["exit_code"] == 4
    return errors[0]


# --- trusted: the CA named in the configuration, in AWS_CA_BUNDLE, or checking off ---


TRUST = {
    "ca_bundle": lambda pki: {"CATALOG_AGENT_CA_BUNDLE": str(pki.ca)},
    "AWS_CA_BUNDLE": lambda pki: {"AWS_CA_BUNDLE": str(pki.ca)},
    # verify_tls: false wins over a ca_bundle that would refuse the certificate
    "verify_tls false": lambda pki: {"CATALOG_AGENT_VERIFY_TLS": "false",
                                     "CATALOG_AGENT_CA_BUNDLE": str(pki.other_ca)},
}


@pytest.mark.parametrize("trust", list(TRUST))
def test_put_sync_get_and_ls_over_tls(trust: str, tls_s3_server: devserver.SeaweedServer,  # noqa: F811
                                      tls_bucket: str, pki: TestPki, tmp_path: Path) -> None:  # noqa: F811
    """Lean requests (put, get, ls, a multipart upload) and botocore's (sync's copies) both
    trust the CA the configuration names; every hash right in the bucket and after the get."""
    agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket, TRUST[trust](pki))
    out, into = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    into.mkdir()
    expected = make_outputs(out)

    put = agent("put", "**", "--step", "train", "--compute-data-folder", str(out))
    assert put.code == 0, put.output
    plain = tls_s3_server.client()  # checks over http: independent of the agent's TLS
    for relative, digest in expected.items():
        body = plain.get_object(Bucket=tls_bucket, Key=f"run-1/{relative}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, relative

    sync = agent("sync", "--from-run", "run-1", "--run-id", "run-2")  # botocore CopyObject
    assert sync.code == 0, sync.output
    get = agent("get", "**", "--run-id", "run-2", "--compute-data-folder", str(into))
    assert get.code == 0, get.output
    assert hashes_of(into) == expected

    listed = agent("ls", "--json", "--run-id", "run-2")
    assert listed.code == 0, listed.output
    rows = {row["path"]: row["sha256"] for row in map(json.loads, listed.stdout.splitlines())}
    assert rows == expected

    for ran in (put, sync, get, listed):  # JSON lines only: no library warning on stderr
        lines = [line for line in ran.stderr.splitlines() if line.strip()]
        assert len(log_events(ran.stderr)) == len(lines), ran.stderr
        unchecked = [e for e in log_events(ran.stderr)
                     if e["event"] == "TLS certificates are not checked"]
        assert len(unchecked) == (1 if trust == "verify_tls false" else 0), ran.stderr


# --- refused: a clean exit 4 for every command, on every path ---


@pytest.mark.parametrize("command", ["put", "get", "ls", "sync"])
def test_no_ca_configured_is_a_clean_exit_4(command: str,
                                            tls_s3_server: devserver.SeaweedServer,  # noqa: F811
                                            tls_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    """No ca_bundle, no AWS_CA_BUNDLE: botocore's bundle of public CAs, which refuses the test
    CA's certificate. The line names the endpoint and the problem; nothing is stored."""
    agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    args = {"put": ["put", "**", "--step", "s"], "get": ["get", "**"], "ls": ["ls"],
            "sync": ["sync", "--from-run", "run-0"]}[command]
    ran = agent(*args, "--compute-data-folder", str(data))
    event = assert_refused(ran, tls_s3_server.https_endpoint, UNKNOWN_CA)
    assert "ca_bundle" in event["event"]  # the hint says what to set
    listed = tls_s3_server.client().list_objects_v2(Bucket=tls_bucket)
    assert listed.get("KeyCount", 0) == 0
    termination = json.loads(Path(agent.env["CATALOG_AGENT_TERMINATION_LOG"]).read_text())
    assert termination["exit_code"] == 4 and "not trusted" in termination["error"]


def test_a_bundle_without_the_servers_ca_is_refused(tls_s3_server: devserver.SeaweedServer,  # noqa: F811
                                                    tls_bucket: str, pki: TestPki,  # noqa: F811
                                                    tmp_path: Path) -> None:
    """ca_bundle names a real CA, but not the one that signed the server's certificate."""
    agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket,
                          {"AWS_CA_BUNDLE": str(pki.ca), "CATALOG_AGENT_CA_BUNDLE": str(pki.other_ca)})
    ran = agent("get", "**", "--compute-data-folder", str(tmp_path))
    assert_refused(ran, tls_s3_server.https_endpoint, UNKNOWN_CA)  # the key wins over the variable


def test_aws_ca_bundle_that_is_not_a_file_is_a_configuration_error(
        tls_s3_server: devserver.SeaweedServer, tls_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket,
                          {"AWS_CA_BUNDLE": str(tmp_path / "missing.pem")})
    ran = agent("ls")
    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output
    assert f"AWS_CA_BUNDLE {tmp_path / 'missing.pem'} is not a file" in ran.stderr


def not_a_bundle(tmp_path: Path, pki: TestPki, content: str) -> Path:  # noqa: F811
    """A file where a PEM bundle belongs: a DER certificate or an empty file (a Secret mounted
    under the wrong key), or PEM armour around bytes that are no certificate."""
    bundle = tmp_path / f"ca.{content}"
    der = ssl.PEM_cert_to_DER_cert(pki.ca.read_text())
    bundle.write_bytes({"der": der, "empty": b"",
                        "corrupt": ssl.DER_cert_to_PEM_cert(der[:200] + der[-200:]).encode()}
                       [content])
    return bundle


def assert_not_a_bundle(ran: Ran, bundle: Path) -> None:
    assert ran.code == 2, ran.output
    assert "Traceback" not in ran.output and "internal error" not in ran.output
    assert str(bundle) in ran.stderr and "is not a CA bundle" in ran.stderr, ran.stderr
    assert "ssl.c" not in ran.stderr, ran.stderr  # ssl's words, not CPython's source line


@pytest.mark.parametrize("label", ["TRUSTED CERTIFICATE", "X509 CERTIFICATE"])
def test_a_bundle_in_openssls_other_pem_labels_is_trusted(
        label: str, tls_s3_server: devserver.SeaweedServer,  # noqa: F811
        tls_bucket: str, pki: TestPki, tmp_path: Path) -> None:  # noqa: F811
    """OpenSSL loads certificates under these labels too (RHEL's ca-bundle.trust.crt is all
    TRUSTED CERTIFICATE): such a bundle is a bundle, over https and over http."""
    body = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(pki.ca.read_text()))
    bundle = tmp_path / "ca-bundle.trust.crt"
    bundle.write_text(body.replace("CERTIFICATE-----", f"{label}-----"))
    for endpoint in (tls_s3_server.https_endpoint, tls_s3_server.endpoint):
        agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket,
                              {"CATALOG_AGENT_ENDPOINT_URL": endpoint, "AWS_CA_BUNDLE": str(bundle)})
        ran = agent("ls")
        assert ran.code == 0, ran.output


@pytest.mark.parametrize("content", ["der", "empty", "corrupt"])
@pytest.mark.parametrize("variable", ["CATALOG_AGENT_CA_BUNDLE", "AWS_CA_BUNDLE"])
def test_a_bundle_that_is_not_pem_is_a_configuration_error(
        variable: str, content: str, tls_s3_server: devserver.SeaweedServer,  # noqa: F811
        tls_bucket: str, pki: TestPki, tmp_path: Path) -> None:  # noqa: F811
    """A bundle that does not load, where a connection needs it: exit 2 naming the file,
    before any request; not an internal error."""
    bundle = not_a_bundle(tmp_path, pki, content)
    agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket, {variable: str(bundle)})
    for args in (["ls"], ["get", "**", "--compute-data-folder", str(tmp_path / "in")]):
        assert_not_a_bundle(agent(*args), bundle)
    assert not (tmp_path / "in").exists()


@pytest.mark.parametrize("variable", ["CATALOG_AGENT_CA_BUNDLE", "AWS_CA_BUNDLE"])
def test_an_http_endpoint_checks_a_bundle_but_never_loads_it(
        variable: str, tls_s3_server: devserver.SeaweedServer,  # noqa: F811
        tls_bucket: str, pki: TestPki, tmp_path: Path) -> None:  # noqa: F811
    """Over http the agent's own client needs no CA: a named bundle is still checked to be a
    readable PEM file (a DER certificate or an empty file is exit 2 on any endpoint), but with
    static keys it is never loaded, so PEM armour around bytes that are no certificate goes
    unnoticed. (Loading a bundle of public CAs costs some 25 ms of every start.) STS, for
    IRSA or a role, and sync's copies load it when they first connect, over https."""
    settings = {"CATALOG_AGENT_ENDPOINT_URL": tls_s3_server.endpoint}
    for content in ("der", "empty"):
        bundle = not_a_bundle(tmp_path, pki, content)
        agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket, settings,
                              {variable: str(bundle)})
        assert_not_a_bundle(agent("ls"), bundle)
    corrupt = not_a_bundle(tmp_path, pki, "corrupt")
    agent = seaweed_agent(tmp_path, tls_s3_server, tls_bucket, settings, {variable: str(corrupt)})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_bytes(b"over http\n")
    ran = agent("put", "**", "--step", "s", "--compute-data-folder", str(tmp_path / "out"))
    assert ran.code == 0, ran.output
    ran = agent("get", "**", "--compute-data-folder", str(tmp_path / "in"))
    assert ran.code == 0, ran.output
    assert (tmp_path / "in" / "a.txt").read_bytes() == b"over http\n"


# A server presenting a certificate of the trusted CA that is wrong in one other way.
# ssl's own words (the lean path), or urllib3's host name check (botocore's connections).
REFUSALS = {
    "wrong host": (dict(hosts=("storage.example.internal",)),
                   "(IP address mismatch, certificate is not valid for '127.0.0.1'"
                   "|hostname '127.0.0.1' doesn't match 'storage.example.internal')"),
    "expired": (dict(expired=True), "certificate has expired"),
}


@pytest.mark.parametrize("command", ["ls", "config --check"])
@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_wrong_host_or_expired_certificate_is_refused_at_once(refusal: str, command: str,
                                                              pki: TestPki,  # noqa: F811
                                                              tmp_path: Path) -> None:
    """ls: the lean path; config --check: STS and botocore's S3 client. A refused certificate
    is not retried (max_attempts 5): one handshake per request the command makes."""
    options, problem = REFUSALS[refusal]
    issued = pki.leaf(refusal.replace(" ", "-"), **options)
    with HandshakeServer(issued) as server:
        agent = tls_agent(tmp_path, server.endpoint, {
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00", "AWS_SECRET_ACCESS_KEY": "x" * 40,
            "CATALOG_AGENT_S3_BUCKET": "bucket", "CATALOG_AGENT_STS_ENDPOINT_URL": server.endpoint,
            "CATALOG_AGENT_CA_BUNDLE": str(pki.ca)})
        ran = agent(*command.split())
        assert_refused(ran, server.endpoint, problem)
        if command == "ls":
            assert server.handshakes == 1
        else:
            checks = {line.split()[0]: line for line in ran.stdout.splitlines()}
            assert "FAILED" in checks["identity"] and re.search(problem, checks["identity"])
            assert "FAILED" in checks["list"] and re.search(problem, checks["list"])
            assert server.handshakes == 3  # GetCallerIdentity, ListObjectsV2, PutObject


# --- STS over TLS (moto) ---


@pytest.fixture
def moto_tls_bucket(moto_tls_server) -> str:  # noqa: F811, ANN001
    name = "tls-" + secrets.token_hex(5)
    moto_tls_server.client("s3").create_bucket(Bucket=name)
    return name


def moto_agent(tmp_path: Path, server: Any, bucket: str, *settings: dict[str, str]) -> Agent:
    """The agent as an IAM user of the server (which checks signatures) assuming a role."""
    name = secrets.token_hex(4)
    user_arn, key, secret = server.make_user(f"tls-base-{name}", ["sts:AssumeRole"])
    role = server.make_role(f"tls-writer-{name}", user_arn)
    return tls_agent(tmp_path, server.endpoint, {
        "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
        "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_STS_ENDPOINT_URL": server.endpoint,
        "CATALOG_AGENT_ROLE_ARN": role}, *settings)


def test_role_assumed_over_tls_then_put_get_and_check(moto_tls_server, moto_tls_bucket: str,  # noqa: F811, ANN001
                                                      pki: TestPki, tmp_path: Path) -> None:  # noqa: F811
    """AssumeRole and GetCallerIdentity (STS) and S3 over https, trusting the ca_bundle."""
    agent = moto_agent(tmp_path, moto_tls_server, moto_tls_bucket,
                       {"CATALOG_AGENT_CA_BUNDLE": str(pki.ca)})
    check = agent("config", "--check")
    assert check.code == 0, check.output
    statuses = {line.split()[0]: line.split()[1] for line in check.stdout.splitlines()}
    assert statuses == {"credentials": "ok", "identity": "ok", "list": "ok", "write": "ok",
                        "read": "ok", "delete": "ok"}, check.stdout
    assert "assumed-role/tls-writer-" in check.stdout

    out, into = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    into.mkdir()
    (out / "result.txt").write_text("over tls\n")
    put = agent("put", "result.txt", "--step", "s", "--compute-data-folder", str(out))
    assert put.code == 0, put.output
    get = agent("get", "result.txt", "--compute-data-folder", str(into))
    assert get.code == 0, get.output
    assert (into / "result.txt").read_text() == "over tls\n"


@pytest.mark.parametrize("command", ["put", "config --check"])
def test_sts_without_its_ca_is_a_clean_exit_4(command: str, moto_tls_server,  # noqa: F811, ANN001
                                              tmp_path: Path) -> None:
    """The role is assumed before any S3 request: the refusal names the STS endpoint. S3's
    endpoint (the discard port) is never reached."""
    agent = moto_agent(tmp_path, moto_tls_server, "never-reached")
    agent.env["CATALOG_AGENT_ENDPOINT_URL"] = "http://127.0.0.1:9"
    (tmp_path / "a.txt").write_text("a\n")
    ran = agent(*command.split(), "--step", "s", *(["a.txt"] if command == "put" else []),
                "--compute-data-folder", str(tmp_path))
    assert_refused(ran, moto_tls_server.endpoint, UNKNOWN_CA)
    if command == "config --check":
        assert ran.stdout.split()[:2] == ["credentials", "FAILED"], ran.stdout


def test_check_without_ca_reports_sts_and_s3_refused(moto_tls_server,  # noqa: F811, ANN001
                                                     moto_tls_bucket: str, tmp_path: Path) -> None:
    """Keys from the environment (no STS to get them): the identity check (STS) and the S3
    checks (botocore's S3 client) each fail with the certificate problem."""
    agent = moto_agent(tmp_path, moto_tls_server, moto_tls_bucket)
    del agent.env["CATALOG_AGENT_ROLE_ARN"]
    ran = agent("config", "--check")
    assert_refused(ran, moto_tls_server.endpoint, UNKNOWN_CA)
    checks = {line.split()[0]: line for line in ran.stdout.splitlines()}
    assert "ok" in checks["credentials"]
    for name in ("identity", "list", "write"):
        assert "FAILED" in checks[name] and UNKNOWN_CA in checks[name], ran.stdout


def test_no_ca_variable_reaches_the_agent_in_these_tests(tmp_path: Path) -> None:
    """The machine sets CA variables globally; the helper removes every one of them."""
    env = tls_agent(tmp_path, "https://127.0.0.1:9").env
    leaked = sorted(k for k, v in env.items() if k in os.environ and os.environ[k] == v
                    and v.endswith((".crt", ".pem", "/certs")))
    assert leaked == []


def test_an_unreadable_bundle_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Secret mounted 0400 for another uid: named as unreadable, not as 'not a CA bundle'.
    (The tests run as root, who reads any file: the refusal is played by open.)"""
    import builtins

    from catalog_agent import tls
    from catalog_agent.errors import ConfigError

    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    real_open = builtins.open

    def refused(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(file) == str(bundle):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refused)
    with pytest.raises(ConfigError, match=r"AWS_CA_BUNDLE .*ca.pem cannot be read: Permission "
                                          r"denied"):
        tls._loadable(str(bundle), f"AWS_CA_BUNDLE {bundle}")
