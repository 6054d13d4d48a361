"""A fault-injecting HTTP proxy on loopback, for the reliability tests.

It sits between the agent and a real S3 server and, for a share of requests chosen by a seeded
random generator, answers 503 SlowDown or 500 InternalError itself, resets the connection
before answering, resets it halfway through the response body, or delays the response. Every
other request goes to the server unchanged (the Host header too, so signatures still verify).

Deliberately small: HTTP/1.1 with Content-Length or chunked bodies, one upstream connection
per request, whole responses buffered (the tests move small files).
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("slowdown", "internal", "reset", "reset_body", "delay")

_SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
_INTERNAL = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>"
             b"<Message>We encountered an internal error. Please try again.</Message></Error>")


@dataclass
class Rates:
    """Share of requests that get each fault (the rest pass untouched)."""

    slowdown: float = 0.0
    internal: float = 0.0
    reset: float = 0.0
    reset_body: float = 0.0  # only responses with a body of 2 bytes or more
    delay: float = 0.0
    max_delay: float = 0.3


@dataclass
class FaultProxy:
    """``with FaultProxy(upstream_port, Rates(...)) as proxy:`` then use ``proxy.endpoint``."""

    upstream_port: int
    rates: Rates = field(default_factory=Rates)
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    requests: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    while proxy._one(self.rfile, self.connection):
                        pass
                except (OSError, http.client.HTTPException):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _choose(self) -> str | None:
        with self._lock:
            self.requests += 1
            roll = self._random.random()
            for name in FAULTS:
                share = getattr(self.rates, name)
                if roll < share:
                    self.injected[name] += 1
                    return name
                roll -= share
            return None

    def _one(self, rfile: Any, conn: socket.socket) -> bool:
        """Serve one request on a client connection; False when the connection is done."""
        request_line = rfile.readline(65537)
        if not request_line.strip():
            return False
        method, target, _version = request_line.decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while True:
            line = rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, value = line.decode("latin-1").split(":", 1)
            headers.append((name.strip(), value.strip()))
        lower = {k.lower(): v for k, v in headers}
        if lower.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _read_body(rfile, lower)
        fault = self._choose()
        if fault == "reset":
            _reset(conn)
            return False
        if fault in ("slowdown", "internal"):
            status, payload = (503, _SLOWDOWN) if fault == "slowdown" else (500, _INTERNAL)
            reason = "Slow Down" if status == 503 else "Internal Server Error"
            conn.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            return True

        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in {"expect", "transfer-encoding", "content-length",
                                        "connection"}:
                    upstream.putheader(name, value)
            if body or method in {"PUT", "POST"}:
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            status, reason, out_headers = response.status, response.reason, response.getheaders()
        finally:
            upstream.close()

        if fault == "delay":
            with self._lock:
                pause = self._random.uniform(0.01, self.rates.max_delay)
            time.sleep(pause)
        head = f"HTTP/1.1 {status} {reason}\r\n"
        for name, value in out_headers:
            if name.lower() not in {"transfer-encoding", "connection", "content-length"}:
                head += f"{name}: {value}\r\n"
        length = len(data) if method != "HEAD" else int(
            dict((k.lower(), v) for k, v in out_headers).get("content-length", "0"))
        head += f"Content-Length: {length}\r\n\r\n"
        if fault == "reset_body" and method != "HEAD" and len(data) >= 2:
            conn.sendall(head.encode("latin-1") + data[: len(data) // 2])
            _reset(conn)
            return False
        if fault == "reset_body":  # nothing to cut: count it as what it became
            with self._lock:
                self.injected["reset_body"] -= 1
        conn.sendall(head.encode("latin-1") + (data if method != "HEAD" else b""))
        return True


def _read_body(rfile: Any, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(rfile.read(size))
            rfile.readline()
    length = int(headers.get("content-length", "0") or 0)
    return rfile.read(length) if length else b""


def _reset(conn: socket.socket) -> None:
    """Close with RST rather than FIN: what a broken network or a dying load balancer does."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass
