"""``--dry-run``: the plan of a get, put or sync as log events, and nothing else.

A dry run lists the run, scans and hashes local files (to know what is unchanged), and stops
there: it writes nothing locally or remotely, no manifest and no ``--record`` file. Each planned
path is one ``dry-run`` event (``action``: put, get, copy or skip, with the key, size and why);
refusals are the command's own errors (exit 6, each refused path logged by the CLI), and a
pattern matching nothing exits 3, as the real run would.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from catalog_agent.plan import CopyItem, GetItem, GetPlan, PutItem, Skipped
from catalog_agent.run_state import METADATA
from catalog_agent.stores.base import StoredObject

UNCHANGED_PUT = "unchanged: the catalog holds these bytes under this key"
UNCHANGED_GET = "unchanged: the local file already has the expected hash"


def _summary(command: str, moving: int, size: int, skipped: int, **extra: Any) -> dict[str, Any]:
    return {"command": command, "dry_run": True, "files": 0, "bytes": 0, "skipped": 0,
            "planned_files": moving, "planned_bytes": size, "planned_skipped": skipped, **extra}


def put(planned: list[tuple[PutItem, str, bool]], skipped: list[Skipped],
        log: Any) -> dict[str, Any]:
    """``planned``: (item, its SHA-256, whether the catalog already holds it)."""
    for item, sha256, unchanged in planned:
        if unchanged:
            log.info("dry-run", action="skip", path=item.relative, key=item.key, size=item.size,
                     reason=UNCHANGED_PUT)
        else:
            log.info("dry-run", action="put", path=item.relative, key=item.key, size=item.size,
                     sha256=sha256)
    for entry in skipped:
        log.info("dry-run", action="skip", path=entry.relative, reason=entry.reason)
    moving = [item for item, _, unchanged in planned if not unchanged]
    return _summary("put", len(moving), sum(i.size for i in moving),
                    len(planned) - len(moving) + len(skipped))


def get(planned: GetPlan, log: Any,
        head: Callable[[str], StoredObject | None] | None = None) -> dict[str, Any]:
    """``head``: the store's, to learn the hash an object carries itself where nothing records
    it (the real get verifies against it as the bytes arrive); one HEAD per such object."""
    unverified = moving = size = 0
    for item in planned.items():
        if not item.unchanged and item.expected_sha256 is None and head is not None:
            stored = head(item.key)
            if stored is not None and stored.sha256:
                item = GetItem(item.relative, item.key, item.size, stored.sha256,
                               item.executable, expected_from=METADATA)
        if item.unchanged:
            log.info("dry-run", action="skip", path=item.relative, key=item.key, size=item.size,
                     reason=UNCHANGED_GET)
            continue
        moving += 1
        size += item.size
        if item.expected_sha256 is None:
            unverified += 1
            log.info("dry-run", action="get", path=item.relative, key=item.key, size=item.size,
                     verified_by="", reason="unverified: no manifest, run log or object "
                                            "metadata records its hash")
        else:
            log.info("dry-run", action="get", path=item.relative, key=item.key, size=item.size,
                     verified_by=item.expected_from, sha256=item.expected_sha256)
    return _summary("get", moving, size, len(planned) - moving, unverified=unverified)


def sync(copies: Iterable[CopyItem], manifests: int, log: Any) -> dict[str, Any]:
    count = size = 0
    for item in copies:
        log.info("dry-run", action="copy", key=item.source_key, target=item.target_key,
                 size=item.size)
        count += 1
        size += item.size
    return _summary("sync", count, size, 0, manifests=manifests)
