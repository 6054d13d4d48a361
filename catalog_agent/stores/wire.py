"""What S3 requests share, without any network: where they go, what a body is, what an answer
means.

- :func:`endpoint`: the URL origin, Host and path prefix of a bucket, as botocore resolves them
  (path style for custom endpoints unless virtual is asked for; never ``user:password@``);
- :class:`Payload`: a request body and its SHA-256, sent twice (the signed payload hash and
  ``x-amz-checksum-sha256``) so that the server refuses any byte other than those hashed;
- errors as botocore's own ``ClientError`` and connection errors, so that
  :func:`catalog_agent.aws.translate` maps them as it maps botocore's;
- the XML pages of ListObjectsV2 and ListMultipartUploads.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote_plus, urlsplit

from catalog_agent.errors import ConfigError, TransferError
from catalog_agent.stores import sigv4

ERROR_BODY_LIMIT = 64 * 1024
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

# (access key, secret key, session token or None), fresh for each request (they may refresh).
CredentialSource = Callable[[], tuple[str, str, "str | None"]]


@dataclass(frozen=True)
class Endpoint:
    """Where a bucket's requests go."""

    origin: str  # scheme://host[:port], no userinfo
    host: str  # the Host header: lowercase, no default port
    prefix: str  # URL path before a key: "/bucket" (path style) or the endpoint's base path
    scheme: str
    hostname: str
    port: int
    service: str = ""  # host[:port] of the endpoint before any bucket: what NO_PROXY is matched to


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout (botocore's ConnectTimeoutError, not a read
    timeout: nothing was sent)."""


def endpoint(url: str, *, region: str, bucket: str, addressing_style: str,
             environ: Mapping[str, str] | None = None) -> Endpoint:
    """The bucket's endpoint: ``url`` (an S3-compatible store, a VPC endpoint), else the
    region's AWS S3 endpoint (FIPS and dual-stack as ``AWS_USE_FIPS_ENDPOINT`` and
    ``AWS_USE_DUALSTACK_ENDPOINT`` ask, as botocore names them); virtual-hosted style where
    botocore would use it."""
    env = os.environ if environ is None else environ
    fips = env.get("AWS_USE_FIPS_ENDPOINT", "").lower() == "true"
    dualstack = env.get("AWS_USE_DUALSTACK_ENDPOINT", "").lower() == "true"
    if not url:
        url = _aws_endpoint(region, fips=fips, dualstack=dualstack,
                            us_east_1=env.get("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT"))
        virtual = addressing_style != "path" and _virtual_hostable(bucket, dots=False)
    else:
        # botocore's S3 endpoint rules refuse both with a custom endpoint: say so at once.
        for variable, on in (("AWS_USE_FIPS_ENDPOINT", fips),
                             ("AWS_USE_DUALSTACK_ENDPOINT", dualstack)):
            if on:
                raise ConfigError(f"{variable} is true and an endpoint URL is set: botocore "
                                  f"cannot combine them (a custom endpoint is used as given)",
                                  hint=f"unset {variable}, or the endpoint URL")
        # Custom endpoints: path style unless virtual is asked for, as botocore resolves "auto"
        # for them; an IP address cannot carry the bucket as a subdomain, nor can a bucket
        # name that is no host name (botocore: path for both; a dotted name over https too,
        # which no wildcard certificate would cover).
        custom = urlsplit(url)
        virtual = addressing_style == "virtual" and not _is_ip(custom.hostname) and \
            _virtual_hostable(bucket, dots=(custom.scheme or "https") == "http")
    parts = urlsplit(url.rstrip("/"))
    scheme, base = parts.scheme or "https", parts.path
    service = host = sigv4.host_header(f"{scheme}://{parts.netloc}")  # no user:password@
    if virtual:
        host = f"{bucket}.{host}"
        prefix = base
    else:
        prefix = f"{base}/{quote(bucket, safe='')}"
    origin = f"{scheme}://{host}"
    located = urlsplit(origin)
    return Endpoint(origin, host, prefix, scheme, located.hostname or "",
                    located.port or (443 if scheme == "https" else 80), service)


def _aws_endpoint(region: str, *, fips: bool, dualstack: bool,
                  us_east_1: str | None = None) -> str:
    """The regional S3 endpoint in the region's partition, named as botocore's S3 endpoint
    rules name it: ``s3``, ``s3-fips``, ``s3.dualstack``, ``s3-fips.dualstack``; in us-east-1
    the global ``s3.amazonaws.com`` unless ``AWS_S3_US_EAST_1_REGIONAL_ENDPOINT`` is
    ``regional``, as botocore (the same name, so that ``NO_PROXY`` matches as it does there)."""
    if us_east_1 is not None and us_east_1 not in ("legacy", "regional"):
        raise ConfigError(f"AWS_S3_US_EAST_1_REGIONAL_ENDPOINT is {us_east_1!r}: botocore "
                          f"takes 'legacy' or 'regional'")
    if region == "us-east-1" and not fips and not dualstack and \
            us_east_1 != "regional":
        return "https://s3.amazonaws.com"
    suffix, partition = _partition(region)
    if fips and partition == "aws-cn":
        raise ConfigError(f"AWS_USE_FIPS_ENDPOINT is true but region {region} is in the "
                          f"aws-cn partition, which has no FIPS S3 endpoint (botocore refuses "
                          f"it too)", hint="unset AWS_USE_FIPS_ENDPOINT")
    label = ("s3-fips" if fips else "s3") + (".dualstack" if dualstack else "")
    return f"https://{label}.{region}.{suffix}"


def _partition(region: str) -> tuple[str, str]:
    """(DNS suffix, partition name) of ``region``, from the partitions botocore ships (the same
    file its endpoint rules read); ``amazonaws.com`` for a region it does not know."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return "amazonaws.com", "aws"
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "partitions.json")
    try:
        with open(path, encoding="utf-8") as handle:
            partitions = json.load(handle)["partitions"]
    except (OSError, ValueError, KeyError):
        return "amazonaws.com", "aws"
    for match in (lambda p: region in p.get("regions", {}),
                  lambda p: re.match(p.get("regionRegex", "$^"), region)):
        for partition in partitions:
            if match(partition):
                return partition["outputs"]["dnsSuffix"], partition["id"]
    return "amazonaws.com", "aws"


@dataclass(frozen=True)
class Payload:
    """A request body: bytes, or ``length`` bytes of an open file from ``offset``.

    ``sha256``: the hex SHA-256 of exactly these bytes when known (signed, and sent as the
    checksum the server verifies); None sends ``UNSIGNED-PAYLOAD`` and no checksum.
    """

    length: int
    data: bytes | None = None
    fd: int | None = None
    offset: int = 0
    sha256: str | None = None
    checksum: bool = True  # also send x-amz-checksum-sha256 (an object's or a part's bytes)

    @classmethod
    def of(cls, data: bytes, *, checksum: bool = True) -> Payload:
        return cls(len(data), data=data, sha256=hashlib.sha256(data).hexdigest(),
                   checksum=checksum)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Length": str(self.length)}
        if self.sha256 and self.checksum:
            headers["x-amz-checksum-sha256"] = checksum(bytes.fromhex(self.sha256))
        return headers


def checksum(digest: bytes) -> str:
    """The base64 form S3 gives and takes a SHA-256 in (``x-amz-checksum-sha256``)."""
    return base64.b64encode(digest).decode("ascii")


# --- answers ---

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
    """botocore's own connection errors, so that translate() says "failed after retries";
    their message also says why (botocore's own leave the cause out)."""
    import errno
    import socket

    from botocore import exceptions as bx

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConnectTimeout):
        kind: type[Exception] = bx.ConnectTimeoutError
    elif isinstance(exc, TimeoutError):
        kind = bx.ReadTimeoutError
    elif isinstance(exc, socket.gaierror) or getattr(exc, "errno", None) in (
            errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
        kind = bx.EndpointConnectionError
    else:
        kind = bx.ConnectionClosedError
    return _with_reason(kind)(endpoint_url=url, error=text)


@functools.cache
def _with_reason(kind: type[Exception]) -> type[Exception]:
    """``kind`` (a botocore error) whose message ends with its ``error`` (the cause)."""
    fmt = getattr(kind, "fmt", "").rstrip(".")
    return type(kind.__name__, (kind,), {"fmt": f"{fmt}: {{error}}",
                                         "__module__": kind.__module__})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a ClientError (404 for a missing object however reported)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code in {"NoSuchKey", "NotFound", "404"}:
            return 404
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


# --- listings ---

@dataclass
class ListPage:
    items: list[tuple[str, int, float]]  # (key, size, modified)
    token: str  # the next page's continuation token; '' for the last page


@dataclass
class UploadsPage:
    items: list[tuple[str, str]]  # (key, upload id)
    markers: dict[str, str]  # the next page's markers; empty for the last page


def list_page(data: bytes) -> ListPage:
    from xml.etree import ElementTree

    root = ElementTree.fromstring(data)
    decode = _decoder(root)
    items = [(decode(item.findtext(f"{_NS}Key", "")), int(item.findtext(f"{_NS}Size", "0")),
              _timestamp(item.findtext(f"{_NS}LastModified", "")))
             for item in root.iter(f"{_NS}Contents")]
    token = root.findtext(f"{_NS}NextContinuationToken", "") or ""
    truncated = root.findtext(f"{_NS}IsTruncated", "false") == "true"
    return ListPage(items, token if truncated else "")


def uploads_page(data: bytes) -> UploadsPage:
    from xml.etree import ElementTree

    root = ElementTree.fromstring(data)
    decode = _decoder(root)
    items = [(decode(item.findtext(f"{_NS}Key", "")), item.findtext(f"{_NS}UploadId", "") or "")
             for item in root.iter(f"{_NS}Upload")]
    key_marker = root.findtext(f"{_NS}NextKeyMarker", "") or ""
    upload_marker = root.findtext(f"{_NS}NextUploadIdMarker", "") or ""
    if root.findtext(f"{_NS}IsTruncated", "false") != "true" or not key_marker:
        return UploadsPage(items, {})
    return UploadsPage(items, {"key-marker": decode(key_marker),
                               "upload-id-marker": upload_marker})


def refuse_repeat(marker: str, seen: set[str], what: str) -> None:
    """A listing whose next page marker comes round again would loop for ever."""
    if marker in seen:
        raise TransferError(f"listing {what} failed: the server repeated a continuation "
                            f"token, so the listing would never end")
    seen.add(marker)


def complete_body(parts: list[tuple[str, str | None]]) -> bytes:
    """CompleteMultipartUpload's XML: (ETag, base64 SHA-256 or None) per part, in order."""
    xml = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml(etag)}</ETag>"
        + (f"<ChecksumSHA256>{digest}</ChecksumSHA256>" if digest else "") + "</Part>"
        for n, (etag, digest) in enumerate(parts, 1))
    return f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()


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
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def _virtual_hostable(bucket: str, *, dots: bool) -> bool:
    """Whether botocore's S3 endpoint rules put ``bucket`` in the host name
    (``aws.isVirtualHostableS3Bucket``): 3 characters or more, lowercase, not an IPv4 address,
    and a host label (each dot-separated label of it with ``dots``: a custom endpoint over
    http; AWS's own endpoints and https keep a dotted name in the path)."""
    if len(bucket) < 3 or bucket != bucket.lower() or \
            re.fullmatch(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}", bucket):
        return False
    labels = bucket.split(".") if dots else [bucket]
    return all(re.fullmatch(r"(?!-)[a-zA-Z0-9-]{1,63}(?<!-)", label) for label in labels)


def _timestamp(text: str) -> float:
    if not text:
        return 0.0
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
