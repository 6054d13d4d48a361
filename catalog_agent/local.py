"""The step's data folder: what may be read from it and how files land in it.

The step beside the agent shares this folder and may run code nobody reviewed, so every path
inside it is reached relative to an open directory descriptor, one name at a time, never
through a symlink (``O_NOFOLLOW``), and no open can block (``O_NONBLOCK``):

- the folder itself (:func:`open_folder`): the kernel never resolves a link on the way to it;
  a symlink is read and its target walked name by name too, and followed only where the step
  cannot have planted it, in the container's own root file system; inside any mounted volume
  (``/proc/self/mountinfo``) a symlink on the real route is refused;
- put: :meth:`Folder.scan` walks with directory descriptors and classifies every entry, and
  :meth:`Folder.open_file` opens a scanned file once, checking with ``fstat`` that it is the
  regular file the scan saw; the file is hashed and sent from that descriptor, and
  :meth:`OpenedFile.check_unchanged` proves afterwards that nobody wrote to it meanwhile;
- get: :meth:`Folder.create` makes a temporary file beside the final name, relative to its
  folder's descriptor, and :meth:`Incoming.commit` renames it into place within that folder.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Generator, Iterator

from catalog_agent.errors import FileChanged, IntegrityError, TransferError
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
# A temporary name keeps at most this many bytes of the final name, so that it stays within
# the 255-byte limit of a name whatever the final name is (multi-byte characters included).
TEMPORARY_NAME_KEEPS = 64
# Folders whose descriptors a Folder keeps open for the files that follow (more are opened and
# closed per file): well under the usual 1,024 open files.
FOLDER_CACHE = 256
# Symlinks followed on the way to a data folder before giving up, as the kernel does (ELOOP).
MAX_LINK_HOPS = 40

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
OPEN_FOLDER = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
OPEN_FILE = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _NOCTTY | _CLOEXEC


@dataclass(frozen=True)
class Modes:
    """The modes of what get creates in one folder."""

    file: int
    executable: int
    folder: int


# A folder of its own: only the agent's uid writes what it created.
PRIVATE = Modes(FILE_MODE, EXEC_MODE, FOLDER_MODE)
# A folder shared by group, marked by its setgid bit, as Kubernetes makes a volume with fsGroup
# (an emptyDir is 02777, group fsGroup): a main container of another uid with fsGroup among its
# groups (root, uid 1000, ...) must write into the folders get made and update fetched files.
# The new folders keep the setgid bit, so that what lands in them is shared too.
SHARED = Modes(0o664, 0o775, 0o2775)


def modes_in(folder_fd: int) -> Modes:
    """SHARED in a folder with the setgid bit, else PRIVATE: the rule of docs/safety.md."""
    return SHARED if os.fstat(folder_fd).st_mode & stat.S_ISGID else PRIVATE


class Identity(bytes):
    """What ``fstat`` says about a file: any write, truncation or swap changes one of these.

    ``ctime`` cannot be set by a process: a writer that restores size and mtime still shows.
    Kept packed in one bytes object (about 90 bytes, where six int objects and their holder took
    about 200): a put holds one per file until it ends.
    """

    __slots__ = ()

    def __new__(cls, device: int, inode: int, size: int, mtime_ns: int, ctime_ns: int,
                links: int) -> Identity:
        # Times as (seconds, nanoseconds): file systems keep dates past 2262, beyond 64-bit ns.
        return super().__new__(cls, _IDENTITY.pack(device, inode, size,
                                                   *divmod(mtime_ns, 10**9),
                                                   *divmod(ctime_ns, 10**9), links))

    def fields(self) -> tuple[int, int, int, int, int, int]:
        device, inode, size, mtime_s, mtime_n, ctime_s, ctime_n, links = _IDENTITY.unpack(self)
        return device, inode, size, mtime_s * 10**9 + mtime_n, ctime_s * 10**9 + ctime_n, links

    def __getnewargs__(self) -> tuple[int, int, int, int, int, int]:  # copy and pickle
        return self.fields()

    device = property(lambda self: self.fields()[0])
    inode = property(lambda self: self.fields()[1])
    size = property(lambda self: self.fields()[2])
    mtime_ns = property(lambda self: self.fields()[3])
    ctime_ns = property(lambda self: self.fields()[4])
    links = property(lambda self: self.fields()[5])

    def __repr__(self) -> str:
        return "Identity(device={}, inode={}, size={}, mtime_ns={}, ctime_ns={}, links={})" \
            .format(*self.fields())

    __str__ = __repr__

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_nlink)

    def same_file(self, other: Identity) -> bool:
        return self.fields()[:2] == other.fields()[:2]

    def changes(self, other: Identity) -> str:
        """What differs between two looks at a file ('' when nothing does)."""
        mine, theirs = self.fields(), other.fields()  # unpacked once each
        if mine[:2] != theirs[:2]:
            return "replaced by another file"
        if mine[2] != theirs[2]:
            return f"size {mine[2]} -> {theirs[2]} bytes"
        if mine[3:5] != theirs[3:5]:
            return "written to"
        return ""


# device, inode, size, mtime (s, ns), ctime (s, ns), links
_IDENTITY = struct.Struct("=QQQqIqIQ")


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """One entry of the data folder.

    ``source`` is the path, relative to the folder, of the regular file to read: the entry's
    own, or for a symlink staying inside the folder, its target's.
    """

    relative: str
    kind: str
    size: int = 0
    executable: bool = False
    source: str = ""
    identity: Identity | None = None


class FolderMissing(Exception):
    """The data folder does not exist (a put of it matches nothing)."""


def open_folder(path: str | os.PathLike[str], *, create: bool,
                hide_reserved: bool = True, what: str = "data folder") -> Folder:
    """Open the data folder, refusing a symlink planted on the way to it (exit 6).

    Every name of the path is opened relative to its parent's descriptor, and the kernel never
    resolves a link: a symlink is read (``readlink``) and its target's names are walked the
    same way, from ``/`` for an absolute target, from the folder holding the link otherwise
    (``..`` included). A symlink is followed only when the folder holding it is in the
    container's root file system (the image); one in a mounted volume, where the step may have
    put it, is refused, wherever on the real route it lies, behind an image link included.
    Missing folders are created (:func:`_make_folder`) when ``create``. ``what`` names the
    folder in errors (the file-system catalog's is a catalog folder).
    """
    shown = os.fspath(path)
    absolute = os.path.normpath(os.path.join(os.getcwd(), shown))
    walk = _Walk(f"{what} {shown}", _mount_points(), create)
    try:
        walk.names(absolute)
        return Folder(shown, walk.take(), hide_reserved=hide_reserved)
    finally:
        walk.close()


class _Walk:
    """The walk of :func:`open_folder`: one open folder at a time, and the names still to go."""

    def __init__(self, named: str, mounts: list[str] | None, create: bool) -> None:
        self.named = named  # "data folder out/", as errors name it
        self.mounts = mounts
        self.create = create
        self.fd = os.open("/", os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        self.walked = ""  # the real route so far, as the error messages show it
        self.hops = 0

    def take(self) -> int:
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def names(self, path: str) -> None:
        pending = [part for part in path.split("/") if part]
        pending.reverse()  # a stack: the next name last
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                self._enter("..", OPEN_FOLDER)
                self.walked = self.walked.rsplit("/", 1)[0]
                continue
            target = self._step(name)
            if target is None:
                continue
            self.hops += 1
            if self.hops > MAX_LINK_HOPS:
                raise IntegrityError(
                    f"refusing {self.named}: more than {MAX_LINK_HOPS} symlinks on "
                    f"the way to it (a loop?), the last at {self.walked}/{name}")
            if target.startswith("/"):
                self._enter("/", os.O_RDONLY | _DIRECTORY | _CLOEXEC)
                self.walked = ""
            parts = [part for part in target.split("/") if part]
            pending.extend(reversed(parts))

    def _step(self, name: str) -> str | None:
        """Enter folder ``name``; when it is a symlink the image may have, its target instead
        (returned, nothing entered)."""
        here = self.walked or "/"
        where = f"{self.walked}/{name}"
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            if not self.create:
                raise FolderMissing(self.named) from None
            try:
                _make_folder(self.fd, name)
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except OSError as exc:  # e.g. a volume's root of another uid, or read-only
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link meanwhile
                    raise _folder_error(self.named, where, exc, _kind(self.fd, name)) from None
                raise TransferError(f"cannot create {self.named}: {where}: "
                                    f"{exc.strerror or exc}") from None
        except OSError as exc:  # a folder on the way the agent may not search
            raise _folder_error(self.named, where, exc, _kind(self.fd, name)) from None
        if stat.S_ISLNK(st.st_mode):
            volume = _volume_of(_canonical(self.fd, here), self.mounts)
            if volume is not None:
                raise IntegrityError(
                    f"refusing {self.named}: {where} is a symlink inside the "
                    f"volume mounted at {volume}, where the step could have planted it (give "
                    f"the folder's real path)")
            try:
                return os.readlink(name, dir_fd=self.fd)  # the image's own link: walked
            except OSError as exc:  # replaced meanwhile: looked at again as what it is now
                raise _folder_error(self.named, where, exc, _kind(self.fd, name)) from None
        self._enter(name, OPEN_FOLDER, where=where)
        self.walked = where
        return None

    def _enter(self, name: str, flags: int, *, where: str = "") -> None:
        try:
            child = os.open(name, flags, dir_fd=self.fd)
        except OSError as exc:
            raise _folder_error(self.named, where or f"{self.walked}/{name}", exc,
                                _kind(self.fd, name)) from None
        os.close(self.fd)
        self.fd = child


def _folder_error(named: str, walked: str, exc: OSError, kind: str) -> Exception:
    if kind == "a symlink" or exc.errno == errno.ELOOP:
        return IntegrityError(f"refusing {named}: {walked} became a symlink")
    if exc.errno == errno.ENOTDIR:
        return IntegrityError(f"refusing {named}: {walked} is not a folder "
                              f"({kind or 'gone'})")
    return TransferError(f"cannot open {named}: {walked}: {exc.strerror or exc}")


def _make_folder(parent_fd: int, name: str) -> None:
    """Make folder ``name``: 0755, or 02775 in a folder shared by group (:func:`modes_in`)."""
    mode = modes_in(parent_fd).folder
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        return
    child = os.open(name, OPEN_FOLDER, dir_fd=parent_fd)
    try:
        os.fchmod(child, mode)  # whatever the umask
    finally:
        os.close(child)


def _canonical(fd: int, fallback: str) -> str:
    """The kernel's name for an open folder (no symlinks in it), or ``fallback`` without /proc."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


def _mount_points() -> list[str] | None:
    """Mount points seen by this process, or None when /proc/self/mountinfo cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    points = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1:index + 4].isdigit():
            out.append(chr(int(field[index + 1:index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def _volume_of(canonical: str, mounts: list[str] | None) -> str | None:
    """The mount point of the volume holding ``canonical``; None for the root file system.

    Without mountinfo every folder counts as inside a volume: no symlink is followed at all.
    """
    if mounts is None:
        return "(unknown: /proc/self/mountinfo unreadable)"
    deepest = "/"
    for point in mounts:
        if point != "/" and (canonical == point or canonical.startswith(point.rstrip("/") + "/")):
            if len(point) > len(deepest):
                deepest = point
    return None if deepest == "/" else deepest


class Folder:
    """An open folder: every path inside it is reached through descriptors, never a link."""

    def __init__(self, shown: str, fd: int, *, hide_reserved: bool = True) -> None:
        self.shown = shown
        self.fd = fd
        self._folders: dict[str, int] = {}  # descriptors of folders below, by path
        self._lock = threading.Lock()
        self.hide_reserved = hide_reserved  # a data folder's .catalog-agent/ is never put
        self.real = _canonical(fd, os.path.realpath(shown))

    def close(self) -> None:
        with self._lock:
            folders, self._folders = list(self._folders.values()), {}
        for fd in folders:
            os.close(fd)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- reading (put) ---

    def scan(self) -> list[LocalEntry]:
        """Every entry except folders themselves, classified; ``.catalog-agent/`` left out."""
        entries: list[LocalEntry] = []
        names_seen: dict[tuple[int, int], int] = {}
        for relative, st in self.walk():
            if stat.S_ISLNK(st.st_mode):
                entries.append(self._classify_link(relative))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                names_seen[key] = names_seen.get(key, 0) + 1
                entries.append(LocalEntry(relative, FILE, st.st_size,
                                          bool(st.st_mode & 0o100), relative, Identity.of(st)))
            else:
                entries.append(LocalEntry(relative, SPECIAL))
        # A hard link whose other names are not all inside the folder may be a secret's second
        # name; so may a symlink to such a file.
        checked = []
        for entry in entries:
            identity = entry.identity
            if entry.kind == FILE and identity is not None and \
                    identity.links > names_seen.get((identity.device, identity.inode), 0):
                entry = LocalEntry(entry.relative, HARDLINK_OUTSIDE)
            checked.append(entry)
        return checked

    def walk(self, under: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """(relative path, lstat) of every non-folder entry below ``under`` ('' for all): each
        folder's files by name, then its subfolders by name; nothing when ``under`` is missing."""
        if not under:
            yield from self._walk("", os.dup(self.fd))
            return
        try:
            start = self._open(under.rstrip("/"), OPEN_FOLDER, what=under)
        except (OSError, IntegrityError):
            return
        yield from self._walk(under.rstrip("/") + "/", start)

    def _walk(self, prefix: str, start_fd: int) -> Iterator[tuple[str, os.stat_result]]:
        """Depth first, holding one descriptor per level (never one per pending folder)."""
        frames: list[tuple[str, int, Iterator[tuple[str, str, os.stat_result]]]] = []
        try:
            frames.append((prefix, start_fd, iter(())))
            folders = yield from self._list(prefix, start_fd)
            frames[-1] = (prefix, start_fd, iter(folders))
            while frames:
                _, dir_fd, pending = frames[-1]
                following = next(pending, None)
                if following is None:
                    os.close(frames.pop()[1])
                    continue
                name, relative, st = following
                child = self._open_child(dir_fd, name, relative, st)
                frames.append((relative + "/", child, iter(())))
                folders = yield from self._list(relative + "/", child)
                frames[-1] = (relative + "/", child, iter(folders))
        finally:
            for _, dir_fd, _ in frames:
                os.close(dir_fd)

    def _list(self, prefix: str, dir_fd: int
              ) -> Generator[tuple[str, os.stat_result], None,
                             list[tuple[str, str, os.stat_result]]]:
        """Yield the folder's non-folder entries by name; return its subfolders by name."""
        folders = []
        try:
            names = sorted(item.name for item in os.scandir(dir_fd))
        except PermissionError as exc:
            raise TransferError(f"cannot read {self.shown}/{prefix or '.'}: "
                                f"{exc.strerror}") from None
        for name in names:
            relative = prefix + name
            if not prefix and name == RESERVED and self.hide_reserved:
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:  # removed while we looked: not part of it
                continue
            if stat.S_ISDIR(st.st_mode):
                folders.append((name, relative, st))
            else:
                yield relative, st
        return folders

    def _open_child(self, dir_fd: int, name: str, relative: str, seen: os.stat_result) -> int:
        try:
            child = os.open(name, OPEN_FOLDER, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise FileChanged(f"{relative} changed while the data folder was scanned "
                                  f"(now {_kind(dir_fd, name) or 'gone'})") from None
            raise TransferError(f"cannot read {self.shown}/{relative}: {exc.strerror}") from None
        if not Identity.of(os.fstat(child)).same_file(Identity.of(seen)):
            os.close(child)
            raise FileChanged(f"{relative} changed while the data folder was scanned "
                              f"(replaced by another folder)")
        return child

    def _classify_link(self, relative: str) -> LocalEntry:
        """A symlink counts only when it stays inside the folder and leads to a regular file."""
        target = os.path.realpath(os.path.join(self.real, relative))
        root = self.real.rstrip("/")
        if not (target == root or target.startswith(root + "/")):
            return LocalEntry(relative, LINK_OUTSIDE)
        try:
            st = os.stat(target)
        except OSError:
            return LocalEntry(relative, DANGLING)
        if stat.S_ISDIR(st.st_mode):
            return LocalEntry(relative, LINK_TO_FOLDER)
        if not stat.S_ISREG(st.st_mode):
            return LocalEntry(relative, SPECIAL)
        source = target[len(root) + 1:]
        return LocalEntry(relative, FILE, st.st_size, bool(st.st_mode & 0o100), source,
                          Identity.of(st))

    def open_file(self, entry: LocalEntry) -> OpenedFile:
        """Open a scanned file once; it must still be the regular file the scan saw, unchanged."""
        assert entry.identity is not None, entry
        fd = self._open(entry.source, OPEN_FILE, what=entry.relative)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileChanged(f"{entry.relative} changed after the scan: no longer a "
                                  f"regular file")
            now = Identity.of(st)
            change = entry.identity.changes(now)
            if change:
                raise FileChanged(f"{entry.relative} changed after the scan ({change})")
        except BaseException:
            os.close(fd)
            raise
        return OpenedFile(entry.relative, fd, now)

    def read_hash(self, relative: str, size: int, digest: Callable[[int, int], str]
                  ) -> str | None:
        """``digest(fd, size)`` of the regular file at ``relative`` when it has ``size`` bytes;
        None when it is absent, of another size, or not a regular file (get then replaces it)."""
        try:
            fd = self._open(relative, OPEN_FILE, what=relative)
        except (OSError, IntegrityError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return None
            return digest(fd, size)
        finally:
            os.close(fd)

    def open_existing(self, relative: str) -> int:
        """Open the regular file ``relative`` for reading (no link followed, no blocking)."""
        fd = self._open(relative, OPEN_FILE, what=relative)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IntegrityError(f"{self.shown}/{relative} is not a regular file")
        return fd

    def _open(self, relative: str, flags: int, *, what: str) -> int:
        """Open ``relative`` below the folder, name by name, no symlink followed."""
        parts = relative.split("/")

        def changed(where: str, exc: OSError, kind: str) -> Exception:
            return _changed(what, where, exc, kind)

        dir_fd, owned = self._folder_fd(parts[:-1], create=False, error=changed)
        try:
            try:
                return os.open(parts[-1], flags, dir_fd=dir_fd)
            except OSError as exc:
                raise _changed(what, relative, exc, _kind(dir_fd, parts[-1])) from None
        finally:
            if owned:
                os.close(dir_fd)

    def _folder_fd(self, parts: list[str], *, create: bool,
                   error: Callable[[str, OSError, str], Exception]) -> tuple[int, bool]:
        """The descriptor of the folder ``parts`` below this one, and whether the caller must
        close it. Opened name by name with O_NOFOLLOW (made 0755 when ``create``), and kept
        for the next file of the same folder: a get or put of thousands of files in a few
        folders opens each folder once, not once per file. (A cached folder stays the one that
        was opened, even if the step renames it meanwhile: nothing is ever reached through a
        name the step changed.)"""
        if not parts:
            return self.fd, False
        key = "/".join(parts)
        with self._lock:
            cached = self._folders.get(key)
        if cached is not None:
            return cached, False
        parent, parent_owned = self._folder_fd(parts[:-1], create=create, error=error)
        name = parts[-1]
        try:
            try:
                child = os.open(name, OPEN_FOLDER, dir_fd=parent)
            except FileNotFoundError as exc:
                if not create:
                    raise error(key, exc, "") from None
                try:
                    _make_folder(parent, name)
                    child = os.open(name, OPEN_FOLDER, dir_fd=parent)
                except OSError as again:
                    raise error(key, again, _kind(parent, name)) from None
            except OSError as exc:
                raise error(key, exc, _kind(parent, name)) from None
        finally:
            if parent_owned:
                os.close(parent)
        with self._lock:
            if key in self._folders:  # opened meanwhile by another caller: keep one
                os.close(child)
                return self._folders[key], False
            if len(self._folders) < FOLDER_CACHE:
                self._folders[key] = child
                return child, False
        return child, True

    # --- writing (get) ---

    def create(self, relative: str) -> Incoming:
        """A new temporary file beside ``relative``'s final name, its folders made on the way."""
        parts = relative.split("/")

        def unwritable(where: str, exc: OSError, kind: str) -> Exception:
            return _unwritable(relative, where, exc, kind)

        parent, owned = self._folder_fd(parts[:-1], create=True, error=unwritable)
        try:
            modes = modes_in(parent)
            temporary = temporary_name(parts[-1])
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                         modes.file, dir_fd=parent)
        except OSError as exc:
            if owned:
                os.close(parent)
            raise TransferError(f"cannot create a file in {self.shown}/{relative}: "
                                f"{exc.strerror or exc}") from None
        except BaseException:
            if owned:
                os.close(parent)
            raise
        return Incoming(self, relative, parent, owned, parts[-1], temporary, fd, modes)


@dataclass
class OpenedFile:
    """A regular file of the data folder, open for reading; ``identity`` as first seen open."""

    relative: str
    fd: int
    identity: Identity

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def executable(self) -> bool:
        return bool(os.fstat(self.fd).st_mode & 0o100)

    def check_unchanged(self) -> None:
        """FileChanged (exit 6) when the file was written, resized or replaced since opened."""
        change = self.identity.changes(Identity.of(os.fstat(self.fd)))
        if change:
            raise FileChanged(f"{self.relative} changed while it was being put ({change}); "
                              f"nothing was recorded for this put")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Incoming:
    """A file being written by get: invisible under its final name until :meth:`commit`."""

    folder: Folder
    relative: str
    parent: int
    parent_owned: bool  # the folder's descriptor is this file's to close (not the cache's)
    name: str
    temporary: str
    fd: int
    modes: Modes = PRIVATE  # the folder's rule (:func:`modes_in`), as it was created

    def commit(self, executable: bool) -> None:
        """Give the finished file its mode and move it to its final name in one step."""
        wanted = self.modes.executable if executable else self.modes.file
        if wanted != self.modes.file & ~_UMASK:  # created modes.file less the umask
            os.fchmod(self.fd, wanted)
        try:
            # rename() replaces a symlink at the final name itself, never what it points to,
            # and refuses to replace a folder (EISDIR).
            os.rename(self.temporary, self.name, src_dir_fd=self.parent,
                      dst_dir_fd=self.parent)
        except IsADirectoryError:
            raise IntegrityError(f"refusing to replace folder {self.folder.shown}/"
                                 f"{self.relative} with a file") from None
        self.temporary = ""
        self.close()

    def discard(self) -> None:
        """Remove the temporary file (after a failure); safe to call more than once."""
        if self.temporary:
            try:
                os.unlink(self.temporary, dir_fd=self.parent)
            except FileNotFoundError:
                pass
            self.temporary = ""
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.parent >= 0 and self.parent_owned:
            os.close(self.parent)
        self.parent = -1


def _process_umask() -> int:
    """The umask, read once at start-up (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def temporary_name(final_name: str) -> str:
    """A hidden name beside ``final_name``, within the 255-byte limit whatever the final name.

    It keeps the first 64 bytes (whole characters) of the final name, for people reading a
    listing during a transfer, and a random part so that concurrent writers never collide.
    """
    kept = final_name.encode("utf-8", "surrogateescape")[:TEMPORARY_NAME_KEEPS]
    kept_text = kept.decode("utf-8", "ignore")
    return f".{kept_text}.{secrets.token_hex(4)}{PART_SUFFIX}"


def _changed(what: str, where: str, exc: OSError, kind: str) -> Exception:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.ENXIO):
        return FileChanged(f"{what} changed after the scan ({where} is now "
                           f"{kind or 'gone'})")
    return TransferError(f"cannot open {where}: {exc.strerror or exc}")


def _kind(dir_fd: int, name: str) -> str:
    """What ``name`` is, for an error message ('' when it cannot be looked at)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return ""
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if stat.S_ISREG(st.st_mode):
        return "a file"
    return "a FIFO, socket or device"


def _unwritable(relative: str, where: str, exc: OSError, kind: str) -> Exception:
    if kind == "a symlink" or exc.errno == errno.ELOOP:
        return IntegrityError(f"refusing to write {relative!r}: {where} is a symlink")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return IntegrityError(f"refusing to write {relative!r}: {where} is not a folder "
                              f"({kind or 'gone'})")
    return TransferError(f"cannot write {relative!r}: {where}: {exc.strerror or exc}")


__all__ = ["FILE", "LINK_OUTSIDE", "HARDLINK_OUTSIDE", "LINK_TO_FOLDER", "DANGLING", "SPECIAL",
           "UNSAFE_LINKS", "PART_SUFFIX", "Folder", "FolderMissing", "Identity", "Incoming",
           "LocalEntry", "Modes", "OpenedFile", "PRIVATE", "SHARED", "modes_in", "open_folder",
           "temporary_name"]
