"""Signed S3 requests on an asyncio event loop: every request the agent makes to a bucket.

Why one event loop: with one thread per request in flight, the agent spent about 380 µs of
CPU per request (urllib3's machinery, and 64 threads handing the GIL back and forth: 280 futex
calls per file) where one thread driving many keep-alive connections spends about 90 µs,
signing included; on two cores under a CPU limit, CPU seconds are wall seconds. It also spares
a command the import of urllib3 (tens of milliseconds of a small get's start-up).

What it speaks is the part of HTTP/1.1 that S3 needs: a request with a Content-Length body
(bytes, or a range of an open file read as it is sent), a response with a Content-Length,
chunked or read-to-close body, read strictly (:mod:`.http1`: interim 1xx answers skipped, no
length guessed), keep-alive, and the proxy botocore would use (:mod:`.proxies`). A long body
is received straight into its connection's own buffer and handed on as views of it
(:mod:`.buffered`). On the wire it does what botocore does (tests/test_wire.py,
tests/test_sigv4.py, tests/test_http_client.py): the same signature (:mod:`.sigv4`), the
same retries, back-off and retry budget (:mod:`.retries`), a 200 carrying ``<Error>`` from
CompleteMultipartUpload retried; beyond it, a skewed clock is corrected from the server's
``Date`` (by a day at most).

A connection is reused only when its response was read to the end and nothing is left in its
buffer. One watchdog for the whole pool (cheaper than a timer per read) aborts a connection
silent for ``READ_TIMEOUT`` seconds in the middle of a request, or whose request outlives its
deadline (``DEADLINE_BASE`` seconds and one more per ``DEADLINE_RATE`` bytes moved), so a
server that trickles a byte a minute cannot hold a command for ever.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from catalog_agent import __version__, tls
from catalog_agent.errors import (AgentError, ConfigError, FileChanged, IntegrityError,
                                  Interrupted, TransferError)
from catalog_agent.stores import buffered, http1, proxies, sigv4, wire
from catalog_agent.stores.http1 import ProtocolError
from catalog_agent.stores.retries import SKEW, THROTTLING, RetryPolicy
from catalog_agent.stores.wire import CredentialSource, Endpoint, Payload

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# Every request's own deadline: this much, and one second more per DEADLINE_RATE bytes sent
# or received (a 5 GiB part: 22 hours; a listing: about a minute).
DEADLINE_BASE = 60.0
DEADLINE_RATE = 64 * 1024
# CompleteMultipartUpload: S3 may work on it for minutes, sending spaces meanwhile.
COMPLETE_DEADLINE_BASE = 15 * 60.0
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305: the next address after this long, not the next timeout
EARLY_ANSWER_WAIT = 2.0  # after a failed send: how long to look for the server's answer
BLOCK = 256 * 1024
DIRECT_SIZE = 64 * 1024  # a body this long is received into its connection's buffer
# After SIGTERM, how long a body already on the wire may take to finish before it is cut: a
# body cut mid-send may still be stored by the server after the abort that follows (S3: parts
# in progress "might or might not succeed"), leaving an upload nobody aborts.
SETTLE_AFTER_STOP = 5.0
HEAD_LIMIT = 64 * 1024
CONTROL_LIMIT = 16 * 1024 * 1024  # a listing page or an upload's answer: far below this
# The answers that may be long (a page of 1,000 keys); they come one at a time. Every other
# answer without a sink is a short document, and up to `concurrency` of them are read at once.
LONG_ANSWERS = frozenset({"ListObjectsV2", "ListMultipartUploads", "CompleteMultipartUpload"})
MAX_INTERIM = 32  # 1xx answers before the final one
MAX_SKEW = 24 * 3600.0  # a server Date further off is not trusted to re-time signatures
USER_AGENT = f"catalog-agent/{__version__}"
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")


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
    protocol: buffered.BodyProtocol
    busy: bool = False
    unread: bool = False  # a body left partly unread: not reusable
    last: float = field(default_factory=time.monotonic)
    deadline: float = math.inf  # when the request in flight must have ended (monotonic)
    allowed: float = 0.0  # seconds that request was allowed so far
    expired: str | None = None  # why the watchdog aborted it

    def begin(self, allowance: float) -> None:
        """A request starts on this connection; it may take ``allowance`` seconds."""
        self.last = time.monotonic()
        self.deadline = self.last + allowance
        self.allowed = allowance
        self.expired = None

    def touch(self) -> None:
        self.last = time.monotonic()

    def received(self, size: int) -> None:
        """``size`` bytes arrived: the watchdog's clock restarts, the deadline grows."""
        self.last = time.monotonic()
        self.deadline += size / DEADLINE_RATE
        self.allowed += size / DEADLINE_RATE

    def close(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:  # noqa: BLE001 - already gone
            pass


# Receives each block of a successful response body; may raise to stop the transfer. The
# block may be a view of a buffer that the next block overwrites: it is valid during the call.
Sink = Callable[[bytes | memoryview], None]


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
        self._ssl = tls.client_context(verify) if where.scheme == "https" else None
        self._proxy = proxies.for_endpoint(where.scheme, where.service or where.host)
        self._proxy_ssl = tls.client_context(verify) if self._proxy is not None and \
            self._proxy.scheme == "https" else None  # TLS to the proxy: the same trust
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
        cut short raises :class:`BodyCut` after ``sink`` may have seen part of it; so does an
        answer to a Range that is not exactly the bytes asked for (before ``sink`` sees any)."""
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
        ranged = http1.asked_range(next((v for k, v in extra.items() if k.lower() == "range"),
                                        None)) if method == "GET" else None
        if payload is not None:
            extra.update(payload.headers())
            payload_sha256 = payload.sha256 or sigv4.UNSIGNED_PAYLOAD
        else:
            payload_sha256 = sigv4.EMPTY_SHA256
        allowance = (COMPLETE_DEADLINE_BASE if operation == "CompleteMultipartUpload"
                     else DEADLINE_BASE) + (payload.length if payload else 0) / DEADLINE_RATE
        streaming = sink is not None or async_sink is not None
        control = CONTROL_LIMIT if operation in LONG_ANSWERS else wire.ERROR_BODY_LIMIT
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
            head = self._request_head(method, target, signed)
            retry_after = None
            try:
                reply = await self._exchange(method, head, payload, sink, async_sink, on_head,
                                             limit if limit is not None else control, cleanup,
                                             ranged, allowance)
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
                success = 200 <= status < 300
                if success and error_in_200 and b"<Error>" in reply.data:
                    success, status = False, 500  # as botocore: S3 failed after it answered 200
                if success:
                    if limit is not None and len(reply.data) > limit:
                        raise IntegrityError(f"{self.origin}{path} is larger than {limit} "
                                             f"bytes")
                    if limit is None and not streaming and len(reply.data) > control:
                        raise TransferError(
                            f"{operation} of {self.origin}{path} failed: the server's answer "
                            f"is larger than {control:,} bytes, far more than any answer of "
                            f"this kind")
                    policy.after_response(throttled=False)
                    policy.succeeded(cost)
                    return reply
                if status == 407 and self._proxy is not None:
                    raise proxies.refused(self._proxy, status, self.origin) from None
                code = wire.error_code(status, reply.data)
                kind = policy.classify(status, code)
                policy.after_response(throttled=kind == THROTTLING)
                retry_after = reply.headers.get("x-amz-retry-after")
                failure = wire.client_error(reply.headers, status, reply.data, code, operation)
                if kind == SKEW:
                    kind, failure = self._correct_skew(reply, status, code, operation, failure)
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

    def _request_head(self, method: str, target: str, signed: dict[str, str]) -> bytes:
        """The request line and headers: the signed ones, then the unsigned User-Agent (as
        botocore, which never signs it) and, to a proxy, the absolute URL and its login."""
        headers = {**signed, "User-Agent": USER_AGENT}
        if self._proxy is not None and self._ssl is None:  # http through a proxy: forwarded
            target = self.origin + target
            if self._proxy.authorization:
                headers["Proxy-Authorization"] = self._proxy.authorization
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in headers.items():
            if _FORBIDDEN_IN_VALUE.search(value):
                raise IntegrityError(f"refusing to send header {name}: its value holds a CR, "
                                     f"LF or NUL")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")

    def _correct_skew(self, reply: Reply, status: int, code: str, operation: str,
                      failure: Exception) -> tuple[str | None, Exception]:
        """RequestTimeTooSkewed: adopt the server's clock and retry at once, unless its Date is
        unusable, already adopted, or more than MAX_SKEW off (a server, or something between,
        saying the year is 1970 must not re-time every signature)."""
        date = reply.headers.get("date")
        offset = _date_offset(date)
        if offset is not None and abs(offset) > MAX_SKEW:
            return None, wire.client_error(
                reply.headers, status, reply.data, code, operation,
                note=f"the server's Date is {offset:+.0f} s from this machine's clock, more "
                     f"than the {MAX_SKEW / 3600:.0f} h the agent corrects: check both clocks")
        offset = self.policy.correct_skew(date)
        if offset is None:
            return None, wire.client_error(
                reply.headers, status, reply.data, code, operation,
                note=f"the local clock is {-self.policy.skew:+.0f} s off the server's after "
                     f"correction")
        self._log_skew(offset)
        return SKEW, failure

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
        while not self.policy.may_send():
            await asyncio.sleep(0.05)

    async def _exchange(self, method: str, head: bytes, payload: Payload | None,
                        sink: Sink | None, async_sink: Callable[[bytes], object] | None,
                        on_head: Callable[[Reply], None] | None, limit: int,
                        cleanup: bool, ranged: tuple[int, int | None] | None,
                        allowance: float) -> Reply:
        """Send one request on a pooled connection and read its response (at most ``limit``
        + 1 bytes of a body without a sink: the caller refuses more)."""
        connection = await self._connection()
        connection.begin(allowance)
        reusable = False
        try:
            try:
                await self._send(connection, head, payload, cleanup)
            except OSError:
                if connection.expired:
                    raise
                early = await self._early_answer(connection)  # e.g. 403 before the body
                if early is None:
                    raise
                return early
            answer = await _final_head(connection.reader)
            connection.touch()
            frame = http1.framing(answer, method)
            reply = Reply(answer.status, answer.headers)
            most_streamed: int | None = None
            if answer.success and ranged is not None:
                problem = http1.range_problem(ranged, answer)
                if problem is not None:  # its body is never read: the connection goes
                    raise BodyCut(problem)
                # No more than the range, however the body is framed (chunked, to the close):
                # a byte past it would land on the next part's place in the file.
                most_streamed = http1.range_length(answer)
            if frame.kind == "none":
                pass
            elif answer.success and (sink is not None or async_sink is not None):
                if on_head is not None:
                    on_head(reply)
                await self._stream(connection, frame, sink, async_sink, most_streamed)
            else:
                most = wire.ERROR_BODY_LIMIT if not answer.success else limit + 1
                reply.data = await self._read_all(connection, frame, most)
            reusable = frame.reusable and not connection.unread and \
                not _holds_bytes(connection.reader)
            return reply
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
            if connection.expired and not isinstance(exc, BodyCut):
                raise TimeoutError(connection.expired) from None
            raise
        finally:
            self._release(connection, reusable)

    async def _send(self, connection: _Connection, head: bytes, payload: Payload | None,
                    cleanup: bool) -> None:
        writer = connection.writer
        if payload is None:
            _write(connection, head)
        elif payload.data is not None:
            _write(connection, head + payload.data)
        else:
            _write(connection, head)
            await self._send_file(connection, payload, cleanup)
        await writer.drain()
        connection.touch()

    async def _early_answer(self, connection: _Connection) -> Reply | None:
        """The server's error answer when sending failed: S3 may refuse an upload (403 from
        KMS, AccessDenied) before its body is all sent, answer, and reset the connection. That
        answer, not the reset, is the request's outcome (exit 4 with S3's code, not a retried
        ConnectionClosedError). Looked for in what the connection had received, for up to
        EARLY_ANSWER_WAIT seconds; a success (2xx) before the whole body was sent is not
        believed. (The stream's buffer is read directly: after a reset it raises the reset.)"""
        reader = connection.reader
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        until = time.monotonic() + EARLY_ANSWER_WAIT
        answer: http1.Head | None = None
        wanted = 0
        while True:
            if answer is None:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    try:
                        answer = http1.parse_head(bytes(buffer[:end + 4]))
                        frame = http1.framing(answer, "PUT")
                    except ProtocolError:
                        return None
                    del buffer[:end + 4]
                    if answer.interim:
                        answer = None
                        continue
                    if answer.success:
                        return None
                    wanted = min(frame.length if frame.kind == "length"
                                 else wire.ERROR_BODY_LIMIT, wire.ERROR_BODY_LIMIT)
            if answer is not None and len(buffer) >= wanted:
                break
            if reader.exception() is not None or reader.at_eof() or \
                    time.monotonic() >= until:
                break
            await asyncio.sleep(0.02)
        if answer is None:
            return None
        return Reply(answer.status, answer.headers, bytes(buffer[:wanted]))

    async def _send_file(self, connection: _Connection, payload: Payload,
                         cleanup: bool) -> None:
        """``payload.length`` bytes of its file from its offset: read as they are sent, never
        beyond (a file that grew sends what was hashed; one that shrank is FileChanged)."""
        assert payload.fd is not None
        offset, end = payload.offset, payload.offset + payload.length
        stopped: float | None = None
        while offset < end:
            if self.policy.stop.is_set() and not cleanup:
                stopped = stopped or time.monotonic()
                if time.monotonic() - stopped > SETTLE_AFTER_STOP:
                    raise Interrupted("stopped before the transfer finished")
            try:
                block = os.pread(payload.fd, min(BLOCK, end - offset), offset)
            except OSError as exc:
                raise _Local(exc) from None
            if not block:
                raise FileChanged(f"the file ended {end - offset} bytes early: it shrank "
                                  f"while being sent")
            _write(connection, block)
            offset += len(block)
            await connection.writer.drain()
            connection.touch()

    async def _stream(self, connection: _Connection, frame: http1.Framing,
                      sink: Sink | None, async_sink: Callable[[bytes], object] | None,
                      most: int | None = None) -> None:
        """Hand the body on: a broken body is a BodyCut, a failing sink its own error.

        Whatever breaks the body (a reset, a timeout, a malformed chunk, a chunk-size line
        longer than the reader's limit) is a BodyCut, never an error that :meth:`request`
        would retry: the sink may have seen part of the body, and a retry inside would hand
        it the same bytes again. The caller picks the body up where it broke.
        """
        body = self._body(connection, frame, borrow=sink is not None)
        handed = 0
        while True:
            try:
                block = await body.__anext__()
            except StopAsyncIteration:
                return
            except AgentError:
                connection.unread = True
                raise
            except Exception as exc:  # noqa: BLE001 - any break of the body (not a cancel)
                connection.unread = True
                reason = connection.expired or f"{type(exc).__name__}: {exc}"
                raise BodyCut(f"the body was cut short: {reason}") from None
            if self.policy.stop.is_set():
                connection.unread = True
                raise Interrupted("stopped before the transfer finished")
            handed += len(block)
            if most is not None and handed > most:
                connection.unread = True
                raise BodyCut(f"the server sent more than the {most:,} bytes of its "
                              f"Content-Range")
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

    async def _read_all(self, connection: _Connection, frame: http1.Framing,
                        most: int) -> bytes:
        blocks, size = [], 0
        async for block in self._body(connection, frame):
            blocks.append(block)
            size += len(block)
            if size >= most:
                connection.unread = True  # the rest is not worth reading
                break
        return b"".join(blocks)

    async def _body(self, connection: _Connection, frame: http1.Framing, borrow: bool = False
                    ) -> AsyncIterator[bytes | memoryview]:
        """The body's blocks; with ``borrow``, a block may be a view valid until the next."""
        reader = connection.reader
        if frame.kind == "length":
            async for block in _blocks(connection, frame.length, borrow):
                yield block
        elif frame.kind == "close":  # no length: the body ends when the server closes
            while True:
                block = await reader.read(BLOCK)
                if not block:
                    if connection.expired:  # the watchdog's abort is no end of a body
                        raise TimeoutError(connection.expired)
                    return
                connection.received(len(block))
                yield block
        elif frame.kind == "chunked":
            while True:
                size = http1.chunk_size(await reader.readuntil(b"\r\n"))
                connection.touch()
                if size == 0:
                    await _trailers(reader)
                    return
                async for block in _blocks(connection, size):
                    yield block
                if await reader.readexactly(2) != b"\r\n":
                    raise ProtocolError("a chunk is not followed by CRLF")

    # --- the pool ---

    async def _connection(self) -> _Connection:
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch())
        while self._idle:
            connection = self._idle.pop()
            reader = connection.reader
            if not connection.writer.transport.is_closing() and not reader.at_eof() and \
                    reader.exception() is None and not _holds_bytes(reader):
                connection.busy = True
                connection.touch()
                return connection
            self._forget(connection)  # closed meanwhile, or sent what nobody asked for
        reader, writer = await self._open()
        connection = _Connection(reader, writer, buffered.protocol_of(writer), busy=True)
        self._all.add(connection)
        return connection

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the endpoint (through the proxy, if one applies)."""
        try:
            return await asyncio.wait_for(self._dial(), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:  # not an OSError before Python 3.11
            via = f" through the proxy {self._proxy.display}" if self._proxy else ""
            raise wire.ConnectTimeout(f"no connection to {self.where.hostname}:"
                                      f"{self.where.port}{via} within {CONNECT_TIMEOUT:.0f} s"
                                      ) from None

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        proxy, where = self._proxy, self.where
        if proxy is None:
            return await buffered.open_connection(
                where.hostname, where.port, ssl_context=self._ssl, limit=HEAD_LIMIT,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
        try:
            reader, writer = await buffered.open_connection(
                proxy.hostname, proxy.port, ssl_context=self._proxy_ssl, limit=HEAD_LIMIT,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
        except ssl.SSLError as exc:  # the proxy's own certificate: name the proxy, not S3
            refused = tls.certificate_error(exc, proxy.display)
            if refused is None:
                raise
            raise type(refused)(refused.message.replace("TLS certificate of ",
                                                        "TLS certificate of the proxy ", 1),
                                hint=refused.hint) from None
        if self._ssl is None:
            return reader, writer  # http: each request goes to the proxy in absolute form
        try:
            await self._tunnel(reader, writer, proxy)
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      proxy: proxies.Proxy) -> None:
        """CONNECT through the proxy, then TLS with the endpoint itself (its certificate
        checked for the endpoint's name, as without a proxy)."""
        where = self.where
        writer.write(proxies.connect_request(proxy, where.hostname, where.port))
        await writer.drain()
        answer = await _final_head(reader)
        if not answer.success:
            raise proxies.refused(proxy, answer.status, f"{where.hostname}:{where.port}")
        if _holds_bytes(reader):
            raise ProtocolError(f"the proxy {proxy.display} sent bytes after its answer to "
                                f"CONNECT, before the TLS handshake")
        if not hasattr(writer, "start_tls"):
            raise ConfigError(f"an https endpoint through the proxy {proxy.display} needs "
                              f"Python 3.11 or later")
        await writer.start_tls(self._ssl, server_hostname=where.hostname)  # type: ignore[arg-type]

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
        """Abort connections silent for READ_TIMEOUT in the middle of a request, or whose
        request outlived its deadline; the request sees why (``connection.expired``)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for connection in list(self._all):
                if not connection.busy or connection.expired:
                    continue
                if now - connection.last > READ_TIMEOUT:
                    connection.expired = f"no byte for {READ_TIMEOUT:.0f} s"
                elif now > connection.deadline:
                    connection.expired = (
                        f"the request outlived its deadline of {connection.allowed:.0f} s "
                        f"({DEADLINE_BASE:.0f} s and 1 s for each {DEADLINE_RATE // 1024} KiB "
                        f"sent or received)")
                else:
                    continue
                connection.close()

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        for connection in list(self._all):
            self._forget(connection)
        self._idle.clear()


async def _final_head(reader: asyncio.StreamReader) -> http1.Head:
    """The final answer's head: interim 1xx answers (100 Continue, 103 Early Hints) are read
    and passed over, never taken for the answer (which would leave the real one unread)."""
    for _ in range(MAX_INTERIM + 1):
        answer = http1.parse_head(await reader.readuntil(b"\r\n\r\n"))
        if answer.status == 101:
            raise ProtocolError("101 Switching Protocols, to a request that asked for no "
                                "other protocol")
        if not answer.interim:
            return answer
    raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers to one request")


async def _trailers(reader: asyncio.StreamReader) -> None:
    """Read past a chunked body's trailer fields (not used), HEAD_LIMIT bytes at most."""
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            return
        size += len(line)
        if size > HEAD_LIMIT:
            raise ProtocolError(f"trailer fields longer than {HEAD_LIMIT} bytes")


async def _blocks(connection: _Connection, size: int, borrow: bool = False
                  ) -> AsyncIterator[bytes | memoryview]:
    """The next ``size`` bytes of a connection, as they arrive; an early end is an error.
    With ``borrow``, bodies of DIRECT_SIZE or more are received into the connection's own
    buffer (:mod:`.buffered`) whenever the reader holds nothing, and handed on as views."""
    left, reader = size, connection.reader
    borrow = borrow and size >= DIRECT_SIZE
    while left:
        if borrow and not _holds_bytes(reader):
            block: bytes | memoryview = await connection.protocol.receive(min(BLOCK, left))
        else:
            block = await reader.read(min(BLOCK, left))
        if not block:
            raise asyncio.IncompleteReadError(b"", left)
        connection.received(len(block))
        left -= len(block)
        yield block


def _write(connection: _Connection, data: bytes) -> None:
    """Write, and when the write failed at once (the server reset the connection, e.g. after
    refusing an upload early), keep what the server had sent before the reset: the kernel
    still holds it, but the transport closes the socket at the event loop's next turn without
    reading it. Read from a duplicate of the socket, into the reader's buffer, where
    :meth:`S3Client._early_answer` finds it. (Plain TCP only: over TLS those bytes are
    ciphertext; there the answer is found if the loop had read it before the write.)"""
    transport = connection.writer.transport
    transport.write(data)
    if not transport.is_closing() or transport.get_extra_info("ssl_object") is not None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    buffer: bytearray = connection.reader._buffer  # type: ignore[attr-defined]
    try:
        copy = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return
    try:
        copy.setblocking(False)
        while len(buffer) < HEAD_LIMIT + wire.ERROR_BODY_LIMIT:
            block = copy.recv(HEAD_LIMIT)
            if not block:
                return
            buffer.extend(block)
    except OSError:  # nothing more (EAGAIN), or the reset itself
        return
    finally:
        copy.close()


def _holds_bytes(reader: asyncio.StreamReader) -> bool:
    """Whether bytes wait in the reader that no request asked for (a connection holding them
    must not carry the next request: they would be read as its answer)."""
    return bool(reader._buffer)  # type: ignore[attr-defined]


def _date_offset(date: str | None) -> float | None:
    """Seconds a ``Date`` header is ahead of this machine's clock; None when unreadable."""
    import email.utils

    if not date:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - time.time()
