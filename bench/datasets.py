"""The data sets: many small files, a few hundred medium ones, one large file.

Random bytes (incompressible), written once into a cache folder and reused while the set's
shape is unchanged, so that iterating on the agent does not rewrite a GiB each time.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3


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
        return f"{self.count:,} × {_human(self.size)}"

    def relative_paths(self) -> list[str]:
        width = len(str(self.count - 1))
        return [f"d{i % self.folders:02d}/f{i:0{width}d}.bin" if self.folders > 1
                else f"f{i:0{width}d}.bin" for i in range(self.count)]


FULL = [DataSet("small", 2000, 64 * KiB, 20), DataSet("medium", 200, 4 * MiB),
        DataSet("large", 1, 1 * GiB)]
QUICK = [DataSet("small", 400, 64 * KiB, 20), DataSet("medium", 40, 4 * MiB),
         DataSet("large", 1, 256 * MiB)]
# The start-up probe: a run holding one small file.
ONE = DataSet("one", 1, 64 * KiB)


def _human(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def ensure(root: Path, dataset: DataSet) -> Path:
    """The set's folder under ``root``, created (or recreated) to match ``dataset``."""
    folder = root / dataset.name
    stamp = root / f".{dataset.name}.json"
    shape = json.dumps([dataset.count, dataset.size, dataset.folders])
    if folder.is_dir() and stamp.exists() and stamp.read_text() == shape:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for relative in dataset.relative_paths():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            left = dataset.size
            while left:
                block = os.urandom(min(left, 16 * MiB))
                out.write(block)
                left -= len(block)
    stamp.write_text(shape)
    return folder


def measure(folder: Path) -> tuple[int, int]:
    """(file count, total bytes) of a folder, for checking that a tool moved everything."""
    count = total = 0
    for directory, _dirs, files in os.walk(folder):
        for name in files:
            count += 1
            total += os.path.getsize(os.path.join(directory, name))
    return count, total
