"""Plans: which files move where, with which hashes, decided without touching the network.

The I/O shell gathers facts (the local folder's entries and hashes, the run's catalog state);
the functions here turn them into a plan or a clear error, before a single byte is written.
"""

from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from catalog_agent.errors import IntegrityError, NoMatchError, TransferError
from catalog_agent.keys import unsafe_reason
from catalog_agent.local import FILE, UNSAFE_LINKS, LocalEntry
from catalog_agent.patterns import Pattern
from catalog_agent.run_state import RunState


@dataclass(frozen=True, slots=True)
class Skipped:
    """A matched path that will not move, and why (logged as a warning)."""

    relative: str
    reason: str


# A refusal keeps this many paths for a dry run to list (and counts the rest): a run of a
# million unrecorded objects must not hold a million of them.
REFUSALS_KEPT = 1000


class Refused(IntegrityError):
    """Matched paths that may not move (exit 6). The message names the first and counts them
    all; ``refused`` holds the first :data:`REFUSALS_KEPT`, for a dry run to list."""

    def __init__(self, message: str, refused: list[Skipped]) -> None:
        super().__init__(message)
        self.refused = refused


def _refuse(paths: Iterable[Skipped], doing: str, ending: str = "") -> None:
    """Raise :class:`Refused` when ``paths`` holds any: "refusing <doing> '<first>': <why>
    (and N more); <ending>"."""
    items = iter(paths)
    kept = list(itertools.islice(items, REFUSALS_KEPT))
    if not kept:
        return
    count = len(kept) + sum(1 for _ in items)
    more = f" (and {count - 1:,} more)" if count > 1 else ""
    tail = f"; {ending}" if ending else ""
    raise Refused(f"refusing {doing}{kept[0].relative!r}: {kept[0].reason}{more}{tail}", kept)


@dataclass(frozen=True, slots=True)
class PutItem:
    """A file to put: where it goes. Its hash is learnt as the transfer reads it."""

    entry: LocalEntry
    key: str

    @property
    def relative(self) -> str:
        return self.entry.relative

    @property
    def size(self) -> int:
        return self.entry.size


@dataclass(frozen=True, slots=True)
class Stored:
    """A file a put recorded: what the manifest says of it."""

    relative: str
    sha256: str
    size: int
    executable: bool
    moved: bool  # False: the catalog already held these bytes under this key


@dataclass(frozen=True, slots=True)
class GetItem:
    relative: str
    key: str
    size: int
    expected_sha256: str | None  # None: stored by another tool, fetched unverified
    executable: bool
    unchanged: bool = False  # already present locally with the expected hash
    expected_from: str = ""  # manifest, run log or object metadata; '' when unverified


@dataclass
class GetPlan:
    """The objects a get takes, as rows of the run's state (a million items would not fit as
    objects), with a flag for each telling whether the local copy is already right."""

    state: RunState
    rows: array = field(default_factory=lambda: array("q"))
    unchanged: bytearray = field(default_factory=bytearray)

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, index: int) -> GetItem:
        row = self.rows[index]
        state = self.state
        relative = state.names[row]
        return GetItem(relative, state.key(relative), state.size(row), state.sha256(row),
                       state.executable(row), bool(self.unchanged[index]) if self.unchanged
                       else False, state.source(row))

    def items(self) -> Iterator[GetItem]:
        return (self.item(index) for index in range(len(self.rows)))

    def moving(self) -> Iterator[GetItem]:
        """The items to fetch, created one at a time."""
        return (self.item(index) for index in range(len(self.rows))
                if not (self.unchanged and self.unchanged[index]))

    def moving_count(self) -> tuple[int, int]:
        """(files, bytes) to fetch."""
        files = size = 0
        for index, row in enumerate(self.rows):
            if not (self.unchanged and self.unchanged[index]):
                files += 1
                size += self.state.sizes[row]
        return files, size


@dataclass(frozen=True, slots=True)
class CopyItem:
    source_key: str
    target_key: str
    size: int


def _select(paths: Iterable[str], patterns: list[Pattern], *, allow_missing: bool,
            where: str) -> list[str]:
    """Paths matched by any pattern, in order; a pattern matching nothing is an error."""
    paths = list(paths)
    chosen: dict[str, None] = {}
    for pattern in patterns:
        matched = [p for p in paths if pattern.matches(p)]
        if not matched and not allow_missing:
            raise NoMatchError(f"pattern {pattern.text!r} matched nothing in {where}")
        chosen.update(dict.fromkeys(matched))
    return list(chosen)


def select_put(entries: list[LocalEntry], patterns: list[Pattern], *, allow_missing: bool,
               strict_links: bool, where: str) -> tuple[list[LocalEntry], list[Skipped]]:
    """The regular files to put, and the matched entries that must be skipped."""
    by_path = {e.relative: e for e in entries}
    files: list[LocalEntry] = []
    skipped: list[Skipped] = []
    chosen = _select(by_path, patterns, allow_missing=allow_missing, where=where)
    _refuse((Skipped(r, by_path[r].kind) for r in chosen
             if strict_links and by_path[r].kind in UNSAFE_LINKS), "to put ")
    for relative in chosen:
        entry = by_path[relative]
        reason = unsafe_reason(relative)
        if entry.kind != FILE:
            skipped.append(Skipped(relative, entry.kind))
        elif reason:
            skipped.append(Skipped(relative, f"name not storable as a key: {reason}"))
        else:
            files.append(entry)
    return files, skipped


def plan_put(files: list[LocalEntry], key_of: Callable[[str], str], *,
             max_object_size: int | None,
             max_key_bytes: int | None = None) -> list[PutItem]:
    """Where each file goes (``key_of``: the layout's key of a path in the data folder).

    A file too large for the store stops the put before anything is sent (exit 5), and so does
    a file whose key the store cannot hold (exit 6, every such file in ``refused``): skipping
    it would leave the catalog silently without a file the step made.
    """
    items, refused = [], []
    for entry in files:
        if max_object_size is not None and entry.size > max_object_size:
            raise TransferError(f"refusing to put {entry.relative!r}: {entry.size:,} bytes, more "
                                f"than the {max_object_size:,} bytes an object may hold; "
                                f"nothing was sent")
        key = key_of(entry.relative)
        length = len(key.encode("utf-8"))
        if max_key_bytes is not None and length > max_key_bytes:
            refused.append(Skipped(entry.relative, f"its key would be {length} bytes, more than "
                                                   f"the {max_key_bytes} bytes a key of the "
                                                   f"store may hold"))
            continue
        items.append(PutItem(entry, key))
    _refuse(refused, "to put ", "nothing was sent")
    return items


def already_stored(item: PutItem, sha256: str, size: int, state: RunState) -> bool:
    """True when the catalog holds exactly these bytes under the item's key (nothing to send)."""
    row = state.find(item.relative)
    return (row is not None and state.sizes[row] == size
            and state.catalog_sha256(item.relative) == sha256)


def select_get(state: RunState, patterns: list[Pattern], *, allow_missing: bool,
               where: str, strict_verify: bool = False) -> GetPlan:
    """What a get fetches; any matched key that could leave the data folder stops it (exit 6),
    and with ``strict_verify`` so does any object with no recorded hash to check it against."""
    chosen = _select_rows(state.names, patterns, allow_missing=allow_missing, where=where)
    _refuse((Skipped(state.key(state.names[row]), reason) for row in chosen
             if (reason := unsafe_reason(state.names[row]))), "key ", "nothing was written")
    if strict_verify:
        _refuse((Skipped(state.key(state.names[row]), "no manifest, run log or object metadata "
                         "records its hash, and strict_verify is on")
                 for row in chosen if state.sha256(row) is None), "", "nothing was written")
    return GetPlan(state, chosen)


def _select_rows(names: list[str], patterns: list[Pattern], *, allow_missing: bool,
                 where: str) -> array:
    """Rows matched by any pattern, in name order; a pattern matching nothing is an error."""
    matched = bytearray(len(names))
    for pattern in patterns:
        found = False
        for row, name in enumerate(names):
            if pattern.matches(name):
                matched[row] = 1
                found = True
        if not found and not allow_missing:
            raise NoMatchError(f"pattern {pattern.text!r} matched nothing in {where}")
    return array("q", (row for row, flag in enumerate(matched) if flag))


def plan_get(selected: GetPlan, local_sha256: Callable[[str, int], str | None]) -> GetPlan:
    """Mark items whose local copy already has the expected hash (resume, not restart).

    ``local_sha256(relative, size)`` returns the local file's hash, or None when it is absent
    or of another size (so that no file is hashed in vain).
    """
    state = selected.state
    unchanged = bytearray(len(selected.rows))
    for index, row in enumerate(selected.rows):
        expected = state.sha256(row)
        if expected is not None and local_sha256(state.names[row], state.sizes[row]) == expected:
            unchanged[index] = 1
    return GetPlan(state, selected.rows, unchanged)


def plan_sync(source: RunState, target_prefix: str) -> tuple[Iterator[CopyItem], int, int]:
    """Server-side copies of every data object of one run into another run: (the copies, made
    one at a time, their count, their bytes). Any key that could leave a data folder stops it
    before anything is copied."""
    _refuse((Skipped(source.key(name), reason) for name in source.names
             if (reason := unsafe_reason(name))), "to copy key ")
    copies = (CopyItem(source.key(name), target_prefix + name, source.sizes[row])
              for row, name in enumerate(source.names))
    return copies, len(source.names), sum(source.sizes)
