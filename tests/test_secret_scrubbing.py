"""Secret scrubbing reaches nested values, text cut for length, and credentials the agent obtains.

The CLI tests run the real CLI; the credential tests resolve credentials in-process against
moto's real STS (and a container-credentials endpoint for Pod Identity) and then check that
what STS issued is masked in a log event, the termination message and the error document.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import string
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import answer_json
from moto_support import ACCOUNT, MotoServer, moto_server  # noqa: F401 - the fixture

from catalog_agent import logs

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
# A session token is hundreds of characters: longer than any place that cuts text.
TOKEN = "IQoJb3JpZ2luX2VjE" + "".join(secrets.choice(string.ascii_letters) for _ in range(600))


def leaked(text: str, secret: str, piece: int = 12) -> list[str]:
    """Every ``piece``-character part of ``secret`` that appears in ``text`` (a cut secret
    leaks its first part, so whole-secret checks are not enough)."""
    return [secret[i:i + piece] for i in range(0, len(secret) - piece + 1)
            if secret[i:i + piece] in text]


def output_of(ran: Any, tmp_path: Path) -> str:
    log = tmp_path / "termination-log"
    return ran.stdout + ran.stderr + (log.read_text() if log.exists() else "")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The structlog configuration of a command, writing JSON lines to a buffer."""
    stream = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=stream, secrets=[SECRET, TOKEN])
    yield stream
    logs.configure(fmt="json", level="info", secrets=[])


# --- nested values ------------------------------------------------------------------------------

def test_nested_values_of_an_event_are_scrubbed(captured: io.StringIO) -> None:
    logs.get_logger().info("skipped", paths=[f"/data/{SECRET}/a", ("x", TOKEN)],
                           detail={"reason": {"text": f"token {TOKEN}"}, SECRET: 1},
                           where=Path("/data") / SECRET, error=ValueError(f"bad {SECRET}"))
    text = captured.getvalue()
    assert leaked(text, SECRET) == [] and leaked(text, TOKEN) == []
    event = json.loads(text)
    assert event["paths"][0] == "/data/***/a" and event["paths"][1] == ["x", "***"]
    assert event["detail"] == {"reason": {"text": "token ***"}, "***": 1}
    assert "***" in event["where"] and event["error"] == "bad ***"


def test_every_value_of_the_termination_message_is_scrubbed(captured: io.StringIO) -> None:
    from catalog_agent.record import termination_message

    raw = termination_message({"command": "put", "exit_code": 8, "status_dir": f"/s/{SECRET}",
                               "reason": f"exit-code holds {TOKEN}",
                               "nested": {"list": [SECRET]}, "error": "x"})
    assert leaked(raw.decode(), SECRET) == [] and leaked(raw.decode(), TOKEN) == []


def test_a_secret_in_the_status_folder_never_reaches_the_message_or_the_bucket(
        agent: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    """put --wait with a status folder named by a secret: the termination message carries the
    folder as a field of its own (not only inside the error), and the error document too."""
    secret = agent.env["AWS_SECRET_ACCESS_KEY"]  # the server's: the put must still work
    status = tmp_path / secret / "status"
    ran = agent("put", "--wait", "--wait-timeout", "1", "**", "--run-id", "r", "--step", "s",
                "--compute-data-folder", str(tmp_path),
                env={"CATALOG_AGENT_STATUS_DIR": str(status)})
    assert ran.code == 7, ran.output
    assert leaked(output_of(ran, tmp_path), secret) == []
    message = json.loads((tmp_path / "termination-log").read_text())
    assert "***" in message["status_dir"]
    doc = s3.get_object(Bucket=bucket, Key="r/.catalog-agent/errors/s.json")["Body"].read()
    assert leaked(doc.decode(), secret) == [] and b"***" in doc


# --- text cut for length ------------------------------------------------------------------------

@pytest.mark.parametrize("args,variable", [
    ((), "CATALOG_AGENT_MAX_ATTEMPTS"),          # config: the value shown, cut at 60
    ((), "CATALOG_AGENT_ADDRESSING_STYLE"),
    (("--wait",), "CATALOG_AGENT_WAIT_TIMEOUT"),  # lifecycle: the value shown, cut at 40
    (("--wait",), "CATALOG_AGENT_HEARTBEAT_STALE_SECONDS"),
])
def test_a_long_secret_pasted_into_a_setting_leaks_no_part_of_itself(
        offline_agent: Any, tmp_path: Path, args: tuple[str, ...], variable: str) -> None:
    ran = offline_agent("put", *args, "**", "--run-id", "r", "--step", "s",
                        env={"AWS_SESSION_TOKEN": TOKEN, "CATALOG_AGENT_S3_BUCKET": "b",
                             variable: TOKEN})
    assert ran.code == 2, ran.output
    text = output_of(ran, tmp_path)
    assert leaked(text, TOKEN) == [], "part of the token is in the output"
    assert "***" in text


def test_error_texts_are_scrubbed_before_they_are_cut(captured: io.StringIO) -> None:
    """Every place that shortens text: the secret straddles each cut."""
    from catalog_agent import aws, config, credentials, lifecycle
    from catalog_agent.errors import TransferError
    from catalog_agent.record import MAX_TERMINATION_BYTES, termination_message

    for cut in (aws._short(Exception("x" * 280 + TOKEN)),
                credentials._short(Exception("y" * 290 + TOKEN)),
                config._show("z" * 40 + TOKEN),
                logs.clip("w" * 90 + TOKEN, 100)):
        assert leaked(cut, TOKEN) == [] and "***" in cut, cut
    for pad in (3900, 4000, 4050):
        raw = termination_message({"command": "put", "exit_code": 5,
                                   "error": "e" * pad + TOKEN + "tail"})
        assert len(raw) <= MAX_TERMINATION_BYTES
        assert leaked(raw.decode(), TOKEN) == []
    doc = lifecycle.error_document(run_id="r", step="s", mode="wait", when="always",
                                   error=TransferError("f" * 3990 + TOKEN), outcome=None)
    assert leaked(doc.decode(), TOKEN) == []


# --- credentials the agent obtains itself -------------------------------------------------------

def _config(**values: str) -> Any:
    from catalog_agent.config import load

    environ = {"CATALOG_AGENT_S3_BUCKET": "b", "CATALOG_AGENT_REGION": "us-east-1",
               "CATALOG_AGENT_RUN_ID": "r", "CATALOG_AGENT_STEP": "s", **values}
    return load(environ=environ)


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith(("AWS_", "CATALOG_AGENT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def assert_masked(*values: str) -> None:
    """The scrubber knows each value: masked in a log event and in a termination message."""
    from catalog_agent.record import termination_message

    stream = io.StringIO()
    logs.configure(fmt="json", level="info", stream=stream, secrets=[])  # obtained ones stay
    for value in values:
        assert value and logs.scrub_text(f"a {value} b") == "a *** b"
        logs.get_logger().info("leak?", nested={"v": [value]})
        message = termination_message({"command": "put", "error": value[:-3] + "xyz" + value})
        assert value not in message.decode()
    assert all(v not in stream.getvalue() for v in values)


def test_sts_sessions_from_web_identity_and_assume_role_are_scrubbed_refreshes_too(
        no_aws_env: pytest.MonkeyPatch, moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    from catalog_agent.credentials import resolve

    from catalog_agent.credentials import session_name

    token_file = tmp_path / "token"
    web_token = ".".join(secrets.token_urlsafe(24) for _ in range(3))
    token_file.write_text(web_token)
    # Real roles: moto checks every signature and trust policy (tests/moto_aws.py).
    suffix = secrets.token_hex(4)
    irsa_role = moto_server.make_web_identity_role(f"irsa-{suffix}")
    target = moto_server.make_role(
        f"target-{suffix}",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/irsa-{suffix}/{session_name('r', 's')}")
    no_aws_env.setenv("AWS_ROLE_ARN", irsa_role)
    no_aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    before = {r["secret_access_key"] for r in moto_server.issued()}
    resolved = resolve(_config(CATALOG_AGENT_STS_ENDPOINT_URL=moto_server.endpoint,
                               CATALOG_AGENT_ROLE_ARN=target))
    assert resolved.method == "assume-role" and resolved.base == "irsa"
    issued = [r for r in moto_server.issued() if r["secret_access_key"] not in before]
    assert len(issued) == 2  # the web identity session and the assumed role's
    assert_masked(web_token, *[r["secret_access_key"] for r in issued],
                  *[r["session_token"] for r in issued])
    # A refresh fetches a new session: masked from the moment it exists.
    resolved.credentials._refresh_using()
    known = before | {r["secret_access_key"] for r in issued}
    fresh = [r for r in moto_server.issued() if r["secret_access_key"] not in known]
    assert fresh
    assert_masked(*[r["secret_access_key"] for r in fresh], *[r["session_token"] for r in fresh])


def test_profile_keys_read_from_the_credentials_file_are_scrubbed(
        no_aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from catalog_agent.credentials import resolve

    secret = "profile-secret-" + secrets.token_hex(12)
    token = "profile-token-" + secrets.token_hex(40)
    path = tmp_path / "credentials"
    path.write_text(f"[team]\naws_access_key_id = AKIAPROFILEPROFILE01\n"
                    f"aws_secret_access_key = {secret}\naws_session_token = {token}\n")
    resolved = resolve(_config(CATALOG_AGENT_AWS_PROFILE="team",
                               CATALOG_AGENT_AWS_CREDENTIALS_FILE=str(path)))
    assert resolved.method == "profile"
    assert_masked(secret, token)


class _ContainerCredentials(BaseHTTPRequestHandler):
    """The EKS Pod Identity agent's endpoint: a new session at every call."""

    token = ""
    sessions: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != type(self).token:
            self.send_response(401)
            self.end_headers()
            return
        session = {"AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
                   "SecretAccessKey": secrets.token_urlsafe(30),
                   "Token": secrets.token_urlsafe(200),
                   "Expiration": "2099-01-01T00:00:00Z"}
        type(self).sessions.append(session)
        answer_json(self, session)

    def log_message(self, *_: Any) -> None:
        pass


def test_pod_identity_sessions_and_token_are_scrubbed_refreshes_too(
        no_aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from catalog_agent.credentials import resolve

    handler = type("Handler", (_ContainerCredentials,), {
        "token": secrets.token_urlsafe(40), "sessions": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        token_file = tmp_path / "pod-identity-token"
        token_file.write_text(handler.token)
        no_aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                          f"http://127.0.0.1:{server.server_port}/v1/credentials")
        no_aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
        resolved = resolve(_config())
        assert resolved.method == "pod-identity"
        first = handler.sessions[-1]
        assert_masked(handler.token, first["SecretAccessKey"], first["Token"])
        resolved.credentials._refresh_using()  # what botocore calls before expiry
        second = handler.sessions[-1]
        assert second is not first
        assert_masked(second["SecretAccessKey"], second["Token"])
    finally:
        server.shutdown()
        server.server_close()


# --- CATALOG_AGENT_DEBUG is gone; --log-level debug shows an internal error's traceback -------

def test_an_internal_error_logs_its_traceback_at_debug_level_only(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process, with a command body that fails the way a bug would (exit 1)."""
    from catalog_agent import cli, commands

    def broken(*_: Any, **__: Any) -> Any:
        raise KeyError(f"bug near {SECRET}")

    monkeypatch.setattr(commands, "ls", broken)
    for name in [n for n in os.environ if n.startswith(("AWS_", "CATALOG_AGENT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("CATALOG_AGENT_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("CATALOG_AGENT_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("")
    for level, traceback_shown in (("info", False), ("debug", True)):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["ls", "--s3-bucket", "b", "--run-id", "r", "--log-format", "json",
                      "--log-level", level], standalone_mode=False)
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        assert ("Traceback (most recent call last)" in err) is traceback_shown, err
        assert "internal error: KeyError" in err
        assert leaked(err, SECRET) == []
        message = json.loads((tmp_path / "termination-log").read_text())
        assert message["exit_code"] == 1 and leaked(json.dumps(message), SECRET) == []


def test_catalog_agent_debug_is_not_a_setting(offline_agent: Any) -> None:
    """Removed rather than documented: --log-level debug gives the traceback, through the
    scrubber and with the termination message written (re-raising skipped both)."""
    ran = offline_agent("config", env={"CATALOG_AGENT_DEBUG": "1", "CATALOG_AGENT_S3_BUCKET": "b"})
    assert ran.code == 2 and "unknown environment variable CATALOG_AGENT_DEBUG" in ran.output
    assert "CATALOG_AGENT_DEBUG" not in (Path(__file__).parents[1] / "catalog_agent" / "cli.py"
                                         ).read_text()
