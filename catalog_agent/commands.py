"""The commands: gather facts, plan, transfer, record. The CLI only parses and wires.

Each command returns a summary dict (the termination message and the summary log event are
written from it) or raises an AgentError.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from catalog_agent import dryrun, local, manifest, patterns, plan, run_state, runlog, transfer
from catalog_agent.config import Config, require_run
from catalog_agent.errors import ConfigError, Interrupted
from catalog_agent.hashing import sha256_file
from catalog_agent.keys import manifest_key
from catalog_agent.logs import get_logger
from catalog_agent.record import write_record
from catalog_agent.stores import open_store
from catalog_agent.stores.base import Store


def _patterns(given: tuple[str, ...], configured: tuple[str, ...], command: str,
              config: Config) -> list[patterns.Pattern]:
    texts = given or configured
    if not texts:
        where = f"dag.steps.{config.step}.catalog.{command}" if config.step else "the step entry"
        raise ConfigError(f"nothing to {command}: give patterns as arguments, in "
                          f"CATALOG_AGENT_{command.upper()} or in {where}")
    return patterns.parse(texts)


def _location(store: Store, config: Config) -> str:
    return manifest.handler_location(store.location, config.prefix)


def _summary(command: str, result: transfer.Result, **extra: Any) -> dict[str, Any]:
    return {"command": command, "files": result.files, "bytes": result.bytes,
            "skipped": result.skipped, "seconds": round(result.seconds, 3),
            "mb_per_second": result.mb_per_second, **extra}


def _hash_all(entries: list[local.LocalEntry], concurrency: int,
              cancel: threading.Event) -> list[str]:
    """SHA-256 of each file, a few at a time (hashlib releases the GIL on large buffers).

    SIGTERM stops it between files: hashing a large folder must not outlast the grace period.
    """
    def one(entry: local.LocalEntry) -> str:
        _stop_if(cancel)
        # Opened without blocking and checked: a file swapped for a FIFO since the scan would
        # otherwise block this read for ever.
        return sha256_file(local.open_regular(entry.path))  # type: ignore[arg-type]

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, os.cpu_count() or 1, 8)))
    try:
        futures = [pool.submit(one, entry) for entry in entries]
        pending = set(futures)
        while pending:
            # Timed waits, as in transfer.run_pool: the main thread must wake up to run the
            # SIGTERM handler when a worker thread took the signal.
            done, pending = wait(pending, timeout=transfer.SIGNAL_POLL,
                                 return_when=FIRST_EXCEPTION)
            for future in done:
                failure = future.exception()
                if failure is not None:
                    raise failure
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_if(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Interrupted("stopped before the transfer started; nothing was written")


def check_put(config: Config, given: tuple[str, ...]) -> None:
    """What put needs before it starts: checked before a lifecycle wait, not hours after."""
    require_run(config, step=True)
    _patterns(given, config.put, "put", config)


def put(config: Config, given: tuple[str, ...], *, record: str | None,
        cancel: threading.Event, dry_run: bool = False) -> dict[str, Any]:
    require_run(config, step=True)
    log = get_logger()
    wanted = _patterns(given, config.put, "put", config)
    folder = config.data_folder
    entries = local.scan(folder)
    files, skipped = plan.select_put(entries, wanted, allow_missing=config.allow_missing,
                                     strict_links=config.strict_links,
                                     where=f"data folder {folder}")
    for item in skipped:
        log.warning("skipped", path=item.relative, reason=item.reason)
    hashes = _hash_all(files, config.concurrency, cancel)

    store = open_store(config)
    try:
        state = run_state.load(store, config.run_prefix, config.key_layout.folder)
        same_size = [e.relative for e in files
                     if e.relative in state.objects and state.objects[e.relative].size == e.size]
        state = run_state.with_metadata(store, state, same_size)
        items = plan.plan_put(list(zip(files, hashes)), state)
        if dry_run:
            return dryrun.put(items, skipped, log)
        abort_stale = getattr(store, "abort_incomplete_uploads", None)
        stale = abort_stale(config.run_prefix, {i.key for i in items}) if abort_stale else 0
        if stale:
            log.warning("aborted unfinished multipart uploads", count=stale,
                        reason="left by an earlier put of this step that was stopped")
        result = transfer.put(store, items, concurrency=config.concurrency, cancel=cancel)
        location = _location(store, config)
        entries_out = [manifest.entry(i.relative, i.sha256, i.size, run_id=config.run_id,
                                      location=location, stage="put", executable=i.executable,
                                      in_run=state.layout.in_run(i.relative))
                       for i in items]
        doc = manifest.document(entries_out, run_id=config.run_id, step=config.step,
                                command="put")
        key = manifest_key(config.run_prefix, config.step)
        store.write_small(key, manifest.encode(doc))
    finally:
        store.close()
    if record:
        write_record(record, entries_out, command="put", run_id=config.run_id, step=config.step)
    return _summary("put", result, manifest=f"{store.location}/{key}",
                    skipped_paths=len(skipped), retries=getattr(store, "retries", 0))


def get(config: Config, given: tuple[str, ...], *, record: str | None,
        cancel: threading.Event, dry_run: bool = False) -> dict[str, Any]:
    require_run(config)
    log = get_logger()
    wanted = _patterns(given, config.get, "get", config)
    folder = config.data_folder
    store = open_store(config)
    try:
        state = run_state.load(store, config.run_prefix, config.key_layout.folder)
        run_log = runlog.learn(config, store, state, log)
        where = f"{store.location}/{config.key_layout.data_prefix}"
        candidates = plan.select_get(state, wanted, allow_missing=config.allow_missing,
                                     where=where)
        items = plan.plan_get(candidates, lambda rel, size: _stop_if(cancel) or
                              _local_sha256(folder, rel, size))
        if dry_run:
            return dryrun.get(items, log, head=store.head)
        result = transfer.get(store, folder, items, concurrency=config.concurrency,
                              cancel=cancel)
    finally:
        store.close()
    for relative in result.unverified:
        log.warning("unverified", path=relative,
                    reason="stored by another tool: no recorded hash to verify against")
    if record:
        location = _location(store, config)
        entries_out = [manifest.entry(i.relative, i.expected_sha256 or "", i.size,
                                      run_id=config.run_id, location=location, stage="get",
                                      executable=i.executable,
                                      in_run=state.layout.in_run(i.relative))
                       for i in items if i.expected_sha256]
        write_record(record, entries_out, command="get", run_id=config.run_id,
                     step=config.step)
    from_log = sum(1 for i in items if i.expected_from == run_state.RUN_LOG and not i.unchanged)
    return _summary("get", result, unverified=len(result.unverified),
                    retries=getattr(store, "retries", 0), run_log=run_log,
                    verified_by_run_log=from_log)


def _local_sha256(folder: Path, relative: str, size: int) -> str | None:
    path = folder / relative
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            return None
        return sha256_file(path)
    except OSError:
        return None


def sync(config: Config, from_run: str, *, cancel: threading.Event,
         dry_run: bool = False) -> dict[str, Any]:
    """Copy one run's catalog, manifests rewritten for the new run, server-side."""
    from catalog_agent.config import run_prefix, validate_name

    require_run(config)
    validate_name("from-run", from_run, "flag --from-run")
    if from_run == config.run_id:
        raise ConfigError("--from-run and --run-id are the same run")
    source_prefix = run_prefix(config.prefix, from_run)
    store = open_store(config)
    try:
        source = run_state.load(store, source_prefix)
        items = plan.plan_sync(source, config.run_prefix)
        if dry_run:
            return dryrun.sync(items, len(source.manifests), log=get_logger())
        result = transfer.copy(store, items, concurrency=config.concurrency, cancel=cancel)
        # Manifests last, rewritten to name the new run: the copy is complete when they exist.
        for step, obj in source.manifests.items():
            raw = store.read_small(obj.key, manifest.MAX_MANIFEST_BYTES)
            if raw is None:
                continue
            old = manifest.parse(raw, f"{store.location}/{obj.key}")
            new = [manifest.entry(e.name, e.data_hash, e.size, run_id=config.run_id,
                                  location=e.catalog_handler_location, stage=e.stage,
                                  executable=e.executable, in_run=manifest.path_in_run(e))
                   for e in old]
            doc = manifest.document(new, run_id=config.run_id, step=step, command="sync")
            doc["synced_from"] = from_run
            store.write_small(manifest_key(config.run_prefix, step), manifest.encode(doc))
    finally:
        store.close()
    return _summary("sync", result, from_run=from_run, manifests=len(source.manifests))


def ls(config: Config, given: tuple[str, ...]) -> list[dict[str, Any]]:
    require_run(config)
    wanted = patterns.parse(given) if given else []
    store = open_store(config)
    try:
        state = run_state.load(store, config.run_prefix, config.key_layout.folder)
        runlog.learn(config, store, state, get_logger())
    finally:
        store.close()
    rows = []
    for relative, obj in sorted(state.objects.items()):
        if wanted and not any(p.matches(relative) for p in wanted):
            continue
        recorded = state.recorded.get(relative) or state.logged.get(relative)
        rows.append({"path": relative, "size": obj.size,
                     "sha256": state.catalog_sha256(relative) or "",
                     "step": recorded.step if recorded else ""})
    return rows
