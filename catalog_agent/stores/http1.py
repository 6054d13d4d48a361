"""How the agent's S3 client reads an HTTP/1.1 answer: strictly, without any network.

Why strict: every byte of a response on a pooled connection decides where the next response
starts. An answer read with a wrong length (a ``Content-Length`` of ``+5`` or ``1_0``, which
``int()`` accepts; a chunk size of ``0x10``; an interim ``100 Continue`` taken for the final
answer) shifts every later answer on that connection. So a head is taken only when it is
exactly what RFC 9112 allows, a body's length only from strict digits, and anything else is a
:class:`ProtocolError`: the connection is dropped and the request retried like a broken
connection, never read on. A header value holding CR, LF or NUL is refused too: values such as
an ETag are sent back to the server (``If-Match``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]{1,19}")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n\x00]*)?\r\n")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")
_RANGE = re.compile(r"bytes=([0-9]{1,19})-([0-9]{0,19})")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")


class ProtocolError(ValueError):
    """The server's bytes are not an HTTP/1.1 answer the client can read without guessing."""


@dataclass(frozen=True)
class Head:
    """A response's status line and headers (names lowercase; a repeated header's values
    joined with ``", "``, as RFC 9110 allows for list headers)."""

    minor: int  # HTTP/1.<minor>
    status: int
    headers: dict[str, str]

    @property
    def interim(self) -> bool:
        """A 1xx answer (100 Continue, 103 Early Hints): the real one follows it."""
        return 100 <= self.status < 200

    @property
    def success(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Framing:
    """Where a response body ends, and whether its connection may carry the next request."""

    kind: str  # "none", "length", "chunked" or "close" (read until the server closes)
    length: int = 0
    reusable: bool = True


def parse_head(raw: bytes) -> Head:
    """A response head (status line and header lines, ending with an empty line)."""
    text = raw.decode("latin-1")
    if not text.endswith("\r\n\r\n"):
        raise ProtocolError("a response head that does not end with an empty line")
    lines = text[:-4].split("\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    status = int(status_line.group(2))
    if status < 100:
        raise ProtocolError(f"status {status:03d} is not an HTTP status")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise ProtocolError("a folded header line (obsolete line folding)")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ProtocolError(f"a malformed header line: {line[:80]!r}")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ProtocolError(f"header {name} holds a CR, LF or NUL")
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Head(int(status_line.group(1)), status, headers)


def framing(head: Head, method: str) -> Framing:
    """How the body of ``head``'s response to ``method`` is delimited (RFC 9112 section 6.3)."""
    connection = {token.strip().lower() for token in head.headers.get("connection", "").split(",")}
    keep = head.minor == 1 and "close" not in connection  # HTTP/1.0: never reused
    if method == "HEAD" or head.interim or head.status in (204, 304):
        return Framing("none", 0, keep)
    encoding = head.headers.get("transfer-encoding")
    if encoding is not None:
        if encoding.lower() != "chunked":
            raise ProtocolError(f"Transfer-Encoding {encoding[:80]!r} (only chunked is read)")
        # Both framings at once is how requests are smuggled: the body is read as chunked (as
        # RFC 9112 says) but the connection is not trusted with another request.
        return Framing("chunked", 0, keep and "content-length" not in head.headers)
    length = head.headers.get("content-length")
    if length is not None:
        return Framing("length", content_length(length), keep)
    return Framing("close", 0, False)


def content_length(value: str) -> int:
    """A Content-Length: digits only (``-1``, ``+5``, ``1_0`` and `` 0x10`` are refused); a
    repeated header must repeat the same number."""
    values = {item.strip(" \t") for item in value.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise ProtocolError(f"Content-Length {value[:80]!r} is not one number of digits")
    return int(next(iter(values)))


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (hexadecimal digits, then optional extensions, CRLF)."""
    found = _CHUNK_LINE.fullmatch(line)
    if found is None:
        raise ProtocolError(f"a malformed chunk-size line: {line[:40]!r}")
    return int(found.group(1), 16)


def asked_range(value: str | None) -> tuple[int, int | None] | None:
    """``(first, last)`` of a ``Range: bytes=first-[last]`` request header (last None: to the
    end); None for no header or another form (which the client does not send)."""
    found = _RANGE.fullmatch(value or "")
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)) if found.group(2) else None


def range_problem(asked: tuple[int, int | None], head: Head) -> str | None:
    """What is wrong with a successful answer to a ranged GET, or None.

    The bytes must be those asked for: a 206 whose ``Content-Range`` starts where the request
    did and ends where it asked (or at the object's end). A 200 means the server ignored the
    Range and is sending the whole object, which written at the range's offset would corrupt
    the file.
    """
    first, last = asked
    wanted = f"bytes={first}-{'' if last is None else last}"
    if head.status != 206:
        return f"the server answered {head.status} to a GET of {wanted}: it ignored the Range"
    found = _CONTENT_RANGE.fullmatch(head.headers.get("content-range", ""))
    if found is None:
        return (f"the server's 206 to a GET of {wanted} has no valid Content-Range "
                f"({head.headers.get('content-range', '')[:80]!r})")
    start, end = int(found.group(1)), int(found.group(2))
    total = None if found.group(3) == "*" else int(found.group(3))
    if total is not None and end >= total or end < start:
        return f"the server's Content-Range {found.group(0)!r} is not a range of the object"
    if last is None:
        expected_end = None if total is None else total - 1
    else:
        expected_end = last if total is None else min(last, total - 1)
    if start != first or (expected_end is not None and end != expected_end):
        return f"the server sent {found.group(0)} for a GET of {wanted}"
    length = head.headers.get("content-length")
    if length is not None and content_length(length) != end - start + 1:
        return (f"the server's Content-Length {length} does not match its Content-Range "
                f"{found.group(0)}")
    return None


def range_length(head: Head) -> int:
    """How many bytes the ``Content-Range`` of a 206 that :func:`range_problem` accepted
    announces: the most its body may hold."""
    found = _CONTENT_RANGE.fullmatch(head.headers.get("content-range", ""))
    assert found is not None, "range_problem accepted the answer first"
    return int(found.group(2)) - int(found.group(1)) + 1
