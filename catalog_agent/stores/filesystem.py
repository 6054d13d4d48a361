"""A catalog in a local folder (``type: file-system``): same layout, for local runs and volumes.

Hashes live in the manifests, as in magnus's file-system catalog; an object's executable bit is
its file mode. Every write goes through a temporary name and a rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

from catalog_agent.errors import IntegrityError, Interrupted, TransferError
from catalog_agent.local import commit, destination, discard, open_regular, temporary_for
from catalog_agent.stores.base import Fetched, ProgressCallback, StoredObject

CHUNK = 1024 * 1024


class FileSystemStore:
    def __init__(self, location: str) -> None:
        self.root = Path(location)
        self.location = str(self.root.resolve())

    def close(self) -> None:
        pass

    def _path(self, key: str) -> Path:
        return self.root / key

    def list(self, prefix: str) -> Iterator[StoredObject]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for directory, _dirs, files in os.walk(base):
            for name in sorted(files):
                path = Path(directory) / name
                if name.endswith(".catalog-agent.part"):
                    continue
                st = os.lstat(path)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                key = path.relative_to(self.root).as_posix()
                yield StoredObject(key, st.st_size, executable=bool(st.st_mode & 0o100),
                                   modified=st.st_mtime)

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        if not path.is_file() or path.is_symlink():
            return None
        st = path.stat()
        return StoredObject(key, st.st_size, executable=bool(st.st_mode & 0o100),
                            modified=st.st_mtime)

    def read_small(self, key: str, limit: int) -> bytes | None:
        path = self._path(key)
        if not path.is_file():
            return None
        if path.stat().st_size > limit:
            raise IntegrityError(f"{path} is larger than {limit} bytes")
        return path.read_bytes()

    def write_small(self, key: str, data: bytes) -> None:
        final = destination(self.root, key)
        temporary = temporary_for(final)
        try:
            temporary.write_bytes(data)
            commit(temporary, final, executable=False)
        except BaseException:
            discard(temporary)
            raise

    def upload(self, source: Path, key: str, *, size: int, sha256: str, executable: bool,
               progress: ProgressCallback, cancel: threading.Event) -> None:
        final = destination(self.root, key)
        temporary = temporary_for(final)
        try:
            with os.fdopen(open_regular(source), "rb") as reader, open(temporary, "wb") as writer:
                written = _copy_hashing(reader, writer, progress, cancel)
            if written != sha256:
                raise IntegrityError(f"{source} changed while it was being put")
            commit(temporary, final, executable)
        except OSError as exc:
            discard(temporary)
            raise TransferError(f"store {key} in {self.root}: {exc.strerror or exc}") from None
        except BaseException:
            discard(temporary)
            raise

    def download(self, key: str, target: Path, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched:
        source = self._path(key)
        try:
            with os.fdopen(open_regular(source), "rb") as reader, open(target, "wb") as writer:
                digest = _copy_hashing(reader, writer, progress, cancel)
                executable = bool(os.fstat(reader.fileno()).st_mode & 0o100)
        except FileNotFoundError:
            raise TransferError(f"{source} disappeared from the catalog") from None
        return Fetched(digest, None, executable)

    def copy(self, source_key: str, target_key: str, *, size: int) -> None:
        source = self._path(source_key)
        final = destination(self.root, target_key)
        temporary = temporary_for(final)
        try:
            shutil.copyfile(source, temporary)
            commit(temporary, final, executable=bool(source.stat().st_mode & 0o100))
        except BaseException:
            discard(temporary)
            raise


def _copy_hashing(reader: BinaryIO, writer: BinaryIO, progress: ProgressCallback,
                  cancel: threading.Event) -> str:
    """Copy ``reader`` to ``writer`` and return the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    while chunk := reader.read(CHUNK):
        if cancel.is_set():
            raise Interrupted("stopped before the transfer finished")
        writer.write(chunk)
        digest.update(chunk)
        progress(len(chunk))
    return digest.hexdigest()
