"""The commands: gather facts, plan, transfer, record. The CLI only parses and wires.

Each command returns a summary dict (the termination message and the summary log event are
written from it) or raises an AgentError.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from catalog_agent import local, manifest, patterns, plan, run_state, transfer
from catalog_agent.config import Config, require_run
from catalog_agent.errors import ConfigError, Interrupted
from catalog_agent.hashing import sha256_fd
from catalog_agent.keys import manifest_key
from catalog_agent.logs import get_logger
from catalog_agent.record import write_record
from catalog_agent.stores import open_store
from catalog_agent.stores.base import Store


UNVERIFIED_LOGGED = 100  # one warning per file up to this many, then one for the rest


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


def _stop_if(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Interrupted("stopped before the transfer started; nothing was written")


def check_put(config: Config, given: tuple[str, ...]) -> None:
    """What put needs before it starts: checked before a lifecycle wait, not hours after."""
    require_run(config, step=True)
    _patterns(given, config.put, "put", config)


def _learn_run_log(config: Config, store: Store, state: run_state.RunState, log: Any) -> str:
    """magnus's run log read into the state, when the configuration names one (else '')."""
    if config.run_log_store is None:
        return ""
    from catalog_agent import runlog

    return runlog.learn(config, store, state, log)


def _data_folder(config: Config, *, create: bool) -> local.Folder | None:
    """The step's data folder, opened safely (exit 6 for a planted link); None when missing."""
    try:
        return local.open_folder(config.data_folder, create=create)
    except local.FolderMissing:
        return None


def put(config: Config, given: tuple[str, ...], *, record: str | None,
        cancel: threading.Event, dry_run: bool = False) -> dict[str, Any]:
    require_run(config, step=True)
    log = get_logger()
    wanted = _patterns(given, config.put, "put", config)
    folder = _data_folder(config, create=False)
    try:
        entries = folder.scan() if folder is not None else []
        files, skipped = plan.select_put(entries, wanted, allow_missing=config.allow_missing,
                                         strict_links=config.strict_links,
                                         where=f"data folder {config.data_folder}")
        for item in skipped:
            log.warning("skipped", path=item.relative, reason=item.reason)
        _stop_if(cancel)
        store = open_store(config, cancel)
        try:
            layout = config.key_layout
            items = plan.plan_put(files, layout.key, max_object_size=store.max_object_size,
                                  max_key_bytes=store.max_key_bytes)
            state = run_state.load(store, config.run_prefix, layout.folder)
            same_size = [e.relative for e in files
                         if (row := state.find(e.relative)) is not None
                         and state.sizes[row] == e.size]
            state = run_state.with_metadata(store, state, same_size)
            if dry_run:
                assert folder is not None or not items
                from catalog_agent import dryrun

                return dryrun.put(transfer.hash_for_plan(store, folder, items, state,  # type: ignore[arg-type]
                                                         cancel=cancel), skipped, log)
            abort_stale = getattr(store, "abort_incomplete_uploads", None)
            stale = abort_stale(config.run_prefix, {i.key for i in items}) if abort_stale else 0
            if stale:
                log.warning("aborted unfinished multipart uploads", count=stale,
                            reason="left by an earlier put of this step that was stopped")
            assert folder is not None or not items
            result, stored = transfer.put(store, folder, items, state,  # type: ignore[arg-type]
                                          concurrency=config.concurrency, cancel=cancel)
            location = _location(store, config)

            def entries_out() -> Iterator[manifest.Entry]:
                return (manifest.entry(s.relative, s.sha256, s.size, run_id=config.run_id,
                                       location=location, stage="put", executable=s.executable,
                                       in_run=layout.in_run(s.relative)) for s in stored)

            key = manifest_key(config.run_prefix, config.step)
            head = manifest.header(run_id=config.run_id, step=config.step, command="put")
            store.write_stream(key, manifest.encode(head, entries_out()))
        finally:
            store.close()
    finally:
        if folder is not None:
            folder.close()
    if record:
        write_record(record, entries_out(), command="put", run_id=config.run_id,
                     step=config.step)
    return _summary("put", result, manifest=f"{store.location}/{key}",
                    skipped_paths=len(skipped), retries=getattr(store, "retries", 0))


def get(config: Config, given: tuple[str, ...], *, record: str | None,
        cancel: threading.Event, dry_run: bool = False) -> dict[str, Any]:
    require_run(config)
    log = get_logger()
    wanted = _patterns(given, config.get, "get", config)
    store = open_store(config, cancel)
    folder: local.Folder | None = None
    try:
        state = run_state.load(store, config.run_prefix, config.key_layout.folder)
        run_log = _learn_run_log(config, store, state, log)
        where = f"{store.location}/{config.key_layout.data_prefix}"
        candidates = plan.select_get(state, wanted, allow_missing=config.allow_missing,
                                     where=where, strict_verify=False)
        if config.strict_verify:
            # An object nothing records may still carry its own hash: learn it (one HEAD each,
            # only those), so that strict refuses exactly what the get could not verify.
            unrecorded = [state.names[row] for row in candidates.rows
                          if state.sha256(row) is None]
            if unrecorded:
                state = run_state.with_metadata(store, state, unrecorded)
            candidates = plan.select_get(state, wanted, allow_missing=config.allow_missing,
                                         where=where, strict_verify=True)
        if dry_run:
            present = _data_folder(config, create=False)
        else:
            folder = _data_folder(config, create=bool(candidates))
            present = folder

        def local_sha256(relative: str, size: int) -> str | None:
            _stop_if(cancel)
            if present is None:
                return None
            return present.read_hash(relative, size, sha256_fd)

        try:
            items = plan.plan_get(candidates, local_sha256)
        finally:
            if dry_run and present is not None:
                present.close()
        if dry_run:
            from catalog_agent import dryrun

            return dryrun.get(items, log, head=store.head)
        result = transfer.get(store, folder, items,  # type: ignore[arg-type]
                              concurrency=config.concurrency, cancel=cancel)
    finally:
        store.close()
        if folder is not None:
            folder.close()
    for relative in result.unverified[:UNVERIFIED_LOGGED]:
        log.warning("unverified", path=relative,
                    reason="stored by another tool: no recorded hash to verify against")
    if len(result.unverified) > UNVERIFIED_LOGGED:
        log.warning("unverified", more=len(result.unverified) - UNVERIFIED_LOGGED,
                    reason="and more files with no recorded hash (get.done counts them all)")
    if record:
        location = _location(store, config)
        write_record(record, (manifest.entry(i.relative, i.expected_sha256, i.size,
                                             run_id=config.run_id, location=location,
                                             stage="get", executable=i.executable,
                                             in_run=state.layout.in_run(i.relative))
                              for i in items.items() if i.expected_sha256),
                     command="get", run_id=config.run_id, step=config.step)
    from_log = sum(1 for i in items.items() if i.expected_from == run_state.RUN_LOG
                   and not i.unchanged)
    return _summary("get", result, unverified=len(result.unverified),
                    retries=getattr(store, "retries", 0), run_log=run_log,
                    verified_by_run_log=from_log)


def sync(config: Config, from_run: str, *, cancel: threading.Event,
         dry_run: bool = False) -> dict[str, Any]:
    """Copy one run's catalog, manifests rewritten for the new run, server-side."""
    from catalog_agent.config import run_prefix, validate_name

    require_run(config)
    validate_name("from-run", from_run, "flag --from-run")
    if from_run == config.run_id:
        raise ConfigError("--from-run and --run-id are the same run")
    source_prefix = run_prefix(config.prefix, from_run)
    store = open_store(config, cancel)
    try:
        source = run_state.load(store, source_prefix)
        copies, count, size = plan.plan_sync(source, config.run_prefix)
        if dry_run:
            from catalog_agent import dryrun

            return dryrun.sync(copies, len(source.manifests), log=get_logger())
        result = transfer.copy(store, copies, (count, size), concurrency=config.concurrency,
                               cancel=cancel)
        # Manifests last, rewritten to name the new run: the copy is complete when they exist.
        for step, obj in source.manifests.items():
            chunks = store.read_stream(obj.key)
            if chunks is None:
                continue
            old = manifest.read(chunks, f"{store.location}/{obj.key}")
            new = (manifest.entry(e.name, e.data_hash, e.size, run_id=config.run_id,
                                  location=e.catalog_handler_location, stage=e.stage,
                                  executable=e.executable, in_run=manifest.path_in_run(e))
                   for e in old)
            head = manifest.header(run_id=config.run_id, step=step, command="sync",
                                   synced_from=from_run)
            store.write_stream(manifest_key(config.run_prefix, step), manifest.encode(head, new))
    finally:
        store.close()
    return _summary("sync", result, from_run=from_run, manifests=len(source.manifests))


def ls(config: Config, given: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The run's files, one row at a time, in name order (a million rows are never a list)."""
    require_run(config)
    wanted = patterns.parse(given) if given else []
    store = open_store(config)
    try:
        state = run_state.load(store, config.run_prefix, config.key_layout.folder)
        _learn_run_log(config, store, state, get_logger())
    finally:
        store.close()
    for row, relative in enumerate(state.names):
        if wanted and not any(p.matches(relative) for p in wanted):
            continue
        yield {"path": relative, "size": state.sizes[row],
               "sha256": state.catalog_sha256(relative) or "", "step": state.step(row)}
