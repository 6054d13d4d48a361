"""The step's local data folder: what may be read from it and how files land in it.

Reading: only regular files inside the folder. A symlink or hard link leading out of the folder
could ship the pod's service-account token to the bucket, and a FIFO would block the agent, so
:func:`scan` classifies every entry and the plan decides what to do with each kind.

Writing: a file appears at its final path only complete, by rename from a temporary name in the
same folder, and never through a symlink planted in the path.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from catalog_agent.errors import IntegrityError, TransferError
from catalog_agent.patterns import RESERVED

# Kinds of entries found in the data folder.
FILE = "file"
LINK_OUTSIDE = "symlink leaving the data folder"
HARDLINK_OUTSIDE = "hard link with a name outside the data folder"
LINK_TO_FOLDER = "symlink to a folder (not followed)"
DANGLING = "dangling symlink"
SPECIAL = "not a regular file (FIFO, socket or device)"
UNSAFE_LINKS = {LINK_OUTSIDE, HARDLINK_OUTSIDE}

FILE_MODE = 0o644
EXEC_MODE = 0o755
FOLDER_MODE = 0o755
PART_SUFFIX = ".catalog-agent.part"


@dataclass(frozen=True)
class LocalEntry:
    """One entry of the data folder; ``path`` is what to open (a link's target for a symlink)."""

    relative: str
    path: Path
    kind: str
    size: int = 0
    executable: bool = False


def scan(folder: Path) -> list[LocalEntry]:
    """Every entry under ``folder`` except folders themselves, classified. Missing folder: []."""
    if not folder.is_dir():
        return []
    root = Path(os.path.realpath(folder))
    entries: list[LocalEntry] = []
    inode_seen: dict[tuple[int, int], int] = {}
    errors: list[OSError] = []

    for directory, dirnames, filenames in os.walk(root, onerror=errors.append):
        base = Path(directory)
        rel_dir = base.relative_to(root).as_posix()
        if rel_dir == ".":
            if RESERVED in dirnames:
                dirnames.remove(RESERVED)
            rel_dir = ""
        names = filenames + [d for d in dirnames if os.path.islink(base / d)]
        for name in sorted(names):
            relative = f"{rel_dir}/{name}" if rel_dir else name
            try:
                entries.append(_classify(root, base / name, relative, inode_seen))
            except FileNotFoundError:  # removed while we looked: not part of this put
                continue
    if errors:
        first = errors[0]
        raise TransferError(f"cannot read {first.filename}: {first.strerror}")

    # A hard link whose other names are not all inside the folder may be a secret's second name.
    checked = []
    for entry in entries:
        if entry.kind == FILE and not os.path.islink(root / entry.relative):
            st = os.lstat(entry.path)
            if st.st_nlink > inode_seen.get((st.st_dev, st.st_ino), 0):
                entry = LocalEntry(entry.relative, entry.path, HARDLINK_OUTSIDE)
        checked.append(entry)
    return checked


def _classify(root: Path, path: Path, relative: str,
              inode_seen: dict[tuple[int, int], int]) -> LocalEntry:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        if not (target == root or root in target.parents):
            return LocalEntry(relative, path, LINK_OUTSIDE)
        try:
            st = os.stat(target)
        except OSError:
            return LocalEntry(relative, path, DANGLING)
        if stat.S_ISDIR(st.st_mode):
            return LocalEntry(relative, path, LINK_TO_FOLDER)
        if not stat.S_ISREG(st.st_mode):
            return LocalEntry(relative, path, SPECIAL)
        return LocalEntry(relative, target, FILE, st.st_size, bool(st.st_mode & 0o100))
    if not stat.S_ISREG(st.st_mode):
        return LocalEntry(relative, path, SPECIAL)
    key = (st.st_dev, st.st_ino)
    inode_seen[key] = inode_seen.get(key, 0) + 1
    return LocalEntry(relative, path, FILE, st.st_size, bool(st.st_mode & 0o100))


def open_regular(path: Path) -> int:
    """Open a file for reading, refusing anything that turned into a non-regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{path} is no longer a regular file")
    return fd


def destination(folder: Path, relative: str) -> Path:
    """The final path of ``relative``, creating its folders; refuses symlinked folders on the way."""
    root = Path(folder)
    root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    current = root
    parts = relative.split("/")
    for part in parts[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            try:
                os.mkdir(current, FOLDER_MODE)
                os.chmod(current, FOLDER_MODE)
            except FileExistsError:
                pass
            st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            raise IntegrityError(f"refusing to write {relative!r}: {current} is a symlink")
        if not stat.S_ISDIR(st.st_mode):
            raise IntegrityError(f"refusing to write {relative!r}: {current} is not a folder")
    return current / parts[-1]


def temporary_for(final: Path) -> Path:
    """A hidden temporary name beside ``final``; rename from it is atomic."""
    name = f".{final.name[:180]}.{secrets.token_hex(4)}{PART_SUFFIX}"
    return final.with_name(name)


def commit(temporary: Path, final: Path, executable: bool) -> None:
    """Give the finished file its mode and move it to its final name in one step."""
    os.chmod(temporary, EXEC_MODE if executable else FILE_MODE)
    if final.is_dir() and not final.is_symlink():
        raise IntegrityError(f"refusing to replace folder {final} with a file")
    os.replace(temporary, final)


def discard(temporary: Path) -> None:
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
