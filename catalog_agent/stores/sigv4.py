"""AWS Signature Version 4 for S3 requests: what botocore's ``S3SigV4Auth`` computes.

Kept apart from the requests themselves so that it can be checked against botocore directly
(tests/test_sigv4.py, a property test over keys, queries, headers and endpoints).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import threading
from typing import Mapping
from urllib.parse import quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ALGORITHM = "AWS4-HMAC-SHA256"
# Headers botocore never signs (SIGNED_HEADERS_BLACKLIST): proxies may change them.
UNSIGNED_HEADERS = {"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(url: str) -> str:
    """The Host of ``url`` as S3 expects it: lowercase, no ``user:password@``, no default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return host


def canonical_query(query: Mapping[str, str] | None) -> str:
    """Query parameters percent-encoded (RFC 3986 unreserved kept), sorted after encoding."""
    pairs = sorted((quote(key, safe="-_.~"), quote(str(value), safe="-_.~"))
                   for key, value in (query or {}).items())
    return "&".join(f"{key}={value}" for key, value in pairs)


def object_path(prefix: str, key: str) -> str:
    """The URL path of ``key`` below ``prefix`` (``/bucket`` or a base path), encoded once."""
    return prefix + ("/" + quote(key, safe="/~") if key else "/")


class Signer:
    """Signs requests for one region; the signing key of each day is computed once."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None
        self._lock = threading.Lock()

    def sign(self, *, method: str, host: str, path: str, query: str,
             headers: Mapping[str, str], payload_sha256: str,
             credentials: tuple[str, str, str | None],
             now: datetime.datetime) -> dict[str, str]:
        """The request's headers, signed: ``headers`` plus Host, X-Amz-Date, X-Amz-Content-SHA256,
        X-Amz-Security-Token (temporary credentials) and Authorization."""
        access, secret, token = credentials
        stamp = now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        signed: dict[str, str] = {"host": host, "x-amz-date": stamp,
                                  "x-amz-content-sha256": payload_sha256}
        if token:
            signed["x-amz-security-token"] = token
        for name, value in headers.items():
            signed[name.lower()] = str(value)
        names = sorted(n for n in signed if n not in UNSIGNED_HEADERS)
        signed_names = ";".join(names)
        canonical = "\n".join([
            method.upper(), path, query,
            "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
            signed_names, payload_sha256])
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join([ALGORITHM, stamp, scope,
                             hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
        signature = hmac.new(self._signing_key(secret, day), to_sign.encode("utf-8"),
                             hashlib.sha256).hexdigest()
        out = {_display(name): value for name, value in signed.items()}
        out["Authorization"] = (f"{ALGORITHM} Credential={access}/{scope}, "
                                f"SignedHeaders={signed_names}, Signature={signature}")
        return out

    def _signing_key(self, secret: str, day: str) -> bytes:
        with self._lock:
            if self._key is not None and self._key[:2] == (secret, day):
                return self._key[2]
            key = hmac.new(("AWS4" + secret).encode("utf-8"), day.encode("utf-8"),
                           hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
            self._key = (secret, day, key)  # one day's key, replaced at midnight or on refresh
            return key


def _display(name: str) -> str:
    """Header names as sent (HTTP is case-insensitive; this keeps logs and captures readable)."""
    return {"host": "Host", "x-amz-date": "X-Amz-Date",
            "x-amz-content-sha256": "X-Amz-Content-SHA256",
            "x-amz-security-token": "X-Amz-Security-Token"}.get(name, name)
