"""What a catalog store offers the transfer engine: list, read, write, copy whole objects."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol

if TYPE_CHECKING:
    from catalog_agent.hashing import Digest
    from catalog_agent.local import Incoming, OpenedFile

# Called with a byte count as data moves, for progress reporting.
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as listed or read from the store."""

    key: str
    size: int
    sha256: str | None = None  # from the object's own metadata, when known
    executable: bool = False
    modified: float = 0.0


@dataclass(frozen=True)
class Fetched:
    """What a download learned: the hash of the bytes written and the object's own record."""

    sha256: str
    stored_sha256: str | None
    executable: bool


class Store(Protocol):
    location: str  # catalog_handler_location, e.g. s3://bucket or /mnt/catalog
    max_object_size: int | None  # the largest object the store can hold (None: no limit)
    max_key_bytes: int | None  # the longest key, in UTF-8 bytes (None: no limit)

    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    def head(self, key: str) -> StoredObject | None: ...

    def read_small(self, key: str, limit: int) -> bytes | None: ...

    def write_small(self, key: str, data: bytes) -> None: ...

    def read_stream(self, key: str) -> Iterator[bytes] | None:
        """The object's bytes in pieces as they arrive; None when there is no such object."""

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Store the concatenation of ``chunks`` without holding it whole."""

    def part_size(self, size: int) -> int | None:
        """Bytes per part when an object of ``size`` bytes goes in parts (None: in one piece)."""

    def upload(self, opened: OpenedFile, digest: Digest, key: str, *, executable: bool,
               progress: ProgressCallback, cancel: threading.Event) -> None:
        """Store exactly the bytes ``digest`` was computed from (read from ``opened``)."""

    def download(self, key: str, target: Incoming, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched:
        """Write the object into ``target`` (a new temporary file) and hash what was written."""

    async def upload_async(self, opened: OpenedFile, digest: Digest, key: str, *,
                           executable: bool, progress: ProgressCallback,
                           cancel: threading.Event) -> None:
        """:meth:`upload` on the transfer's event loop."""

    async def download_async(self, key: str, target: Incoming, *, size: int,
                             progress: ProgressCallback, cancel: threading.Event) -> Fetched:
        """:meth:`download` on the transfer's event loop."""

    async def aclose(self) -> None:
        """Close what the event loop opened (connections), before the loop ends."""

    def copy(self, source_key: str, target_key: str, *, size: int) -> None: ...

    def close(self) -> None: ...
