"""The data sets: small, medium and large files, 100,000 tiny files, and a run of a million keys.

Random bytes (incompressible), written once into a cache folder and reused while the set's
shape is unchanged, so that iterating on the agent does not rewrite a GiB each time. Each set
keeps beside it a stamp (its shape and a token that changes whenever its bytes are rewritten,
so that a kept server's seed can tell whether it still holds these bytes) and the SHA-256 of
every file, computed while writing (the million-key run's manifests are made from them).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
STAMP_VERSION = 2  # bump when the layout of a set's files changes


@dataclass(frozen=True)
class DataSet:
    name: str  # also the folder under the data root, and the agent's pattern
    count: int
    size: int
    folders: int = 1

    @property
    def total(self) -> int:
        return self.count * self.size

    @property
    def label(self) -> str:
        return f"{self.count:,} × {human(self.size)}"

    def relative_paths(self) -> Iterator[str]:
        width = len(str(self.count - 1))
        folder_width = max(2, len(str(self.folders - 1)))
        for i in range(self.count):
            if self.folders > 1:
                yield f"d{i % self.folders:0{folder_width}d}/f{i:0{width}d}.bin"
            else:
                yield f"f{i:0{width}d}.bin"

    def scaled(self, factor: float) -> DataSet:
        """The same shape with ``factor`` times the files (for trying the tooling on less)."""
        if factor == 1 or self.count == 1:
            return self
        count = max(1, round(self.count * factor))
        return replace(self, count=count, folders=max(1, min(self.folders, count)))


# What each --sets name measures: small/medium/large/many are put and get, "one" is the
# one-file get start to exit, "million" is ls and a get where every file is already present.
FULL = {
    "small": DataSet("small", 2000, 64 * KiB, 20),
    "medium": DataSet("medium", 200, 4 * MiB),
    "large": DataSet("large", 1, 1 * GiB),
    "many": DataSet("many", 100_000, 1 * KiB, 1000),
    "one": DataSet("one", 1, 64 * KiB),
    "million": DataSet("million", 1_000_000, 1 * KiB, 1000),
}
QUICK = {
    "small": DataSet("small", 400, 64 * KiB, 20),
    "medium": DataSet("medium", 40, 4 * MiB),
    "large": DataSet("large", 1, 256 * MiB),
    "many": DataSet("many", 5_000, 1 * KiB, 50),
    "one": DataSet("one", 1, 64 * KiB),
    "million": DataSet("million", 10_000, 1 * KiB, 100),
}
NAMES = list(FULL)


def human(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _stamp_path(root: Path, dataset: DataSet) -> Path:
    return root / f".{dataset.name}.json"


def _hashes_path(root: Path, dataset: DataSet) -> Path:
    return root / f".{dataset.name}.sha256"


def _shape(dataset: DataSet) -> list[int]:
    return [STAMP_VERSION, dataset.count, dataset.size, dataset.folders]


def stamp(root: Path, dataset: DataSet) -> dict[str, object] | None:
    """The set's stamp ({"shape", "token"}) when its folder matches ``dataset``, else None."""
    path = _stamp_path(root, dataset)
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    folder = root / dataset.name
    if (isinstance(found, dict) and found.get("shape") == _shape(dataset) and folder.is_dir()
            and _hashes_path(root, dataset).exists()):
        return found
    return None


def ensure(root: Path, dataset: DataSet) -> Path:
    """The set's folder under ``root``, created (or recreated) to match ``dataset``."""
    folder = root / dataset.name
    if stamp(root, dataset) is not None:
        return folder
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    _stamp_path(root, dataset).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    made: set[Path] = set()
    with open(_hashes_path(root, dataset), "w") as sums:
        for relative in dataset.relative_paths():
            path = folder / relative
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            digest = hashlib.sha256()
            with open(path, "wb") as out:
                left = dataset.size
                while left:
                    block = os.urandom(min(left, 16 * MiB))
                    digest.update(block)
                    out.write(block)
                    left -= len(block)
            sums.write(f"{digest.hexdigest()}  {relative}\n")
    _stamp_path(root, dataset).write_text(json.dumps(
        {"shape": _shape(dataset), "token": secrets.token_hex(8)}))
    print(f"wrote {dataset.name} ({dataset.label}) in {time.monotonic() - started:.0f} s",
          flush=True)
    return folder


def hashes(root: Path, dataset: DataSet) -> Iterator[tuple[str, str]]:
    """(relative path, SHA-256) of every file of the set, as written by :func:`ensure`."""
    with open(_hashes_path(root, dataset)) as sums:
        for line in sums:
            digest, relative = line.rstrip("\n").split("  ", 1)
            yield relative, digest


def measure(folder: Path) -> tuple[int, int]:
    """(file count, total bytes) of a folder, for checking that a tool moved everything."""
    count = total = 0
    for directory, _dirs, files in os.walk(folder):
        for name in files:
            count += 1
            total += os.path.getsize(os.path.join(directory, name))
    return count, total
