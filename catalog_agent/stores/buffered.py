"""Connections that receive a response body straight into one buffer, without copies.

Why: asyncio's ``StreamReader`` copies every byte it receives twice (``feed_data`` appends
each chunk to its buffer, ``read`` copies it out again): in a get of 1 GiB that was a third of
the event loop's time. A ``BufferedProtocol`` lets the transport, plain or TLS, receive into a
buffer its protocol chooses. While a body is read with :meth:`BodyProtocol.receive` and the
reader holds nothing, the bytes land in the connection's body buffer and are handed on as a
view of it; everything else (heads, short answers, bytes that came while nobody waited) goes
through the ``StreamReader`` as before, so the two never disagree about what came first.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

RECEIVE_SIZE = 256 * 1024  # as asyncio's own transports receive
_scratch = threading.local()  # one receive buffer per event loop's thread (see get_buffer)


class BodyProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """A ``StreamReaderProtocol`` that can receive a body into its own buffer."""

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self._body_reader = reader  # the base class lets go of it when the connection is lost
        self._body: memoryview | None = None  # allocated at the first body that needs it
        self._waiting = False  # a body read waits: bytes may land in the body buffer
        self._most = 0  # how many of them belong to the body
        self._filled = 0
        self._body_waiter: asyncio.Future[None] | None = None

    def _into_body(self) -> bool:
        """Whether the next bytes land in the body buffer. The same in get_buffer and in the
        buffer_updated that follows it: the transport calls both at once, with nothing between
        that could change it."""
        return self._waiting and self._filled < self._most

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._into_body():
            # The whole buffer, not just what the body still needs: bytes sent after the body
            # (which must keep the connection out of the pool) come with its last ones.
            return self._body[self._filled:]  # type: ignore[index]
        # Copied out in buffer_updated, which the transport calls right after receiving
        # into it, on the same thread: one buffer serves every connection of the loop.
        buffer = getattr(_scratch, "buffer", None)
        if buffer is None:
            buffer = _scratch.buffer = memoryview(bytearray(RECEIVE_SIZE))
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._into_body():
            self._filled += nbytes
            if self._filled > self._most:  # past the body: the reader's, in order
                after = self._body[self._most:self._filled]  # type: ignore[index]
                self._filled = self._most
                self.data_received(bytes(after))
            self._wake()
        else:
            self.data_received(bytes(_scratch.buffer[:nbytes]))

    def eof_received(self) -> bool:
        keep_open = super().eof_received()
        self._wake()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()

    def _wake(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    async def receive(self, most: int) -> memoryview:
        """Up to ``most`` (at most RECEIVE_SIZE) bytes, as they arrive; empty at the end of
        the stream. Only when the reader holds no bytes (they come first). The view is valid
        until the next call: the next bytes land in the same buffer."""
        reader = self._body_reader
        assert not reader._buffer, "bytes wait in the reader"  # type: ignore[attr-defined]
        error = reader.exception()
        if error is not None:
            raise error
        if reader.at_eof():
            return memoryview(b"")
        if self._body is None:
            self._body = memoryview(bytearray(RECEIVE_SIZE))
        self._most, self._filled, self._waiting = min(most, RECEIVE_SIZE), 0, True
        self._body_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._body_waiter  # bytes keep landing after the wake until this task runs
            filled = self._filled
        finally:
            self._body_waiter = None
            self._waiting = False
        if filled:
            return self._body[:filled]
        error = reader.exception()
        if error is not None:
            raise error
        return memoryview(b"")  # the end of the stream


async def open_connection(host: str, port: int, *, limit: int, ssl_context: ssl.SSLContext | None,
                          happy_eyeballs_delay: float
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection``, with a :class:`BodyProtocol` under the streams (it stays
    under them through ``StreamWriter.start_tls``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = BodyProtocol(reader, loop)
    transport, _ = await loop.create_connection(
        lambda: protocol, host, port, ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
        happy_eyeballs_delay=happy_eyeballs_delay)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def protocol_of(writer: asyncio.StreamWriter) -> BodyProtocol:
    protocol = writer.transport.get_protocol()
    assert isinstance(protocol, BodyProtocol), protocol
    return protocol
