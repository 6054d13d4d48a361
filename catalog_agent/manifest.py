"""Step manifests: the record of what a put stored, in magnus DataCatalog fields.

``<prefix>/<run_id>/.catalog-agent/manifests/<step>.json`` is written after every object of the
put is stored, so its presence means the step's outputs are complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from catalog_agent import __version__
from catalog_agent.errors import IntegrityError

FORMAT = "catalog-agent/manifest/v1"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    """One file of a manifest (or of a ``--record`` file)."""

    name: str  # path relative to the compute data folder
    data_hash: str
    size: int
    catalog_relative_path: str  # <run_id>/<name>
    catalog_handler_location: str  # s3://bucket[/prefix] or the catalog folder
    stage: str  # "put" or "get"
    executable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "data_hash": self.data_hash, "size": self.size,
                "catalog_relative_path": self.catalog_relative_path,
                "catalog_handler_location": self.catalog_handler_location,
                "stage": self.stage, "executable": self.executable}


def handler_location(store_location: str, prefix: str) -> str:
    return f"{store_location}/{prefix}" if prefix else store_location


def entry(name: str, sha256: str, size: int, *, run_id: str, location: str, stage: str,
          executable: bool, in_run: str | None = None) -> Entry:
    """``in_run``: the file's path in the run when it differs from ``name`` (layout magnus:
    ``<compute_data_folder>/<name>``); ``catalog_relative_path`` is ``<run_id>/<in_run>``."""
    return Entry(name, sha256, size, f"{run_id}/{in_run or name}", location, stage, executable)


def path_in_run(e: Entry) -> str:
    """Where an entry's object lies in its run: ``catalog_relative_path`` without the run id
    (manifests written before layouts existed and synced ones hold ``<run_id>/<name>``)."""
    head, sep, rest = e.catalog_relative_path.partition("/")
    return rest if sep and head and rest else e.name


def document(entries: Iterable[Entry], *, run_id: str, step: str, command: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "agent_version": __version__,
        "run_id": run_id,
        "step": step,
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [e.to_json() for e in entries],
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def parse(raw: bytes, where: str) -> list[Entry]:
    """The entries of a stored manifest; anything malformed is an integrity error."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise IntegrityError(f"manifest {where} is not valid JSON") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise IntegrityError(f"manifest {where} has no 'files' list")
    entries = []
    for item in files:
        try:
            name, data_hash, size = item["name"], item["data_hash"], item["size"]
            ok = (isinstance(name, str) and isinstance(data_hash, str)
                  and _HEX64.fullmatch(data_hash) is not None
                  and isinstance(size, int) and not isinstance(size, bool) and size >= 0)
        except (TypeError, KeyError):
            ok = False
        if not ok:
            raise IntegrityError(f"manifest {where} has a malformed file entry")
        entries.append(Entry(name, data_hash, size, str(item.get("catalog_relative_path", "")),
                             str(item.get("catalog_handler_location", "")),
                             str(item.get("stage", "put")), item.get("executable") is True))
    return entries
