"""A real STS, IAM and S3 over HTTP for credential tests: moto's server on a free loopback port.

Import the ``moto_server`` fixture into a test module (``from moto_support import
moto_server``). The server is started by the tests themselves, once per session, and stopped
at the end. It runs with moto's signature and IAM checks on for its whole life: every request,
the agent's and the test's own, is signed by a key moto knows and allowed by an IAM policy.
The test's own calls (buckets, users, roles) use an administrator user created while the
server starts, the only requests ever let through unchecked. tests/moto_aws.py is the server:
moto's, plus the unsigned AssumeRoleWithWebIdentity and the wrong-region redirect of AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ACCOUNT = "123456789012"
IN_CI = os.environ.get("CI", "").lower() == "true"
ADMIN = "catalog-tests-admin"  # the IAM user of the tests' own setup calls
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT}:user/{ADMIN}"
SERVER = Path(__file__).with_name("moto_aws.py")
OIDC_PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/TESTS"


def _allow(actions: list[str]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": "*"}]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moto_binary() -> str | None:
    for candidate in (Path(sys.executable).parent / "moto_server", shutil.which("moto_server")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ca_bundle: str = ""  # served over https: the CA bundle that trusts its certificate
    admin_key: str = ""
    admin_secret: str = ""

    def client(self, service: str, *, key: str = "", secret: str = "",
               token: str | None = None, region: str = "us-east-1") -> Any:
        """A boto3 client acting as the administrator, or as ``key``/``secret``/``token``."""
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id=key or self.admin_key or "AKIAUNCHECKEDSTART01",
                            aws_secret_access_key=secret or self.admin_secret or "unchecked",
                            aws_session_token=token, verify=self.ca_bundle or None,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"mode": "standard", "max_attempts": 2}))

    def _post(self, path: str, body: bytes) -> bytes:
        request = urllib.request.Request(self.endpoint + path, data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10, context=self._tls()) as response:
            return response.read()

    def _tls(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else None

    def _get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.endpoint + path, timeout=10,
                                    context=self._tls()) as response:
            return json.loads(response.read())

    def _enforce_auth(self) -> None:
        """From now on every request is signed and authorised, the tests' own included."""
        _, self.admin_key, self.admin_secret = self.make_user(ADMIN, ["*"])
        self._post("/moto-api/reset-auth", b"0")
        try:
            self.client("s3").put_object(Bucket="no-such-bucket-auth-probe", Key="k", Body=b"")
        except Exception as exc:  # noqa: BLE001 - NoSuchBucket proves the key was accepted
            if "NoSuchBucket" not in str(exc):
                raise
        refused = self.client("sts", key=self.admin_key, secret="wrong")
        try:
            refused.get_caller_identity()
        except Exception as exc:  # noqa: BLE001
            if "SignatureDoesNotMatch" not in str(exc):
                raise
        else:
            raise RuntimeError("moto accepted a wrong secret: auth is not enforced")

    # --- IAM identities for a test (made by the administrator) ---

    def make_user(self, name: str, actions: list[str]) -> tuple[str, str, str]:
        """An IAM user with an access key and a policy allowing ``actions``: (arn, key, secret)."""
        iam = self.client("iam")
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        if actions:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=_allow(actions))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return arn, key["AccessKeyId"], key["SecretAccessKey"]

    def make_role(self, name: str, trusted: str, *, actions: list[str] | None = None) -> str:
        """A role that ``trusted`` (a principal's ARN, exactly: moto matches no account root)
        may assume, allowed ``actions`` (default s3:*); its ARN."""
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": trusted},
            "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
        return self._role(name, trust, ["s3:*"] if actions is None else actions)

    def make_web_identity_role(self, name: str, *,
                               actions: tuple[str, ...] = ("s3:*", "sts:AssumeRole")) -> str:
        """An IRSA role: trusts a cluster's OIDC provider for sts:AssumeRoleWithWebIdentity."""
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": OIDC_PROVIDER},
            "Action": "sts:AssumeRoleWithWebIdentity"}]}
        return self._role(name, trust, list(actions))

    def _role(self, name: str, trust: dict[str, Any], actions: list[str]) -> str:
        iam = self.client("iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
        if actions:
            iam.put_role_policy(RoleName=name, PolicyName="catalog", PolicyDocument=_allow(actions))
        return str(arn["Role"]["Arn"])

    # --- what the server saw, and a gate ---

    def requests(self) -> list[dict[str, str]]:
        """Every request so far, in arrival order: method, target, key (access key id), service."""
        return list(self._get_json("/_catalog_tests/requests"))

    def hold(self, method: str, pattern: str) -> None:
        """Hold the next ``method`` request whose path?query matches ``pattern`` (a regex)."""
        self._post("/_catalog_tests/hold", json.dumps({"method": method,
                                                        "pattern": pattern}).encode())

    def wait_held(self, process: subprocess.Popen[str], timeout: float = 120) -> None:
        """Until the held request arrives; fails if ``process`` ends first."""
        deadline = time.monotonic() + timeout
        while not self._get_json("/_catalog_tests/hold")["held"]:
            if process.poll() is not None:
                raise AssertionError("the agent ended before the held request arrived")
            if time.monotonic() > deadline:
                raise AssertionError(f"no held request after {timeout:.0f} s")
            time.sleep(0.05)

    def release(self) -> None:
        self._post("/_catalog_tests/release", b"")

    def issued(self) -> list[dict[str, Any]]:
        """Every STS session moto issued (AssumeRole and web identity), secrets included."""
        with urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=10,
                                    context=self._tls()) as r:
            data = json.loads(r.read())
        return list(data.get("sts", {}).get("AssumedRole", []))

    def assumed_sessions(self, session_name: str) -> int:
        """How many STS sessions moto issued under ``session_name``."""
        return sum(1 for role in self.issued() if role.get("session_name") == session_name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


def start_moto(timeout: float = 60, *, tls: tuple[Path, Path, Path] | None = None,
               env: dict[str, str] | None = None) -> MotoServer:
    """moto's server with auth enforced; ``tls``: (certificate, key, CA bundle) to serve https
    with that certificate instead of http; ``env``: extra variables (a fake clock's)."""
    if moto_binary() is None:
        raise FileNotFoundError("moto_server not found: pip install 'moto[server]'")
    port = _free_port()
    log_path = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    extra = ["-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(SERVER), "-H", "127.0.0.1",
                                    "-p", str(port), *extra], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env={**os.environ, **(env or {})})
    server = MotoServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, log_path,
                        str(tls[2]) if tls else "")
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError("moto_server exited early:\n" + log_path.read_text()[-2000:])
        try:
            server.client("sts").get_caller_identity()
            break
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not answer in {timeout:.0f} s") from None
            time.sleep(0.3)
    try:
        server._enforce_auth()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    if moto_binary() is None and not IN_CI:
        pytest.skip("moto_server is not installed (pip install -e .[dev])")
    server = start_moto()
    yield server
    server.stop()
