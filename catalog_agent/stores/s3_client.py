"""Signed S3 requests on an asyncio event loop: every request the agent makes to a bucket.

Why one event loop: with one thread per request in flight, the agent spent about 380 µs of
CPU per request (urllib3's machinery, and 64 threads handing the GIL back and forth: 280 futex
calls per file) where one thread driving many keep-alive connections spends about 90 µs,
signing included; on two cores under a CPU limit, CPU seconds are wall seconds. It also spares
a command the import of urllib3 (tens of milliseconds of a small get's start-up).

What it speaks is the part of HTTP/1.1 that S3 needs: a request with a Content-Length body
(bytes, or a range of an open file read as it is sent), a response with a Content-Length or
chunked body, keep-alive. On the wire it does what botocore does (tests/test_sigv4.py,
tests/test_wire.py): the same signature (:mod:`.sigv4`), the same retries, back-off and retry
budget (:mod:`.retries`), a 200 carrying ``<Error>`` from CompleteMultipartUpload retried;
beyond it, a skewed clock is corrected from the server's ``Date``.

A connection is reused only when its response was read to the end; one that has been silent
for ``READ_TIMEOUT`` seconds in the middle of a request is aborted by one watchdog for the
whole pool (cheaper than a timer per read).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

from catalog_agent import tls
from catalog_agent.errors import AgentError, FileChanged, Interrupted
from catalog_agent.stores import sigv4, wire
from catalog_agent.stores.retries import SKEW, THROTTLING, RetryPolicy
from catalog_agent.stores.wire import CredentialSource, Endpoint, Payload

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
BLOCK = 256 * 1024
HEAD_LIMIT = 64 * 1024


class BodyCut(ConnectionError):
    """A response body ended early or its connection broke: the caller may pick it up again."""


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
    unread: bool = False  # a body left partly unread: not reusable
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


class S3Client:
    """Signed requests to one bucket over keep-alive connections of one event loop.

    Used from coroutines only; :meth:`aclose` before the loop ends.
    """

    def __init__(self, where: Endpoint, *, region: str, credentials: CredentialSource,
                 attempts: int, verify: bool | str, on_retry: Callable[[], None],
                 retry_mode: str = "standard", stop: object = None) -> None:
        import threading

        self.where = where
        self.origin, self.host, self._prefix = where.origin, where.host, where.prefix
        self.region = region
        self.attempts = max(1, attempts)
        self.policy = RetryPolicy(mode=retry_mode, max_attempts=self.attempts,
                                  stop=stop if isinstance(stop, threading.Event) else None)
        self.signer = sigv4.Signer(region)
        self.verify = verify
        self._credentials = credentials
        self._on_retry = on_retry
        self._skew_logged = False
        self._ssl: ssl.SSLContext | None = None
        if where.scheme == "https":
            if verify is False:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context = ssl.create_default_context(
                    cafile=verify if isinstance(verify, str) else tls.default_bundle())
            self._ssl = context
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None

    # --- objects ---

    async def put(self, key: str, payload: Payload, headers: dict[str, str], *,
                  check: Callable[[], None] | None = None) -> Reply:
        """PutObject; ``check`` runs before each retry (e.g. that the file is unchanged)."""
        return await self.request("PUT", key, operation="PutObject", payload=payload,
                                  headers=headers, check=check)

    async def get(self, key: str, sink: Sink, headers: dict[str, str] | None = None) -> Reply:
        """GetObject (or a Range of it), its body handed to ``sink`` block by block. A body
        cut short raises :class:`BodyCut` after ``sink`` has seen part of it."""
        return await self.request("GET", key, operation="GetObject", sink=sink,
                                  headers=headers)

    async def read(self, key: str, limit: int) -> Reply:
        """GetObject of a small document, whole; more than ``limit`` bytes is refused."""
        return await self.request("GET", key, operation="GetObject", limit=limit)

    async def head(self, key: str) -> Reply | None:
        """HeadObject; None when there is no such object."""
        try:
            return await self.request("HEAD", key, operation="HeadObject")
        except Exception as exc:  # noqa: BLE001 - a 404 is an answer, not a failure
            if wire.status_of(exc) == 404:
                return None
            raise

    async def stream(self, key: str, headers: dict[str, str] | None = None
                     ) -> AsyncIterator[tuple[Reply, bytes]]:
        """GetObject as (reply, block) pairs as the body arrives; a broken body is a BodyCut."""
        queue: asyncio.Queue[tuple[Reply | None, bytes | BaseException | None]] = \
            asyncio.Queue(maxsize=4)
        replies: list[Reply] = []

        async def fetch() -> None:
            try:
                await self.request("GET", key, operation="GetObject", headers=headers,
                                   async_sink=lambda block: queue.put((None, block)),
                                   on_head=replies.append)
                await queue.put((None, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                await queue.put((None, exc))

        task = asyncio.ensure_future(fetch())
        try:
            while True:
                _, item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield replies[-1], item
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # --- multipart uploads ---

    async def create_upload(self, key: str, headers: dict[str, str]) -> str:
        """CreateMultipartUpload whose parts carry SHA-256 checksums; its upload id."""
        import re

        reply = await self.request("POST", key, query={"uploads": ""},
                                   headers={**headers, "x-amz-checksum-algorithm": "SHA256"},
                                   operation="CreateMultipartUpload")
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", reply.data)
        if not found:
            raise wire.client_error(reply.headers, reply.status, reply.data,
                                    "MalformedResponse", "CreateMultipartUpload")
        return found.group(1).decode()

    async def upload_part(self, key: str, upload_id: str, number: int, payload: Payload, *,
                          check: Callable[[], None] | None = None) -> str:
        """UploadPart; its ETag."""
        reply = await self.request("PUT", key, payload=payload, operation="UploadPart",
                                   query={"partNumber": str(number), "uploadId": upload_id},
                                   check=check)
        return reply.headers.get("etag", "")

    async def complete_upload(self, key: str, upload_id: str,
                              parts: list[tuple[str, str | None]]) -> None:
        """CompleteMultipartUpload of (ETag, base64 SHA-256 or None) per part, in order.

        S3 may report a failure inside a 200 response: that is retried like a 500. (Its body is
        signed but carries no x-amz-checksum-sha256: on this request that header would mean
        the whole object's checksum.)
        """
        await self.request("POST", key, query={"uploadId": upload_id},
                           payload=Payload.of(wire.complete_body(parts), checksum=False),
                           operation="CompleteMultipartUpload", error_in_200=True)

    async def abort(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload: clean-up, so it is sent even after SIGTERM."""
        await self.request("DELETE", key, query={"uploadId": upload_id},
                           operation="AbortMultipartUpload", cleanup=True)

    # --- listings ---

    async def list_pages(self, prefix: str) -> AsyncIterator[list[tuple[str, int, float]]]:
        """(key, size, modified) of every object under ``prefix``, a page of 1,000 at a time."""
        token = ""
        seen: set[str] = set()
        while True:
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            reply = await self.request("GET", "", query=query, operation="ListObjectsV2")
            page = wire.list_page(reply.data)
            yield page.items
            if not page.token:
                return
            token = page.token
            wire.refuse_repeat(token, seen, f"{self.origin}{self._prefix}/ (prefix {prefix!r})")

    async def upload_pages(self, prefix: str, *, cleanup: bool = False
                           ) -> AsyncIterator[list[tuple[str, str]]]:
        """(key, upload id) of every unfinished multipart upload under ``prefix``."""
        markers: dict[str, str] = {}
        seen: set[str] = set()
        while True:
            query = {"uploads": "", "prefix": prefix, "encoding-type": "url", **markers}
            reply = await self.request("GET", "", query=query, operation="ListMultipartUploads",
                                       cleanup=cleanup)
            page = wire.uploads_page(reply.data)
            yield page.items
            if not page.markers:
                return
            markers = page.markers
            wire.refuse_repeat("\0".join(markers.values()), seen,
                               f"multipart uploads of {self.origin}{self._prefix}/")

    # --- the request ---

    async def request(self, method: str, key: str, *, operation: str,
                      query: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None, payload: Payload | None = None,
                      sink: Sink | None = None,
                      async_sink: Callable[[bytes], object] | None = None,
                      on_head: Callable[[Reply], None] | None = None,
                      check: Callable[[], None] | None = None, limit: int | None = None,
                      error_in_200: bool = False, cleanup: bool = False) -> Reply:
        """One signed request with botocore's retries; a final failure is a ClientError.

        ``cleanup``: a request that undoes a stopped transfer (abort): SIGTERM does not stop it.
        """
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
            if policy.stop.is_set() and not cleanup:
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
                reply = await self._exchange(method, head, payload, sink, async_sink, on_head,
                                             limit, cleanup)
            except _Local as local:
                raise local.error from None
            except (BodyCut, AgentError):
                raise
            except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
                refused = tls.certificate_error(exc, self.origin)
                if refused is not None:  # refused once, refused every time: no retry
                    raise refused from None
                kind: str | None = policy.classify(None, "")
                failure: Exception = wire.connection_error(exc, self.origin + target)
                policy.after_response(throttled=False)
            else:
                status = reply.status
                if status < 300 and error_in_200 and b"<Error>" in reply.data:
                    status = 500  # as botocore: S3 failed after it had answered 200
                if status < 300:
                    if limit is not None and len(reply.data) > limit:
                        from catalog_agent.errors import IntegrityError

                        raise IntegrityError(f"{self.origin}{path} is larger than {limit} "
                                             f"bytes")
                    policy.after_response(throttled=False)
                    policy.succeeded(cost)
                    return reply
                code = wire.error_code(status, reply.data)
                kind = policy.classify(status, code)
                policy.after_response(throttled=kind == THROTTLING)
                retry_after = reply.headers.get("x-amz-retry-after")
                failure = wire.client_error(reply.headers, status, reply.data, code, operation)
                if kind == SKEW:
                    offset = policy.correct_skew(reply.headers.get("date"))
                    if offset is None:
                        failure = wire.client_error(
                            reply.headers, status, reply.data, code, operation,
                            note=f"the local clock is {-policy.skew:+.0f} s off the server's "
                                 f"after correction")
                        kind = None
                    else:
                        self._log_skew(offset)
            if kind is None or attempt >= self.attempts:
                raise failure
            cost = policy.acquire(kind)
            if cost is None:
                raise wire.with_note(failure, "retry budget exhausted: too many failures in "
                                              "this command")
            if check is not None:
                check()
            self._on_retry()
            delay = 0.0 if kind == SKEW else policy.delay(attempt, kind, retry_after)
            if delay > 0:
                if cleanup:
                    await asyncio.sleep(min(delay, 1.0))
                else:
                    await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        """A back-off that SIGTERM ends at once."""
        stop = self.policy.stop
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))
        raise Interrupted("stopped before the transfer finished")

    def _log_skew(self, offset: float) -> None:
        if self._skew_logged:
            return
        self._skew_logged = True
        from catalog_agent.logs import get_logger

        get_logger().warning("clock skew corrected", offset_seconds=round(offset, 1),
                             reason=f"the server's clock is {offset:+.0f} s from this "
                                    f"machine's; requests are signed with the server's time")

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
                        sink: Sink | None, async_sink: Callable[[bytes], object] | None,
                        on_head: Callable[[Reply], None] | None, limit: int | None,
                        cleanup: bool) -> Reply:
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
                writer.write(head)
                await self._send_file(connection, payload, cleanup)
            await writer.drain()
            connection.touch()
            raw = await reader.readuntil(b"\r\n\r\n")
            connection.touch()
            status, headers = _parse_head(raw)
            reply = Reply(status, headers)
            if method == "HEAD" or status in (204, 304):
                pass
            elif status < 300 and (sink is not None or async_sink is not None):
                if on_head is not None:
                    on_head(reply)
                await self._stream(connection, headers, sink, async_sink)
            else:
                most = wire.ERROR_BODY_LIMIT if status >= 300 else \
                    (limit + 1 if limit is not None else None)
                reply.data = await self._read_all(connection, headers, most)
            reusable = headers.get("connection", "").lower() != "close" and \
                not connection.unread
            return reply
        finally:
            self._release(connection, reusable)

    async def _send_file(self, connection: _Connection, payload: Payload,
                         cleanup: bool) -> None:
        """``payload.length`` bytes of its file from its offset: read as they are sent, never
        beyond (a file that grew sends what was hashed; one that shrank is FileChanged)."""
        assert payload.fd is not None
        offset, end = payload.offset, payload.offset + payload.length
        while offset < end:
            if self.policy.stop.is_set() and not cleanup:
                raise Interrupted("stopped before the transfer finished")
            try:
                block = os.pread(payload.fd, min(BLOCK, end - offset), offset)
            except OSError as exc:
                raise _Local(exc) from None
            if not block:
                raise FileChanged(f"the file ended {end - offset} bytes early: it shrank "
                                  f"while being sent")
            connection.writer.write(block)
            offset += len(block)
            await connection.writer.drain()
            connection.touch()

    async def _stream(self, connection: _Connection, headers: Mapping[str, str],
                      sink: Sink | None, async_sink: Callable[[bytes], object] | None) -> None:
        """Hand the body on: a broken body is a BodyCut, a failing sink its own error."""
        body = self._body(connection, headers)
        while True:
            try:
                block = await body.__anext__()
            except StopAsyncIteration:
                return
            except (OSError, EOFError, ValueError) as exc:
                connection.unread = True
                raise BodyCut(f"the body was cut short: {type(exc).__name__}: {exc}") from None
            if self.policy.stop.is_set():
                connection.unread = True
                raise Interrupted("stopped before the transfer finished")
            try:
                if sink is not None:
                    sink(block)
                else:
                    await async_sink(block)  # type: ignore[misc]
            except (AgentError, asyncio.CancelledError):
                connection.unread = True
                raise
            except BaseException as exc:  # noqa: BLE001 - e.g. disk full: not a network error
                connection.unread = True
                raise _Local(exc) from None

    async def _read_all(self, connection: _Connection, headers: Mapping[str, str],
                        most: int | None) -> bytes:
        blocks, size = [], 0
        async for block in self._body(connection, headers):
            blocks.append(block)
            size += len(block)
            if most is not None and size >= most:
                connection.unread = True  # the rest is not worth reading
                break
        return b"".join(blocks)

    async def _body(self, connection: _Connection, headers: Mapping[str, str]
                    ) -> AsyncIterator[bytes]:
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
            asyncio.open_connection(self.where.hostname, self.where.port, ssl=self._ssl,
                                    server_hostname=self.where.hostname if self._ssl else None,
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
            await asyncio.gather(self._watchdog, return_exceptions=True)
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
