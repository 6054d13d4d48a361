"""A real STS and S3 over HTTP for credential tests: moto's server on a free loopback port.

Import the ``moto_server`` fixture into a test module (``from tests.moto_support import
moto_server``). The server is started by the tests themselves, once per session, and stopped
at the end. ``enforce_auth()`` makes moto check signatures, IAM policies and trust policies
(for AccessDenied cases); it is off by default because moto then fails unsigned
AssumeRoleWithWebIdentity calls with a 500.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ACCOUNT = "123456789012"
IN_CI = os.environ.get("CI", "").lower() == "true"
# moto accepts any key while auth is off; these identify the test's own setup calls.
SETUP_KEY, SETUP_SECRET = "AKIASETUPSETUPSETUP1", "setup-secret-not-used-by-the-agent"


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

    def client(self, service: str, *, key: str = SETUP_KEY, secret: str = SETUP_SECRET,
               token: str | None = None, region: str = "us-east-1") -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id=key, aws_secret_access_key=secret,
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

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Within the block moto checks signatures, IAM policies and trust policies."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    @contextmanager
    def auth_paused(self) -> Iterator[None]:
        """Within an enforce_auth block: let the test's own setup calls through."""
        self._post("/moto-api/reset-auth", b"inf")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"0")

    def issued(self) -> list[dict[str, Any]]:
        """Every STS session moto issued (AssumeRole and web identity), secrets included."""
        with urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=10,
                                    context=self._tls()) as r:
            data = json.loads(r.read())
        return list(data.get("sts", {}).get("AssumedRole", []))

    def assumed_sessions(self, session_name: str) -> int:
        """How many STS sessions moto issued under ``session_name``."""
        return sum(1 for role in self.issued() if role.get("session_name") == session_name)

    def sts_calls(self) -> int:
        """STS (and IAM) calls so far, from the server's request log: ``POST /`` lines.

        S3 requests always name a bucket in the path, so they never count here.
        """
        text = self.log_path.read_text(errors="replace")
        return len(re.findall(r'"POST / HTTP/1\.1" 200', text))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto(timeout: float = 60, *, tls: tuple[Path, Path, Path] | None = None) -> MotoServer:
    """moto's server on a free loopback port; ``tls``: (certificate, key, CA bundle) to serve
    https with that certificate instead of http."""
    binary = moto_binary()
    if binary is None:
        raise FileNotFoundError("moto_server not found: pip install 'moto[server]'")
    port = _free_port()
    log_path = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    extra = ["-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    with open(log_path, "wb") as log:
        process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port), *extra],
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = MotoServer(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, log_path,
                        str(tls[2]) if tls else "")
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError("moto_server exited early:\n" + log_path.read_text()[-2000:])
        try:
            server.client("sts").get_caller_identity()
            return server
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not answer in {timeout:.0f} s") from None
            time.sleep(0.3)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    if moto_binary() is None and not IN_CI:
        pytest.skip("moto_server is not installed (pip install -e .[dev])")
    server = start_moto()
    yield server
    server.stop()
    server.log_path.unlink(missing_ok=True)
