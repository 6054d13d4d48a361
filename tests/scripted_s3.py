"""A loopback HTTP server whose every answer a test scripts: for the wire behaviours a real S3
server does not produce on demand (a listing that repeats its continuation token, a server that
fails every request for minutes). Everything else is tested against SeaweedFS.

``with ScriptedS3(answer) as server:`` where ``answer(request) -> (status, headers, body)``;
``server.requests`` records every request, ``server.connections`` counts TCP connections.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Answer = Callable[[Request], tuple[int, dict[str, str], bytes]]


@dataclass
class ScriptedS3:
    answer: Answer
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        scripted = self
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with lock:
                    scripted.connections += 1

            def log_message(self, *_: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True)
                         .items()}
                request = Request(self.command, parts.path, query,
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                with lock:
                    scripted.requests.append(request)
                status, headers, payload = scripted.answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedS3:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def error(code: str, status: int, message: str = "scripted") -> tuple[int, dict[str, str], bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    return status, {"Content-Type": "application/xml"}, body


def listing(keys: list[tuple[str, int]], *, token: str = "") -> tuple[int, dict[str, str], bytes]:
    """A ListObjectsV2 page; ``token`` set makes it truncated with that continuation token."""
    contents = "".join(f"<Contents><Key>{key}</Key><Size>{size}</Size>"
                       f"<LastModified>2026-11-25T00:00:00.000Z</LastModified></Contents>"
                       for key, size in keys)
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}"
            f"</NextContinuationToken>" if token else "<IsTruncated>false</IsTruncated>")
    body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
            'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + contents + more +
            "</ListBucketResult>").encode()
    return 200, {"Content-Type": "application/xml"}, body
