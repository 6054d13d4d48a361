"""The S3 store: one request per small object, s3transfer's parallel multipart for large ones.

Single objects, listings and manifests go through :mod:`.s3_http` (signed urllib3 requests, a
quarter of botocore's CPU per request); the botocore client is made only when something needs
it (multipart, HEAD, server-side copy), so a plain get never loads botocore's S3 model.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from catalog_agent import tls
from catalog_agent.aws import RetryCounter, s3_client, translate
from catalog_agent.config import Config
from catalog_agent.errors import IntegrityError, Interrupted, TransferError
from catalog_agent.hashing import sha256_file
from catalog_agent.local import open_regular
from catalog_agent.stores.base import Fetched, ProgressCallback, StoredObject
from catalog_agent.stores.s3_http import FileSlice, S3Http

SHA_META = "sha256"  # x-amz-meta-sha256
MODE_META = "mode"  # x-amz-meta-mode: "755" for executables
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024
PART_WORKERS = 16  # part requests of one large object at once (each holds a part in memory)
MAX_COPY_OBJECT = 5 * 1024 ** 3


class S3Store:
    def __init__(self, client: Any, bucket: str, *, concurrency: int, attempts: int,
                 extra_args: dict[str, str], make_client: Callable[[], Any] | None = None,
                 http: S3Http | None = None) -> None:
        """``client``: a botocore client, or None with ``make_client`` to make it on first use.

        ``http``: the lean path for single objects and listings; without it, botocore does all.
        """
        self._client = client
        self._make_client = make_client
        self._client_lock = threading.Lock()
        self.http = http
        self.bucket = bucket
        self.location = f"s3://{bucket}"
        self.concurrency = concurrency
        self.attempts = attempts
        self.extra_args = extra_args
        self._manager: Any = None
        self._manager_lock = threading.Lock()
        self._part_slots = threading.BoundedSemaphore(PART_WORKERS)
        self.retry_counter = RetryCounter()
        if client is not None:
            client.meta.events.register("request-created.s3",
                                        self.retry_counter.on_request_created)

    @property
    def client(self) -> Any:
        """The botocore client, made on first use (loading its model costs 0.3 s)."""
        with self._client_lock:
            if self._client is None:
                assert self._make_client is not None
                self._client = self._make_client()
                self._client.meta.events.register("request-created.s3",
                                                  self.retry_counter.on_request_created)
            return self._client

    @property
    def retries(self) -> int:
        """Requests retried by botocore plus broken downloads restarted here."""
        return self.retry_counter.count

    @classmethod
    def from_config(cls, config: Config) -> S3Store:
        extra: dict[str, str] = {}
        if config.server_side_encryption:
            extra["ServerSideEncryption"] = config.server_side_encryption
        if config.sse_kms_key_id:
            extra["SSEKMSKeyId"] = config.sse_kms_key_id
        from catalog_agent.credentials import make_session

        session = make_session(config)
        credentials = session.get_credentials()
        if credentials is None:
            from botocore.exceptions import NoCredentialsError

            raise translate(NoCredentialsError(), f"read s3://{config.s3_bucket}")
        pool_size = config.concurrency + PART_WORKERS + 2
        store = cls(None, config.s3_bucket, concurrency=config.concurrency,
                    attempts=config.max_attempts, extra_args=extra,
                    make_client=lambda: s3_client(config, pool_size=pool_size, session=session))

        def keys() -> tuple[str, str, str | None]:
            frozen = credentials.get_frozen_credentials()
            return frozen.access_key, frozen.secret_key, frozen.token

        store.http = S3Http(endpoint=_endpoint(config), region=config.region,
                            bucket=config.s3_bucket, addressing_style=config.addressing_style,
                            credentials=keys, pool_size=pool_size, attempts=config.max_attempts,
                            verify=tls.verify(config),
                            on_retry=store.retry_counter.add)
        return store

    @property
    def manager(self) -> Any:
        """s3transfer's manager, created only when a large object needs it."""
        with self._manager_lock:
            if self._manager is None:
                from s3transfer.manager import TransferConfig, TransferManager

                config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                        multipart_chunksize=PART_SIZE,
                                        max_request_concurrency=PART_WORKERS,
                                        max_io_queue_size=64)
                self._manager = TransferManager(self.client, config)
            return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
        if self.http is not None:
            self.http.close()

    def _headers(self, metadata: dict[str, str]) -> dict[str, str]:
        """Request headers of the lean path: object metadata and server-side encryption."""
        headers = {f"x-amz-meta-{k}": v for k, v in metadata.items()}
        for arg, header in _SSE_HEADERS.items():
            if arg in self.extra_args:
                headers[header] = self.extra_args[arg]
        return headers

    # --- listing and small documents ---

    def list(self, prefix: str) -> Iterator[StoredObject]:
        try:
            if self.http is not None:
                for key, size, modified in self.http.list(prefix):
                    yield StoredObject(key, size, modified=modified)
                return
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], int(item["Size"]),
                                       modified=item["LastModified"].timestamp())
        except Exception as exc:  # noqa: BLE001 - every botocore failure becomes an agent error
            raise translate(exc, f"list s3://{self.bucket}/{prefix}", bucket=self.bucket) from None

    def head(self, key: str) -> StoredObject | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return None
            raise translate(exc, f"read s3://{self.bucket}/{key}", bucket=self.bucket) from None
        return _stored(key, response)

    def read_small(self, key: str, limit: int) -> bytes | None:
        try:
            for attempt in range(1, self.attempts + 1):
                if self.http is not None:
                    data = self._read_http(key, limit)
                    if data is None:
                        if attempt == self.attempts:
                            raise ConnectionError(f"the body of {key} was cut short")
                        self.retry_counter.add()
                        continue
                    return data
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                if int(response["ContentLength"]) > limit:
                    response["Body"].close()
                    raise IntegrityError(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
                try:
                    return response["Body"].read()
                except _transient_body_errors():  # a broken body: read this document again
                    if attempt == self.attempts:
                        raise
                    self.retry_counter.add()
            raise AssertionError("unreachable")
        except IntegrityError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return None
            raise translate(exc, f"read s3://{self.bucket}/{key}", bucket=self.bucket) from None

    def _read_http(self, key: str, limit: int) -> bytes | None:
        """A whole small object by the lean path; None when its body was cut short."""
        response = self.http.get(key)  # type: ignore[union-attr]
        try:
            if int(response.headers.get("Content-Length", 0)) > limit:
                raise IntegrityError(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
            try:
                return response.read(decode_content=False)
            except _transient_body_errors():
                return None
        finally:
            response.release_conn()

    def write_small(self, key: str, data: bytes) -> None:
        try:
            if self.http is not None:
                headers = {"Content-Type": "application/json", **self._headers({})}
                self.http.put(key, lambda: data, len(data), headers)
                return
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                   ContentType="application/json", **self.extra_args)
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
            if self.http is not None:  # no botocore client (0.3 s) for a put of small files
                for key, upload_id in list(self.http.uploads(prefix)):
                    if key in keys:
                        self.http.abort(key, upload_id)
                        aborted += 1
                return aborted
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    if upload.get("Key") in keys:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, never the put's failure
            from catalog_agent.logs import get_logger

            get_logger().warning("unfinished multipart uploads not cleaned up",
                                 reason=str(translate(exc, f"list uploads under {prefix}",
                                                      bucket=self.bucket)))
        return aborted

    # --- data ---

    def upload(self, source: Path, key: str, *, size: int, sha256: str, executable: bool,
               progress: ProgressCallback, cancel: threading.Event) -> None:
        metadata = {SHA_META: sha256}
        if executable:
            metadata[MODE_META] = "755"
        what = f"upload {source} to s3://{self.bucket}/{key}"
        try:
            if size < MULTIPART_THRESHOLD and self.http is not None:
                headers = self._headers(metadata)
                self.http.put(key, lambda: os.fdopen(open_regular(source), "rb"), size, headers)
                progress(size)
            elif self.http is not None:
                self._put_large(source, key, size, self._headers(metadata), progress, cancel)
            elif size < MULTIPART_THRESHOLD:
                fd = open_regular(source)
                with os.fdopen(fd, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                           ContentLength=size, Metadata=metadata,
                                           **self.extra_args)
                progress(size)
            else:
                extra = {"Metadata": metadata, **self.extra_args}
                future = self.manager.upload(str(source), self.bucket, key, extra_args=extra,
                                             subscribers=[_Progress(progress)])
                _wait(future, cancel)
        except (IntegrityError, Interrupted):
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what, bucket=self.bucket) from None

    def _put_large(self, source: Path, key: str, size: int, headers: dict[str, str],
                   progress: ProgressCallback, cancel: threading.Event) -> None:
        """Parallel multipart upload, each part sent straight from the file (none in memory).

        Any failure or a cancel aborts the upload, so no orphaned parts are left to pay for.
        """
        http = self.http
        assert http is not None
        fd = open_regular(source)
        try:
            upload_id = http.create_upload(key, headers)
            parts = [(start, min(start + PART_SIZE, size)) for start in range(0, size, PART_SIZE)]
            etags = [""] * len(parts)

            def send(index: int) -> None:
                start, end = parts[index]
                with self._part_slots:
                    response = http.put(key, lambda: FileSlice(fd, start, end, cancel, _stopped),
                                        end - start, {},
                                        operation="UploadPart",
                                        query={"partNumber": str(index + 1),
                                               "uploadId": upload_id})
                etags[index] = response.headers.get("ETag", "")
                progress(end - start)

            try:
                _parallel(len(parts), send, cancel)
                http.complete_upload(key, upload_id, etags)
            except BaseException:
                self._abort_upload(key, upload_id)
                raise
        finally:
            os.close(fd)

    def _abort_upload(self, key: str, upload_id: str) -> None:
        """Abort, then look again: a part cut off mid-send may land after the first abort."""
        http = self.http
        assert http is not None
        for wait in (0.0, 0.5, 2.0):
            time.sleep(wait)
            try:
                http.abort(key, upload_id)
                if not any(k == key and u == upload_id for k, u in http.uploads(key)):
                    return
            except Exception:  # noqa: BLE001 - the transfer's own failure is the one to report
                return

    def download(self, key: str, target: Path, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched:
        what = f"download s3://{self.bucket}/{key}"
        try:
            if size < MULTIPART_THRESHOLD:
                return self._get_small(key, target, progress, cancel)
            if self.http is not None:
                return self._get_large(key, target, size, progress, cancel)
            head = self.head(key)
            if head is None:
                raise TransferError(f"{what} failed: the object disappeared")
            future = self.manager.download(self.bucket, key, str(target),
                                           subscribers=[_Progress(progress, size)])
            _wait(future, cancel)
            return Fetched(sha256_file(target), head.sha256, head.executable)
        except (IntegrityError, Interrupted, TransferError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what, bucket=self.bucket) from None

    def _get_small(self, key: str, target: Path, progress: ProgressCallback,
                   cancel: threading.Event) -> Fetched:
        """GET and stream to ``target`` while hashing; a broken body retries this object only."""
        transient = _transient_body_errors()
        for attempt in range(1, self.attempts + 1):
            if cancel.is_set():
                raise Interrupted("stopped before the transfer finished")
            digest = hashlib.sha256()
            moved = 0
            if self.http is not None:
                response = self.http.get(key)
                chunks = response.stream(READ_CHUNK, decode_content=False)
                release = response.release_conn
                headers = response.headers
                metadata = {k[len("x-amz-meta-"):]: v for k, v in headers.items()
                            if k.lower().startswith("x-amz-meta-")}
                stored = _stored(key, {"ContentLength": headers.get("Content-Length", 0),
                                       "Metadata": {k.lower(): v for k, v in metadata.items()}})
            else:
                reply = self.client.get_object(Bucket=self.bucket, Key=key)
                chunks = reply["Body"].iter_chunks(READ_CHUNK)
                release = reply["Body"].close
                stored = _stored(key, reply)
            try:
                with open(target, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                        digest.update(chunk)
                        moved += len(chunk)
            except transient:
                if attempt == self.attempts:
                    raise
                self.retry_counter.add()
                continue
            finally:
                release()
            progress(moved)
            return Fetched(digest.hexdigest(), stored.sha256, stored.executable)
        raise AssertionError("unreachable")

    def _get_large(self, key: str, target: Path, size: int, progress: ProgressCallback,
                   cancel: threading.Event) -> Fetched:
        """Parallel ranged GETs written in place, hashed in order while the rest still arrive.

        The first part gives the ETag; every other part asks If-Match it, so an object replaced
        mid-read fails (exit 5) instead of mixing two versions. A hashing loop reads each part
        back from the page cache as soon as it and all before it have landed, so the SHA-256 is
        ready with the last part rather than costing a second pass (about 0.9 s per GiB here).
        Part requests across all files share PART_WORKERS slots: memory stays flat.
        """
        parts = [(start, min(start + PART_SIZE, size)) for start in range(0, size, PART_SIZE)]
        done = [False] * len(parts)
        failure: list[BaseException] = []
        changed = threading.Condition()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                     0o600)
        try:
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
                digest = self._hash_in_order(target, parts, done, failure, changed, cancel)
            finally:
                if not all(done):
                    with changed:
                        failure.append(Interrupted("stopped before the transfer finished"))
                for thread in threads:
                    thread.join()
            return Fetched(digest, stored.sha256, stored.executable)
        finally:
            os.close(fd)

    def _get_part(self, key: str, fd: int, part: tuple[int, int], size: int,
                  condition: dict[str, str], cancel: threading.Event) -> tuple[str, StoredObject]:
        """One byte range into its place in ``fd``; a broken body retries this part only."""
        start, end = part
        transient = _transient_body_errors()
        for attempt in range(1, self.attempts + 1):
            if cancel.is_set():
                raise Interrupted("stopped before the transfer finished")
            with self._part_slots:
                response = self.http.get(  # type: ignore[union-attr]
                    key, {"Range": f"bytes={start}-{end - 1}", **condition})
                try:
                    total = response.headers.get("Content-Range", "").rpartition("/")[2]
                    if total != str(size):
                        raise TransferError(f"download s3://{self.bucket}/{key} failed: the "
                                            f"object changed size while being read ({total})")
                    offset = start
                    for chunk in response.stream(READ_CHUNK, decode_content=False):
                        if cancel.is_set():
                            raise Interrupted("stopped before the transfer finished")
                        os.pwrite(fd, chunk, offset)
                        offset += len(chunk)
                    if offset != end:
                        raise ConnectionError(f"part {start}-{end} ended at {offset}")
                except transient:
                    if attempt == self.attempts:
                        raise
                    self.retry_counter.add()
                    continue
                finally:
                    response.release_conn()
            headers = response.headers
            metadata = {k.lower()[len("x-amz-meta-"):]: v for k, v in headers.items()
                        if k.lower().startswith("x-amz-meta-")}
            return headers.get("ETag", ""), _stored(key, {"ContentLength": size,
                                                          "Metadata": metadata})
        raise AssertionError("unreachable")

    @staticmethod
    def _hash_in_order(target: Path, parts: list[tuple[int, int]], done: list[bool],
                       failure: list[BaseException], changed: threading.Condition,
                       cancel: threading.Event) -> str:
        digest = hashlib.sha256()
        with open(target, "rb", buffering=0) as source:
            for index, (start, end) in enumerate(parts):
                with changed:
                    while not done[index] and not failure:
                        if cancel.is_set():
                            raise Interrupted("stopped before the transfer finished")
                        changed.wait(0.1)
                    if failure:
                        raise failure[0]
                source.seek(start)
                left = end - start
                while left:
                    block = source.read(min(left, 1024 * 1024))
                    if not block:
                        raise TransferError(f"{target} shrank while being written")
                    digest.update(block)
                    left -= len(block)
        return digest.hexdigest()

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


def _transient_body_errors() -> tuple[type[BaseException], ...]:
    """Errors of a response body cut short: botocore does not retry those, the store does."""
    from botocore.exceptions import (ConnectionClosedError, IncompleteReadError,
                                     ReadTimeoutError, ResponseStreamingError)
    from urllib3.exceptions import ProtocolError

    return (ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
            ResponseStreamingError, ProtocolError, ConnectionError)


_SSE_HEADERS = {"ServerSideEncryption": "x-amz-server-side-encryption",
                "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


def _stopped() -> Interrupted:
    return Interrupted("stopped before the transfer finished")


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


def _stored(key: str, response: dict[str, Any]) -> StoredObject:
    metadata = response.get("Metadata") or {}
    sha = metadata.get(SHA_META)
    return StoredObject(key, int(response.get("ContentLength", 0)),
                        sha256=sha.lower() if isinstance(sha, str) and len(sha) == 64 else None,
                        executable=metadata.get(MODE_META) == "755")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code in {"NoSuchKey", "NotFound", "404"}:
            return 404
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def _wait(future: Any, cancel: threading.Event) -> None:
    """Wait for an s3transfer future, cancelling it (and aborting its multipart) on request."""
    while True:
        if cancel.wait(0.05):
            future.cancel()
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the cancellation itself is what we report
                pass
            raise Interrupted("stopped before the transfer finished")
        if future.done():
            future.result()
            return


class _Progress:
    """s3transfer subscriber that forwards byte counts and provides a known size (no HEAD)."""

    def __init__(self, callback: ProgressCallback, size: int | None = None) -> None:
        self.callback = callback
        self.size = size

    def on_queued(self, future: Any, **_: Any) -> None:
        if self.size is not None:
            future.meta.provide_transfer_size(self.size)

    def on_progress(self, bytes_transferred: int, **_: Any) -> None:
        self.callback(bytes_transferred)

    def on_done(self, **_: Any) -> None:
        pass
