"""Step manifests: the record of what a put stored, in magnus DataCatalog fields.

``<prefix>/<run_id>/.catalog-agent/manifests/<step>.json`` is written after every object of the
put is stored, so its presence means the step's outputs are complete.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from catalog_agent import __version__
from catalog_agent.errors import IntegrityError

FORMAT = "catalog-agent/manifest/v1"
# A manifest is read piece by piece whatever its size; no single entry or field may be larger.
MAX_ITEM_CHARS = 1024 * 1024
_NOT_SPACE = re.compile(r"[^ \t\n\r]")
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
    """The entries of a stored manifest, parsed as the pieces arrive; anything malformed is an
    integrity error.

    Any JSON layout is read this way (one file per line as the agent writes it, an older
    agent's indented document): no more than one entry, or one other field, is ever held
    beyond the piece being read, and neither may exceed MAX_ITEM_CHARS. A manifest of a
    million files, or a hostile one of 64 MiB of tiny items, costs no more memory than one
    of ten files.
    """
    return _Reader(iter(chunks), where).entries()


def parse(raw: bytes, where: str) -> list[Entry]:
    """Every entry of a manifest held in memory (small ones: tests, --record files)."""
    return list(read([raw], where))


class _Reader:
    """An incremental reader of one JSON object whose ``files`` member is a list of entries."""

    def __init__(self, chunks: Iterator[bytes], where: str) -> None:
        self.chunks = chunks
        self.where = where
        self.text = ""
        self.pos = 0
        self.ended = False
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.decoder = json.JSONDecoder()

    def entries(self) -> Iterator[Entry]:
        self._expect("{")
        found = False
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                name = self._value()
                if not isinstance(name, str):
                    raise self._broken()
                self._expect(":")
                if name == "files" and self._peek() == "[":
                    found = True
                    self.pos += 1
                    yield from self._items()
                else:
                    value = self._value()
                    if name == "files":
                        raise IntegrityError(f"manifest {self.where} has no 'files' list")
                    del value
                if self._peek() == ",":
                    self.pos += 1
                    continue
                self._expect("}")
                break
        if self._peek() != "":
            raise self._broken()  # something after the document
        if not found:
            raise IntegrityError(f"manifest {self.where} has no 'files' list")

    def _items(self) -> Iterator[Entry]:
        if self._peek() == "]":
            self.pos += 1
            return
        while True:
            yield _entry(self._value(), self.where)
            if self._peek() == ",":
                self.pos += 1
                continue
            self._expect("]")
            return

    def _value(self) -> Any:
        """The next JSON value, reading more pieces until it is whole (or too large)."""
        while True:
            self._peek()
            try:
                value, end = self.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                value, end = None, -1
            except (RecursionError, ValueError):  # too deep, or a number of 5,000 digits
                raise self._broken() from None
            if end - self.pos > MAX_ITEM_CHARS or \
                    (end < 0 and len(self.text) - self.pos > MAX_ITEM_CHARS):
                # Too large whole, or still incomplete (or malformed: more text would not help).
                raise IntegrityError(f"manifest {self.where} holds an entry or field larger "
                                     f"than {MAX_ITEM_CHARS} characters")
            if end >= 0 and (end < len(self.text) or self.ended):
                self.pos = end
                return value
            if not self._more():
                raise self._broken()

    def _peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            found = _NOT_SPACE.search(self.text, self.pos)
            if found is not None:
                self.pos = found.start()
                return self.text[self.pos]
            self.pos = len(self.text)
            if not self._more():
                return ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise self._broken()
        self.pos += 1

    def _more(self) -> bool:
        if self.ended:
            return False
        chunk = next(self.chunks, None)
        try:
            text = self.utf8.decode(chunk or b"", final=chunk is None)
        except UnicodeDecodeError:
            raise IntegrityError(f"manifest {self.where} is not UTF-8 text") from None
        self.text = self.text[self.pos:] + text  # what was read is let go
        self.pos = 0
        self.ended = chunk is None
        return True

    def _broken(self) -> IntegrityError:
        return IntegrityError(f"manifest {self.where} is not valid JSON")


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
