"""The S3 store: one request per small object, s3transfer's parallel multipart for large ones."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Iterator

from catalog_agent.aws import RetryCounter, count_retries, s3_client, translate
from catalog_agent.config import Config
from catalog_agent.errors import IntegrityError, Interrupted, TransferError
from catalog_agent.hashing import sha256_file
from catalog_agent.local import open_regular
from catalog_agent.stores.base import Fetched, ProgressCallback, StoredObject

SHA_META = "sha256"  # x-amz-meta-sha256
MODE_META = "mode"  # x-amz-meta-mode: "755" for executables
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024
MAX_COPY_OBJECT = 5 * 1024 ** 3


class S3Store:
    def __init__(self, client: Any, bucket: str, *, concurrency: int, attempts: int,
                 extra_args: dict[str, str]) -> None:
        self.client = client
        self.bucket = bucket
        self.location = f"s3://{bucket}"
        self.concurrency = concurrency
        self.attempts = attempts
        self.extra_args = extra_args
        self._manager: Any = None
        self._manager_lock = threading.Lock()
        self.retry_counter: RetryCounter = count_retries(client)

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
        client = s3_client(config, pool_size=config.concurrency + 10)
        return cls(client, config.s3_bucket, concurrency=config.concurrency,
                   attempts=config.max_attempts, extra_args=extra)

    @property
    def manager(self) -> Any:
        """s3transfer's manager, created only when a large object needs it."""
        with self._manager_lock:
            if self._manager is None:
                from s3transfer.manager import TransferConfig, TransferManager

                config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                        multipart_chunksize=PART_SIZE,
                                        max_request_concurrency=max(4, self.concurrency),
                                        max_io_queue_size=64)
                self._manager = TransferManager(self.client, config)
            return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()

    # --- listing and small documents ---

    def list(self, prefix: str) -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
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

    def write_small(self, key: str, data: bytes) -> None:
        try:
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
            if size < MULTIPART_THRESHOLD:
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

    def download(self, key: str, target: Path, *, size: int, progress: ProgressCallback,
                 cancel: threading.Event) -> Fetched:
        what = f"download s3://{self.bucket}/{key}"
        try:
            if size < MULTIPART_THRESHOLD:
                return self._get_small(key, target, progress, cancel)
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
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            digest = hashlib.sha256()
            moved = 0
            try:
                with open(target, "wb") as out:
                    for chunk in response["Body"].iter_chunks(READ_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        moved += len(chunk)
            except transient:
                progress(-moved)
                if attempt == self.attempts:
                    raise
                self.retry_counter.add()
                continue
            progress(moved)
            stored = _stored(key, response)
            return Fetched(digest.hexdigest(), stored.sha256, stored.executable)
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


def _transient_body_errors() -> tuple[type[BaseException], ...]:
    """Errors of a response body cut short: botocore does not retry those, the store does."""
    from botocore.exceptions import (ConnectionClosedError, IncompleteReadError,
                                     ReadTimeoutError, ResponseStreamingError)
    from urllib3.exceptions import ProtocolError

    return (ConnectionClosedError, IncompleteReadError, ReadTimeoutError,
            ResponseStreamingError, ProtocolError, ConnectionError)


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
