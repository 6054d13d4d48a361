"""What the catalog holds for one run: its objects and what the manifests recorded of them.

Loading it is the only network work before a plan: one listing of the run's prefix and one read
per step manifest, never a request per object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from catalog_agent.keys import MANIFESTS
from catalog_agent.manifest import MAX_MANIFEST_BYTES, Entry, parse
from catalog_agent.patterns import RESERVED
from catalog_agent.stores.base import Store, StoredObject


@dataclass(frozen=True)
class Recorded:
    """A file as a step's manifest recorded it."""

    sha256: str
    size: int
    executable: bool
    step: str


@dataclass
class RunState:
    run_prefix: str
    objects: dict[str, StoredObject] = field(default_factory=dict)  # relative path -> object
    recorded: dict[str, Recorded] = field(default_factory=dict)  # relative path -> record
    manifests: dict[str, StoredObject] = field(default_factory=dict)  # step -> manifest object

    def catalog_sha256(self, relative: str) -> str | None:
        """The hash the catalog holds for ``relative``: recorded, or the object's own metadata."""
        obj = self.objects.get(relative)
        if obj is None:
            return None
        record = self.recorded.get(relative)
        if record is not None and record.size == obj.size:
            return record.sha256
        return obj.sha256


def load(store: Store, run_prefix: str) -> RunState:
    state = RunState(run_prefix)
    manifest_prefix = run_prefix + MANIFESTS
    for obj in store.list(run_prefix):
        relative = obj.key[len(run_prefix):]
        if obj.key.startswith(manifest_prefix) and obj.key.endswith(".json"):
            state.manifests[obj.key[len(manifest_prefix):-len(".json")]] = obj
        elif relative == RESERVED or relative.startswith(RESERVED + "/"):
            continue
        elif not (relative.endswith("/") and obj.size == 0):  # "folder" marker objects
            state.objects[relative] = obj
    # Oldest first, so that the newest manifest's record of a file wins.
    for step, obj in sorted(state.manifests.items(), key=lambda item: item[1].modified):
        raw = store.read_small(obj.key, MAX_MANIFEST_BYTES)
        if raw is None:
            continue
        for e in parse(raw, f"{store.location}/{obj.key}"):
            state.recorded[e.name] = Recorded(e.data_hash, e.size, e.executable, step)
    return state


def with_metadata(store: Store, state: RunState, relatives: list[str]) -> RunState:
    """Learn the stored hash of objects no manifest records (one HEAD each, only those)."""
    for relative in relatives:
        obj = state.objects.get(relative)
        if obj is not None and obj.sha256 is None and relative not in state.recorded:
            head = store.head(obj.key)
            if head is not None:
                state.objects[relative] = StoredObject(obj.key, obj.size, head.sha256,
                                                       head.executable, obj.modified)
    return state


__all__ = ["Entry", "Recorded", "RunState", "load", "with_metadata"]
