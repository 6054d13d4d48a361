"""Lean S3 requests for the data path: SigV4-signed GET, PUT and LIST over one urllib3 pool.

Why not botocore here: it spends about 2.5 ms of CPU per request (model-driven serialising,
event hooks, response parsing), and with the GIL that caps the agent near 400 small objects a
second whatever the concurrency; signing by hand costs about 0.6 ms (bench/, README
"Performance"). It also spares a get the 0.3 s of loading botocore's S3 model at start-up.
Multipart uploads, HEAD and server-side copies stay with botocore (:mod:`.s3`).

Failures are raised as botocore's own ``ClientError`` (built from the XML error body), so that
:func:`catalog_agent.aws.translate` maps them exactly as it maps botocore's. Retries follow
botocore's standard mode: connection errors, 5xx, throttling; exponential back-off with jitter.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import random
import re
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import quote, unquote_plus, urlsplit

import urllib3

from catalog_agent import tls

UNSIGNED = "UNSIGNED-PAYLOAD"
RETRY_STATUS = {500, 502, 503, 504, 429}
RETRY_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
               "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}
MAX_BACKOFF = 20.0
SEND_BLOCK = 256 * 1024  # bytes per send() of a file body (http.client's 8 KiB costs CPU)
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

# (access key, secret key, session token or None), fresh for each request (they may refresh).
CredentialSource = Callable[[], tuple[str, str, "str | None"]]


class S3Http:
    """Signed requests to one bucket; thread-safe, one connection pool sized to the workers."""

    def __init__(self, *, endpoint: str, region: str, bucket: str, addressing_style: str,
                 credentials: CredentialSource, pool_size: int, attempts: int,
                 verify: bool | str, on_retry: Callable[[], None]) -> None:
        if not endpoint:
            endpoint = (f"https://s3.{region}.amazonaws.com.cn" if region.startswith("cn-")
                        else f"https://s3.{region}.amazonaws.com")
            virtual = addressing_style != "path" and _dns_compatible(bucket)
        else:
            # Custom endpoints (S3-compatible stores, IPs, VPC endpoints): path style unless
            # virtual is asked for, as botocore resolves "auto" for such endpoints.
            virtual = addressing_style == "virtual"
        parts = urlsplit(endpoint.rstrip("/"))
        scheme, netloc, base = parts.scheme or "https", parts.netloc, parts.path
        if virtual:
            netloc = f"{bucket}.{netloc}"
            self._prefix = base
        else:
            self._prefix = f"{base}/{quote(bucket, safe='')}"
        self.host = netloc
        self.region = region
        self.attempts = max(1, attempts)
        self._credentials = credentials
        self._on_retry = on_retry
        self._keys: dict[tuple[str, str], bytes] = {}
        self._keys_lock = threading.Lock()
        options: dict[str, Any] = {"maxsize": pool_size, "block": False, "retries": False,
                                   "blocksize": SEND_BLOCK,
                                   "timeout": urllib3.Timeout(connect=10, read=60)}
        if scheme == "https":
            if verify is False:
                options["cert_reqs"] = "CERT_NONE"
            else:
                options["cert_reqs"] = "CERT_REQUIRED"
                options["ca_certs"] = verify if isinstance(verify, str) else tls.default_bundle()
        self.origin = tls.origin(f"{scheme}://{netloc}")  # named when a certificate is refused
        self.pool = urllib3.connection_from_url(f"{scheme}://{netloc}", **options)

    # --- operations ---

    def get(self, key: str, headers: dict[str, str] | None = None) -> urllib3.HTTPResponse:
        """GET an object (or a Range of it); the caller streams and must ``release_conn()``."""
        return self.request("GET", key, operation="GetObject", headers=headers)

    def put(self, key: str, body: Callable[[], Any], length: int, headers: dict[str, str],
            operation: str = "PutObject",
            query: dict[str, str] | None = None) -> urllib3.HTTPResponse:
        """PUT from ``body()`` (called again for each attempt: a fresh file or bytes)."""
        return self.request("PUT", key, body=body, length=length, headers=headers,
                            operation=operation, preload=True, query=query)

    def create_upload(self, key: str, headers: dict[str, str]) -> str:
        """CreateMultipartUpload; its upload id."""
        response = self.request("POST", key, query={"uploads": ""}, headers=headers,
                                operation="CreateMultipartUpload", preload=True)
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", response.data)
        if not found:
            raise _client_error(response, response.data, "MalformedResponse",
                                "CreateMultipartUpload")
        return found.group(1).decode()

    def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        """CompleteMultipartUpload; S3 may report a failure inside a 200 response."""
        xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                      .replace('"', "&quot;") for n, etag in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
        response = self.request("POST", key, query={"uploadId": upload_id}, body=lambda: body,
                                length=len(body), operation="CompleteMultipartUpload",
                                preload=True)
        if b"<Error>" in response.data:
            code = _CODE.search(response.data)
            raise _client_error(response, response.data,
                                code.group(1).decode() if code else "InternalError",
                                "CompleteMultipartUpload")

    def list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, modified) of every object under ``prefix``, 1,000 per request."""
        from xml.etree import ElementTree

        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            response = self.request("GET", "", query=query, operation="ListObjectsV2",
                                    preload=True)
            root = ElementTree.fromstring(response.data)
            decode = _decoder(root)
            for item in root.iter(f"{_NS}Contents"):
                key = decode(item.findtext(f"{_NS}Key", ""))
                size = int(item.findtext(f"{_NS}Size", "0"))
                yield key, size, _timestamp(item.findtext(f"{_NS}LastModified", ""))
            token = root.findtext(f"{_NS}NextContinuationToken", "") or ""
            if root.findtext(f"{_NS}IsTruncated", "false") != "true" or not token:
                return

    def uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, upload id) of every unfinished multipart upload under ``prefix``."""
        from xml.etree import ElementTree

        markers: dict[str, str] = {}
        while True:
            query = {"uploads": "", "prefix": prefix, "encoding-type": "url", **markers}
            response = self.request("GET", "", query=query, operation="ListMultipartUploads",
                                    preload=True)
            root = ElementTree.fromstring(response.data)
            decode = _decoder(root)
            for item in root.iter(f"{_NS}Upload"):
                yield (decode(item.findtext(f"{_NS}Key", "")),
                       item.findtext(f"{_NS}UploadId", ""))
            key_marker = root.findtext(f"{_NS}NextKeyMarker", "") or ""
            upload_marker = root.findtext(f"{_NS}NextUploadIdMarker", "") or ""
            if root.findtext(f"{_NS}IsTruncated", "false") != "true" or not key_marker:
                return
            markers = {"key-marker": decode(key_marker),
                       "upload-id-marker": upload_marker}

    def abort(self, key: str, upload_id: str) -> None:
        self.request("DELETE", key, query={"uploadId": upload_id},
                     operation="AbortMultipartUpload", preload=True)

    # --- the request ---

    def request(self, method: str, key: str, *, operation: str, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: Callable[[], Any] | None = None,
                length: int | None = None, preload: bool = False) -> urllib3.HTTPResponse:
        """One signed request with botocore-like retries; a final failure is a ClientError."""
        path = self._prefix + ("/" + quote(key, safe="/~") if key else "/")
        canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                                   for k, v in sorted((query or {}).items()))
        url = path + ("?" + canonical_query if canonical_query else "")
        for attempt in range(1, self.attempts + 1):
            signed = self._sign(method, path, canonical_query, headers or {})
            if length is not None:
                signed["Content-Length"] = str(length)
            payload = body() if body is not None else None
            try:
                response = self.pool.urlopen(method, url, body=payload, headers=signed,
                                             preload_content=preload, decode_content=False,
                                             redirect=False, assert_same_host=False,
                                             release_conn=preload)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                refused = tls.certificate_error(exc, self.origin)
                if refused is not None:  # refused once, refused every time: no retry
                    raise refused from None
                if attempt == self.attempts:
                    raise _connection_error(exc, url) from None
                self._backoff(attempt)
                continue
            finally:
                if payload is not None and hasattr(payload, "close"):
                    payload.close()
            if response.status < 300:
                return response
            data = response.data if preload else _drain(response)
            code = _CODE.search(data)
            code_text = code.group(1).decode() if code else str(response.status)
            if attempt < self.attempts and (response.status in RETRY_STATUS
                                            or code_text in RETRY_CODES):
                self._backoff(attempt)
                continue
            raise _client_error(response, data, code_text, operation)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> None:
        """botocore's standard mode: a random wait of up to 1, 2, 4 ... 20 s after attempt n."""
        self._on_retry()
        time.sleep(random.uniform(0, min(MAX_BACKOFF, 2.0 ** (attempt - 1))))

    def _sign(self, method: str, path: str, canonical_query: str,
              extra: dict[str, str]) -> dict[str, str]:
        access, secret, token = self._credentials()
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers = {"host": self.host, "x-amz-content-sha256": UNSIGNED, "x-amz-date": stamp}
        if token:
            headers["x-amz-security-token"] = token
        for name, value in extra.items():
            headers[name.lower()] = " ".join(str(value).split())
        names = sorted(headers)
        signed_names = ";".join(names)
        canonical = "\n".join([method, path, canonical_query,
                               "".join(f"{n}:{headers[n]}\n" for n in names), signed_names,
                               UNSIGNED])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
        signature = hmac.new(self._signing_key(secret, day), to_sign.encode("utf-8"),
                             hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                                    f"SignedHeaders={signed_names}, Signature={signature}")
        headers["Host"] = headers.pop("host")
        return headers

    def _signing_key(self, secret: str, day: str) -> bytes:
        with self._keys_lock:
            key = self._keys.get((secret, day))
            if key is None:
                key = hmac.new(("AWS4" + secret).encode("utf-8"), day.encode("utf-8"),
                               hashlib.sha256).digest()
                for part in (self.region, "s3", "aws4_request"):
                    key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
                self._keys = {(secret, day): key}  # one day's key, replaced at midnight
            return key

    def close(self) -> None:
        self.pool.close()


class FileSlice:
    """Bytes ``start``..``end`` of an open file, read with pread: a part sent without a copy.

    ``stop``: checked before each block, so that SIGTERM aborts a part mid-send (the request
    fails with ``stopped``, its connection is dropped) instead of waiting for 8 MiB to go.
    """

    def __init__(self, fd: int, start: int, end: int, stop: threading.Event | None = None,
                 stopped: Callable[[], BaseException] | None = None) -> None:
        self.fd, self.offset, self.end = fd, start, end
        self.stop, self.stopped = stop, stopped

    def read(self, amount: int = -1) -> bytes:
        if self.stop is not None and self.stop.is_set() and self.stopped is not None:
            raise self.stopped()
        left = self.end - self.offset
        if amount is None or amount < 0 or amount > left:
            amount = left
        data = os.pread(self.fd, amount, self.offset) if amount else b""
        if amount and not data:
            raise OSError(f"the file ended {left} bytes early: it shrank while being read")
        self.offset += len(data)
        return data

    def close(self) -> None:
        pass


def _decoder(root: Any) -> Callable[[str], str]:
    """Keys come URL-encoded only if the server says so (as botocore decides): a store that
    ignores ``encoding-type=url`` sends them raw, and decoding those would corrupt '+' and '%'."""
    if (root.findtext(f"{_NS}EncodingType", "") or "").lower() == "url":
        return unquote_plus
    return lambda text: text


def _dns_compatible(bucket: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket))


def _timestamp(text: str) -> float:
    if not text:
        return 0.0
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _drain(response: urllib3.HTTPResponse) -> bytes:
    try:
        return response.read(64 * 1024) or b""
    finally:
        response.release_conn()


def _client_error(response: urllib3.HTTPResponse, data: bytes, code: str,
                  operation: str) -> Exception:
    """botocore's ClientError, shaped as botocore would have raised it."""
    from botocore.exceptions import ClientError

    message = _MESSAGE.search(data)
    error = {"Code": code, "Message": message.group(1).decode("utf-8", "replace")
             if message else ""}
    region = response.headers.get("x-amz-bucket-region")
    if region:
        error["Region"] = region
    return ClientError({"Error": error,
                        "ResponseMetadata": {"HTTPStatusCode": response.status,
                                             "HTTPHeaders": dict(response.headers)}},
                       operation)


def _connection_error(exc: BaseException, url: str) -> Exception:
    """botocore's own connection errors, so that translate() says "failed after retries"."""
    from botocore import exceptions as bx

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return bx.ReadTimeoutError(endpoint_url=url, error=text)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return bx.ConnectTimeoutError(endpoint_url=url, error=text)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return bx.EndpointConnectionError(endpoint_url=url, error=text)
    return bx.ConnectionClosedError(endpoint_url=url, error=text)
