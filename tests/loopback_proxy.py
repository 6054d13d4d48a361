"""A small but real HTTP proxy on loopback, for the proxy tests: CONNECT tunnels (https
endpoints) and absolute-form forwarding (http endpoints), Basic proxy authentication, and TLS
to the proxy itself when given a certificate (an ``https://`` proxy URL).

It relays bytes: a tunnel carries the client's TLS to the server untouched, and a forwarded
request reaches the server with its signed headers as sent (only the request line becomes
origin-form and ``Proxy-Authorization`` is removed, as any proxy does). ``seen`` records
(method, target, Proxy-Authorization) of every request the proxy itself read. It runs on an
event loop of its own thread (one thread, so TLS to the proxy is never used from two).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from urllib.parse import urlsplit


class LoopbackProxy:
    def __init__(self, *, user: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._login = (None if user is None else
                       "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        self.seen: list[tuple[str, str, str | None]] = []
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls))
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                method, target, headers = head
                login = headers.pop("proxy-authorization", None)
                self.seen.append((method, target, login))
                if self._login is not None and login != self._login:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    return
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    up_reader, upstream = await asyncio.open_connection(host.strip("[]"),
                                                                        int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await asyncio.gather(_pump(reader, upstream), _pump(up_reader, writer))
                    return
                url = urlsplit(target)
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(url.hostname,
                                                                        url.port or 80)
                    asyncio.ensure_future(_pump(up_reader, writer))
                origin_form = url.path + (f"?{url.query}" if url.query else "")
                lines = [f"{method} {origin_form} HTTP/1.1"] + [
                    f"{name}: {value}" for name, value in headers.items()]
                upstream.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                upstream.write(await reader.readexactly(int(headers.get("content-length",
                                                                        "0") or 0)))
                await upstream.drain()
        except (OSError, ValueError, EOFError, asyncio.CancelledError):
            return
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _pump(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while block := await source.read(1 << 16):
            target.write(block)
            await target.drain()
    except OSError:
        pass
    finally:
        target.close()
