"""The S3 store: one request per small object, parallel parts for large ones, all on one loop.

Every request goes through :class:`.s3_client.S3Client` on the store's own event loop: the
command's control requests (listing, manifests, clean-up) run it to completion one at a time
(:meth:`S3Store.run`), and the transfer engine runs its workers on it. A botocore client is
made only for server-side copies (sync), so a get or put never loads botocore's S3 model.

What is sent is what was hashed: a put reads each file once (:func:`catalog_agent.hashing.
digest_file`) and every PUT and every part carries the SHA-256 of its bytes, which the server
verifies; the object's ``x-amz-meta-sha256`` and the manifest record the whole file's hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

from catalog_agent import tls
from catalog_agent.aws import RetryCounter, s3_client, translate
from catalog_agent.config import Config
from catalog_agent.errors import AgentError, IntegrityError, Interrupted, TransferError
from catalog_agent.hashing import Digest
from catalog_agent.local import Incoming, OpenedFile
from catalog_agent.stores import wire
from catalog_agent.stores.base import Fetched, ProgressCallback, StoredObject
from catalog_agent.stores.s3_client import SETTLE_AFTER_STOP, BodyCut, S3Client
from catalog_agent.stores.wire import Payload

T = TypeVar("T")
SHA_META = "sha256"  # x-amz-meta-sha256
MODE_META = "mode"  # x-amz-meta-mode: "755" for executables
PART_WORKERS = 16  # part requests at once, across all large objects
WORKER_THREADS = 8  # blocking work beside the loop: hashing large files
MAX_COPY_OBJECT = 5 * 1024 ** 3
# S3's limits (and s3transfer's rule for staying within them).
MIN_PART_SIZE = 5 * 1024 ** 2
MAX_PART_SIZE = 5 * 1024 ** 3
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 ** 4
ABORT_SECONDS = 15.0  # an abort and its re-checks, retries included: 5 + 15 s < a 30 s grace
ABORT_LOOK_PAGES = 3  # after an abort, pages of unfinished uploads read to see it is gone
MAX_KEY_BYTES = 1024
DEFAULT_THRESHOLD = 16 * 1024 ** 2
DEFAULT_PART_SIZE = 8 * 1024 ** 2


def part_size_for(size: int, preferred: int = DEFAULT_PART_SIZE) -> int:
    """The part size of a multipart upload of ``size`` bytes: ``preferred``, doubled until no
    more than 10,000 parts are needed (s3transfer's rule), within S3's 5 MiB .. 5 GiB."""
    part = min(max(preferred, MIN_PART_SIZE), MAX_PART_SIZE)
    while math.ceil(size / part) > MAX_PARTS and part < MAX_PART_SIZE:
        part = min(part * 2, MAX_PART_SIZE)
    return part


def part_ranges(size: int, part: int) -> list[tuple[int, int]]:
    """(start, end) of each part, in order."""
    return [(start, min(start + part, size)) for start in range(0, size, part)] or [(0, 0)]


class S3Store:
    max_object_size = MAX_OBJECT_SIZE
    max_key_bytes = MAX_KEY_BYTES

    def __init__(self, client: S3Client, bucket: str, *, attempts: int,
                 extra_args: dict[str, str], make_botocore: Callable[[], Any],
                 threshold: int = DEFAULT_THRESHOLD, part_size: int = DEFAULT_PART_SIZE,
                 retry_counter: RetryCounter | None = None) -> None:
        """``make_botocore``: a botocore client for server-side copies, made on first use
        (loading its model costs 0.3 s)."""
        self.s3 = client
        self._botocore: Any = None
        self._make_botocore = make_botocore
        self._botocore_lock = threading.Lock()
        self.bucket = bucket
        self.location = f"s3://{bucket}"
        self.attempts = attempts
        self.extra_args = extra_args
        self.threshold = threshold
        self.preferred_part_size = part_size
        self._manager: Any = None
        self._manager_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._part_slots: asyncio.Semaphore | None = None
        self.retry_counter = retry_counter or RetryCounter()

    @classmethod
    def from_config(cls, config: Config, cancel: threading.Event | None = None) -> S3Store:
        extra: dict[str, str] = {}
        if config.server_side_encryption:
            extra["ServerSideEncryption"] = config.server_side_encryption
        if config.sse_kms_key_id:
            extra["SSEKMSKeyId"] = config.sse_kms_key_id
        from catalog_agent.credentials import environment_keys, make_session

        pool_size = config.concurrency + PART_WORKERS + 2
        static = environment_keys(config)
        keys: Callable[[], tuple[str, str, str | None]]
        sessions: list[Any] = []

        def session() -> Any:
            """The botocore session (made once): for the credential chain, and for copies."""
            if not sessions:
                sessions.append(make_session(config))
            return sessions[0]

        if static is not None:
            def keys() -> tuple[str, str, str | None]:
                return static
        else:
            credentials = session().get_credentials()
            if credentials is None:
                from botocore.exceptions import NoCredentialsError

                raise translate(NoCredentialsError(), f"read s3://{config.s3_bucket}")

            def keys() -> tuple[str, str, str | None]:
                frozen = credentials.get_frozen_credentials()
                return frozen.access_key, frozen.secret_key, frozen.token

        counter = RetryCounter()
        where = wire.endpoint(_endpoint(config), region=config.region, bucket=config.s3_bucket,
                              addressing_style=config.addressing_style)
        client = S3Client(where, region=config.region, credentials=keys,
                          attempts=config.max_attempts,
                          verify=tls.verify(config, lazy=True),
                          on_retry=counter.add, retry_mode=config.retry_mode, stop=cancel)
        return cls(client, config.s3_bucket, attempts=config.max_attempts, extra_args=extra,
                   make_botocore=lambda: s3_client(config, pool_size=pool_size,
                                                   session=session()),
                   threshold=config.multipart_threshold, part_size=config.multipart_chunksize,
                   retry_counter=counter)

    # --- the event loop ---

    def run(self, work: Awaitable[T]) -> T:
        """Run a coroutine on the store's loop to its end (the command's thread waits)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop.set_default_executor(ThreadPoolExecutor(
                max_workers=WORKER_THREADS, thread_name_prefix="catalog-agent"))
        return self._loop.run_until_complete(work)

    def _pages(self, pages: Any) -> Iterator[Any]:
        """The pages of an async listing, each fetched when the caller wants it."""
        while True:
            try:
                yield self.run(pages.__anext__())
            except StopAsyncIteration:
                return

    async def aclose(self) -> None:
        """Close the connections (called on the loop, at the end of a transfer)."""
        await self.s3.aclose()

    def close(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            try:
                loop.run_until_complete(self.s3.aclose())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
        if self._manager is not None:
            self._manager.shutdown()

    # --- botocore, for server-side copies only ---

    @property
    def client(self) -> Any:
        """The botocore client (server-side copies only), made on first use."""
        with self._botocore_lock:
            if self._botocore is None:
                self._botocore = self._make_botocore()
                self._botocore.meta.events.register("request-created.s3",
                                                    self.retry_counter.on_request_created)
            return self._botocore

    @property
    def manager(self) -> Any:
        """s3transfer's manager, for multipart copies of objects over 5 GiB only."""
        with self._manager_lock:
            if self._manager is None:
                from s3transfer.manager import TransferConfig, TransferManager

                config = TransferConfig(multipart_threshold=self.threshold,
                                        multipart_chunksize=self.preferred_part_size,
                                        max_request_concurrency=PART_WORKERS)
                self._manager = TransferManager(self.client, config)
            return self._manager

    @property
    def retries(self) -> int:
        """Requests sent again after a transient failure, and broken downloads restarted."""
        return self.retry_counter.count

    def _headers(self, metadata: dict[str, str]) -> dict[str, str]:
        """Request headers: object metadata and server-side encryption."""
        headers = {f"x-amz-meta-{k}": v for k, v in metadata.items()}
        for arg, header in _SSE_HEADERS.items():
            if arg in self.extra_args:
                headers[header] = self.extra_args[arg]
        return headers

    def part_size(self, size: int) -> int | None:
        """The part size for an object of ``size`` bytes, or None when one PUT sends it."""
        return part_size_for(size, self.preferred_part_size) if size >= self.threshold else None

    def _translated(self, exc: BaseException, what: str) -> AgentError:
        if isinstance(exc, AgentError):
            return exc
        return translate(exc, what, bucket=self.bucket)

    # --- listing and small documents ---

    def list(self, prefix: str) -> Iterator[StoredObject]:
        try:
            for page in self._pages(self.s3.list_pages(prefix)):
                for key, size, modified in page:
                    yield StoredObject(key, size, modified=modified)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an agent error
            raise self._translated(exc, f"list s3://{self.bucket}/{prefix}") from None

    def head(self, key: str) -> StoredObject | None:
        try:
            reply = self.run(self.s3.head(key))
            if reply is None:
                return None
            return _stored(key, reply.headers, int(reply.headers.get("content-length", 0)))
        except Exception as exc:  # noqa: BLE001
            raise self._translated(exc, f"read s3://{self.bucket}/{key}") from None

    def read_small(self, key: str, limit: int) -> bytes | None:
        try:
            return self.run(self._read_small(key, limit))
        except Exception as exc:  # noqa: BLE001
            if wire.status_of(exc) == 404:
                return None
            raise self._translated(exc, f"read s3://{self.bucket}/{key}") from None

    async def _read_small(self, key: str, limit: int) -> bytes:
        for attempt in range(1, self.attempts + 1):
            try:
                return (await self.s3.read(key, limit)).data
            except (OSError, EOFError) as exc:  # the body cut short: read it again
                if attempt == self.attempts:
                    raise wire.connection_error(exc, f"s3://{self.bucket}/{key}") from None
                self.retry_counter.add()
        raise AssertionError("unreachable")

    def read_stream(self, key: str) -> Iterator[bytes] | None:
        """The object's bytes as they arrive (None when there is no such object); a body cut
        short is picked up where it broke (a Range request, If-Match its ETag)."""
        what = f"read s3://{self.bucket}/{key}"
        stream = self.s3.stream(key)
        try:
            first = self.run(stream.__anext__())
        except StopAsyncIteration:
            return iter(())
        except Exception as exc:  # noqa: BLE001
            self.run(stream.aclose())
            if wire.status_of(exc) == 404:
                return None
            if isinstance(exc, BodyCut) and self.attempts > 1:  # cut before its first block
                self.retry_counter.add()
                return self._chunks(key, what, None, 0, "", attempt=2)
            raise self._translated(exc, what) from None
        return self._chunks(key, what, stream, len(first[1]), first[0].headers.get("etag", ""),
                            first[1])

    def _chunks(self, key: str, what: str, stream: Any, offset: int, etag: str,
                first: bytes = b"", *, attempt: int = 1) -> Iterator[bytes]:
        if first:
            yield first
        while True:
            if stream is None:
                headers = {"Range": f"bytes={offset}-", **({"If-Match": etag} if etag else {})} \
                    if offset else None
                stream = self.s3.stream(key, headers)
            try:
                while True:
                    try:
                        reply, block = self.run(stream.__anext__())
                    except StopAsyncIteration:
                        return
                    etag = etag or reply.headers.get("etag", "")
                    offset += len(block)
                    yield block
            except BodyCut as exc:
                if attempt >= self.attempts:
                    raise self._translated(ConnectionError(str(exc)), what) from None
                attempt += 1
                self.retry_counter.add()
            except AgentError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise self._translated(exc, what) from None
            finally:
                if self._loop is not None and not self._loop.is_closed():
                    self.run(stream.aclose())
                stream = None

    def write_small(self, key: str, data: bytes) -> None:
        try:
            headers = {"Content-Type": "application/json", **self._headers({})}
            self.run(self.s3.put(key, Payload.of(data), headers))
        except Exception as exc:  # noqa: BLE001
            raise self._translated(exc, f"write s3://{self.bucket}/{key}") from None

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """Store the concatenated ``chunks`` (a manifest), never holding more than one part:
        one PUT when they stay under the multipart threshold, else a multipart upload of parts
        of ``multipart_chunksize`` bytes, aborted on any failure."""
        what = f"write s3://{self.bucket}/{key}"
        headers = {"Content-Type": "application/json", **self._headers({})}
        pieces = iter(chunks)
        buffer = bytearray()
        for chunk in pieces:
            buffer += chunk
            if len(buffer) >= self.threshold:
                break
        else:
            try:
                self.run(self.s3.put(key, Payload.of(bytes(buffer)), headers))
            except Exception as exc:  # noqa: BLE001
                raise self._translated(exc, what) from None
            return
        try:
            upload_id = self.run(self._begin_upload(key, headers))
        except Exception as exc:  # noqa: BLE001
            raise self._translated(exc, what) from None
        parts: list[tuple[str, str | None]] = []
        size = self.preferred_part_size

        def send(data: bytes) -> None:
            payload = Payload.of(data)
            etag = self.run(self.s3.upload_part(key, upload_id, len(parts) + 1, payload))
            parts.append((etag, wire.checksum(bytes.fromhex(payload.sha256 or ""))))

        try:
            for chunk in pieces:
                buffer += chunk
                while len(buffer) >= size:
                    send(bytes(buffer[:size]))
                    del buffer[:size]
            while len(buffer) >= size:
                send(bytes(buffer[:size]))
                del buffer[:size]
            if buffer:
                send(bytes(buffer))
            self.run(self.s3.complete_upload(key, upload_id, parts))
        except BaseException as exc:
            self.run(self._abort_upload(key, upload_id))
            if not isinstance(exc, Exception):
                raise
            raise self._translated(exc, what) from None

    def abort_incomplete_uploads(self, prefix: str, keys: set[str]) -> int:
        """Abort multipart uploads of ``keys`` under ``prefix``: parts left by a killed put.

        Called before this put starts its own, so every upload found for these keys is stale.
        Only the step's own keys: another step of the run may be uploading at this moment.
        Returns how many were aborted; a role that may not list uploads just leaves them.
        """
        aborted = 0
        try:
            for page in self._pages(self.s3.upload_pages(prefix)):
                for key, upload_id in page:
                    if key in keys:
                        self.run(self.s3.abort(key, upload_id))
                        aborted += 1
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, never the put's failure
            from catalog_agent.logs import get_logger

            get_logger().warning("unfinished multipart uploads not cleaned up",
                                 reason=str(self._translated(exc,
                                                             f"list uploads under {prefix}")))
        return aborted

    # --- data, on the event loop ---

    async def upload_async(self, opened: OpenedFile, digest: Digest, key: str, *,
                           executable: bool, progress: ProgressCallback,
                           cancel: threading.Event) -> None:
        """Store the bytes ``digest`` was computed from, each request carrying their checksum.

        Before a retry the file is checked unchanged: a file written meanwhile is a
        FileChanged (exit 6), not a transient failure.
        """
        metadata = {SHA_META: digest.sha256}
        if executable:
            metadata[MODE_META] = "755"
        headers = self._headers(metadata)
        try:
            if digest.part_size is None:
                payload = Payload(digest.size, data=digest.data, sha256=digest.sha256,
                                  fd=None if digest.data is not None else opened.fd)
                await self.s3.put(key, payload, headers, check=opened.check_unchanged)
                progress(digest.size)
            else:
                await self._put_large(opened, digest, key, headers, progress)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"upload {opened.relative} to s3://{self.bucket}/{key}",
                            bucket=self.bucket) from None

    def _slots(self) -> asyncio.Semaphore:
        """Part requests at once across all large objects: memory and connections stay flat."""
        if self._part_slots is None:
            self._part_slots = asyncio.Semaphore(PART_WORKERS)
        return self._part_slots

    async def _put_large(self, opened: OpenedFile, digest: Digest, key: str,
                         headers: dict[str, str], progress: ProgressCallback) -> None:
        """Parallel multipart upload, each part sent straight from the file (none in memory)
        with its own SHA-256; any failure or a cancel aborts the upload (no orphaned parts)."""
        assert digest.part_size is not None
        parts = part_ranges(digest.size, digest.part_size)
        if len(parts) != len(digest.part_sha256):
            raise IntegrityError(f"{opened.relative}: {len(digest.part_sha256)} part hashes "
                                 f"for {len(parts)} parts")
        upload_id = await self._begin_upload(key, headers)
        etags = [""] * len(parts)
        slots = self._slots()

        async def send(index: int) -> None:
            start, end = parts[index]
            payload = Payload(end - start, fd=opened.fd, offset=start,
                              sha256=digest.part_sha256[index].hex())
            async with slots:
                etags[index] = await _settled(self.s3.upload_part(
                    key, upload_id, index + 1, payload, check=opened.check_unchanged),
                    self.s3.policy.stop)
            progress(end - start)

        try:
            await _all_or_nothing([send(index) for index in range(len(parts))])
            await self.s3.complete_upload(key, upload_id, [
                (etag, wire.checksum(d)) for etag, d in zip(etags, digest.part_sha256)])
        except BaseException:
            await asyncio.shield(self._abort_upload(key, upload_id))
            raise

    async def _begin_upload(self, key: str, headers: dict[str, str]) -> str:
        """Create a multipart upload. Cancelled (SIGTERM) while the request is out, it waits up
        to SETTLE_AFTER_STOP for the answer and aborts that upload: the server may have created
        it already. An answer later than that is given up (the pod's grace period matters
        more); the next put of the step aborts what is left (:meth:`abort_incomplete_uploads`).
        """
        creating = asyncio.ensure_future(self.s3.create_upload(key, headers))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            await _wind_down(creating, settle=True)
            if not creating.cancelled() and creating.exception() is None:
                await self._abort_upload(key, creating.result())
            raise

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        """Abort, then look again: a part cut off mid-send may land after the first abort.

        At most ABORT_SECONDS in all, retries included: after SIGTERM the pod has its grace
        period, and what is left is aborted by the step's next put.
        """
        try:
            await asyncio.wait_for(self._abort_and_look(key, upload_id), ABORT_SECONDS)
        except Exception:  # noqa: BLE001 - the transfer's own failure is the one to report
            return

    async def _abort_and_look(self, key: str, upload_id: str) -> None:
        for wait in (0.0, 0.5, 2.0):
            await asyncio.sleep(wait)
            await self.s3.abort(key, upload_id)
            left = False
            pages = 0
            async for page in self.s3.upload_pages(key, cleanup=True):
                left = left or any(k == key and u == upload_id for k, u in page)
                pages += 1
                if left or pages == ABORT_LOOK_PAGES:  # SIGTERM does not stop this listing:
                    left = True  # not seen in 3 pages: unknown, so abort again (at most
                    break  # twice more); a server paging for ever must not hold the pod
            if not left:
                return

    async def download_async(self, key: str, target: Incoming, *, size: int,
                             progress: ProgressCallback, cancel: threading.Event) -> Fetched:
        """Fetch the object into ``target`` and hash what was written: one GET, or parts."""
        try:
            if size < self.threshold:
                return await self._get_small(key, target, size, progress, cancel)
            return await self._get_large(key, target, size, progress, cancel)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"download s3://{self.bucket}/{key}",
                            bucket=self.bucket) from None

    async def _get_small(self, key: str, target: Incoming, size: int,
                         progress: ProgressCallback, cancel: threading.Event) -> Fetched:
        """GET and write to ``target`` while hashing; a broken body fetches this object again."""
        async def fetch(attempt: int) -> Fetched:
            digest = hashlib.sha256()
            written = [0]

            def sink(block: bytes | memoryview) -> None:
                if written[0] + len(block) > size:  # never more than was listed to the disk
                    raise TransferError(f"download s3://{self.bucket}/{key} failed: the object "
                                        f"is larger than the {size} bytes listed (it changed "
                                        f"since)")
                _pwrite_all(target.fd, block, written[0])
                digest.update(block)
                written[0] += len(block)

            if attempt > 1:  # a body cut short: start the file again
                os.ftruncate(target.fd, 0)
            reply = await self.s3.get(key, sink)
            if written[0] != size:
                raise TransferError(f"download s3://{self.bucket}/{key} failed: the object "
                                    f"has {written[0]} bytes where {size} were listed (it "
                                    f"changed since)")
            progress(written[0])
            stored = _stored(key, reply.headers, written[0])
            return Fetched(digest.hexdigest(), stored.sha256, stored.executable)

        return await self._again_when_cut(fetch, key, "the body", cancel)

    async def _again_when_cut(self, fetch: Callable[[int], Awaitable[T]], key: str, what: str,
                              cancel: threading.Event) -> T:
        """``fetch(attempt)`` again while its response body is cut short, up to max_attempts;
        each new attempt is a counted retry. (botocore does not retry a body: the store does.)"""
        for attempt in range(1, self.attempts + 1):
            if cancel.is_set():
                raise Interrupted("stopped before the transfer finished")
            try:
                return await fetch(attempt)
            except BodyCut:
                if attempt == self.attempts:
                    raise TransferError(f"download s3://{self.bucket}/{key} failed after "
                                        f"retries: {what} was cut short {attempt} "
                                        f"times") from None
                self.retry_counter.add()
        raise AssertionError("unreachable")

    async def _get_large(self, key: str, target: Incoming, size: int,
                         progress: ProgressCallback, cancel: threading.Event) -> Fetched:
        """Parallel ranged GETs written in place, hashed in order while the rest still arrive.

        The first part gives the ETag; every other part asks If-Match it, so an object replaced
        mid-read fails (exit 5) instead of mixing two versions. Each part is hashed in a worker
        thread as soon as it and all before it have landed, so the SHA-256 is ready with the
        last part rather than costing a second pass.
        """
        parts = part_ranges(size, part_size_for(size, self.preferred_part_size))
        fd = target.fd
        slots = self._slots()
        etag, stored = await self._get_part(key, fd, parts[0], size, {}, cancel, slots)
        progress(parts[0][1])
        condition = {"If-Match": etag} if etag else {}
        landed = [asyncio.get_running_loop().create_future() for _ in parts]
        landed[0].set_result(None)

        async def fetch(index: int) -> None:
            try:
                await self._get_part(key, fd, parts[index], size, condition, cancel, slots)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                if not landed[index].done():
                    landed[index].set_exception(exc)
                raise
            progress(parts[index][1] - parts[index][0])
            landed[index].set_result(None)

        digest = hashlib.sha256()
        loop = asyncio.get_running_loop()
        fetching = asyncio.ensure_future(_all_or_nothing(
            [fetch(index) for index in range(1, len(parts))]))
        try:
            for index, (start, end) in enumerate(parts):
                # The part, or the first failure of any (which stops the others).
                await asyncio.wait({landed[index], fetching},
                                   return_when=asyncio.FIRST_COMPLETED)
                if not landed[index].done() or landed[index].exception() is not None:
                    await fetching  # raises the failure that stopped the parts
                await loop.run_in_executor(None, _hash_range, digest, fd, start, end)
            await fetching
        finally:
            if not fetching.done():
                fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
            for future in landed:  # consumed: no "exception never retrieved" warnings
                if future.done() and not future.cancelled():
                    future.exception()
        return Fetched(digest.hexdigest(), stored.sha256, stored.executable)

    async def _get_part(self, key: str, fd: int, part: tuple[int, int], size: int,
                        condition: dict[str, str], cancel: threading.Event,
                        slots: asyncio.Semaphore) -> tuple[str, StoredObject]:
        """One byte range into its place in ``fd``; a broken body fetches this part again."""
        start, end = part

        async def fetch(attempt: int) -> tuple[str, StoredObject]:
            offset = [start]

            def sink(block: bytes | memoryview) -> None:
                _pwrite_all(fd, block, offset[0])
                offset[0] += len(block)

            async with slots:
                reply = await self.s3.get(key, sink, {"Range": f"bytes={start}-{end - 1}",
                                                      **condition})
            total = reply.headers.get("content-range", "").rpartition("/")[2]
            if total != str(size):
                raise TransferError(f"download s3://{self.bucket}/{key} failed: the object "
                                    f"changed size while being read ({total})")
            if offset[0] != end:
                raise BodyCut(f"part {start}-{end} ended at {offset[0]}")
            return reply.headers.get("etag", ""), _stored(key, reply.headers, size)

        return await self._again_when_cut(fetch, key, "a part's body", cancel)

    def copy(self, source_key: str, target_key: str, *, size: int) -> None:
        source = {"Bucket": self.bucket, "Key": source_key}
        try:
            if size < MAX_COPY_OBJECT:
                self.client.copy_object(Bucket=self.bucket, Key=target_key, CopySource=source,
                                        MetadataDirective="COPY", **self.extra_args)
            else:
                self.manager.copy(source, self.bucket, target_key,
                                  extra_args=dict(self.extra_args)).result()
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"copy s3://{self.bucket}/{source_key} to {target_key}",
                            bucket=self.bucket) from None


async def _all_or_nothing(work: list[Awaitable[None]]) -> None:
    """Await all; the first failure cancels the rest and is raised (an Interrupted only when
    nothing else failed)."""
    tasks = [asyncio.ensure_future(item) for item in work]
    if not tasks:
        return
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)
                and not isinstance(o, asyncio.CancelledError)]
    if failures:
        raise next((f for f in failures if not isinstance(f, Interrupted)), failures[0])


async def _settled(request: Awaitable[T], stop: threading.Event) -> T:
    """Await ``request``. Cancelled after SIGTERM (``stop``), it first gets up to
    SETTLE_AFTER_STOP seconds to have its answer, so that no part lands after the abort that
    follows; cancelled for another part's failure, it is cut at once (the abort's re-check
    catches a part that lands late)."""
    task = asyncio.ensure_future(request)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _wind_down(task, settle=stop.is_set())
        raise


async def _wind_down(task: asyncio.Future[Any], *, settle: bool) -> None:
    """After a cancel: let ``task`` (a request) have its answer for up to SETTLE_AFTER_STOP
    seconds when ``settle``, then cut it; returns once it has ended, whatever its outcome."""
    try:
        if settle:
            await asyncio.wait([task], timeout=SETTLE_AFTER_STOP)
    finally:  # cancelled again while waiting: the request still ends
        task.cancel()  # nothing, if it has ended
    await asyncio.gather(task, return_exceptions=True)


def _hash_range(digest: Any, fd: int, start: int, end: int) -> None:
    """Feed bytes ``start``..``end`` of ``fd`` to ``digest`` (hashlib lets go of the GIL)."""
    offset = start
    while offset < end:
        block = os.pread(fd, min(end - offset, 1024 * 1024), offset)
        if not block:
            raise TransferError("the file being written shrank")
        digest.update(block)
        offset += len(block)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


_SSE_HEADERS = {"ServerSideEncryption": "x-amz-server-side-encryption",
                "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


def _endpoint(config: Config) -> str:
    """The S3 endpoint botocore would use: the configured one, else AWS_ENDPOINT_URL(_S3)."""
    if config.endpoint_url:
        return config.endpoint_url
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return ""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _stored(key: str, headers: Any, size: int) -> StoredObject:
    """The object's own record (hash and mode) from its x-amz-meta-* headers."""
    sha = mode = None
    for name, value in headers.items():
        lower = name.lower()
        if lower == "x-amz-meta-" + SHA_META:
            sha = value
        elif lower == "x-amz-meta-" + MODE_META:
            mode = value
    sha = sha.lower() if isinstance(sha, str) else None
    return StoredObject(key, size, sha256=sha if sha and _HEX64.fullmatch(sha) else None,
                        executable=mode == "755")


_HEX64 = re.compile(r"[0-9a-f]{64}")
