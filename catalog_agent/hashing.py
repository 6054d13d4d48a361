"""SHA-256 of files and streams: the catalog's integrity record.

A put reads each file from one open descriptor (:mod:`catalog_agent.local`); :func:`digest_file`
reads it once and returns everything the upload needs to prove it sent those same bytes: the
whole file's hash (the catalog's record and a single PUT's checksum), each multipart part's
hash (the part's checksum), and for a small file the bytes themselves.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

from catalog_agent.errors import FileChanged, Interrupted

CHUNK = 1024 * 1024
# Files up to this size are read into memory once: hashed and sent from the same bytes.
IN_MEMORY = 256 * 1024


@dataclass(frozen=True, slots=True)
class Digest:
    """What one read of a file gave: its SHA-256 and what the upload sends as checksums."""

    sha256: str  # hex, of the whole file
    size: int
    part_size: int | None = None  # multipart: bytes per part (the last may be shorter)
    part_sha256: tuple[bytes, ...] = ()  # raw digests, one per part
    data: bytes | None = None  # the whole file, when it is small


def digest_file(fd: int, size: int, *, part_size: int | None = None,
                cancel: threading.Event | None = None) -> Digest:
    """Read ``size`` bytes of ``fd`` from offset 0 (pread: the file offset is not used)."""
    if size <= IN_MEMORY and part_size is None:
        data = _read_exactly(fd, 0, size)
        return Digest(hashlib.sha256(data).hexdigest(), size, data=data)
    whole = hashlib.sha256()
    parts: list[bytes] = []
    part = hashlib.sha256() if part_size else None
    in_part = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    offset = 0
    while offset < size:
        if cancel is not None and cancel.is_set():
            raise Interrupted("stopped before the transfer finished")
        want = min(CHUNK, size - offset)
        if part_size:
            want = min(want, part_size - in_part)
        count = os.preadv(fd, [view[:want]], offset)
        if count <= 0:
            raise FileChanged(f"the file ended {size - offset} bytes early: it shrank while "
                              f"being read")
        whole.update(view[:count])
        offset += count
        if part is not None:
            part.update(view[:count])
            in_part += count
            if in_part == part_size or offset == size:
                parts.append(part.digest())
                part, in_part = hashlib.sha256(), 0
    return Digest(whole.hexdigest(), size, part_size, tuple(parts))


def _read_exactly(fd: int, offset: int, size: int) -> bytes:
    chunks = []
    while size:
        data = os.pread(fd, size, offset)
        if not data:
            raise FileChanged(f"the file ended {size} bytes early: it shrank while being read")
        chunks.append(data)
        offset += len(data)
        size -= len(data)
    return b"".join(chunks)


def sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``fd`` (get's check of a file already present)."""
    return digest_file(fd, size).sha256
