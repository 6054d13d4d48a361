"""The lean path sends each request as botocore's S3 client builds and signs it (property test).

Any difference in where a request goes (scheme, host, port, path), its query, its Host or its
canonical request (path encoding, query order, header folding) would send it to the wrong place,
or make S3 refuse it with SignatureDoesNotMatch for some keys only. So for generated buckets,
keys, query values, metadata, credentials, regions and endpoints (ports, base paths, userinfo,
upper case, IPv6, AWS itself; path, virtual and auto addressing), the agent's own S3Client makes
each operation against a loopback server that records the request as it came off the wire, and
a real botocore S3 client, given the same inputs, builds its own request (captured at
``before-send``, never sent). Both sign with one fixed credential and one frozen clock.

What botocore does differently, on purpose on one side or the other (documented where it is
allowed for, in ``botocore_request`` and ``assert_same_request``):

- bucket-level requests (the listings): the agent's path ends with ``/`` (``/bucket/``, ``/``,
  ``/base/``), botocore's does not (``/bucket``, ``/``, ``/base``); S3 serves both alike. That
  slash is added to botocore's URL before it signs, and nothing else about the path is.
- ``?uploads`` is sent by the agent as ``uploads=`` (the same canonical query).
- the agent also signs ``Content-Length`` of a body (botocore sets it after signing); botocore
  is given its own body's length as that header before it signs.
- CompleteMultipartUpload's XML is the agent's own (botocore orders the elements otherwise and
  adds a namespace): botocore signs the agent's bytes in its own request.
- botocore never signs ``Expect``, ``User-Agent`` nor its ``amz-sdk-*`` headers; the agent does
  not send the last.
- botocore's virtual-hosted URLs are wrong in two cases, which are not generated: it puts the
  bucket in front of an endpoint's ``user:password@`` (``http://bucket.user:pw@host/``, the
  bucket lost from the Host), and a dotted bucket in front of an IP address over http
  (``http://a.b.c.127.0.0.1/``; a bucket without dots goes in the path there). The agent uses
  the endpoint's host, and the path for an IP address, respectively.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import os
from typing import Any, Iterator
from unittest import mock
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.auth import _host_from_url
from botocore.config import Config
from botocore.utils import determine_content_length
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from catalog_agent.stores import wire
from catalog_agent.stores.s3_client import S3Client
from catalog_agent.stores.wire import Payload
from tests.raw_http import Exchange, RawRequest, RawServer, answer

NOW = datetime.datetime(2026, 11, 25, 12, 34, 56, tzinfo=datetime.timezone.utc)
DEFAULT_PORTS = {"http": 80, "https": 443}
BUCKET_LEVEL = {"ListObjectsV2", "ListMultipartUploads"}

key_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   min_size=1, max_size=60)
query_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
# Handed back in an XML answer (a continuation token, a marker): what XML 1.0 can carry.
xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), min_size=1,
                   max_size=20)
# Printable ASCII, with runs of spaces and tabs (folded to one space in the canonical request).
header_value = st.lists(st.one_of(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                          min_size=1, max_size=8),
                                  st.sampled_from([" ", "  ", "\t", " \t  "])),
                        max_size=6).map("".join)
meta_name = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
buckets = st.sampled_from(["my-bucket", "b-1", "ab", "a.b.c", "My_Bucket", "1.2.3.4",
                           "bucket-" + "x" * 56])
endpoints = st.sampled_from([
    "", "http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com", "http://LOCALHOST:9000",
    "https://minio.example.com:443/base", "http://Store.Example.com:80/s3/",
    "http://user:pa%40ss@Store.Example.com:80/s3", "https://user@minio.example.com:9443",
    "https://[::1]:8443", "http://[fe80::1]/path/to"])
styles = st.sampled_from(["path", "virtual", "auto"])
credentials = st.tuples(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=20),
                        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8,
                                max_size=40),
                        st.one_of(st.none(), st.text("abcdefXYZ0123456789/+=", min_size=8,
                                                     max_size=60)))
OPERATIONS = ["PutObject", "GetObject", "HeadObject", "CreateMultipartUpload", "UploadPart",
              "CompleteMultipartUpload", "AbortMultipartUpload", "ListObjectsV2",
              "ListMultipartUploads"]


@dataclasses.dataclass
class Inputs:
    """One operation's inputs, given alike to the agent and to botocore."""

    operation: str
    bucket: str
    key: str
    body: bytes
    metadata: dict[str, str]
    sse: tuple[str, str] | None  # (ServerSideEncryption, SSEKMSKeyId)
    byte_range: tuple[int, int | None] | None
    if_match: str | None
    upload_id: str
    part_number: int
    prefix: str
    token: str  # the continuation token, or the key marker, the server's first page hands back
    upload_marker: str

    def object_headers(self) -> dict[str, str]:
        headers = {f"x-amz-meta-{name}": value for name, value in self.metadata.items()}
        if self.sse:
            headers["x-amz-server-side-encryption"] = self.sse[0]
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse[1]
        return headers

    def object_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"Metadata": dict(self.metadata)}
        if self.sse:
            params.update(ServerSideEncryption=self.sse[0], SSEKMSKeyId=self.sse[1])
        return params

    def range_header(self) -> dict[str, str]:
        if self.byte_range is None:
            return {}
        first, last = self.byte_range
        headers = {"Range": f"bytes={first}-{'' if last is None else last}"}
        if self.if_match:
            headers["If-Match"] = self.if_match
        return headers


inputs = st.builds(
    Inputs, operation=st.sampled_from(OPERATIONS), bucket=buckets, key=key_text,
    body=st.binary(max_size=64), metadata=st.dictionaries(meta_name, header_value, max_size=3),
    sse=st.one_of(st.none(), st.tuples(st.just("aws:kms"), st.text("abcdef0123456789-:/",
                                                                     min_size=1, max_size=30))),
    byte_range=st.one_of(st.none(), st.tuples(st.integers(0, 10 ** 12),
                                              st.one_of(st.none(), st.integers(0, 1000)))
                         .map(lambda r: (r[0], None if r[1] is None else r[0] + r[1]))),
    if_match=st.one_of(st.none(), st.text("0123456789abcdef", min_size=1, max_size=32)
                       .map(lambda e: f'"{e}"')),
    upload_id=query_text.filter(bool), part_number=st.integers(1, 10000), prefix=query_text,
    token=xml_text, upload_marker=xml_text)


# --- the agent's side: its own S3Client, the request as it comes off the wire ---

class Script:
    """The loopback server's answers: a first listing page that hands back ``token``."""

    token = ""
    upload_marker = ""

    def __call__(self, exchange: Exchange) -> None:
        request = exchange.request
        query = dict(pair.partition("=")[::2] for pair in
                     urlsplit(request.target).query.split("&") if pair)
        xml = b'<?xml version="1.0" encoding="UTF-8"?>'
        ns = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
        if request.method == "POST" and "uploads" in query:
            exchange.send(answer(200, xml + b"<InitiateMultipartUploadResult><UploadId>u-1"
                                        b"</UploadId></InitiateMultipartUploadResult>"))
        elif request.method == "POST":
            exchange.send(answer(200, xml + b"<CompleteMultipartUploadResult><ETag>\"e-1\""
                                        b"</ETag></CompleteMultipartUploadResult>"))
        elif request.method == "GET" and "list-type" in query:
            more = "" if "continuation-token" in query else (
                f"<IsTruncated>true</IsTruncated>"
                f"<NextContinuationToken>{escape(self.token)}</NextContinuationToken>")
            exchange.send(answer(200, xml + f"<ListBucketResult {ns}>{more}"
                                            f"</ListBucketResult>".encode()))
        elif request.method == "GET" and "uploads" in query:
            more = "" if "key-marker" in query else (
                f"<IsTruncated>true</IsTruncated><NextKeyMarker>{escape(self.token)}"
                f"</NextKeyMarker><NextUploadIdMarker>{escape(self.upload_marker)}"
                f"</NextUploadIdMarker>")
            exchange.send(answer(200, xml + f"<ListMultipartUploadsResult {ns}>{more}"
                                            f"</ListMultipartUploadsResult>".encode()))
        elif request.method == "GET" and "range" in request.headers:
            first, _, last = request.headers["range"].removeprefix("bytes=").partition("-")
            end = int(last) if last else int(first) + 3
            exchange.send(answer(206, b"x" * (end - int(first) + 1),
                                 f"Content-Range: bytes {first}-{end}/{end + 1}"))
        elif request.method == "DELETE":
            exchange.send(answer(204))
        else:
            exchange.send(answer(200, b"x" if request.method == "GET" else b"",
                                 'ETag: "e-1"'))


@pytest.fixture(scope="module")
def wire_capture() -> Iterator[tuple[RawServer, Script]]:
    script = Script()
    with RawServer(script) as server:
        yield server, script


@pytest.fixture(scope="module", autouse=True)
def plain_environment() -> Iterator[None]:
    """Neither side may pick up an AWS setting or a proxy from the machine running the test."""
    clean = {k: v for k, v in os.environ.items()
             if not k.upper().startswith("AWS_") and not k.lower().endswith("_proxy")}
    clean.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    with mock.patch.dict(os.environ, clean, clear=True):
        yield


def agent_requests(server: RawServer, where: wire.Endpoint, region: str,
                   creds: tuple[str, str, str | None], case: Inputs) -> list[RawRequest]:
    """What the agent's S3Client sends for ``case.operation``. It connects to the loopback
    server instead of ``where``'s host and port (compared with botocore's by the caller):
    nothing else of ``where`` changes, and nothing of the request."""
    loopback = dataclasses.replace(where, scheme="http", hostname="127.0.0.1", port=server.port)
    client = S3Client(loopback, region=region, credentials=lambda: creds, attempts=1,
                      verify=True, on_retry=lambda: None)
    client.policy.now = lambda: NOW.timestamp()  # type: ignore[method-assign]
    key, op = case.key, case.operation

    async def work() -> None:
        if op == "PutObject":
            await client.put(key, Payload.of(case.body), case.object_headers())
        elif op == "GetObject":
            await client.get(key, lambda block: None, case.range_header() or None)
        elif op == "HeadObject":
            await client.head(key)
        elif op == "CreateMultipartUpload":
            await client.create_upload(key, case.object_headers())
        elif op == "UploadPart":
            await client.upload_part(key, case.upload_id, case.part_number,
                                     Payload.of(case.body))
        elif op == "CompleteMultipartUpload":
            await client.complete_upload(key, case.upload_id, [('"e-1"', "AAAA"), ('"e-2"', None)])
        elif op == "AbortMultipartUpload":
            await client.abort(key, case.upload_id)
        elif op == "ListObjectsV2":
            async for _ in client.list_pages(case.prefix):
                pass
        else:
            async for _ in client.upload_pages(case.prefix):
                pass

    async def main() -> None:
        try:
            await work()
        finally:
            await client.aclose()

    del server.requests[:]
    asyncio.run(main())
    return list(server.requests)


# --- botocore's side: a real S3 client, the prepared request captured at before-send ---

SESSION = botocore.session.Session()


class _Captured(Exception):
    pass


def botocore_request(endpoint: str, style: str, region: str, creds: tuple[str, str, str | None],
                     case: Inputs, agent_bodies: list[bytes]) -> list[Any]:
    """The requests botocore's S3 client prepares for the same operation (one per page of a
    listing: the second carries the marker the first page handed back)."""
    SESSION.set_credentials(*creds)
    config = Config(s3={"addressing_style": style, "payload_signing_enabled": True},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"max_attempts": 1, "mode": "standard"})
    client = SESSION.create_client("s3", region_name=region, endpoint_url=endpoint or None,
                                   config=config)
    captured: list[Any] = []

    def before_sign(request: Any, operation_name: str, **_: Any) -> None:
        if operation_name in BUCKET_LEVEL:  # the agent's trailing slash (see the docstring)
            parts = urlsplit(request.url)
            request.url = parts._replace(path=parts.path.rstrip("/") + "/").geturl()
        if operation_name == "CompleteMultipartUpload":  # the agent's own XML, signed
            request.data = agent_bodies[0]
        if operation_name in ("PutObject", "UploadPart", "CompleteMultipartUpload"):
            request.headers["Content-Length"] = str(determine_content_length(request.body) or 0)

    def before_send(request: Any, **_: Any) -> None:
        captured.append(request)
        raise _Captured()

    client.meta.events.register("before-sign.s3", before_sign)
    client.meta.events.register("before-send.s3", before_send)
    b, key, op = case.bucket, case.key, case.operation
    calls: list[tuple[str, dict[str, Any]]]
    digest = base64.b64encode(hashlib.sha256(case.body).digest()).decode()
    if op == "PutObject":
        calls = [("put_object", dict(Key=key, Body=case.body, ChecksumSHA256=digest,
                                     **case.object_params()))]
    elif op == "GetObject":
        extra = {k.replace("-", ""): v for k, v in case.range_header().items()}
        calls = [("get_object", dict(Key=key, **extra))]
    elif op == "HeadObject":
        calls = [("head_object", dict(Key=key))]
    elif op == "CreateMultipartUpload":
        calls = [("create_multipart_upload", dict(Key=key, ChecksumAlgorithm="SHA256",
                                                  **case.object_params()))]
    elif op == "UploadPart":
        calls = [("upload_part", dict(Key=key, UploadId=case.upload_id, Body=case.body,
                                      PartNumber=case.part_number, ChecksumSHA256=digest))]
    elif op == "CompleteMultipartUpload":
        calls = [("complete_multipart_upload", dict(Key=key, UploadId=case.upload_id,
                                                    MultipartUpload={"Parts": []}))]
    elif op == "AbortMultipartUpload":
        calls = [("abort_multipart_upload", dict(Key=key, UploadId=case.upload_id))]
    elif op == "ListObjectsV2":
        calls = [("list_objects_v2", dict(Prefix=case.prefix)),
                 ("list_objects_v2", dict(Prefix=case.prefix, ContinuationToken=case.token))]
    else:  # the agent asks for URL-encoded keys (so that any key survives XML): botocore too
        calls = [("list_multipart_uploads", dict(Prefix=case.prefix, EncodingType="url")),
                 ("list_multipart_uploads", dict(Prefix=case.prefix, EncodingType="url",
                                                 KeyMarker=case.token,
                                                 UploadIdMarker=case.upload_marker))]
    with mock.patch("botocore.auth.get_current_datetime",
                    return_value=NOW.replace(tzinfo=None)):
        for method, params in calls:
            with pytest.raises(_Captured):
                getattr(client, method)(Bucket=b, **params)
    client.close()
    return captured


# --- the comparison ---

def query_pairs(query: str) -> list[str]:
    """The query's encoded ``name=value`` pairs, as a sorted list (``uploads`` as ``uploads=``);
    compared encoded, so that a value encoded otherwise (``+`` for a space) would differ."""
    return sorted(pair if "=" in pair else pair + "=" for pair in query.split("&") if pair)


def header(request: Any, name: str) -> str | None:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value.decode() if isinstance(value, bytes) else value
    return None


def assert_same_request(ours: RawRequest, theirs: Any, where: wire.Endpoint) -> None:
    url = urlsplit(theirs.url)
    # where it connects, and how: botocore's URL (its host case-insensitive, its port default)
    assert (where.scheme, where.hostname, where.port) == (
        url.scheme, url.hostname, url.port or DEFAULT_PORTS[url.scheme])
    assert ours.method == theirs.method
    path, _, query = ours.target.partition("?")
    assert path == url.path
    assert query_pairs(query) == query_pairs(url.query)
    # the Host botocore signs (and urllib3 sends): lowercase, no userinfo, no default port
    assert ours.headers["host"] == _host_from_url(theirs.url)
    assert "@" not in ours.headers["host"] and ours.headers["host"] == \
        ours.headers["host"].lower()
    assert not ours.headers["host"].endswith(f":{DEFAULT_PORTS[url.scheme]}")
    for name in ("X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token"):
        assert ours.headers.get(name.lower()) == header(theirs, name), name
    assert ours.headers["authorization"] == header(theirs, "Authorization")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=inputs, endpoint=endpoints, style=styles, creds=credentials,
       region=st.sampled_from(["us-east-1", "eu-west-1", "cn-north-1"]))
def test_requests_equal_botocores(wire_capture: tuple[RawServer, Script], case: Inputs,
                                  endpoint: str, style: str,
                                  creds: tuple[str, str, str | None], region: str) -> None:
    if style == "virtual":  # botocore's own mistakes there (see the docstring)
        assume("@" not in endpoint)
        assume(not ("." in case.bucket and wire._is_ip(urlsplit(endpoint).hostname)))
    server, script = wire_capture
    script.token, script.upload_marker = case.token, case.upload_marker
    where = wire.endpoint(endpoint, region=region, bucket=case.bucket, addressing_style=style,
                          environ={})
    event(f"{case.operation}, {'virtual-hosted' if where.host != where.service else 'path'}")
    ours = agent_requests(server, where, region, creds, case)
    theirs = botocore_request(endpoint, style, region, creds, case, [r.body for r in ours])
    assert len(ours) == len(theirs) == (2 if case.operation in BUCKET_LEVEL else 1)
    for mine, botocores in zip(ours, theirs):
        assert_same_request(mine, botocores, where)


@pytest.mark.parametrize("url, host", [
    ("https://s3.amazonaws.com:443/b", "s3.amazonaws.com"),
    ("http://Example.COM:80/b", "example.com"),
    ("http://user:secret@example.com:8333/b", "example.com:8333"),
    ("https://[::1]:8443/", "[::1]:8443"),
    ("https://[::1]:443/", "[::1]"),
])
def test_host_has_no_userinfo_no_default_port_and_is_lowercase(url: str, host: str) -> None:
    from catalog_agent.stores import sigv4

    assert sigv4.host_header(url) == host
    assert _host_from_url(url) == host


def test_the_endpoints_userinfo_never_reaches_a_header() -> None:
    where = wire.endpoint("http://user:secret@Store.example.com:8333", region="us-east-1",
                          bucket="b-1", addressing_style="path")
    assert where.host == "store.example.com:8333"
    assert urlsplit(where.origin).netloc == "store.example.com:8333"
    assert (where.hostname, where.port) == ("store.example.com", 8333)  # where it connects


@pytest.mark.parametrize("endpoint, bucket, url", [
    ("http://localhost:9000", "my-bucket", "http://my-bucket.localhost:9000/k"),
    ("http://localhost:9000", "a.b.c", "http://a.b.c.localhost:9000/k"),  # dots: over http
    ("https://minio.example.com", "a.b.c", "https://minio.example.com/a.b.c/k"),
    ("http://localhost:9000", "My_Bucket", "http://localhost:9000/My_Bucket/k"),
    ("http://localhost:9000", "ab", "http://localhost:9000/ab/k"),
    ("http://localhost:9000", "1.2.3.4", "http://localhost:9000/1.2.3.4/k"),
    ("http://localhost:9000", "a-.b", "http://localhost:9000/a-.b/k"),
    ("https://s3.eu-west-1.amazonaws.com", "ab", "https://s3.eu-west-1.amazonaws.com/ab/k"),
])
def test_virtual_hosted_only_for_buckets_botocore_puts_in_the_host(endpoint: str, bucket: str,
                                                                    url: str) -> None:
    """A custom endpoint with virtual-hosted style asked for: a bucket name that is no host name
    (upper case, '_', shorter than 3, an IPv4 address; dots over https) goes in the path."""
    from catalog_agent.stores import sigv4

    where = wire.endpoint(endpoint, region="us-east-1", bucket=bucket,
                          addressing_style="virtual", environ={})
    assert where.origin + sigv4.object_path(where.prefix, "k") == url
    case = Inputs("HeadObject", bucket, "k", b"", {}, None, None, None, "u", 1, "", "t", "m")
    (theirs,) = botocore_request(endpoint, "virtual", "us-east-1", ("AKIDEXAMPLE", "secret", None),
                                 case, [])
    assert theirs.url == url
