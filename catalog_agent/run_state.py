"""What the catalog holds for one run: its objects and what the manifests recorded of them.

Loading it is the only network work before a plan: one listing of the run's prefix and one read
per step manifest, never a request per object. Objects and records are keyed by their path in
the data folder (:mod:`catalog_agent.layout` maps it to the key); what lies elsewhere in the run
(another step's data folder under layout magnus) is not this step's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from catalog_agent.keys import MANIFESTS
from catalog_agent.layout import Layout
from catalog_agent.manifest import MAX_MANIFEST_BYTES, Entry, parse, path_in_run
from catalog_agent.patterns import is_reserved
from catalog_agent.runlog import Logged
from catalog_agent.stores.base import Store, StoredObject

MANIFEST = "manifest"
RUN_LOG = "run log"
METADATA = "object metadata"


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
    folder: str = ""  # the data folder's place in the run (layout magnus); '' is the run itself
    objects: dict[str, StoredObject] = field(default_factory=dict)  # relative path -> object
    recorded: dict[str, Recorded] = field(default_factory=dict)  # relative path -> record
    logged: dict[str, Logged] = field(default_factory=dict)  # relative path -> magnus's record
    manifests: dict[str, StoredObject] = field(default_factory=dict)  # step -> manifest object

    @property
    def layout(self) -> Layout:
        return Layout(self.run_prefix, self.folder)

    def key(self, relative: str) -> str:
        return self.layout.key(relative)

    def catalog_sha256(self, relative: str) -> str | None:
        """The hash the catalog holds for ``relative``: recorded, or the object's own metadata."""
        obj = self.objects.get(relative)
        if obj is None:
            return None
        record = self.recorded.get(relative)
        if record is not None and record.size == obj.size:
            return record.sha256
        if relative in self.logged:
            return self.logged[relative].sha256
        return obj.sha256

    def expected(self, relative: str) -> tuple[str | None, str]:
        """The hash a get verifies ``relative`` against and where it comes from: a manifest of
        the agent, else magnus's run log, else the object's metadata; (None, '') for none."""
        record = self.recorded.get(relative)
        if record is not None:
            return record.sha256, MANIFEST
        if relative in self.logged:
            return self.logged[relative].sha256, RUN_LOG
        obj = self.objects.get(relative)
        if obj is not None and obj.sha256:
            return obj.sha256, METADATA
        return None, ""

    def learn_run_log(self, files: dict[str, Logged]) -> int:
        """Take magnus's hashes by path in the run; returns how many are of this data folder's
        objects (magnus records no size: the hash alone is checked)."""
        layout = self.layout
        for in_run, logged in files.items():
            relative = layout.relative(in_run)
            if relative is not None and relative in self.objects:
                self.logged[relative] = logged
        return len(self.logged)


def load(store: Store, run_prefix: str, folder: str = "") -> RunState:
    state = RunState(run_prefix, folder)
    layout = state.layout
    manifest_prefix = run_prefix + MANIFESTS
    for obj in store.list(run_prefix):
        in_run = obj.key[len(run_prefix):]
        if obj.key.startswith(manifest_prefix) and obj.key.endswith(".json"):
            state.manifests[obj.key[len(manifest_prefix):-len(".json")]] = obj
            continue
        relative = layout.relative(in_run)
        if relative is None or is_reserved(in_run) or is_reserved(relative):
            continue
        if not (relative.endswith("/") and obj.size == 0):  # "folder" marker objects
            state.objects[relative] = obj
    # Oldest first, so that the newest manifest's record of a file wins.
    for step, obj in sorted(state.manifests.items(), key=lambda item: item[1].modified):
        raw = store.read_small(obj.key, MAX_MANIFEST_BYTES)
        if raw is None:
            continue
        for e in parse(raw, f"{store.location}/{obj.key}"):
            relative = layout.relative(path_in_run(e))
            if relative is not None:
                state.recorded[relative] = Recorded(e.data_hash, e.size, e.executable, step)
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


__all__ = ["Entry", "Logged", "Recorded", "RunState", "load", "with_metadata"]
