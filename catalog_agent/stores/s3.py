"""The S3 store: one request per small object, parallel multipart and ranged GETs for large ones.

Objects, listings and manifests go through :mod:`.s3_http` (signed urllib3 requests, a quarter
of botocore's CPU per request); a botocore client is made only for server-side copies (sync),
so a get or put never loads botocore's S3 model.

What is sent is what was hashed: a put reads each file once (:func:`catalog_agent.hashing.
digest_file`) and every PUT and every part carries the SHA-256 of its bytes, which the server
verifies; the object's ``x-amz-meta-sha256`` and the manifest record the whole file's hash.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from catalog_agent import tls
from catalog_agent.aws import RetryCounter, s3_client, translate
from catalog_agent.config import Config
from catalog_agent.errors import AgentError, IntegrityError, Interrupted, TransferError
from catalog_agent.hashing import Digest
from catalog_agent.local import Incoming, OpenedFile
from catalog_agent.stores.base import Fetched, ProgressCallback, StoredObject
from catalog_agent.stores.s3_http import FileSlice, Payload, S3Http, finish

SHA_META = "sha256"  # x-amz-meta-sha256
MODE_META = "mode"  # x-amz-meta-mode: "755" for executables
READ_CHUNK = 256 * 1024
PART_WORKERS = 16  # part requests at once, across all large objects
MAX_COPY_OBJECT = 5 * 1024 ** 3
# S3's limits (and s3transfer's rule for staying within them).
MIN_PART_SIZE = 5 * 1024 ** 2
MAX_PART_SIZE = 5 * 1024 ** 3
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 ** 4
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

    def __init__(self, http: S3Http, bucket: str, *, attempts: int, extra_args: dict[str, str],
                 make_client: Callable[[], Any], threshold: int = DEFAULT_THRESHOLD,
                 part_size: int = DEFAULT_PART_SIZE) -> None:
        """``http``: the lean path for objects and listings; ``make_client``: a botocore client
        for server-side copies, made on first use (loading its model costs 0.3 s)."""
        self.http = http
        self._client: Any = None
        self._make_client = make_client
        self._client_lock = threading.Lock()
        self.bucket = bucket
        self.location = f"s3://{bucket}"
        self.attempts = attempts
        self.extra_args = extra_args
        self.threshold = threshold
        self.preferred_part_size = part_size
        self._manager: Any = None
        self._manager_lock = threading.Lock()
        self._part_slots = threading.BoundedSemaphore(PART_WORKERS)
        self.retry_counter = RetryCounter()
        self._async: Any = None

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
        http = S3Http(endpoint=_endpoint(config), region=config.region, bucket=config.s3_bucket,
                      addressing_style=config.addressing_style, credentials=keys,
                      pool_size=pool_size, attempts=config.max_attempts,
                      verify=tls.verify(config), on_retry=counter.add,
                      retry_mode=config.retry_mode, stop=cancel)
        store = cls(http, config.s3_bucket, attempts=config.max_attempts, extra_args=extra,
                    make_client=lambda: s3_client(config, pool_size=pool_size, session=session()),
                    threshold=config.multipart_threshold, part_size=config.multipart_chunksize)
        store.retry_counter = counter
        return store

    @property
    def client(self) -> Any:
        """The botocore client (server-side copies only), made on first use."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
                self._client.meta.events.register("request-created.s3",
                                                  self.retry_counter.on_request_created)
            return self._client

    @property
    def retries(self) -> int:
        """Requests sent again after a transient failure, and broken downloads restarted."""
        return self.retry_counter.count

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

    def close(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
        self.http.close()

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

    # --- listing and small documents ---

    def list(self, prefix: str) -> Iterator[StoredObject]:
        try:
            for key, size, modified in self.http.list(prefix):
                yield StoredObject(key, size, modified=modified)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an agent error
            raise translate(exc, f"list s3://{self.bucket}/{prefix}", bucket=self.bucket) from None

    def head(self, key: str) -> StoredObject | None:
        try:
            headers = self.http.head(key)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"read s3://{self.bucket}/{key}", bucket=self.bucket) from None
        if headers is None:
            return None
        return _stored(key, headers, int(headers.get("Content-Length", 0)))

    def read_small(self, key: str, limit: int) -> bytes | None:
        try:
            for attempt in range(1, self.attempts + 1):
                response = self.http.get(key)
                try:
                    if int(response.headers.get("Content-Length", 0)) > limit:
                        raise IntegrityError(f"s3://{self.bucket}/{key} is larger than {limit} "
                                             f"bytes")
                    try:
                        return response.read(decode_content=False)
                    except _transient_body_errors():  # a broken body: read this one again
                        if attempt == self.attempts:
                            raise
                        self.retry_counter.add()
                finally:
                    finish(response)
            raise AssertionError("unreachable")
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return None
            raise translate(exc, f"read s3://{self.bucket}/{key}", bucket=self.bucket) from None

    def read_stream(self, key: str) -> Iterator[bytes] | None:
        """The object's bytes as they arrive (None when there is no such object); a body cut
        short is picked up where it broke (a Range request, If-Match its ETag)."""
        what = f"read s3://{self.bucket}/{key}"
        try:
            response = self.http.get(key)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return None
            raise translate(exc, what, bucket=self.bucket) from None
        return self._stream(key, response, what)

    def _stream(self, key: str, response: Any, what: str) -> Iterator[bytes]:
        total = int(response.headers.get("Content-Length", 0))
        etag = response.headers.get("ETag", "")
        offset, attempt = 0, 1
        transient = _transient_body_errors()
        while True:
            try:
                for chunk in response.stream(READ_CHUNK, decode_content=False):
                    offset += len(chunk)
                    yield chunk
                if offset != total:
                    raise ConnectionError(f"the body of {key} ended at {offset} of {total}")
                return
            except transient as exc:
                if attempt >= self.attempts:
                    raise translate(exc, what, bucket=self.bucket) from None
                attempt += 1
                self.retry_counter.add()
            finally:
                finish(response)
            try:
                response = self.http.get(key, {"Range": f"bytes={offset}-",
                                                **({"If-Match": etag} if etag else {})})
            except AgentError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise translate(exc, what, bucket=self.bucket) from None

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
                self.http.put(key, Payload.of(bytes(buffer)), headers)
            except AgentError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise translate(exc, what, bucket=self.bucket) from None
            return
        try:
            upload_id = self.http.create_upload(key, headers)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what, bucket=self.bucket) from None
        parts: list[tuple[str, str | None]] = []
        size = self.preferred_part_size

        def send(data: bytes) -> None:
            payload = Payload.of(data)
            etag = self.http.upload_part(key, upload_id, len(parts) + 1, payload)
            parts.append((etag, base64.b64encode(bytes.fromhex(payload.sha256 or "")).decode()))

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
            self.http.complete_upload(key, upload_id, parts)
        except BaseException as exc:
            self._abort_upload(key, upload_id)
            if isinstance(exc, AgentError) or not isinstance(exc, Exception):
                raise
            raise translate(exc, what, bucket=self.bucket) from None

    def write_small(self, key: str, data: bytes) -> None:
        try:
            headers = {"Content-Type": "application/json", **self._headers({})}
            self.http.put(key, Payload.of(data), headers)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"write s3://{self.bucket}/{key}", bucket=self.bucket) from None

    def abort_incomplete_uploads(self, prefix: str, keys: set[str]) -> int:
        """Abort multipart uploads of ``keys`` under ``prefix``: parts left by a killed put.

        Called before this put starts its own, so every upload found for these keys is stale.
        Only the step's own keys: another step of the run may be uploading at this moment.
        Returns how many were aborted; a role that may not list uploads just leaves them.
        """
        aborted = 0
        try:
            for key, upload_id in list(self.http.uploads(prefix)):
                if key in keys:
                    self.http.abort(key, upload_id)
                    aborted += 1
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, never the put's failure
            from catalog_agent.logs import get_logger

            get_logger().warning("unfinished multipart uploads not cleaned up",
                                 reason=str(translate(exc, f"list uploads under {prefix}",
                                                      bucket=self.bucket)))
        return aborted

    # --- data ---

    def upload(self, opened: OpenedFile, digest: Digest, key: str, *, executable: bool,
               progress: ProgressCallback, cancel: threading.Event) -> None:
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
                if digest.data is not None:
                    payload = Payload(digest.size, data=digest.data, sha256=digest.sha256)
                else:
                    payload = Payload(digest.size, sha256=digest.sha256, reader=lambda: FileSlice(
                        opened.fd, 0, digest.size, cancel))
                self.http.put(key, payload, headers, check=opened.check_unchanged)
                progress(digest.size)
            else:
                self._put_large(opened, digest, key, headers, progress, cancel)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"upload {opened.relative} to s3://{self.bucket}/{key}",
                            bucket=self.bucket) from None

    # --- data, on the event loop (the many small objects) ---

    async def upload_async(self, opened: OpenedFile, digest: Digest, key: str, *,
                           executable: bool, progress: ProgressCallback,
                           cancel: threading.Event) -> None:
        """As :meth:`upload`; one PUT on the loop, or multipart in a worker thread."""
        if digest.part_size is not None:
            await _in_thread(lambda: self.upload(opened, digest, key, executable=executable,
                                                 progress=progress, cancel=cancel))
            return
        metadata = {SHA_META: digest.sha256}
        if executable:
            metadata[MODE_META] = "755"
        payload = Payload(digest.size, data=digest.data, sha256=digest.sha256)
        try:
            await self._aio().put(key, payload, self._headers(metadata),
                                  fd=None if digest.data is not None else opened.fd,
                                  check=opened.check_unchanged)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, f"upload {opened.relative} to s3://{self.bucket}/{key}",
                            bucket=self.bucket) from None
        progress(digest.size)

    async def download_async(self, key: str, target: Incoming, *, size: int,
                             progress: ProgressCallback, cancel: threading.Event) -> Fetched:
        """As :meth:`download`; one GET on the loop, or ranged parts in a worker thread."""
        if size >= self.threshold:
            return await _in_thread(lambda: self.download(key, target, size=size,
                                                          progress=progress, cancel=cancel))
        from catalog_agent.stores.s3_async import BodyCut

        aio = self._aio()
        for attempt in range(1, self.attempts + 1):
            if cancel.is_set():
                raise Interrupted("stopped before the transfer finished")
            digest = hashlib.sha256()
            written = [0]

            def sink(block: bytes) -> None:
                _pwrite_all(target.fd, block, written[0])
                digest.update(block)
                written[0] += len(block)

            try:
                if attempt > 1:  # a body cut short: start the file again
                    os.ftruncate(target.fd, 0)
                reply = await aio.get(key, sink)
            except BodyCut:
                if attempt == self.attempts:
                    raise translate(ConnectionError(f"the body of {key} was cut short "
                                                    f"{self.attempts} times"),
                                    f"download s3://{self.bucket}/{key}",
                                    bucket=self.bucket) from None
                self.retry_counter.add()
                continue
            except AgentError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise translate(exc, f"download s3://{self.bucket}/{key}",
                                bucket=self.bucket) from None
            progress(written[0])
            stored = _stored(key, reply.headers, written[0])
            return Fetched(digest.hexdigest(), stored.sha256, stored.executable)
        raise AssertionError("unreachable")

    def _aio(self) -> Any:
        """The event loop's client, made on first use inside the running loop."""
        if self._async is None:
            from catalog_agent.stores.s3_async import AsyncS3

            self._async = AsyncS3.from_http(self.http)
        return self._async

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def _put_large(self, opened: OpenedFile, digest: Digest, key: str, headers: dict[str, str],
                   progress: ProgressCallback, cancel: threading.Event) -> None:
        """Parallel multipart upload, each part sent straight from the file (none in memory)
        with its own SHA-256; any failure or a cancel aborts the upload (no orphaned parts)."""
        assert digest.part_size is not None
        http = self.http
        parts = part_ranges(digest.size, digest.part_size)
        checksums = [base64.b64encode(d).decode("ascii") for d in digest.part_sha256]
        if len(parts) != len(checksums):
            raise IntegrityError(f"{opened.relative}: {len(checksums)} part hashes for "
                                 f"{len(parts)} parts")
        upload_id = http.create_upload(key, headers)
        etags = [""] * len(parts)

        def send(index: int) -> None:
            start, end = parts[index]
            payload = Payload(end - start, sha256=digest.part_sha256[index].hex(),
                              reader=lambda: FileSlice(opened.fd, start, end, cancel))
            with self._part_slots:
                etags[index] = http.upload_part(key, upload_id, index + 1, payload,
                                                check=opened.check_unchanged)
            progress(end - start)

        try:
            _parallel(len(parts), send, cancel)
            http.complete_upload(key, upload_id, list(zip(etags, checksums)))
        except BaseException:
            self._abort_upload(key, upload_id)
            raise

    def _abort_upload(self, key: str, upload_id: str) -> None:
        """Abort, then look again: a part cut off mid-send may land after the first abort."""
        http = self.http
        for wait in (0.0, 0.5, 2.0):
            time.sleep(wait)
            try:
                http.abort(key, upload_id)
                if not any(k == key and u == upload_id
                           for k, u in http.uploads(key, cleanup=True)):
                    return
            except Exception:  # noqa: BLE001 - the transfer's own failure is the one to report
                return

    def download(self, key: str, target: Incoming, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched:
        what = f"download s3://{self.bucket}/{key}"
        try:
            if size < self.threshold:
                return self._get_small(key, target, progress, cancel)
            return self._get_large(key, target, size, progress, cancel)
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what, bucket=self.bucket) from None

    def _get_small(self, key: str, target: Incoming, progress: ProgressCallback,
                   cancel: threading.Event) -> Fetched:
        """GET and stream to ``target`` while hashing; a broken body retries this object only."""
        transient = _transient_body_errors()
        for attempt in range(1, self.attempts + 1):
            if cancel.is_set():
                raise Interrupted("stopped before the transfer finished")
            digest = hashlib.sha256()
            moved = 0
            response = self.http.get(key)
            stored = _stored(key, response.headers, int(response.headers.get(
                "Content-Length", 0)))
            try:
                if attempt > 1:  # a body cut short: start the file again
                    os.ftruncate(target.fd, 0)
                for chunk in response.stream(READ_CHUNK, decode_content=False):
                    _pwrite_all(target.fd, chunk, moved)
                    digest.update(chunk)
                    moved += len(chunk)
            except transient:
                if attempt == self.attempts:
                    raise
                self.retry_counter.add()
                continue
            finally:
                finish(response)
            progress(moved)
            return Fetched(digest.hexdigest(), stored.sha256, stored.executable)
        raise AssertionError("unreachable")

    def _get_large(self, key: str, target: Incoming, size: int, progress: ProgressCallback,
                   cancel: threading.Event) -> Fetched:
        """Parallel ranged GETs written in place, hashed in order while the rest still arrive.

        The first part gives the ETag; every other part asks If-Match it, so an object replaced
        mid-read fails (exit 5) instead of mixing two versions. A hashing loop reads each part
        back from the page cache as soon as it and all before it have landed, so the SHA-256 is
        ready with the last part rather than costing a second pass (about 0.9 s per GiB here).
        Part requests across all files share PART_WORKERS slots: memory stays flat.
        """
        parts = part_ranges(size, part_size_for(size, self.preferred_part_size))
        done = [False] * len(parts)
        failure: list[BaseException] = []
        changed = threading.Condition()
        fd = target.fd
        first = self._get_part(key, fd, parts[0], size, {}, cancel)
        progress(parts[0][1])
        done[0] = True
        etag, stored = first
        condition = {"If-Match": etag} if etag else {}
        following = iter(range(1, len(parts)))
        lock = threading.Lock()

        def worker() -> None:
            while not failure:
                with lock:
                    index = next(following, None)
                if index is None:
                    return
                try:
                    self._get_part(key, fd, parts[index], size, condition, cancel)
                except BaseException as exc:  # noqa: BLE001 - handed to the hashing loop
                    with changed:
                        failure.append(exc)
                        changed.notify_all()
                    return
                progress(parts[index][1] - parts[index][0])
                with changed:
                    done[index] = True
                    changed.notify_all()

        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(min(PART_WORKERS, len(parts) - 1))]
        for thread in threads:
            thread.start()
        try:
            digest = _hash_in_order(fd, parts, done, failure, changed, cancel)
        finally:
            if not all(done):
                with changed:
                    failure.append(Interrupted("stopped before the transfer finished"))
            for thread in threads:
                thread.join()
        return Fetched(digest, stored.sha256, stored.executable)

    def _get_part(self, key: str, fd: int, part: tuple[int, int], size: int,
                  condition: dict[str, str], cancel: threading.Event) -> tuple[str, StoredObject]:
        """One byte range into its place in ``fd``; a broken body retries this part only."""
        start, end = part
        transient = _transient_body_errors()
        for attempt in range(1, self.attempts + 1):
            if cancel.is_set():
                raise Interrupted("stopped before the transfer finished")
            with self._part_slots:
                response = self.http.get(key, {"Range": f"bytes={start}-{end - 1}",
                                               **condition})
                try:
                    total = response.headers.get("Content-Range", "").rpartition("/")[2]
                    if total != str(size):
                        raise TransferError(f"download s3://{self.bucket}/{key} failed: the "
                                            f"object changed size while being read ({total})")
                    offset = start
                    for chunk in response.stream(READ_CHUNK, decode_content=False):
                        if cancel.is_set():
                            raise Interrupted("stopped before the transfer finished")
                        _pwrite_all(fd, chunk, offset)
                        offset += len(chunk)
                    if offset != end:
                        raise ConnectionError(f"part {start}-{end} ended at {offset}")
                except transient:
                    if attempt == self.attempts:
                        raise
                    self.retry_counter.add()
                    continue
                finally:
                    finish(response)
            return response.headers.get("ETag", ""), _stored(key, response.headers, size)
        raise AssertionError("unreachable")

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


def _hash_in_order(fd: int, parts: list[tuple[int, int]], done: list[bool],
                   failure: list[BaseException], changed: threading.Condition,
                   cancel: threading.Event) -> str:
    digest = hashlib.sha256()
    for index, (start, end) in enumerate(parts):
        with changed:
            while not done[index] and not failure:
                if cancel.is_set():
                    raise Interrupted("stopped before the transfer finished")
                changed.wait(0.1)
            if failure:
                raise failure[0]
        offset = start
        while offset < end:
            block = os.pread(fd, min(end - offset, 1024 * 1024), offset)
            if not block:
                raise TransferError("the file being written shrank")
            digest.update(block)
            offset += len(block)
    return digest.hexdigest()


async def _in_thread(work: Callable[[], Any]) -> Any:
    """Run blocking ``work`` (a multipart transfer) in the loop's worker threads."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, work)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _transient_body_errors() -> tuple[type[BaseException], ...]:
    """Errors of a response body cut short: the store reads that object or part again."""
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    return (ProtocolError, ReadTimeoutError, ConnectionError)


_SSE_HEADERS = {"ServerSideEncryption": "x-amz-server-side-encryption",
                "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


def _parallel(count: int, work: Callable[[int], None], cancel: threading.Event) -> None:
    """``work(0..count-1)`` on up to PART_WORKERS threads; the first failure stops the rest."""
    following = iter(range(count))
    lock = threading.Lock()
    failure: list[BaseException] = []

    def worker() -> None:
        while not failure:
            if cancel.is_set():
                failure.append(Interrupted("stopped before the transfer finished"))
                return
            with lock:
                index = next(following, None)
            if index is None:
                return
            try:
                work(index)
            except BaseException as exc:  # noqa: BLE001 - raised below, in the caller
                failure.append(exc)

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(min(PART_WORKERS, count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failure:
        raise next((f for f in failure if not isinstance(f, Interrupted)), failure[0])


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
    return StoredObject(key, size,
                        sha256=sha.lower() if isinstance(sha, str) and len(sha) == 64 else None,
                        executable=mode == "755")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code in {"NoSuchKey", "NotFound", "404"}:
            return 404
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None
