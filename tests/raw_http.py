"""A loopback TCP server whose answers a test writes byte by byte: for what no real S3 server
sends on demand (interim 1xx answers, malformed framing, a server that trickles, an answer
followed by a reset). Real traffic is tested against SeaweedFS.

``with RawServer(respond) as server:``; ``respond(exchange)`` is called for each request with
``exchange.request`` (method, target, lower-case headers, body) and writes its answer with
``exchange.send``; ``exchange.close()`` or ``exchange.reset()`` end the connection. With
``read_body=False`` the request body is left unread (``exchange.recv`` reads some of it).
``server.requests`` records every request, ``server.connections`` counts TCP connections.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Exchange:
    """One request on one connection, and the means to answer it."""

    def __init__(self, sock: socket.socket, rfile, request: RawRequest, number: int) -> None:  # noqa: ANN001
        self._sock, self._rfile = sock, rfile
        self.request, self.number = request, number
        self.closed = False

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self._rfile.read(size)

    def close(self) -> None:
        """End the connection in order (FIN): the client reads to the end."""
        self.closed = True
        self._sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        """End the connection with a reset (RST), as a server closing with unread bytes does."""
        self.closed = True
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._sock.close()


Respond = Callable[[Exchange], None]


@dataclass
class RawServer:
    respond: Respond
    read_body: bool = True
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        rfile = sock.makefile("rb")
        try:
            while True:
                line = rfile.readline(65536)
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = rfile.readline(65536)
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = rfile.read(length) if self.read_body and length else b""
                request = RawRequest(method, target, headers, body)
                with self._lock:
                    self.requests.append(request)
                    number = len(self.requests)
                exchange = Exchange(sock, rfile, request, number)
                self.respond(exchange)
                if exchange.closed:
                    return
        except OSError:
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass


def answer(status: int, body: bytes = b"", *headers: str, reason: str = "X") -> bytes:
    """A well-formed answer with a Content-Length (``headers``: "Name: value" lines)."""
    lines = [f"HTTP/1.1 {status} {reason}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def s3_error(code: str, status: int, *headers: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>scripted {code}</Message></Error>").encode()
    return answer(status, body, "Content-Type: application/xml", *headers)
