"""Step manifests: the record of what a put stored, in magnus DataCatalog fields.

``<prefix>/<run_id>/.catalog-agent/manifests/<step>.json`` is written after every object of the
put is stored, so its presence means the step's outputs are complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from catalog_agent import __version__
from catalog_agent.errors import IntegrityError

FORMAT = "catalog-agent/manifest/v1"
# A manifest not laid out one file per line (an older agent's) is read whole, up to this size;
# one that is, line by line, whatever its size.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
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


def header(*, run_id: str, step: str, command: str, **extra: Any) -> dict[str, Any]:
    """A manifest's fields other than its files."""
    return {"format": FORMAT, "agent_version": __version__, "run_id": run_id, "step": step,
            "command": command,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def encode(head: dict[str, Any], entries: Iterable[Entry]) -> Iterator[bytes]:
    """The manifest, in pieces: one JSON document whose ``files`` list holds one entry per line.

    Written piece by piece and read line by line (:func:`read`), a manifest of a million files
    is never whole in memory; it is still plain JSON for any other reader.
    """
    fields = json.dumps(head, ensure_ascii=False, separators=(", ", ": "))
    yield (fields[:-1] + ', "files": [\n').encode("utf-8")
    separator = b""
    batch: list[bytes] = []
    for e in entries:
        batch.append(separator + json.dumps(e.to_json(), ensure_ascii=False).encode("utf-8"))
        separator = b",\n"
        if len(batch) >= 1000:
            yield b"".join(batch)
            batch = []
    batch.append(b"\n]}\n")
    yield b"".join(batch)


def read(chunks: Iterable[bytes], where: str) -> Iterator[Entry]:
    """The entries of a stored manifest, as the pieces arrive; anything malformed is an
    integrity error. A manifest laid out otherwise (an older agent's, indented) is read whole,
    up to MAX_MANIFEST_BYTES."""
    lines = _lines(iter(chunks), where)
    first = next(lines, b"")
    if not first.rstrip().endswith(b'"files": ['):
        yield from _read_whole(first, lines, where)
        return
    _fields(first, where)
    for line in lines:
        text = line.strip()
        if text in (b"]}", b"]}\n"):
            return
        if text.endswith(b","):
            text = text[:-1]
        if text:
            yield _entry(_json(text, where), where)
    raise IntegrityError(f"manifest {where} ends before its file list does")


def parse(raw: bytes, where: str) -> list[Entry]:
    """Every entry of a manifest held in memory (small ones: tests, --record files)."""
    return list(read([raw], where))


def _lines(chunks: Iterator[bytes], where: str) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        if len(pending) > MAX_LINE_BYTES and b"\n" not in pending:
            # no line is that long in a manifest written by the agent: read it whole instead
            yield pending
            yield from chunks
            return
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _read_whole(first: bytes, rest: Iterator[bytes], where: str) -> Iterator[Entry]:
    parts, size = [first], len(first)
    for part in rest:
        size += len(part)
        if size > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"manifest {where} is larger than {MAX_MANIFEST_BYTES} bytes "
                                 f"and not laid out one file per line")
        parts.append(part)
    doc = _json(b"".join(parts), where)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise IntegrityError(f"manifest {where} has no 'files' list")
    for item in files:
        yield _entry(item, where)


def _fields(first: bytes, where: str) -> None:
    text = first.rstrip()[:-len(b'"files": [')].rstrip()
    if text.endswith(b","):
        text = text[:-1]
    if not isinstance(_json(text + b"}", where), dict):
        raise IntegrityError(f"manifest {where} is not valid JSON")


def _json(text: bytes, where: str) -> Any:
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise IntegrityError(f"manifest {where} is not valid JSON") from None


def _entry(item: Any, where: str) -> Entry:
    try:
        name, data_hash, size = item["name"], item["data_hash"], item["size"]
        ok = (isinstance(name, str) and isinstance(data_hash, str)
              and _HEX64.fullmatch(data_hash) is not None
              and isinstance(size, int) and not isinstance(size, bool) and size >= 0)
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise IntegrityError(f"manifest {where} has a malformed file entry")
    return Entry(name, data_hash, size, str(item.get("catalog_relative_path", "")),
                 str(item.get("catalog_handler_location", "")), str(item.get("stage", "put")),
                 item.get("executable") is True)
