"""S3 requests on an asyncio event loop, for the many small objects of a get or put.

Why: with one thread per request in flight, the agent spent about 380 µs of CPU per request
(urllib3's machinery, and 64 threads handing the GIL back and forth: 280 futex calls per file)
where one thread driving many keep-alive connections spends about 90 µs, signing included.
On two cores under a CPU limit, CPU seconds are wall seconds.

What it speaks is the small part of HTTP/1.1 that S3 needs: a request with a Content-Length
body, a response with Content-Length or chunked body, keep-alive. Signatures, retries,
back-off, the retry budget and clock-skew correction are the same objects the blocking path
uses (:mod:`.sigv4`, :mod:`.retries`), so the two behave alike on the wire.

A connection is reused only when its response was read to the end; a connection that has
been silent for ``READ_TIMEOUT`` seconds in the middle of a request is aborted by one watchdog
for the whole pool (cheaper than a timer per read).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

from catalog_agent import tls
from catalog_agent.errors import AgentError, FileChanged, Interrupted
from catalog_agent.stores import sigv4
from catalog_agent.stores.retries import SKEW, THROTTLING, RetryPolicy
from catalog_agent.stores.s3_http import (ERROR_BODY_LIMIT, CredentialSource, Payload,
                                          client_error, connection_error, error_code,
                                          with_note)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
BLOCK = 256 * 1024
HEAD_LIMIT = 64 * 1024


class BodyCut(ConnectionError):
    """A response body ended early or its connection broke: the caller may restart it."""


class _Local(Exception):
    """A failure on this side (the sink, the file being sent): never retried as a network one."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lowercase names
    data: bytes = b""


@dataclass(eq=False)  # compared and hashed by identity (kept in a set)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    busy: bool = False
    unread: bool = False  # an error body left partly unread: not reusable
    last: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last = time.monotonic()

    def close(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:  # noqa: BLE001 - already gone
            pass


# Receives each block of a successful response body; may raise to stop the transfer.
Sink = Callable[[bytes], None]


class AsyncS3:
    """Signed requests to one bucket over keep-alive connections of one event loop.

    Made by the blocking client (:meth:`from_http`), so both share endpoint, signer, retry
    policy and credentials. Bound to the loop that first uses it; :meth:`aclose` at the end.
    """

    def __init__(self, *, origin: str, host: str, prefix: str, signer: sigv4.Signer,
                 credentials: CredentialSource, policy: RetryPolicy, attempts: int,
                 verify: bool | str, on_retry: Callable[[], None],
                 ca_bundle: Callable[[], str]) -> None:
        parts = urlsplit(origin)
        self.scheme = parts.scheme
        self.hostname = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.origin, self.host, self._prefix = origin, host, prefix
        self.signer, self.policy, self.attempts = signer, policy, attempts
        self._credentials = credentials
        self._on_retry = on_retry
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            if verify is False:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context = ssl.create_default_context(
                    cafile=verify if isinstance(verify, str) else ca_bundle())
            self._ssl = context
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_http(cls, http: object) -> AsyncS3:
        from catalog_agent.stores import s3_http

        assert isinstance(http, s3_http.S3Http)
        return cls(origin=http.origin, host=http.host, prefix=http._prefix, signer=http.signer,
                   credentials=http._credentials, policy=http.policy, attempts=http.attempts,
                   verify=http.verify, on_retry=http._on_retry, ca_bundle=tls.default_bundle)

    # --- operations ---

    async def put(self, key: str, payload: Payload, headers: dict[str, str], *,
                  body: Callable[[], bytes] | None = None, fd: int | None = None,
                  check: Callable[[], None] | None = None) -> Reply:
        """PutObject of ``payload`` (its bytes, or ``payload.length`` bytes of ``fd``)."""
        return await self.request("PUT", key, operation="PutObject", payload=payload,
                                  headers=headers, fd=fd, check=check)

    async def get(self, key: str, sink: Sink) -> Reply:
        """GetObject, its body handed to ``sink`` block by block. A body cut short raises
        :class:`BodyCut` after ``sink`` has seen part of it: the caller starts again."""
        return await self.request("GET", key, operation="GetObject", sink=sink)

    # --- the request ---

    async def request(self, method: str, key: str, *, operation: str,
                      query: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None, payload: Payload | None = None,
                      fd: int | None = None, sink: Sink | None = None,
                      check: Callable[[], None] | None = None) -> Reply:
        """One signed request with the blocking path's retries; failures as ClientError."""
        path = sigv4.object_path(self._prefix, key)
        canonical_query = sigv4.canonical_query(query)
        target = path + ("?" + canonical_query if canonical_query else "")
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
            if policy.stop.is_set():
                raise Interrupted("stopped before the transfer finished")
            await self._before_send()
            now = datetime.datetime.fromtimestamp(policy.now(), datetime.timezone.utc)
            signed = self.signer.sign(method=method, host=self.host, path=path,
                                      query=canonical_query, headers=extra,
                                      payload_sha256=payload_sha256,
                                      credentials=self._credentials(), now=now)
            head = (f"{method} {target} HTTP/1.1\r\n"
                    + "".join(f"{name}: {value}\r\n" for name, value in signed.items())
                    + "\r\n").encode("latin-1", "strict")
            retry_after = None
            try:
                reply = await self._exchange(method, head, payload, fd, sink)
            except _Local as local:
                raise local.error from None
            except BodyCut:
                raise
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError) as exc:
                refused = tls.certificate_error(exc, self.origin)
                if refused is not None:  # refused once, refused every time: no retry
                    raise refused from None
                kind: str | None = policy.classify(None, "")
                failure: Exception = connection_error(exc, self.origin + target)
                policy.after_response(throttled=False)
            else:
                if reply.status < 300:
                    policy.after_response(throttled=False)
                    policy.succeeded(cost)
                    return reply
                code = error_code(reply.status, reply.data)
                kind = policy.classify(reply.status, code)
                policy.after_response(throttled=kind == THROTTLING)
                retry_after = reply.headers.get("x-amz-retry-after")
                failure = client_error(reply.headers, reply.status, reply.data, code, operation)
                if kind == SKEW:
                    if policy.correct_skew(reply.headers.get("date")) is None:
                        failure = client_error(reply.headers, reply.status, reply.data, code,
                                               operation, note=f"the local clock is "
                                                               f"{-policy.skew:+.0f} s off the "
                                                               f"server's after correction")
                        kind = None
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
            if delay > 0:
                await asyncio.sleep(delay)

    async def _before_send(self) -> None:
        """Adaptive mode's token bucket, without blocking the loop."""
        limiter = getattr(self.policy, "_limiter", None)
        if limiter is None:
            return
        while True:
            try:
                if not limiter._enabled:
                    return
                limiter._token_bucket.acquire(1, block=False)
                return
            except Exception:  # noqa: BLE001 - botocore's CapacityNotAvailableError
                await asyncio.sleep(0.05)

    async def _exchange(self, method: str, head: bytes, payload: Payload | None,
                        fd: int | None, sink: Sink | None) -> Reply:
        """Send one request on a pooled connection and read its response."""
        connection = await self._connection()
        reusable = False
        try:
            writer, reader = connection.writer, connection.reader
            if payload is None:
                writer.write(head)
            elif payload.data is not None:
                writer.write(head + payload.data)
            else:
                assert fd is not None
                writer.write(head)
                await self._send_file(connection, fd, payload.length)
            await writer.drain()
            connection.touch()
            raw = await reader.readuntil(b"\r\n\r\n")
            connection.touch()
            status, headers = _parse_head(raw)
            if method == "HEAD" or status in (204, 304):
                data = b""
            elif status < 300 and sink is not None:
                await self._stream(connection, headers, sink)
                data = b""
            else:
                limit = ERROR_BODY_LIMIT if status >= 300 else None
                data = await self._read_all(connection, headers, limit)
            reusable = headers.get("connection", "").lower() != "close" and \
                not connection.unread
            return Reply(status, headers, data)
        finally:
            self._release(connection, reusable)

    async def _send_file(self, connection: _Connection, fd: int, length: int) -> None:
        offset = 0
        while offset < length:
            if self.policy.stop.is_set():
                raise Interrupted("stopped before the transfer finished")
            try:
                block = os.pread(fd, min(BLOCK, length - offset), offset)
            except OSError as exc:
                raise _Local(exc) from None
            if not block:
                raise FileChanged(f"the file ended {length - offset} bytes early: it shrank "
                                  f"while being sent")
            connection.writer.write(block)
            offset += len(block)
            await connection.writer.drain()
            connection.touch()

    async def _stream(self, connection: _Connection, headers: Mapping[str, str],
                      sink: Sink) -> None:
        """Hand the body to ``sink``: a broken body is a BodyCut, a failing sink its own error."""
        body = self._body(connection, headers)
        while True:
            try:
                block = await body.__anext__()
            except StopAsyncIteration:
                return
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                raise BodyCut(f"the body was cut short: {type(exc).__name__}: {exc}") from None
            if self.policy.stop.is_set():
                raise Interrupted("stopped before the transfer finished")
            try:
                sink(block)
            except AgentError:
                raise
            except BaseException as exc:  # noqa: BLE001 - e.g. disk full: not a network error
                raise _Local(exc) from None

    async def _read_all(self, connection: _Connection, headers: Mapping[str, str],
                        limit: int | None) -> bytes:
        blocks, size = [], 0
        async for block in self._body(connection, headers):
            if limit is not None and size >= limit:
                connection.unread = True  # the rest is not worth reading
                break
            blocks.append(block)
            size += len(block)
        return b"".join(blocks)

    async def _body(self, connection: _Connection, headers: Mapping[str, str]):  # noqa: ANN202
        reader = connection.reader
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    return
                left = size
                while left:
                    block = await reader.read(min(BLOCK, left))
                    if not block:
                        raise asyncio.IncompleteReadError(b"", left)
                    connection.touch()
                    left -= len(block)
                    yield block
                await reader.readexactly(2)
        left = int(headers.get("content-length", "0") or 0)
        while left:
            block = await reader.read(min(BLOCK, left))
            if not block:
                raise asyncio.IncompleteReadError(b"", left)
            connection.touch()
            left -= len(block)
            yield block

    # --- the pool ---

    async def _connection(self) -> _Connection:
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch())
        while self._idle:
            connection = self._idle.pop()
            if not connection.writer.transport.is_closing() and \
                    not connection.reader.at_eof():
                connection.busy = True
                connection.touch()
                return connection
            self._forget(connection)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.hostname, self.port, ssl=self._ssl,
                                    server_hostname=self.hostname if self._ssl else None,
                                    limit=HEAD_LIMIT),
            CONNECT_TIMEOUT)
        connection = _Connection(reader, writer, busy=True)
        self._all.add(connection)
        return connection

    def _release(self, connection: _Connection, reusable: bool) -> None:
        connection.busy = False
        if reusable:
            self._idle.append(connection)
        else:
            self._forget(connection)

    def _forget(self, connection: _Connection) -> None:
        connection.close()
        self._all.discard(connection)

    async def _watch(self) -> None:
        """Abort connections silent for READ_TIMEOUT in the middle of a request."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for connection in list(self._all):
                if connection.busy and now - connection.last > READ_TIMEOUT:
                    connection.close()

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for connection in list(self._all):
            self._forget(connection)
        self._idle.clear()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    """Status and lowercase headers of a response head (status line and header lines)."""
    lines = raw.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers
