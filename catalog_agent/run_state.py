"""What the catalog holds for one run: its objects and what the manifests recorded of them.

Loading it is the only network work before a plan: one listing of the run's prefix and one read
per step manifest (streamed), never a request per object. Objects and records are keyed by
their path in the data folder (:mod:`catalog_agent.layout` maps it to the key); what lies
elsewhere in the run (another step's data folder under layout magnus) is not this step's.

A run may hold a million objects, so the state is kept in columns, one row per object in name
order (about 150 bytes a row), and a name is found by bisection; a manifest is read line by
line into the columns, never whole.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from catalog_agent.keys import MANIFESTS
from catalog_agent.layout import Layout
from catalog_agent.manifest import Entry, path_in_run, read
from catalog_agent.patterns import is_reserved
from catalog_agent.stores.base import Store, StoredObject

if TYPE_CHECKING:
    from catalog_agent.runlog import Logged

# Where the hash a get verifies an object against comes from, best first.
MANIFEST = "manifest"
RUN_LOG = "run log"
METADATA = "object metadata"
_NONE, _MANIFEST, _RUN_LOG, _METADATA = 0, 1, 2, 3
_SOURCE_NAMES = {_NONE: "", _MANIFEST: MANIFEST, _RUN_LOG: RUN_LOG, _METADATA: METADATA}
_RANK = {_NONE: 0, _METADATA: 1, _RUN_LOG: 2, _MANIFEST: 3}


@dataclass(frozen=True, slots=True)
class Recorded:
    """A file as a step's manifest (or magnus's run log) recorded it."""

    sha256: str
    size: int
    executable: bool
    step: str


@dataclass
class RunState:
    """The run's data objects, by path in the data folder, sorted; see the module's docstring."""

    run_prefix: str
    folder: str = ""  # the data folder's place in the run (layout magnus); '' is the run itself
    names: list[str] = field(default_factory=list)
    sizes: array = field(default_factory=lambda: array("q"))
    manifests: dict[str, StoredObject] = field(default_factory=dict)  # step -> manifest object
    _hashes: bytearray = field(default_factory=bytearray)  # 32 bytes a row
    _sources: bytearray = field(default_factory=bytearray)
    _executable: bytearray = field(default_factory=bytearray)
    _recorded_sizes: array = field(default_factory=lambda: array("q"))  # -1: none recorded
    _steps_of: array = field(default_factory=lambda: array("I"))  # index into steps
    steps: list[str] = field(default_factory=lambda: [""])

    @property
    def layout(self) -> Layout:
        return Layout(self.run_prefix, self.folder)

    def key(self, relative: str) -> str:
        return self.layout.key(relative)

    # --- building ---

    def add_objects(self, objects: Iterable[tuple[str, int]]) -> None:
        """Take (relative path, size) pairs (a listing), keeping the rows in name order."""
        names, sizes = self.names, self.sizes
        ordered = True
        for relative, size in objects:
            if names and relative <= names[-1]:
                ordered = False
            names.append(relative)
            sizes.append(size)
        if not ordered:  # S3 lists in order; a folder catalog or another store may not
            order = sorted(range(len(names)), key=names.__getitem__)
            self.names = [names[i] for i in order]
            self.sizes = array("q", (sizes[i] for i in order))
            del order
        rows = len(self.names)
        self._hashes = bytearray(32 * rows)
        self._sources = bytearray(rows)
        self._executable = bytearray(rows)
        self._recorded_sizes = array("q", [-1]) * rows
        self._steps_of = array("I", [0]) * rows

    def record(self, relative: str, sha256: str, size: int, executable: bool, step: str,
               *, source: str = MANIFEST) -> bool:
        """Note what a manifest (or run log, or the object's metadata) says of ``relative``;
        a weaker source never replaces a stronger one. False when no such object is listed."""
        row = self.find(relative)
        if row is None:
            return False
        code = {MANIFEST: _MANIFEST, RUN_LOG: _RUN_LOG, METADATA: _METADATA}[source]
        if _RANK[code] < _RANK[self._sources[row]]:
            return True
        self._hashes[32 * row:32 * row + 32] = bytes.fromhex(sha256)
        self._sources[row] = code
        self._executable[row] = executable
        if code == _MANIFEST:
            self._recorded_sizes[row] = size
        self._steps_of[row] = self._step_index(step)
        return True

    def _step_index(self, step: str) -> int:
        if not step:
            return 0
        try:
            return self.steps.index(step)
        except ValueError:
            self.steps.append(step)
            return len(self.steps) - 1

    # --- looking up ---

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, relative: object) -> bool:
        return isinstance(relative, str) and self.find(relative) is not None

    def find(self, relative: str) -> int | None:
        """The row of ``relative``, or None when the run holds no such object."""
        row = bisect_left(self.names, relative)
        return row if row < len(self.names) and self.names[row] == relative else None

    def size(self, row: int) -> int:
        return self.sizes[row]

    def executable(self, row: int) -> bool:
        return bool(self._executable[row])

    def step(self, row: int) -> str:
        return self.steps[self._steps_of[row]]

    def source(self, row: int) -> str:
        return _SOURCE_NAMES[self._sources[row]]

    def sha256(self, row: int) -> str | None:
        """The hash a get verifies this object against (None: nothing records one)."""
        if self._sources[row] == _NONE:
            return None
        return self._hashes[32 * row:32 * row + 32].hex()

    def expected(self, relative: str) -> tuple[str | None, str]:
        """(hash, where it comes from: manifest, run log, object metadata), or (None, '')."""
        row = self.find(relative)
        if row is None:
            return None, ""
        return self.sha256(row), self.source(row)

    def catalog_sha256(self, relative: str) -> str | None:
        """The hash the catalog holds for ``relative`` (put's "already there?"): as recorded,
        when a manifest recorded it at the object's present size."""
        row = self.find(relative)
        if row is None:
            return None
        code = self._sources[row]
        if code == _MANIFEST and self._recorded_sizes[row] != self.sizes[row]:
            return None
        return self.sha256(row)

    def unrecorded(self) -> Iterator[int]:
        """Rows no manifest, run log or metadata records a hash for."""
        return (row for row, code in enumerate(self._sources) if code == _NONE)

    def all_recorded(self) -> bool:
        return _NONE not in self._sources

    def rows(self, relatives: Iterable[str]) -> list[int]:
        return [row for row in (self.find(r) for r in relatives) if row is not None]

    def learn_run_log(self, files: dict[str, Logged]) -> int:
        """Take magnus's hashes by path in the run, for objects no manifest records; returns
        how many of this data folder's objects now take their hash from it (magnus records no
        size)."""
        layout = self.layout
        for in_run, logged in files.items():
            relative = layout.relative(in_run)
            if relative is not None:
                self.record(relative, logged.sha256, -1, False, logged.step, source=RUN_LOG)
        return self._sources.count(_RUN_LOG)


def load(store: Store, run_prefix: str, folder: str = "") -> RunState:
    state = RunState(run_prefix, folder)
    layout = state.layout
    manifest_prefix = run_prefix + MANIFESTS

    def data_objects() -> Iterator[tuple[str, int]]:
        for obj in store.list(run_prefix):
            in_run = obj.key[len(run_prefix):]
            if obj.key.startswith(manifest_prefix) and obj.key.endswith(".json"):
                state.manifests[obj.key[len(manifest_prefix):-len(".json")]] = obj
                continue
            relative = layout.relative(in_run)
            if relative is None or is_reserved(in_run) or is_reserved(relative):
                continue
            if not (relative.endswith("/") and obj.size == 0):  # "folder" marker objects
                yield relative, obj.size

    state.add_objects(data_objects())
    # Oldest first, so that the newest manifest's record of a file wins.
    for step, obj in sorted(state.manifests.items(), key=lambda item: item[1].modified):
        chunks = store.read_stream(obj.key)
        if chunks is None:
            continue
        for e in read(chunks, f"{store.location}/{obj.key}"):
            relative = layout.relative(path_in_run(e))
            if relative is not None:
                state.record(relative, e.data_hash, e.size, e.executable, step)
    return state


def with_metadata(store: Store, state: RunState, relatives: Iterable[str]) -> RunState:
    """Learn the stored hash of objects nothing else records (one HEAD each, only those)."""
    for relative in relatives:
        row = state.find(relative)
        if row is not None and state.sha256(row) is None:
            head = store.head(state.key(relative))
            if head is not None and head.sha256:
                state.record(relative, head.sha256, head.size, head.executable, "",
                             source=METADATA)
    return state


__all__ = ["Entry", "Recorded", "RunState", "load", "with_metadata", "MANIFEST",
           "RUN_LOG", "METADATA"]
