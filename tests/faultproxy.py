"""A streaming fault-injecting HTTP proxy on loopback, for the reliability tests.

It sits between the agent and a real S3 server. Each request gets a fault or passes untouched,
as chosen by a seeded :class:`faultplan.FaultPlan` from rules per request kind (part upload,
CompleteMultipartUpload, ranged GET, ...): 503 SlowDown, 500 InternalError or a 200 whose body
is an ``<Error>`` answered by the proxy itself; a reset before the answer; a reset after N bytes
of the response body or of the request body; the answer lost (forwarded, then reset); a delay.
Everything else goes to the server unchanged (the Host header too, so signatures verify).

Bodies stream both ways in blocks of :data:`BLOCK` bytes as they arrive, never whole in memory:
a 256 MiB object passes with a few hundred KiB per connection. HTTP/1.1 keep-alive towards the
client, Content-Length and chunked bodies, ``Expect: 100-continue`` (answered by the proxy; a
fault that answers itself answers instead of 100 Continue, then closes). One upstream connection
per request, so a stale upstream connection can never cost a request whose body is half sent.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from faultplan import FAULTS, KINDS, Choice, FaultPlan, Rates, Rule

__all__ = ["BLOCK", "FAULTS", "KINDS", "FaultProxy", "Rates", "Rule"]

BLOCK = 128 * 1024
TIMEOUT = 120.0
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "expect", "content-length"}
_XML = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_ANSWERS = {
    "slowdown": (503, "Slow Down", b"<Error><Code>SlowDown</Code>"
                 b"<Message>Please reduce your request rate.</Message></Error>"),
    "internal": (500, "Internal Server Error", b"<Error><Code>InternalError</Code>"
                 b"<Message>We encountered an internal error. Please try again.</Message>"
                 b"</Error>"),
    # What S3 does for CompleteMultipartUpload (and copies): 200 at once, the failure in the body.
    "error_200": (200, "OK", b"<Error><Code>InternalError</Code>"
                  b"<Message>We encountered an internal error. Please try again.</Message>"
                  b"<RequestId>FAULTPROXY</RequestId></Error>"),
}


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    lower: dict[str, str]

    @property
    def chunked(self) -> bool:
        return "chunked" in self.lower.get("transfer-encoding", "").lower()

    @property
    def length(self) -> int:
        """Content-Length (0 when absent); see ``chunked`` for bodies of unknown length."""
        return int(self.lower.get("content-length", "0") or 0)

    @property
    def expects_continue(self) -> bool:
        return self.lower.get("expect", "").lower() == "100-continue"

    @property
    def wants_close(self) -> bool:
        return self.lower.get("connection", "").lower() == "close"


class FaultProxy:
    """``with FaultProxy(upstream_port, rules=[Rule(...)], seed=1) as proxy:`` then use
    ``proxy.endpoint``; ``proxy.count(kind, fault)``, ``proxy.seen``, ``proxy.injected`` tell
    what happened. ``FaultProxy(port, Rates(...))`` spreads faults over all requests."""

    def __init__(self, upstream_port: int, rates: Rates | None = None, *, seed: int = 0,
                 rules: list[Rule] | None = None) -> None:
        self.upstream_port = upstream_port
        self.plan = FaultPlan([*(rates.rules() if rates else []), *(rules or [])], seed=seed)
        self.connections = 0  # client connections accepted
        self.continues = 0  # 100 Continue answers sent
        self.request_bytes = 0  # request body bytes read from clients
        self.response_bytes = 0  # response body bytes sent to clients
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            rbufsize = BLOCK

            def handle(self) -> None:
                proxy._connection(self.rfile, self.connection)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- what happened ---

    @property
    def requests(self) -> int:
        return self.plan.requests

    @property
    def injected(self) -> Any:
        """Faults applied, by fault name (a Counter)."""
        return self.plan.injected

    @property
    def seen(self) -> Any:
        """Requests seen, by kind (a Counter)."""
        return self.plan.seen

    def count(self, kind: str | None = None, fault: str | None = None) -> int:
        return self.plan.count(kind, fault)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- serving ---

    def _connection(self, rfile: BinaryIO, conn: socket.socket) -> None:
        """Requests of one client connection, one after the other (keep-alive)."""
        with self._lock:
            self.connections += 1
        try:
            conn.settimeout(TIMEOUT)
            while True:
                request = _read_head(rfile)
                if request is None or not self._one(request, rfile, conn):
                    return
        except (OSError, http.client.HTTPException, ValueError):
            pass

    def _counted(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        for block in blocks:
            with self._lock:
                self.request_bytes += len(block)
            yield block

    def _drain(self, rfile: BinaryIO, request: Request) -> None:
        """Read and drop a request body: the connection stays usable for the next request."""
        for _ in self._counted(_body(rfile, request)):
            pass

    def _sent(self, size: int) -> None:
        with self._lock:
            self.response_bytes += size

    def _one(self, request: Request, rfile: BinaryIO, conn: socket.socket) -> bool:
        """Serve one request; False when the client connection is done with."""
        choice = self.plan.choose(request.method, request.target, request.lower)
        fault = choice.fault
        if fault in _ANSWERS:
            return self._answer(choice, request, rfile, conn)
        if fault == "reset":
            if not request.expects_continue:
                self._drain(rfile, request)
            self.plan.applied(choice)
            _reset(conn)
            return False
        if fault == "reset_request" and not (request.chunked or request.length >= 2):
            self.plan.not_applied(choice)
            choice = Choice(choice.kind)
        if request.expects_continue:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            with self._lock:
                self.continues += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=TIMEOUT)
        try:
            if not self._forward_request(choice, request, rfile, upstream, conn):
                return False
            response = upstream.getresponse()
            if choice.fault == "lost_answer":  # the server did it; the client never hears
                self.plan.applied(choice)
                _reset(conn)
                return False
            if choice.fault == "delay":
                time.sleep(choice.delay)
                self.plan.applied(choice)
            return self._forward_response(choice, request, response, conn)
        finally:
            upstream.close()

    def _answer(self, choice: Choice, request: Request, rfile: BinaryIO,
                conn: socket.socket) -> bool:
        """The proxy's own error answer. With ``Expect: 100-continue`` it comes instead of
        100 Continue (the body is never sent) and the connection closes, as S3 does."""
        status, reason, body = _ANSWERS[choice.fault]  # type: ignore[index]
        body = _XML + body
        close = request.expects_continue or request.wants_close
        if not request.expects_continue:
            self._drain(rfile, request)
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n")
        if close:
            head += "Connection: close\r\n"
        conn.sendall((head + "\r\n").encode("latin-1") + body)
        self.plan.applied(choice)
        return not close

    def _forward_request(self, choice: Choice, request: Request, rfile: BinaryIO,
                         upstream: http.client.HTTPConnection, conn: socket.socket) -> bool:
        """Head and body to the server as the body arrives; False if cut (reset_request)."""
        upstream.putrequest(request.method, request.target, skip_host=True,
                            skip_accept_encoding=True)
        for name, value in request.headers:
            if name.lower() not in _HOP:
                upstream.putheader(name, value)
        if request.chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        elif "content-length" in request.lower:
            upstream.putheader("Content-Length", str(request.length))
        upstream.endheaders()
        cut = None
        if choice.fault == "reset_request":
            assert choice.rule is not None
            size = request.length if not request.chunked else 2 * BLOCK
            cut = choice.rule.cut_after if choice.rule.cut_after is not None else size // 2
            cut = max(1, min(cut, size - 1)) if not request.chunked else max(1, cut)
        passed = 0
        trailers: list[bytes] = []
        for block in self._counted(_body(rfile, request, trailers)):
            if cut is not None and passed + len(block) >= cut:
                _send(upstream, block[: cut - passed], request.chunked)
                self.plan.applied(choice)
                _reset(conn)
                return False
            _send(upstream, block, request.chunked)
            passed += len(block)
        if request.chunked:
            upstream.send(b"0\r\n" + b"".join(trailers) + b"\r\n")
        if cut is not None:  # a chunked body shorter than the cut: nothing was cut
            self.plan.not_applied(choice)
        return True

    def _forward_response(self, choice: Choice, request: Request,
                          response: http.client.HTTPResponse, conn: socket.socket) -> bool:
        """The server's answer to the client as it arrives; a reset_body cuts it after N bytes."""
        status = response.status
        declared = response.getheader("Content-Length")
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        length = int(declared) if declared is not None and not no_body else None
        chunked = not no_body and length is None
        cut = None
        if choice.fault == "reset_body":
            assert choice.rule is not None
            if no_body or (length is not None and length < 2):
                self.plan.not_applied(choice)
            else:
                size = length if length is not None else 2 * BLOCK
                cut = choice.rule.cut_after if choice.rule.cut_after is not None else size // 2
                cut = max(1, min(cut, size - 1))
        close = request.wants_close  # a body the server ends by closing goes on chunked
        head = f"HTTP/1.1 {status} {response.reason}\r\n"
        for name, value in response.getheaders():
            if name.lower() not in _HOP:
                head += f"{name}: {value}\r\n"
        if declared is not None and (no_body or length is not None):
            head += f"Content-Length: {declared}\r\n"
        if chunked:
            head += "Transfer-Encoding: chunked\r\n"
        if close:
            head += "Connection: close\r\n"
        conn.sendall((head + "\r\n").encode("latin-1"))
        if no_body:
            return not close
        passed = 0
        while True:
            block = response.read(BLOCK if length is None else min(BLOCK, length - passed))
            if not block:
                break
            if cut is not None and passed + len(block) >= cut:
                _write(conn, block[: cut - passed], chunked)
                self._sent(cut - passed)
                self.plan.applied(choice)
                _reset(conn)
                return False
            _write(conn, block, chunked)
            self._sent(len(block))
            passed += len(block)
            if length is not None and passed >= length:
                break
        if length is not None and passed < length:  # the server cut it: so does the proxy
            _reset(conn)
            return False
        if chunked:
            conn.sendall(b"0\r\n\r\n")
        if cut is not None:
            self.plan.not_applied(choice)
        return not close


def _read_head(rfile: BinaryIO) -> Request | None:
    """The next request's line and headers; None at the end of the connection."""
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):  # stray CRLF between requests (RFC 9112 2.2)
        line = rfile.readline(65537)
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        line = rfile.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
        name, value = line.decode("latin-1").split(":", 1)
        headers.append((name.strip(), value.strip()))
    return Request(method, target, headers, {k.lower(): v for k, v in headers})


def _body(rfile: BinaryIO, request: Request,
          trailers: list[bytes] | None = None) -> Iterator[bytes]:
    """The request body in blocks of at most BLOCK bytes, as they arrive (chunks decoded);
    the trailer lines of a chunked body are appended to ``trailers``."""
    if request.chunked:
        while True:
            size = int(rfile.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                while (line := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                    if trailers is not None:
                        trailers.append(line)
                return
            yield from _exactly(rfile, size)
            rfile.readline(1024)
    else:
        yield from _exactly(rfile, request.length)


def _exactly(rfile: BinaryIO, size: int) -> Iterator[bytes]:
    left = size
    while left:
        block = rfile.read(min(BLOCK, left))
        if not block:
            raise ConnectionError(f"the client's body ended {left} bytes early")
        left -= len(block)
        yield block


def _send(upstream: http.client.HTTPConnection, block: bytes, chunked: bool) -> None:
    if not block:
        return
    upstream.send(b"%x\r\n%b\r\n" % (len(block), block) if chunked else block)


def _write(conn: socket.socket, block: bytes, chunked: bool) -> None:
    if not block:
        return
    conn.sendall(b"%x\r\n%b\r\n" % (len(block), block) if chunked else block)


def _reset(conn: socket.socket) -> None:
    """Close with RST rather than FIN: what a broken network or a dying load balancer does."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass
