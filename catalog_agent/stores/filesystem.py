"""A catalog in a local folder (``type: file-system``): same layout, for local runs and volumes.

Hashes live in the manifests, as in magnus's file-system catalog; an object's executable bit is
its file mode. The folder is reached the way the data folder is (:mod:`catalog_agent.local`):
through descriptors, never a symlink; every write goes through a temporary name and a rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Iterable, Iterator

from catalog_agent.errors import FileChanged, IntegrityError, Interrupted, TransferError
from catalog_agent.hashing import Digest
from catalog_agent.local import PART_SUFFIX, Folder, FolderMissing, Incoming, OpenedFile, \
    open_folder
from catalog_agent.stores.base import Fetched, ProgressCallback, StoredObject

CHUNK = 1024 * 1024


class FileSystemStore:
    max_object_size = None
    max_key_bytes = None  # reached through descriptors: no PATH_MAX on the whole key

    def __init__(self, location: str) -> None:
        self.root = Path(location)
        self.location = str(self.root.resolve())
        self._folder: Folder | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._folder is not None:
            self._folder.close()

    def _open(self, create: bool) -> Folder | None:
        """The catalog folder, opened once; None while it does not exist (nothing stored)."""
        with self._lock:
            if self._folder is None:
                try:
                    self._folder = open_folder(self.root, create=create, hide_reserved=False,
                                               what="catalog folder")
                except FolderMissing:
                    return None
            return self._folder

    def part_size(self, size: int) -> int | None:
        return None

    def list(self, prefix: str) -> Iterator[StoredObject]:
        folder = self._open(create=False)
        if folder is None:
            return
        for relative, st in folder.walk(prefix):
            if relative.endswith(PART_SUFFIX) or not stat.S_ISREG(st.st_mode):
                continue
            yield StoredObject(relative, st.st_size, executable=bool(st.st_mode & 0o100),
                               modified=st.st_mtime)

    def head(self, key: str) -> StoredObject | None:
        fd = self._read(key)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return StoredObject(key, st.st_size, executable=bool(st.st_mode & 0o100),
                            modified=st.st_mtime)

    def read_small(self, key: str, limit: int) -> bytes | None:
        fd = self._read(key)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise IntegrityError(f"{self.root / key} is larger than {limit} bytes")
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def _read(self, key: str) -> int | None:
        folder = self._open(create=False)
        if folder is None:
            return None
        try:
            return folder.open_existing(key)
        except (OSError, IntegrityError):
            return None

    def read_stream(self, key: str) -> Iterator[bytes] | None:
        fd = self._read(key)
        if fd is None:
            return None
        return self._chunks(fd)

    @staticmethod
    def _chunks(fd: int) -> Iterator[bytes]:
        try:
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        target = self._create(key)
        try:
            offset = 0
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    count = os.pwrite(target.fd, view, offset)
                    view, offset = view[count:], offset + count
            target.commit(executable=False)
        finally:
            target.discard()

    def write_small(self, key: str, data: bytes) -> None:
        target = self._create(key)
        try:
            os.write(target.fd, data)
            target.commit(executable=False)
        finally:
            target.discard()

    def _create(self, key: str) -> Incoming:
        folder = self._open(create=True)
        assert folder is not None
        return folder.create(key)

    def upload(self, opened: OpenedFile, digest: Digest, key: str, *, executable: bool,
               progress: ProgressCallback, cancel: threading.Event) -> None:
        target = self._create(key)
        try:
            written = _copy_hashing(opened.fd, target.fd, digest.size, progress, cancel)
            if written != digest.sha256:
                raise FileChanged(f"{opened.relative} changed while it was being put; nothing "
                                  f"was recorded for this put")
            target.commit(executable)
        except OSError as exc:
            raise TransferError(f"store {key} in {self.root}: {exc.strerror or exc}") from None
        finally:
            target.discard()

    async def upload_async(self, opened: OpenedFile, digest: Digest, key: str, *,
                           executable: bool, progress: ProgressCallback,
                           cancel: threading.Event) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.upload(
            opened, digest, key, executable=executable, progress=progress, cancel=cancel))

    async def download_async(self, key: str, target: Incoming, *, size: int,
                             progress: ProgressCallback, cancel: threading.Event) -> Fetched:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.download(
            key, target, size=size, progress=progress, cancel=cancel))

    async def aclose(self) -> None:
        pass

    def download(self, key: str, target: Incoming, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched:
        source = self._read(key)
        if source is None:
            raise TransferError(f"{self.root / key} disappeared from the catalog")
        try:
            st = os.fstat(source)
            digest = _copy_hashing(source, target.fd, st.st_size, progress, cancel)
            return Fetched(digest, None, bool(st.st_mode & 0o100))
        finally:
            os.close(source)

    def copy(self, source_key: str, target_key: str, *, size: int) -> None:
        source = self._read(source_key)
        if source is None:
            raise TransferError(f"{self.root / source_key} disappeared from the catalog")
        target = self._create(target_key)
        try:
            st = os.fstat(source)
            _copy_hashing(source, target.fd, st.st_size, lambda _: None, threading.Event())
            target.commit(executable=bool(st.st_mode & 0o100))
        finally:
            os.close(source)
            target.discard()


def _copy_hashing(source: int, target: int, size: int, progress: ProgressCallback,
                  cancel: threading.Event) -> str:
    """Copy ``size`` bytes from the start of ``source`` into ``target``; their SHA-256."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        if cancel.is_set():
            raise Interrupted("stopped before the transfer finished")
        chunk = os.pread(source, min(CHUNK, size - offset), offset)
        if not chunk:
            raise FileChanged("the file shrank while it was being copied")
        view = memoryview(chunk)
        at = offset
        while view:
            count = os.pwrite(target, view, at)
            view, at = view[count:], at + count
        digest.update(chunk)
        offset += len(chunk)
        progress(len(chunk))
    return digest.hexdigest()
