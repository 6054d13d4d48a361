"""Lean S3 requests for the data path: SigV4-signed requests over one urllib3 pool.

Why not botocore here: it spends about 2.5 ms of CPU per request (model-driven serialising,
event hooks, response parsing), and with the GIL that caps the agent near 400 small objects a
second whatever the concurrency; signing by hand costs about 0.6 ms (bench/,
docs/performance.md). It also spares a get the 0.3 s of loading botocore's S3 model at start-up.
Server-side copies stay with botocore (:mod:`.s3`).

On the wire it does what botocore does (tests/test_sigv4.py, tests/test_wire.py): the same
signature (:mod:`.sigv4`), the same retries, back-off and retry budget (:mod:`.retries`), a
200 response carrying ``<Error>`` from CompleteMultipartUpload retried, connections whose body
was not read to the end closed rather than reused. Uploads carry the SHA-256 of their bytes
twice, as the signed payload hash and as ``x-amz-checksum-sha256``, so the server refuses
(BadDigest) any byte that differs from what was hashed.

Failures are raised as botocore's own ``ClientError`` (built from the XML error body), so that
:func:`catalog_agent.aws.translate` maps them exactly as it maps botocore's.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote, unquote_plus, urlsplit

import urllib3

from catalog_agent import tls
from catalog_agent.errors import FileChanged, Interrupted, TransferError
from catalog_agent.stores import sigv4
from catalog_agent.stores.retries import SKEW, RetryPolicy

SEND_BLOCK = 256 * 1024  # bytes per send() of a file body (http.client's 8 KiB costs CPU)
ERROR_BODY_LIMIT = 64 * 1024
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

# (access key, secret key, session token or None), fresh for each request (they may refresh).
CredentialSource = Callable[[], tuple[str, str, "str | None"]]


@dataclass(frozen=True)
class Payload:
    """A request body: bytes, or a factory of a fresh file-like object for each attempt.

    ``sha256``: the hex SHA-256 of exactly these bytes when known (signed, and sent as the
    checksum the server verifies); None sends ``UNSIGNED-PAYLOAD`` and no checksum.
    """

    length: int
    data: bytes | None = None
    reader: Callable[[], Any] | None = None
    sha256: str | None = None
    checksum: bool = True  # also send x-amz-checksum-sha256 (an object's or a part's bytes)

    @classmethod
    def of(cls, data: bytes, *, checksum: bool = True) -> Payload:
        import hashlib

        return cls(len(data), data=data, sha256=hashlib.sha256(data).hexdigest(),
                   checksum=checksum)

    def body(self) -> Any:
        return self.data if self.reader is None else self.reader()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Length": str(self.length)}
        if self.sha256 and self.checksum:
            headers["x-amz-checksum-sha256"] = base64.b64encode(
                bytes.fromhex(self.sha256)).decode("ascii")
        return headers


class S3Http:
    """Signed requests to one bucket; thread-safe, one connection pool sized to the workers."""

    def __init__(self, *, endpoint: str, region: str, bucket: str, addressing_style: str,
                 credentials: CredentialSource, pool_size: int, attempts: int,
                 verify: bool | str, on_retry: Callable[[], None], retry_mode: str = "standard",
                 stop: threading.Event | None = None) -> None:
        if not endpoint:
            endpoint = (f"https://s3.{region}.amazonaws.com.cn" if region.startswith("cn-")
                        else f"https://s3.{region}.amazonaws.com")
            virtual = addressing_style != "path" and _dns_compatible(bucket)
        else:
            # Custom endpoints (S3-compatible stores, IPs, VPC endpoints): path style unless
            # virtual is asked for, as botocore resolves "auto" for such endpoints; an IP
            # address cannot carry the bucket as a subdomain (botocore's rules use path then).
            virtual = addressing_style == "virtual" and not _is_ip(urlsplit(endpoint).hostname)
        parts = urlsplit(endpoint.rstrip("/"))
        scheme, base = parts.scheme or "https", parts.path
        address = sigv4.host_header(f"{scheme}://{parts.netloc}")  # no user:password@
        if virtual:
            address = f"{bucket}.{address}"
            self._prefix = base
        else:
            self._prefix = f"{base}/{quote(bucket, safe='')}"
        self.host = address
        self.origin = f"{scheme}://{address}"
        self.region = region
        self.attempts = max(1, attempts)
        self.policy = RetryPolicy(mode=retry_mode, max_attempts=self.attempts, stop=stop)
        self.signer = sigv4.Signer(region)
        self.verify = verify
        self._credentials = credentials
        self._on_retry = on_retry
        self.skew_logged = False
        options: dict[str, Any] = {"maxsize": pool_size, "block": False, "retries": False,
                                   "blocksize": SEND_BLOCK,
                                   "timeout": urllib3.Timeout(connect=10, read=60)}
        if scheme == "https":
            if verify is False:
                options["cert_reqs"] = "CERT_NONE"
            else:
                options["cert_reqs"] = "CERT_REQUIRED"
                options["ca_certs"] = verify if isinstance(verify, str) else tls.default_bundle()
        self.pool = urllib3.connection_from_url(self.origin, **options)

    # --- objects ---

    def get(self, key: str, headers: dict[str, str] | None = None) -> urllib3.HTTPResponse:
        """GET an object (or a Range of it); the caller streams it, then calls :func:`finish`."""
        return self.request("GET", key, operation="GetObject", headers=headers)

    def head(self, key: str) -> Mapping[str, str] | None:
        """The headers of an object, or None when there is none."""
        try:
            response = self.request("HEAD", key, operation="HeadObject", preload=True)
        except Exception as exc:  # noqa: BLE001 - a 404 is an answer, not a failure
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get(
                "HTTPStatusCode")
            if status == 404:
                return None
            raise
        return response.headers

    def put(self, key: str, payload: Payload, headers: dict[str, str], *,
            check: Callable[[], None] | None = None) -> urllib3.HTTPResponse:
        """PutObject; ``check`` runs before each retry (e.g. that the file is unchanged)."""
        return self.request("PUT", key, payload=payload, headers=headers,
                            operation="PutObject", preload=True, check=check)

    def create_upload(self, key: str, headers: dict[str, str]) -> str:
        """CreateMultipartUpload whose parts carry SHA-256 checksums; its upload id."""
        response = self.request("POST", key, query={"uploads": ""},
                                headers={**headers, "x-amz-checksum-algorithm": "SHA256"},
                                operation="CreateMultipartUpload", preload=True)
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", response.data)
        if not found:
            raise client_error(response.headers, response.status, response.data,
                               "MalformedResponse", "CreateMultipartUpload")
        return found.group(1).decode()

    def upload_part(self, key: str, upload_id: str, number: int, payload: Payload, *,
                    check: Callable[[], None] | None = None) -> str:
        """UploadPart; its ETag."""
        response = self.request("PUT", key, payload=payload, operation="UploadPart",
                                query={"partNumber": str(number), "uploadId": upload_id},
                                preload=True, check=check)
        return response.headers.get("ETag", "")

    def complete_upload(self, key: str, upload_id: str,
                        parts: list[tuple[str, str | None]]) -> None:
        """CompleteMultipartUpload of (ETag, base64 SHA-256 or None) per part, in order.

        S3 may report a failure inside a 200 response: that is retried like a 500. (Its body is
        signed but carries no x-amz-checksum-sha256: on this request that header would mean
        the whole object's checksum.)
        """
        xml = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml(etag)}</ETag>"
            + (f"<ChecksumSHA256>{checksum}</ChecksumSHA256>" if checksum else "") + "</Part>"
            for n, (etag, checksum) in enumerate(parts, 1))
        body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
        self.request("POST", key, query={"uploadId": upload_id}, payload=Payload.of(body, checksum=False),
                     operation="CompleteMultipartUpload", preload=True, error_in_200=True)

    def abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload: clean-up, so it is sent even after SIGTERM."""
        self.request("DELETE", key, query={"uploadId": upload_id},
                     operation="AbortMultipartUpload", preload=True, cleanup=True)

    # --- listings ---

    def list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, modified) of every object under ``prefix``, 1,000 per request."""
        from xml.etree import ElementTree

        token = ""
        seen: set[str] = set()
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
            _refuse_repeat(token, seen, f"{self.origin}{self._prefix}/ (prefix {prefix!r})")

    def uploads(self, prefix: str, *, cleanup: bool = False) -> Iterator[tuple[str, str]]:
        """(key, upload id) of every unfinished multipart upload under ``prefix``."""
        from xml.etree import ElementTree

        markers: dict[str, str] = {}
        seen: set[str] = set()
        while True:
            query = {"uploads": "", "prefix": prefix, "encoding-type": "url", **markers}
            response = self.request("GET", "", query=query, operation="ListMultipartUploads",
                                    preload=True, cleanup=cleanup)
            root = ElementTree.fromstring(response.data)
            decode = _decoder(root)
            for item in root.iter(f"{_NS}Upload"):
                yield (decode(item.findtext(f"{_NS}Key", "")),
                       item.findtext(f"{_NS}UploadId", ""))
            key_marker = root.findtext(f"{_NS}NextKeyMarker", "") or ""
            upload_marker = root.findtext(f"{_NS}NextUploadIdMarker", "") or ""
            if root.findtext(f"{_NS}IsTruncated", "false") != "true" or not key_marker:
                return
            _refuse_repeat(f"{key_marker}\0{upload_marker}", seen,
                           f"multipart uploads of {self.origin}{self._prefix}/")
            markers = {"key-marker": decode(key_marker), "upload-id-marker": upload_marker}

    # --- the request ---

    def request(self, method: str, key: str, *, operation: str,
                query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                payload: Payload | None = None, preload: bool = False,
                error_in_200: bool = False, check: Callable[[], None] | None = None,
                cleanup: bool = False) -> urllib3.HTTPResponse:
        """One signed request with botocore-like retries; a final failure is a ClientError.

        ``cleanup``: a request that undoes a stopped transfer (abort): SIGTERM does not stop it.
        """
        path = sigv4.object_path(self._prefix, key)
        canonical_query = sigv4.canonical_query(query)
        url = path + ("?" + canonical_query if canonical_query else "")
        extra = dict(headers or {})
        if payload is not None:
            extra.update(payload.headers())
            payload_sha256 = payload.sha256 or sigv4.UNSIGNED_PAYLOAD
        else:
            payload_sha256 = sigv4.EMPTY_SHA256
        policy = self.policy
        cost: int | None = None
        attempt = 0
        while True:
            attempt += 1
            if policy.stop.is_set() and not cleanup:
                raise Interrupted("stopped before the transfer finished")
            policy.before_send()
            now = datetime.datetime.fromtimestamp(policy.now(), datetime.timezone.utc)
            signed = self.signer.sign(method=method, host=self.host, path=path,
                                      query=canonical_query, headers=extra,
                                      payload_sha256=payload_sha256,
                                      credentials=self._credentials(), now=now)
            body = payload.body() if payload is not None else None
            failure: Exception
            retry_after = None
            try:
                response = self.pool.urlopen(method, url, body=body, headers=signed,
                                             preload_content=preload, decode_content=False,
                                             redirect=False, assert_same_host=False,
                                             release_conn=preload)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                refused = tls.certificate_error(exc, self.origin)
                if refused is not None:  # refused once, refused every time: no retry
                    raise refused from None
                kind: str | None = policy.classify(None, "")
                failure = connection_error(exc, self.origin + url)
                policy.after_response(throttled=False)
            else:
                status, data = response.status, b""
                if status < 300 and error_in_200:
                    data = response.data
                    if b"<Error>" in data:
                        status = 500  # as botocore: S3 failed after it had answered 200
                if status < 300:
                    policy.after_response(throttled=False)
                    policy.succeeded(cost)
                    return response
                if not data:
                    data = response.data if preload else _read_error(response)
                code = error_code(status, data)
                kind = policy.classify(status, code)
                policy.after_response(throttled=kind == "throttling")
                retry_after = response.headers.get("x-amz-retry-after")
                failure = client_error(response.headers, status, data, code, operation)
                if kind == SKEW:
                    offset = policy.correct_skew(response.headers.get("Date"))
                    if offset is None:
                        failure = client_error(response.headers, status, data, code, operation,
                                               note=f"the local clock is {-policy.skew:+.0f} s "
                                                    f"off the server's after correction")
                        kind = None
                    else:
                        self._log_skew(offset)
            finally:
                if body is not None and hasattr(body, "close"):
                    body.close()
            if kind is None or attempt >= self.attempts:
                raise failure
            cost = policy.acquire(kind)
            if cost is None:
                raise with_note(failure, "retry budget exhausted: too many failures in this "
                                          "command")
            if check is not None:
                check()
            self._on_retry()
            delay = 0.0 if kind == SKEW else policy.delay(attempt, kind, retry_after)
            if cleanup:
                time.sleep(min(delay, 1.0))
            else:
                policy.wait(delay)

    def _log_skew(self, offset: float) -> None:
        if self.skew_logged:
            return
        self.skew_logged = True
        from catalog_agent.logs import get_logger

        get_logger().warning("clock skew corrected", offset_seconds=round(offset, 1),
                             reason=f"the server's clock is {offset:+.0f} s from this "
                                    f"machine's; requests are signed with the server's time")

    def close(self) -> None:
        self.pool.close()


def finish(response: urllib3.HTTPResponse) -> None:
    """Hand a streamed response's connection back: to the pool only when its body was read to
    the end; otherwise closed, since its unread bytes would be read as the next answer."""
    if not response.isclosed():
        response.close()
    response.release_conn()


class FileSlice:
    """Bytes ``start``..``end`` of an open file, read with pread: a part sent without a copy.

    ``stop``: checked before each block, so that SIGTERM aborts a part mid-send (the request
    fails with Interrupted, its connection is dropped) instead of waiting for 8 MiB to go. A
    file that shrank is a :class:`FileChanged` (not an OSError, which would be retried).
    """

    def __init__(self, fd: int, start: int, end: int,
                 stop: threading.Event | None = None) -> None:
        self.fd, self.offset, self.end = fd, start, end
        self.stop = stop

    def read(self, amount: int = -1) -> bytes:
        if self.stop is not None and self.stop.is_set():
            raise Interrupted("stopped before the transfer finished")
        left = self.end - self.offset
        if amount is None or amount < 0 or amount > left:
            amount = left
        data = os.pread(self.fd, amount, self.offset) if amount else b""
        if amount and not data:
            raise FileChanged(f"the file ended {left} bytes early: it shrank while being sent")
        self.offset += len(data)
        return data

    def close(self) -> None:
        pass


def _refuse_repeat(marker: str, seen: set[str], what: str) -> None:
    """A listing whose next page marker comes round again would loop for ever."""
    if marker in seen:
        raise TransferError(f"listing {what} failed: the server repeated a continuation "
                            f"token, so the listing would never end")
    seen.add(marker)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        '"', "&quot;")


def _decoder(root: Any) -> Callable[[str], str]:
    """Keys come URL-encoded only if the server says so (as botocore decides): a store that
    ignores ``encoding-type=url`` sends them raw, and decoding those would corrupt '+' and '%'."""
    if (root.findtext(f"{_NS}EncodingType", "") or "").lower() == "url":
        return unquote_plus
    return lambda text: text


def _is_ip(host: str | None) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def _dns_compatible(bucket: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket))


def _timestamp(text: str) -> float:
    if not text:
        return 0.0
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _read_error(response: urllib3.HTTPResponse) -> bytes:
    """The start of an error body; the connection is closed unless the body was all read."""
    try:
        return response.read(ERROR_BODY_LIMIT, decode_content=False) or b""
    except (urllib3.exceptions.HTTPError, OSError):
        return b""
    finally:
        finish(response)


def error_code(status: int, data: bytes) -> str:
    """The S3 error code of an error body (the status when it has none, e.g. HEAD)."""
    found = _CODE.search(data)
    return found.group(1).decode("utf-8", "replace") if found else str(status)


def client_error(headers: Mapping[str, str], status: int, data: bytes, code: str,
                 operation: str, *, note: str = "") -> Exception:
    """botocore's ClientError, shaped as botocore would have raised it."""
    from botocore.exceptions import ClientError

    message = _MESSAGE.search(data)
    text = message.group(1).decode("utf-8", "replace") if message else ""
    error = {"Code": code, "Message": f"{text} ({note})" if note else text}
    region = headers.get("x-amz-bucket-region")
    if region:
        error["Region"] = region
    return ClientError({"Error": error,
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": dict(headers)}},
                       operation)


def with_note(failure: Exception, note: str) -> Exception:
    """The same failure, its message saying why it was not retried."""
    response = getattr(failure, "response", None)
    if isinstance(response, dict):
        error = response.setdefault("Error", {})
        error["Message"] = f"{error.get('Message', '')} ({note})".strip()
        return failure
    from botocore import exceptions as bx

    return bx.ConnectionClosedError(endpoint_url=str(getattr(failure, "kwargs", {}).get(
        "endpoint_url", "")), error=f"{failure} ({note})")


def connection_error(exc: BaseException, url: str) -> Exception:
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
