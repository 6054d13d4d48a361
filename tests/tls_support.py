"""Certificates for the TLS tests, made by the tests themselves (the ``cryptography`` package).

A test CA signs the servers' certificates; a second CA that nobody trusts stands for "a CA
bundle, but the wrong one". Leaves name 127.0.0.1 and localhost unless a test asks for a
wrong host or an expired one. Also the variables this machine sets globally to point programs
at its CA store: a test of "no CA configured" removes every one, as the image sees none.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Iterator

import pytest

from catalog_agent import devserver

# Every variable that tells some library where CAs are; the machine sets most of them.
CA_VARIABLES = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                "CURL_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
                "NIX_SSL_CERT_FILE", "HTTPLIB2_CA_CERTS", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
                "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE")


def without_ca_variables(env: dict[str, str]) -> dict[str, str]:
    """``env`` without any variable naming a CA file or folder (those above, and any other
    whose name says CA bundle, SSL certificate or CA certificates)."""
    return {k: v for k, v in env.items()
            if k not in CA_VARIABLES and not any(
                word in k.upper() for word in ("CA_BUNDLE", "SSL_CERT", "CA_CERT", "CAINFO",
                                               "SSL_ROOTS"))}


@dataclass(frozen=True)
class Issued:
    """A server certificate (leaf only, as servers send it) and its private key, as PEM files."""

    cert: Path
    key: Path


class TestPki:
    """A CA that the tests trust (``ca``), one that nobody trusts (``other_ca``), and leaves."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, folder: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_cert = self._certificate("catalog-agent test CA", self._ca_key, None, ca=True)
        self.ca = self._write("ca.pem", self._ca_cert)
        other_key = ec.generate_private_key(ec.SECP256R1())
        self.other_ca = self._write("other-ca.pem", self._certificate(
            "catalog-agent untrusted CA", other_key, None, ca=True))

    def leaf(self, name: str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
             expired: bool = False) -> Issued:
        """A server certificate for ``hosts`` signed by ``ca`` (expired a day ago if asked)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._certificate(hosts[0], key, hosts, ca=False, expired=expired)
        key_path = self.folder / f"{name}.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o644)  # the servers run as this user; readable in the image tests too
        return Issued(self._write(f"{name}.pem", cert), key_path)

    def _certificate(self, common_name: str, key, hosts: tuple[str, ...] | None, *,  # noqa: ANN001
                     ca: bool, expired: bool = False):  # noqa: ANN202 - a cryptography x509 object
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
                      if expired else (now - datetime.timedelta(hours=1),
                                       now + datetime.timedelta(days=2)))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer = subject if ca else self._ca_cert.subject
        signer = key if ca else self._ca_key
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
        else:
            names: list[x509.GeneralName] = []
            for host in hosts or ():
                try:
                    names.append(x509.IPAddress(ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                      critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                           self._ca_key.public_key()), critical=False))
        return builder.sign(signer, hashes.SHA256())

    def _write(self, name: str, cert) -> Path:  # noqa: ANN001
        from cryptography.hazmat.primitives import serialization

        path = self.folder / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path.chmod(0o644)
        return path


class HandshakeServer:
    """A TLS listener on loopback that presents one certificate and then hangs up.

    For the failures a client sees during the handshake (a wrong host name, an expired
    certificate): the client refuses the certificate before any HTTP is spoken, so no S3
    behind it is needed. A client that accepted the certificate would get a closed
    connection instead of an answer, and fail differently: the tests check the message.
    """

    def __init__(self, issued: Issued) -> None:
        import socket

        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(issued.cert, issued.key)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self.endpoint = f"https://127.0.0.1:{self.port}"
        self.handshakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                continue
            self.handshakes += 1
            try:
                connection.settimeout(5)
                with self._context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass  # the client refused the certificate: what the tests expect
            finally:
                connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> HandshakeServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# --- fixtures: one of each server per test session, started only when a test asks ---


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_s3_server(pki: TestPki, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[devserver.SeaweedServer]:
    """SeaweedFS serving S3 over https (``https_endpoint``) with a leaf of the test CA."""
    leaf = pki.leaf("seaweedfs")
    server = devserver.start(tmp_path_factory.mktemp("seaweedfs-tls"),
                             tls=devserver.Tls(leaf.cert, leaf.key, pki.ca))
    yield server
    # SIGKILL: its data is thrown away, and SeaweedFS's graceful stop takes over 15 s here.
    server.process.kill()
    server.stop()


@pytest.fixture
def tls_bucket(tls_s3_server: devserver.SeaweedServer) -> Iterator[str]:
    """A fresh bucket on the TLS server (made and removed over plain http)."""
    import secrets

    from conftest import _delete_bucket

    name = "tls-" + secrets.token_hex(6)
    tls_s3_server.create_bucket(name)
    yield name
    _delete_bucket(tls_s3_server, name)


@pytest.fixture(scope="session")
def moto_tls_server(pki: TestPki):  # noqa: ANN201 - a moto_support.MotoServer
    """moto's STS and S3 over https, with a leaf of the test CA."""
    from moto_support import IN_CI, moto_binary, start_moto

    if moto_binary() is None and not IN_CI:
        pytest.skip("moto_server is not installed (pip install -e .[dev])")
    leaf = pki.leaf("moto")
    server = start_moto(tls=(leaf.cert, leaf.key, pki.ca))
    yield server
    server.stop()
    server.log_path.unlink(missing_ok=True)
