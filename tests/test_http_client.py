"""The agent's own HTTP/1.1 client (catalog_agent/stores/s3_client.py) reads answers strictly,
never hands a body twice, bounds every request in time, checks ranged answers, and reaches
the endpoint the way botocore does (proxies, FIPS and dual-stack endpoints, happy eyeballs).

Malformed and hostile answers come from a server the tests write byte by byte
(tests/raw_http.py); real traffic, and every signature, from SeaweedFS (tests/conftest.py,
tests/tls_support.py) through a real CONNECT / forward proxy on loopback
(tests/loopback_proxy.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Awaitable, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import pytest
from botocore import exceptions as bx
from conftest import Agent, agent_env, log_events
from loopback_proxy import LoopbackProxy
from raw_http import Exchange, RawServer, answer, s3_error
from tls_support import TestPki, pki, tls_bucket, tls_s3_server  # noqa: F401 - fixtures

from catalog_agent import __version__, devserver
from catalog_agent.errors import AccessError, ConfigError, TransferError
from catalog_agent.stores import proxies, s3_client, wire
from catalog_agent.stores.s3_client import BodyCut, S3Client
from catalog_agent.stores.wire import Payload

T = TypeVar("T")
MiB = 1024 * 1024
KEYS = ("AKIARAWTEST", "raw-secret", None)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                   "http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_of_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test decides which proxy variables exist."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def client_for(endpoint: str, *, attempts: int = 1, verify: bool | str = True,
               keys: tuple[str, str, str | None] = KEYS, bucket: str = "b") -> S3Client:
    where = wire.endpoint(endpoint, region="us-east-1", bucket=bucket, addressing_style="path")
    return S3Client(where, region="us-east-1", credentials=lambda: keys, attempts=attempts,
                    verify=verify, on_retry=lambda: None)


def seaweed_client(server: devserver.SeaweedServer, bucket: str, *, https: str = "",
                   **options) -> S3Client:  # noqa: ANN003
    return client_for(https or server.endpoint, keys=(server.access_key, server.secret_key, None),
                      bucket=bucket, **options)


def run(work: Callable[[S3Client], Awaitable[T]], client: S3Client, timeout: float = 30) -> T:
    """``work(client)`` on a new event loop, the client closed after; a hang fails the test."""
    async def main() -> T:
        try:
            return await asyncio.wait_for(work(client), timeout)
        finally:
            await client.aclose()

    return asyncio.run(main())


def listing_request(client: S3Client) -> Awaitable[s3_client.Reply]:
    """A control request (no sink): the answer is read whole, as a listing page is."""
    return client.request("GET", "", query={"list-type": "2"}, operation="ListObjectsV2")


# --- 1. interim answers ---


def test_interim_answers_are_passed_over_on_a_pooled_connection() -> None:
    """100 Continue and 103 Early Hints are not the answer: the real one follows, and the
    next request on the same connection gets its own answer, not the previous one's."""
    def respond(exchange: Exchange) -> None:
        if exchange.number == 1:
            exchange.send(b"HTTP/1.1 100 Continue\r\n\r\n"
                          b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                          + answer(200, b"first"))
        else:
            exchange.send(answer(200, b"second"))

    async def work(client: S3Client) -> list[bytes]:
        return [(await client.read("k", 100)).data, (await client.read("k", 100)).data]

    with RawServer(respond) as server:
        assert run(work, client_for(server.endpoint)) == [b"first", b"second"]
    assert server.connections == 1


@pytest.mark.parametrize("head, problem", [
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "101 Switching Protocols"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.1 status line"),
    (b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.1 status line"),
    (b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", "not an HTTP status"),
    (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.1 status line"),
])
def test_a_status_must_be_three_digits_and_not_101(head: bytes, problem: str) -> None:
    with RawServer(lambda exchange: exchange.send(head)) as server:
        with pytest.raises(bx.ConnectionClosedError, match=problem):
            run(lambda client: client.read("k", 100), client_for(server.endpoint))


# --- 2. a body that broke is a BodyCut, never a retry inside request() ---


@pytest.mark.parametrize("rest, problem, delivered", [
    (b"1" * 70_000 + b"\r\n", "LimitOverrunError", b"hello"),  # a chunk-size line too long
    (b"0\r\n" + b"X-Trailer: " + b"t" * 70_000 + b"\r\n\r\n", "LimitOverrunError", b"hello"),
    (b"0x5\r\nworld\r\n0\r\n\r\n", "malformed chunk-size line", b"hello"),
    (b"5\r\nworldXX0\r\n\r\n", "not followed by CRLF", b"helloworld"),
])
def test_a_body_broken_after_its_first_bytes_reaches_the_sink_once(rest: bytes, problem: str,
                                                                  delivered: bytes) -> None:
    """Once bytes reached the sink, whatever breaks the body is a BodyCut (the caller resumes
    it); retrying inside the request would hand the sink the same bytes again."""
    def respond(exchange: Exchange) -> None:
        exchange.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                      + rest)
        exchange.close()

    got = bytearray()
    with RawServer(respond) as server:
        with pytest.raises(BodyCut, match=problem):
            run(lambda client: client.get("k", got.extend), client_for(server.endpoint,
                                                                        attempts=3))
    assert bytes(got) == delivered
    assert len(server.requests) == 1


# --- 3. strict framing ---


BAD_ANSWERS = {
    "negative length": (["Content-Length: -1"], b"hello", "Content-Length"),
    "signed length": (["Content-Length: +5"], b"hello", "Content-Length"),
    "underscored length": (["Content-Length: 1_0"], b"helloworld", "Content-Length"),
    "hex length": (["Content-Length: 0x5"], b"hello", "Content-Length"),
    "two lengths": (["Content-Length: 5", "Content-Length: 6"], b"hello!", "Content-Length"),
    "gzip then chunked": (["Transfer-Encoding: gzip, chunked"], b"5\r\nhello\r\n0\r\n\r\n",
                          "Transfer-Encoding"),
    "chunked twice": (["Transfer-Encoding: chunked, chunked"], b"5\r\nhello\r\n0\r\n\r\n",
                      "Transfer-Encoding"),
    "identity": (["Transfer-Encoding: identity", "Content-Length: 5"], b"hello",
                 "Transfer-Encoding"),
    "hex chunk size": (["Transfer-Encoding: chunked"], b"0x5\r\nhello\r\n0\r\n\r\n",
                       "chunk-size"),
    "signed chunk size": (["Transfer-Encoding: chunked"], b"+5\r\nhello\r\n0\r\n\r\n",
                          "chunk-size"),
    "negative chunk size": (["Transfer-Encoding: chunked"], b"-5\r\nhello\r\n0\r\n\r\n",
                            "chunk-size"),
    "bare LF in a value": (['ETag: "a\nX-Injected: 1"', "Content-Length: 5"], b"hello",
                           "CR, LF or NUL"),
    "NUL in a value": (['ETag: "a\x00b"', "Content-Length: 5"], b"hello", "CR, LF or NUL"),
    "CR in a value": (['ETag: "a\rb"', "Content-Length: 5"], b"hello", "CR, LF or NUL"),
    "folded header": (["ETag: a", " b", "Content-Length: 5"], b"hello", "folded"),
    "no colon": (["ETag", "Content-Length: 5"], b"hello", "malformed header line"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_an_answer_framed_loosely_is_refused(case: str) -> None:
    """A length or chunk size that ``int()`` would accept but HTTP does not, a transfer coding
    other than chunked, or a header value with CR, LF or NUL: the answer is refused (a
    connection error), never read with a guessed length."""
    headers, body, problem = BAD_ANSWERS[case]

    def respond(exchange: Exchange) -> None:
        exchange.send(("\r\n".join(["HTTP/1.1 200 OK", *headers]) + "\r\n\r\n")
                      .encode("latin-1") + body)
        exchange.close()

    with RawServer(respond) as server:
        with pytest.raises(bx.ConnectionClosedError, match=problem):
            run(listing_request, client_for(server.endpoint))


def test_a_control_answer_is_capped() -> None:
    """A listing page over 16 MiB is refused, not held in memory."""
    big = answer(200, b"x" * (s3_client.CONTROL_LIMIT + 1))
    with RawServer(lambda exchange: exchange.send(big)) as server:
        with pytest.raises(TransferError, match="larger than 16,777,216 bytes"):
            run(listing_request, client_for(server.endpoint, attempts=3))
    assert len(server.requests) == 1


def test_an_upload_answer_is_capped_far_lower() -> None:
    """PUT answers come `concurrency` at a time: each may hold 64 KiB, not 16 MiB (64 uploads
    answered with 16 MiB each would be 2 GiB)."""
    big = answer(200, b"x" * (64 * 1024 + 1), 'ETag: "e"')
    with RawServer(lambda exchange: exchange.send(big)) as server:
        with pytest.raises(TransferError, match="PutObject .* larger than 65,536 bytes"):
            run(lambda client: client.put("k", Payload.of(b"data"), {}),
                client_for(server.endpoint, attempts=3))
    assert len(server.requests) == 1


@pytest.mark.parametrize("framing", ["chunked", "to the close"])
def test_a_ranged_answer_longer_than_its_content_range_is_cut(framing: str) -> None:
    """A 206 whose Content-Range is right but whose body (chunked, or read to the close)
    runs on: the bytes past the range never reach the sink, which would write them over the
    next part's place in the file."""
    def respond(exchange: Exchange) -> None:
        head = ["HTTP/1.1 206 Partial Content", "Content-Range: bytes 0-9/100"]
        if framing == "chunked":
            exchange.send(("\r\n".join([*head, "Transfer-Encoding: chunked"]) + "\r\n\r\n")
                          .encode() + b"f\r\n" + b"A" * 15 + b"\r\n0\r\n\r\n")
        else:
            exchange.send(("\r\n".join(head) + "\r\n\r\n").encode() + b"A" * 15)
            exchange.close()

    got = bytearray()
    with RawServer(respond) as server:
        with pytest.raises(BodyCut, match="more than the 10 bytes of its Content-Range"):
            run(lambda client: client.get("k", got.extend, {"Range": "bytes=0-9"}),
                client_for(server.endpoint, attempts=3))
    assert len(got) <= 10  # never a byte past the range


@pytest.mark.parametrize("status_line, headers, closes", [
    ("HTTP/1.1 200 OK", [], True),  # no length: the body ends with the connection
    ("HTTP/1.0 200 OK", [], True),
    ("HTTP/1.0 200 OK", ["Content-Length: 11", "Connection: keep-alive"], False),
    ("HTTP/1.1 200 OK", ["Content-Length: 11", "Connection: close"], False),
])
def test_a_connection_is_reused_only_when_http11_said_where_the_body_ends(
        status_line: str, headers: list[str], closes: bool) -> None:
    def respond(exchange: Exchange) -> None:
        exchange.send(("\r\n".join([status_line, *headers]) + "\r\n\r\n").encode()
                      + b"hello world")
        if closes:
            exchange.close()

    async def work(client: S3Client) -> list[bytes]:
        return [(await client.read("k", 100)).data for _ in range(2)]

    with RawServer(respond) as server:
        assert run(work, client_for(server.endpoint)) == [b"hello world"] * 2
    assert server.connections == 2


def test_bytes_left_in_a_connection_keep_it_out_of_the_pool() -> None:
    """Bytes after an answer (sent with it, or arriving while the connection is idle) would
    be read as the next request's answer: such a connection is closed."""
    def respond(exchange: Exchange) -> None:
        if exchange.number == 1:
            exchange.send(answer(200, b"first") + answer(200, b"stale"))
        elif exchange.number == 2:
            exchange.send(answer(200, b"second"))
            threading.Timer(0.1, exchange.send, [answer(408, b"idle too long")]).start()
        else:
            exchange.send(answer(200, b"third"))

    async def work(client: S3Client) -> list[bytes]:
        got = []
        for _ in range(3):
            got.append((await client.read("k", 100)).data)
            await asyncio.sleep(0.4)
        return got

    with RawServer(respond) as server:
        assert run(work, client_for(server.endpoint)) == [b"first", b"second", b"third"]
    assert server.connections == 3


# --- 4. time ---


def trickle(exchange: Exchange) -> None:
    exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(300):
        exchange.send(b"x")
        time.sleep(0.1)


def test_a_trickling_server_fails_the_request_at_its_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte every 0.1 s resets any idle timer; the request's deadline (here 2 s, and 1 s
    more per 64 KiB) ends it as a timeout: retried for a control request, a BodyCut (resumed
    by the caller) for a streamed body."""
    monkeypatch.setattr(s3_client, "DEADLINE_BASE", 2.0)
    got = bytearray()
    with RawServer(trickle) as server:
        started = time.monotonic()
        with pytest.raises(bx.ReadTimeoutError, match="deadline of 2 s"):
            run(lambda client: client.read("k", 200_000), client_for(server.endpoint))
        assert time.monotonic() - started < 8
        with pytest.raises(BodyCut, match="deadline"):
            run(lambda client: client.get("k", got.extend), client_for(server.endpoint))
    assert 0 < len(got) < 100


def test_a_silent_server_is_a_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_client, "READ_TIMEOUT", 1.5)
    with RawServer(lambda exchange: time.sleep(10)) as server:
        with pytest.raises(bx.ReadTimeoutError, match="no byte for 2 s"):
            run(lambda client: client.read("k", 100), client_for(server.endpoint))


class BlackHole:
    """A listening port that never completes a connection: its accept queue is full, so the
    kernel drops every further SYN (as a firewall that drops packets does)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port = self._listener.getsockname()[1]
        self._fill = []
        for _ in range(3):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", self.port))
            self._fill.append(sock)
        time.sleep(0.1)

    def close(self) -> None:
        for sock in [*self._fill, self._listener]:
            sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_a_connect_timeout_is_reported_as_one(black_hole: BlackHole,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_client, "CONNECT_TIMEOUT", 1.0)
    with pytest.raises(bx.ConnectTimeoutError, match=f"127.0.0.1:{black_hole.port} within 1 s"):
        run(lambda client: client.read("k", 100),
            client_for(f"http://127.0.0.1:{black_hole.port}"))


def test_a_black_holed_first_address_does_not_cost_the_connect_timeout(
        black_hole: BlackHole) -> None:
    """A name with two addresses, the first dropping every packet: the second is tried after
    a quarter of a second (RFC 8305), not after the 10 s connect timeout. (The test answers
    the name lookup itself; the connections are real.)"""
    with RawServer(lambda exchange: exchange.send(answer(200, b"reached"))) as server:
        addresses = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
                     for port in (black_hole.port, server.port)]

        async def work(client: S3Client) -> bytes:
            async def lookup(*_: object, **__: object) -> list:
                return addresses

            asyncio.get_running_loop().getaddrinfo = lookup  # type: ignore[method-assign]
            return (await client.read("k", 100)).data

        started = time.monotonic()
        assert run(work, client_for("http://two-addresses.test:9")) == b"reached"
        assert time.monotonic() - started < 3


# --- 5. ranged reads ---


RANGES = {
    "ignored (200)": ("bytes=5-9", 200, None, 20, "ignored the Range"),
    "another range": ("bytes=5-9", 206, "bytes 0-4/20", 5, "sent bytes 0-4/20"),
    "no Content-Range": ("bytes=5-9", 206, None, 5, "no valid Content-Range"),
    "a shorter tail": ("bytes=5-", 206, "bytes 5-9/20", 5, "sent bytes 5-9/20"),
    "beyond the object": ("bytes=5-9", 206, "bytes 5-25/20", 21, "not a range of the object"),
    "length disagrees": ("bytes=5-9", 206, "bytes 5-9/20", 4, "does not match"),
    "right": ("bytes=5-9", 206, "bytes 5-9/20", 5, None),
    "right tail": ("bytes=5-", 206, "bytes 5-19/20", 15, None),
    "right, clipped at the end": ("bytes=15-29", 206, "bytes 15-19/20", 5, None),
    "right, size unknown": ("bytes=5-9", 206, "bytes 5-9/*", 5, None),
}


@pytest.mark.parametrize("case", list(RANGES))
def test_a_ranged_get_takes_only_the_bytes_it_asked_for(case: str) -> None:
    """Written at the range's offset, any other bytes would corrupt the file: a 200 or a
    different range is a BodyCut (the caller fetches the range again), before the sink sees
    a byte, and the connection is not reused."""
    asked, status, content_range, length, problem = RANGES[case]
    data = bytes(range(65, 65 + 20))

    def respond(exchange: Exchange) -> None:
        start = 0 if content_range is None else int(content_range.split()[1].split("-")[0])
        extra = [f"Content-Range: {content_range}"] if content_range else []
        exchange.send(answer(status, (data * 2)[start:start + length], *extra))

    got = bytearray()
    with RawServer(respond) as server:
        call = lambda client: client.get("k", got.extend, {"Range": asked})  # noqa: E731
        if problem is None:
            run(call, client_for(server.endpoint))
            first = int(asked[6:].split("-")[0])
            assert bytes(got) == data[first:first + length]
        else:
            with pytest.raises(BodyCut, match=problem):
                run(call, client_for(server.endpoint, attempts=3))
            assert got == b""
            assert len(server.requests) == 1


def test_ranged_gets_from_seaweedfs(s3_server: devserver.SeaweedServer, bucket: str) -> None:
    data = os.urandom(300_000)

    async def work(client: S3Client) -> list[bytes]:
        await client.put("r", Payload.of(data), {})
        got = []
        for asked in ("bytes=5-9", "bytes=100000-", "bytes=299990-400000"):
            sink = bytearray()
            await client.get("r", sink.extend, {"Range": asked})
            got.append(bytes(sink))
        return got

    assert run(work, seaweed_client(s3_server, bucket)) == [data[5:10], data[100000:],
                                                           data[299990:]]


# --- 6. the clock-skew correction ---


def skewed(seconds: float) -> Callable[[Exchange], None]:
    date = formatdate(time.time() + seconds, usegmt=True)

    def respond(exchange: Exchange) -> None:
        if exchange.number == 1:
            exchange.send(s3_error("RequestTimeTooSkewed", 403, f"Date: {date}"))
        else:
            exchange.send(answer(200, b"signed anew"))
    return respond


def test_a_server_date_more_than_a_day_off_is_not_adopted() -> None:
    with RawServer(skewed(2 * 86400)) as server:
        with pytest.raises(bx.ClientError, match=r"Date is \+172(799|800) s from this machine's "
                                                 r"clock, more than the 24 h"):
            run(lambda client: client.read("k", 100), client_for(server.endpoint, attempts=3))
    assert len(server.requests) == 1


def test_a_server_date_hours_off_is_still_adopted() -> None:
    with RawServer(skewed(-3 * 3600)) as server:
        client = client_for(server.endpoint, attempts=3)
        assert run(lambda client: client.read("k", 100), client).data == b"signed anew"
    assert len(server.requests) == 2
    assert -3 * 3600 - 5 < client.policy.skew < -3 * 3600 + 5
    assert server.requests[1].headers["x-amz-date"] != server.requests[0].headers["x-amz-date"]


# --- 7. an answer before the upload's body was all sent ---


def refuse_early(exchange: Exchange) -> None:
    """S3 refusing an upload on its head (KMS, AccessDenied): it answers after a little of the
    body, then resets the connection with the rest unread."""
    if exchange.request.method == "GET":
        exchange.send(answer(200, LISTING if "list-type" in exchange.request.target
                             else UPLOADS))
        body = exchange.recv(int(exchange.request.headers.get("content-length", "0") or 0))
        assert body == b""
        return
    exchange.recv(64 * 1024)
    exchange.send(s3_error("AccessDenied", 403, "Connection: close"))
    exchange.reset()


LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
           b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>false</IsTruncated>'
           b"</ListBucketResult>")
UPLOADS = (b'<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult '
           b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>false</IsTruncated>'
           b"</ListMultipartUploadsResult>")


def test_an_upload_refused_before_its_body_was_sent_fails_with_s3s_code(tmp_path: Path
                                                                       ) -> None:
    data = os.urandom(32 * MiB)
    (tmp_path / "big").write_bytes(data)
    with RawServer(refuse_early, read_body=False) as server:
        with pytest.raises(bx.ClientError, match="AccessDenied"):
            run(lambda client: client.put("k", Payload.of(data), {}),
                client_for(server.endpoint, attempts=3))
        fd = os.open(tmp_path / "big", os.O_RDONLY)
        try:
            from_file = Payload(len(data), fd=fd, sha256=hashlib.sha256(data).hexdigest())
            with pytest.raises(bx.ClientError, match="AccessDenied"):
                run(lambda client: client.put("k", from_file, {}),
                    client_for(server.endpoint, attempts=3))
        finally:
            os.close(fd)
    assert [r.method for r in server.requests] == ["PUT", "PUT"]


def test_the_cli_reports_an_early_refusal_as_access_denied(tmp_path: Path) -> None:
    """Through the real CLI: exit 4 with S3's code, not exit 5 after retried resets."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin").write_bytes(os.urandom(8 * MiB))
    with RawServer(refuse_early, read_body=False) as server:
        env = agent_env(tmp_path, {
            "AWS_ACCESS_KEY_ID": KEYS[0], "AWS_SECRET_ACCESS_KEY": KEYS[1],
            "CATALOG_AGENT_ENDPOINT_URL": server.endpoint, "CATALOG_AGENT_S3_BUCKET": "b",
            "CATALOG_AGENT_REGION": "us-east-1", "CATALOG_AGENT_ADDRESSING_STYLE": "path"})
        ran = Agent(env, tmp_path)("put", "big.bin", "--run-id", "r", "--step", "s",
                                   "--compute-data-folder", str(out), timeout=120)
    assert ran.code == 4, ran.output[-2000:]
    (error,) = [e for e in log_events(ran.stderr) if e.get("level") == "error"]
    assert "AccessDenied" in error["event"]
    assert len([r for r in server.requests if r.method == "PUT"]) == 1


def test_seaweedfs_refusing_a_large_upload_is_its_answer(s3_server: devserver.SeaweedServer,
                                                         bucket: str) -> None:
    """A wrong secret key: SeaweedFS refuses the signature from the head and closes the
    connection without reading the 32 MiB body; the refusal is what the client reports."""
    data = os.urandom(32 * MiB)
    client = client_for(s3_server.endpoint, keys=(s3_server.access_key, "wrong-secret", None),
                        bucket=bucket, attempts=3)
    with pytest.raises(bx.ClientError, match="SignatureDoesNotMatch|AccessDenied"):
        run(lambda client: client.put("k", Payload.of(data), {}), client)


# --- 9. what every request carries ---


def test_every_request_names_the_agent_in_an_unsigned_user_agent() -> None:
    with RawServer(lambda exchange: exchange.send(answer(200, b"ok"))) as server:
        run(lambda client: client.read("k", 100), client_for(server.endpoint))
    (request,) = server.requests
    assert request.headers["user-agent"] == f"catalog-agent/{__version__}"
    signed = request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "user-agent" not in signed.split(";") and "host" in signed.split(";")


@pytest.mark.parametrize("fips", [False, True])
@pytest.mark.parametrize("dualstack", [False, True])
@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "us-gov-west-1", "cn-north-1",
                                    "us-iso-east-1", "eusc-de-east-1"])
@pytest.mark.parametrize("style", ["path", "virtual"])
def test_fips_and_dual_stack_endpoints_are_botocores(fips: bool, dualstack: bool, region: str,
                                                     style: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from botocore.config import Config

    env = {"AWS_USE_FIPS_ENDPOINT": str(fips).lower(),
           "AWS_USE_DUALSTACK_ENDPOINT": str(dualstack).lower()}
    monkeypatch.delenv("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", region_name=region, aws_access_key_id="a",
                          aws_secret_access_key="b", config=Config(s3={"addressing_style": style}))
    try:
        url = client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket",
                                                                 "Key": "k"}).split("?")[0]
    except Exception as exc:  # noqa: BLE001 - botocore refuses FIPS in aws-cn
        with pytest.raises(ConfigError, match="FIPS"):
            wire.endpoint("", region=region, bucket="my-bucket", addressing_style=style,
                          environ=env)
        assert "FIPS" in str(exc)
        return
    where = wire.endpoint("", region=region, bucket="my-bucket", addressing_style=style,
                          environ=env)
    assert where.origin + where.prefix + "/k" == url


@pytest.mark.parametrize("setting", [None, "legacy", "regional"])
def test_us_east_1_is_named_as_botocore_names_it(setting: str | None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The global name unless AWS_S3_US_EAST_1_REGIONAL_ENDPOINT says regional: NO_PROXY is
    matched against the same host as botocore's (config --check, copies) matches it."""
    import boto3

    env = {} if setting is None else {"AWS_S3_US_EAST_1_REGIONAL_ENDPOINT": setting}
    monkeypatch.delenv("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a",
                          aws_secret_access_key="b")
    url = client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket",
                                                             "Key": "k"}).split("?")[0]
    where = wire.endpoint("", region="us-east-1", bucket="my-bucket", addressing_style="auto",
                          environ=env)
    assert where.origin + where.prefix + "/k" == url
    monkeypatch.setenv("NO_PROXY", urlsplit(url).hostname.split(".", 1)[1])
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    from botocore.utils import get_environ_proxies

    assert get_environ_proxies(url) == {}
    assert proxies.for_endpoint("https", where.service) is None


def test_a_us_east_1_setting_botocore_refuses_is_refused() -> None:
    with pytest.raises(ConfigError, match="AWS_S3_US_EAST_1_REGIONAL_ENDPOINT"):
        wire.endpoint("", region="us-east-1", bucket="b", addressing_style="auto",
                      environ={"AWS_S3_US_EAST_1_REGIONAL_ENDPOINT": "REGIONAL"})


@pytest.mark.parametrize("variable", ["AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"])
def test_fips_or_dual_stack_with_a_custom_endpoint_is_refused(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable} is true and an endpoint URL is set"):
        wire.endpoint("http://127.0.0.1:8333", region="us-east-1", bucket="b",
                      addressing_style="path", environ={variable: "true"})
    where = wire.endpoint("http://127.0.0.1:8333", region="us-east-1", bucket="b",
                          addressing_style="path", environ={variable: "false"})
    assert where.origin == "http://127.0.0.1:8333"


# --- 8. proxies ---


def login_of(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def round_trip(client: S3Client) -> list[object]:
    """Put, head, list, get: every kind of request, each signed and checked by SeaweedFS."""
    data = os.urandom(300_000)
    await client.put("via/proxy.bin", Payload.of(data), {})
    head = await client.head("via/proxy.bin")
    listed = [key async for page in client.list_pages("via/") for key, _, _ in page]
    got = bytearray()
    await client.get("via/proxy.bin", got.extend)
    return [head is not None and head.headers["content-length"], listed, bytes(got) == data]


EXPECTED = ["300000", ["via/proxy.bin"], True]


def test_an_http_endpoint_through_a_forwarding_proxy(s3_server: devserver.SeaweedServer,
                                                      bucket: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with LoopbackProxy(user="agent", password="p@ss:word") as proxy:
        monkeypatch.setenv("http_proxy", f"http://agent:p%40ss%3Aword@127.0.0.1:{proxy.port}")
        assert run(round_trip, seaweed_client(s3_server, bucket)) == EXPECTED
        assert len(proxy.seen) >= 4
        assert all(target.startswith(f"{s3_server.endpoint}/{bucket}")
                   for _, target, _ in proxy.seen)  # absolute form
        assert {login for _, _, login in proxy.seen} == {login_of("agent", "p@ss:word")}
        seen = len(proxy.seen)
        monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
        assert run(round_trip, seaweed_client(s3_server, bucket)) == EXPECTED
        assert len(proxy.seen) == seen


@pytest.mark.parametrize("proxy_tls", [False, True], ids=["http-proxy", "https-proxy"])
def test_an_https_endpoint_through_a_connect_tunnel(proxy_tls: bool,
                                                    tls_s3_server: devserver.SeaweedServer,  # noqa: F811
                                                    tls_bucket: str, pki: TestPki,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """CONNECT, then TLS with SeaweedFS itself (its certificate checked for its own name), for
    a proxy reached in plain http and one reached over TLS (an https:// proxy URL)."""
    import ssl

    context = None
    if proxy_tls:
        leaf = pki.leaf("proxy")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf.cert, leaf.key)
    https = tls_s3_server.https_endpoint
    with LoopbackProxy(user="agent", password="secret", tls=context) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("://", "://agent:secret@"))
        monkeypatch.setenv("NO_PROXY", "localhost")  # does not match 127.0.0.1
        assert run(round_trip, seaweed_client(tls_s3_server, tls_bucket, https=https,
                                              verify=str(pki.ca))) == EXPECTED
        authority = https.split("://")[1]
        assert [method for method, _, _ in proxy.seen] == ["CONNECT"]  # one pooled tunnel
        assert proxy.seen[0][1:] == (authority, login_of("agent", "secret"))
        monkeypatch.setenv("NO_PROXY", f".example.com, {authority}")
        assert run(round_trip, seaweed_client(tls_s3_server, tls_bucket, https=https,
                                              verify=str(pki.ca))) == EXPECTED
        assert len(proxy.seen) == 1


def test_an_https_proxy_with_an_untrusted_certificate_is_named(
        pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The refused certificate is the proxy's: the error says so (exit 4), not S3's."""
    import ssl

    from catalog_agent.errors import CertificateError

    leaf = pki.leaf("proxy")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf.cert, leaf.key)
    with LoopbackProxy(tls=context) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with pytest.raises(CertificateError) as refused:  # the system CAs: not the test CA
            run(lambda client: client.read("k", 100),
                client_for("https://127.0.0.1:9", attempts=3))
    assert refused.value.exit_code == 4
    assert f"TLS certificate of the proxy https://127.0.0.1:{proxy.port} not trusted" in \
        str(refused.value), str(refused.value)
    assert proxy.seen == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_refusing_the_login_is_an_access_error(scheme: str,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """407 is the same every time: exit 4 at once, naming the proxy but never its password."""
    with LoopbackProxy(user="agent", password="right") as proxy:
        monkeypatch.setenv(f"{scheme}_proxy", f"http://agent:wrong-pass@127.0.0.1:{proxy.port}")
        with pytest.raises(AccessError) as refused:
            run(lambda client: client.read("k", 100),
                client_for(f"{scheme}://127.0.0.1:9", attempts=3))
    message = str(refused.value)
    assert f"the proxy http://127.0.0.1:{proxy.port} refused" in message and "407" in message
    assert "wrong-pass" not in message and "agent" not in message
    assert len(proxy.seen) == 1


@pytest.mark.parametrize("no_proxy, host, bypass", [
    ("", "127.0.0.1:8333", False),
    ("*", "s3.eu-west-1.amazonaws.com", True),
    ("127.0.0.1", "127.0.0.1:8333", True),
    ("127.0.0.1:9000", "127.0.0.1:8333", False),
    (".amazonaws.com", "s3.eu-west-1.amazonaws.com", True),
    ("amazonaws.com", "s3.eu-west-1.amazonaws.com", True),
    ("example.com, .AMAZONAWS.COM", "s3.eu-west-1.amazonaws.com", True),
    ("zonaws.com", "s3.eu-west-1.amazonaws.com", False),
    ("10.0.0.0/8", "10.1.2.3", False),  # no CIDRs: botocore does not read them either
])
def test_no_proxy_is_read_as_botocore_reads_it(no_proxy: str, host: str, bypass: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.utils import get_environ_proxies

    monkeypatch.setenv("HTTPS_PROXY", "proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    ours = proxies.for_endpoint("https", host)
    botocores = get_environ_proxies(f"https://{host}").get("https")
    assert (ours is None) == bypass == (botocores is None)
    if ours is not None:
        assert ours.display == "http://proxy.internal:3128"


def test_a_malformed_proxy_url_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    with pytest.raises(ConfigError, match="HTTPS_PROXY names a proxy of scheme 'socks5'"):
        client_for("https://s3.example.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:port")
    with pytest.raises(ConfigError, match="HTTPS_PROXY is not a proxy URL"):
        client_for("https://s3.example.com")


def test_the_cli_puts_and_gets_through_the_proxy(tls_s3_server: devserver.SeaweedServer,  # noqa: F811
                                                 tls_bucket: str, pki: TestPki,  # noqa: F811
                                                 tmp_path: Path) -> None:
    """The real CLI with HTTPS_PROXY: every connection to the endpoint, the agent's own and
    botocore's (sync), is a tunnel through the proxy; its password appears nowhere in the
    output."""
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    files = {"a.txt": b"a" * 1000, "d/b.bin": os.urandom(200_000)}
    for name, data in files.items():
        (out / name).write_bytes(data)
    with LoopbackProxy(user="agent", password="hunter2-proxy") as proxy:
        env = agent_env(tmp_path, {
            "AWS_ACCESS_KEY_ID": tls_s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": tls_s3_server.secret_key,
            "CATALOG_AGENT_ENDPOINT_URL": tls_s3_server.https_endpoint,
            "CATALOG_AGENT_S3_BUCKET": tls_bucket, "CATALOG_AGENT_REGION": "us-east-1",
            "CATALOG_AGENT_ADDRESSING_STYLE": "path", "CATALOG_AGENT_CA_BUNDLE": str(pki.ca),
            "HTTPS_PROXY": f"http://agent:hunter2-proxy@127.0.0.1:{proxy.port}",
            "CATALOG_AGENT_LOG_LEVEL": "debug"})
        agent = Agent(env, tmp_path)
        put = agent("put", "**", "--run-id", "p", "--step", "s", "--compute-data-folder",
                    str(out))
        after_put = len(proxy.seen)
        sync = agent("sync", "--from-run", "p", "--run-id", "q")  # botocore's CopyObject
        after_sync = len(proxy.seen)
        get = agent("get", "**", "--run-id", "q", "--compute-data-folder", str(tmp_path / "in"))
    assert after_sync > after_put > 0
    for ran in (put, sync, get):
        assert ran.code == 0, ran.output[-2000:]
        assert "hunter2" not in ran.output
    for name, data in files.items():
        assert (tmp_path / "in" / name).read_bytes() == data
    authority = tls_s3_server.https_endpoint.split("://")[1]
    assert proxy.seen and all(seen[:2] == ("CONNECT", authority) for seen in proxy.seen)


# --- 10. long bodies received into the connection's own buffer ---


def test_the_body_buffer_keeps_the_order_of_the_bytes() -> None:
    """Driven as a transport drives it (get_buffer, then buffer_updated): bytes that come
    while a body read waits land in the body buffer; once it is full, or while nobody waits,
    they go to the reader, which is read first next time. Nothing is lost or reordered."""
    from catalog_agent.stores.buffered import BodyProtocol

    def arrive(protocol: BodyProtocol, data: bytes) -> None:
        while data:
            space = protocol.get_buffer(-1)
            size = min(len(space), len(data))
            space[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]

    async def main() -> list[tuple[str, bytes]]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024, loop=loop)
        protocol = BodyProtocol(reader, loop)
        got: list[tuple[str, bytes]] = []
        arrive(protocol, b"head:")  # nobody waits: the reader has it
        got.append(("reader", await reader.readexactly(5)))
        waiting = asyncio.ensure_future(protocol.receive(8))
        await asyncio.sleep(0)
        arrive(protocol, b"0123456789abc")  # 8 fit the waiting read, 5 go to the reader
        block = await waiting
        assert isinstance(block, memoryview)
        got.append(("body", bytes(block)))
        got.append(("reader", await reader.read(100)))
        waiting = asyncio.ensure_future(protocol.receive(8))
        await asyncio.sleep(0)
        protocol.eof_received()
        got.append(("body", bytes(await waiting)))
        return got

    assert asyncio.run(main()) == [("reader", b"head:"), ("body", b"01234567"),
                                   ("reader", b"89abc"), ("body", b"")]


def test_a_body_read_that_waits_sees_a_lost_connection() -> None:
    from catalog_agent.stores.buffered import BodyProtocol

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = BodyProtocol(reader, loop)
        waiting = asyncio.ensure_future(protocol.receive(1024))
        await asyncio.sleep(0)
        protocol.connection_lost(ConnectionResetError("reset by peer"))
        with pytest.raises(ConnectionResetError, match="reset by peer"):
            await asyncio.wait_for(waiting, 5)

    asyncio.run(main())


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_long_body_arrives_whole_through_the_body_buffer(
        tls: bool, s3_server: devserver.SeaweedServer, bucket: str,
        tls_s3_server: devserver.SeaweedServer, tls_bucket: str,  # noqa: F811
        pki: TestPki) -> None:  # noqa: F811
    """A GET of 5 MiB from SeaweedFS, plain and over TLS: the sink is handed views of the
    connection's buffer (no copies), every byte arrives in order, and the connection is
    reused for the next GET."""
    body = os.urandom(5 * MiB + 123)
    if tls:
        server, name, options = tls_s3_server, tls_bucket, {
            "https": tls_s3_server.https_endpoint, "verify": str(pki.ca)}
    else:
        server, name, options = s3_server, bucket, {}
    server.client().put_object(Bucket=name, Key="long", Body=body)
    kinds: set[type] = set()

    async def work(client: S3Client) -> list[bytes]:
        copies = []
        for _ in range(2):
            got = bytearray()

            def sink(block: bytes | memoryview) -> None:
                kinds.add(type(block))
                got.extend(block)

            await client.get("long", sink)
            copies.append(bytes(got))
        assert len(client._all) == 1  # one connection carried both
        return copies

    copies = run(work, seaweed_client(server, name, **options))
    assert copies == [body, body]
    assert memoryview in kinds


def test_bytes_sent_with_a_long_body_keep_the_connection_out_of_the_pool() -> None:
    """A long body and, in the same write, bytes after it: they reach the reader (they must
    not wait in the socket while the connection goes back to the pool, to be read as the
    next request's answer)."""
    long = os.urandom(MiB)

    def respond(exchange: Exchange) -> None:
        if exchange.number == 1:
            exchange.send(answer(200, long) + answer(200, b"stale"))
        else:
            exchange.send(answer(200, b"second"))

    async def work(client: S3Client) -> list[bytes]:
        got = bytearray()
        await client.get("k", got.extend)
        return [bytes(got), (await client.read("k", 100)).data]

    with RawServer(respond) as server:
        assert run(work, client_for(server.endpoint)) == [long, b"second"]
    assert server.connections == 2


def test_a_long_body_cut_short_hands_on_exactly_what_came() -> None:
    """The server sends 600 KiB of a 1 MiB body, then closes: a BodyCut, and the sink has
    exactly those bytes, once."""
    sent = os.urandom(600 * 1024)

    def respond(exchange: Exchange) -> None:
        exchange.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
        for start in range(0, len(sent), 100 * 1024):
            exchange.send(sent[start:start + 100 * 1024])
            time.sleep(0.01)
        exchange.close()

    got, kinds = bytearray(), set()

    def sink(block: bytes | memoryview) -> None:
        kinds.add(type(block))
        got.extend(block)

    with RawServer(respond) as server:
        with pytest.raises(BodyCut):
            run(lambda client: client.get("k", sink), client_for(server.endpoint, attempts=3))
    assert bytes(got) == sent
    assert memoryview in kinds  # through the body buffer
    assert len(server.requests) == 1
