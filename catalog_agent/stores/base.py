"""What a catalog store offers the transfer engine: list, read, write, copy whole objects."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

# Called with a byte count as data moves, for progress reporting.
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
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

    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    def head(self, key: str) -> StoredObject | None: ...

    def read_small(self, key: str, limit: int) -> bytes | None: ...

    def write_small(self, key: str, data: bytes) -> None: ...

    def upload(self, source: Path, key: str, *, size: int, sha256: str, executable: bool,
               progress: ProgressCallback, cancel: threading.Event) -> None: ...

    def download(self, key: str, target: Path, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched: ...

    def copy(self, source_key: str, target_key: str, *, size: int) -> None: ...

    def close(self) -> None: ...
