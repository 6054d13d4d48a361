"""The transfer engine: executes plans with a bounded pool of workers sharing one store client.

Workers pull items from one shared iterator, so memory stays flat whatever the file count. The
first failure stops new items from starting; items already in flight finish or fail on their
own, and the first error is raised once every worker has stopped.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

from catalog_agent import plan
from catalog_agent.errors import AgentError, IntegrityError, Interrupted, TransferError
from catalog_agent.hashing import IN_MEMORY, digest_file
from catalog_agent.local import Folder
from catalog_agent.logs import get_logger
from catalog_agent.plan import CopyItem, GetItem, GetPlan, PutItem, Stored
from catalog_agent.run_state import RunState
from catalog_agent.stores.base import Store

T = TypeVar("T")
PROGRESS_INTERVAL = 10.0
SIGNAL_POLL = 0.1  # seconds the main thread sleeps at most, so signal handlers run promptly


@dataclass
class Result:
    """What a transfer did: the record of the command is written from it."""

    files: int = 0  # moved
    bytes: int = 0  # moved
    skipped: int = 0  # unchanged, not moved
    unverified: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mb_per_second(self) -> float:
        return round(self.bytes / 1e6 / self.seconds, 2) if self.seconds > 0 else 0.0


class Progress:
    """Thread-safe counters, a progress event every 10 s and a bar on a terminal."""

    def __init__(self, total_files: int, total_bytes: int, interval: float = PROGRESS_INTERVAL,
                 bar: bool | None = None) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._bar = sys.stderr.isatty() if bar is None else bar
        self._thread = threading.Thread(target=self._report, daemon=True)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes += count

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        if self._bar:
            sys.stderr.write("\n")

    def _report(self) -> None:
        log = get_logger()
        last_event = time.monotonic()
        tick = 0.25 if self._bar else self._interval
        while not self._stop.wait(tick):
            if self._bar:
                self._draw()
            if time.monotonic() - last_event >= self._interval:
                last_event = time.monotonic()
                log.info("progress", files_done=self.files, files_total=self.total_files,
                         bytes_done=self.bytes, bytes_total=self.total_bytes)

    def _draw(self) -> None:
        share = self.bytes / self.total_bytes if self.total_bytes else 1.0
        filled = int(30 * min(share, 1.0))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.files}/"
                         f"{self.total_files} files {self.bytes / 1e6:.1f}/"
                         f"{self.total_bytes / 1e6:.1f} MB")
        sys.stderr.flush()


def run_pool(items: Iterable[T], work: Callable[[T], None], *, concurrency: int,
             cancel: threading.Event) -> None:
    """Run ``work`` on every item with at most ``concurrency`` threads; raise the first error."""
    source: Iterator[T] = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []
    failed = threading.Event()

    def worker() -> None:
        while not failed.is_set():
            if cancel.is_set():
                with lock:
                    errors.append(Interrupted("stopped before the transfer finished"))
                failed.set()
                return
            with lock:
                item = next(source, None)
            if item is None:
                return
            try:
                work(item)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                with lock:
                    errors.append(exc)
                failed.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Timed joins: a SIGTERM taken by a busy worker thread leaves the main thread asleep in
        # an untimed join until the whole transfer is done; waking up lets its handler run.
        while thread.is_alive():
            thread.join(SIGNAL_POLL)
    _raise_first(errors)


def run_async(items: Iterable[T], work: Callable[[T], Awaitable[None]], *, concurrency: int,
              cancel: threading.Event, store: Store) -> None:
    """Run ``work`` on every item, at most ``concurrency`` at once, on one event loop.

    One thread drives every connection (blocking work, such as multipart transfers and hashing
    large files, goes to worker threads): no GIL handed between dozens of threads. The first
    failure stops new items; items in flight finish or fail on their own, then the first error
    is raised. SIGTERM (``cancel``) stops items in flight too.
    """
    errors: list[BaseException] = []

    async def main() -> None:
        source: Iterator[T] = iter(items)

        async def worker() -> None:
            while not errors:
                if cancel.is_set():
                    errors.append(Interrupted("stopped before the transfer finished"))
                    return
                item = next(source, None)
                if item is None:
                    return
                try:
                    await work(item)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - reported by the caller
                    errors.append(exc)

        workers = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
        try:
            pending = set(workers)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=SIGNAL_POLL)
                if cancel.is_set() and pending:
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    errors.append(Interrupted("stopped before the transfer finished"))
                    break
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await store.aclose()

    # The store's own loop, where its connections live; a store without one gets a new loop.
    runner = getattr(store, "run", None)
    if runner is not None:
        runner(main())
    else:
        asyncio.run(main())
    _raise_first(errors)


def _raise_first(errors: list[BaseException]) -> None:
    """The first real failure as an agent error (an Interrupted only when nothing else failed)."""
    if not errors:
        return
    first = next((e for e in errors if not isinstance(e, Interrupted)), errors[0])
    if isinstance(first, AgentError):
        raise first
    if isinstance(first, OSError):
        where = f" ({first.filename})" if first.filename else ""
        raise TransferError(f"{first.strerror or first}{where}") from None
    raise TransferError(f"{type(first).__name__}: {first}") from first


def _count_partial(exc: AgentError, progress: Progress, result: Result) -> None:
    """What moved before a failure, for the termination message (files, bytes, skipped)."""
    moved = {"files": progress.files, "bytes": progress.bytes, "skipped": result.skipped}
    setattr(exc, "summary", {**getattr(exc, "summary", {}), **moved})


def _execute(moving: Iterable[T], totals: tuple[int, int], work: Callable[[T, Progress], Any],
             result: Result, *, concurrency: int, cancel: threading.Event,
             store: Store | None = None) -> Result:
    """Run ``work`` over ``moving`` with progress; ``result`` gains what moved, even on failure.

    With ``store``, ``work`` is a coroutine function run on the event loop (:func:`run_async`);
    without, a blocking function run on threads (:func:`run_pool`).
    """
    started = time.monotonic()
    with Progress(*totals) as progress:
        try:
            if store is not None:
                run_async(moving, lambda item: work(item, progress), concurrency=concurrency,
                          cancel=cancel, store=store)
            else:
                run_pool(moving, lambda item: work(item, progress), concurrency=concurrency,
                         cancel=cancel)
        except AgentError as exc:
            _count_partial(exc, progress, result)
            raise
        finally:
            result.files, result.bytes = progress.files, progress.bytes
    result.seconds = time.monotonic() - started
    return result


def put(store: Store, folder: Folder, items: list[PutItem], state: RunState, *,
        concurrency: int, cancel: threading.Event) -> tuple[Result, list[Stored]]:
    """Store every file the catalog does not already hold, each read from one open file.

    For each file: open it once (it must be the file the scan saw), read it once for its hash
    (and its parts' hashes), skip it when the catalog already holds these bytes, else send it
    from the same descriptor with those hashes as checksums, and finally check that nobody
    wrote to it meanwhile. The manifest is the caller's, written only after this returns.
    """
    recorded: list[Stored | None] = [None] * len(items)
    result = Result()
    skipped_lock = threading.Lock()

    async def upload(indexed: tuple[int, PutItem], progress: Progress) -> None:
        index, item = indexed
        opened = folder.open_file(item.entry)
        try:
            part_size = store.part_size(opened.size)
            if opened.size <= IN_MEMORY and part_size is None:
                digest = digest_file(opened.fd, opened.size, cancel=cancel)
            else:  # hashlib lets go of the GIL on large blocks: hash beside the loop
                digest = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: digest_file(opened.fd, opened.size, part_size=part_size,
                                              cancel=cancel))
            moved = not plan.already_stored(item, digest.sha256, opened.size, state)
            if moved:
                try:
                    await store.upload_async(opened, digest, item.key,
                                             executable=item.entry.executable,
                                             progress=progress.add_bytes, cancel=cancel)
                except IntegrityError:
                    raise
                except AgentError as exc:
                    if not isinstance(exc, Interrupted):
                        opened.check_unchanged()  # a changed file explains the failure best
                    raise
            opened.check_unchanged()
        finally:
            opened.close()
        recorded[index] = Stored(item.relative, digest.sha256, opened.size,
                                 item.entry.executable, moved)
        if moved:
            progress.file_done()
        else:
            with skipped_lock:
                result.skipped += 1

    _execute(enumerate(items), (len(items), sum(i.size for i in items)), upload, result,
             concurrency=concurrency, cancel=cancel, store=store)
    if any(r is None for r in recorded):  # a worker ended without a record: never a silent gap
        raise TransferError("internal error: a file of the put has no record; no manifest "
                            "was written")
    return result, recorded  # type: ignore[return-value]


def hash_for_plan(store: Store, folder: Folder, items: list[PutItem], state: RunState, *,
                  cancel: threading.Event) -> list[tuple[PutItem, str, bool]]:
    """(item, its SHA-256, whether the catalog already holds it) for a dry run: each file read
    as the real put would read it, nothing sent."""
    planned = []
    for item in items:
        if cancel.is_set():
            raise Interrupted("stopped before the transfer started; nothing was written")
        opened = folder.open_file(item.entry)
        try:
            sha256 = digest_file(opened.fd, opened.size, cancel=cancel).sha256
            opened.check_unchanged()
        finally:
            opened.close()
        planned.append((item, sha256, plan.already_stored(item, sha256, opened.size, state)))
    return planned


def get(store: Store, folder: Folder, planned: GetPlan, *, concurrency: int,
        cancel: threading.Event) -> Result:
    """Fetch every item not already present; each file appears only verified and complete."""
    count, size = planned.moving_count()
    result = Result(skipped=len(planned) - count)
    unverified_lock = threading.Lock()

    async def download(item: GetItem, progress: Progress) -> None:
        target = folder.create(item.relative)
        try:
            fetched = await store.download_async(item.key, target, size=item.size,
                                                 progress=progress.add_bytes, cancel=cancel)
            expected = item.expected_sha256 or fetched.stored_sha256
            if expected is not None and fetched.sha256 != expected:
                raise IntegrityError(f"hash mismatch for {item.key!r}: the catalog recorded "
                                     f"{expected[:16]}..., the bytes read hash to "
                                     f"{fetched.sha256[:16]}...; the file was not written")
            if expected is None:
                with unverified_lock:
                    result.unverified.append(item.relative)
            # The mode a manifest recorded wins; the object's own only when nothing records it.
            target.commit(item.executable if item.expected_from else fetched.executable)
        finally:
            target.discard()
        progress.file_done()

    return _execute(planned.moving(), (count, size), download, result,
                    concurrency=concurrency, cancel=cancel, store=store)


def copy(store: Store, items: Iterable[CopyItem], totals: tuple[int, int], *, concurrency: int,
         cancel: threading.Event) -> Result:
    """Server-side copies (sync between runs): no byte passes through the agent."""
    def copy_one(item: CopyItem, progress: Progress) -> None:
        store.copy(item.source_key, item.target_key, size=item.size)
        progress.add_bytes(item.size)
        progress.file_done()

    return _execute(items, totals, copy_one, Result(), concurrency=concurrency, cancel=cancel)
