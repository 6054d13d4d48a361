"""Path patterns: one rule for get, put and ls, the table in docs/configuration.md.

- ``*`` and ``?`` match within one path segment (never across ``/``);
- ``**`` as a whole segment matches any number of folders (none included); as the last
  segment it matches everything below (``raw/**``, ``**``);
- a wildcard in the last segment matches files only: ``*`` is the top-level files, and
  ``*.csv`` never takes the contents of a folder named ``x.csv`` (as magnus's put, whose
  pathlib glob skips folders);
- a folder is taken whole only when the pattern names it (``raw``, ``raw/``, ``**/raw``: a last
  segment without wildcards) or says so (``raw/**``);
- nothing under the reserved ``.catalog-agent/`` folder ever matches.

Paths are POSIX-style and relative to the compute data folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from catalog_agent.errors import ConfigError

RESERVED = ".catalog-agent"
MAX_PATTERN_LENGTH = 1024
ANY = "**"


@dataclass(frozen=True)
class Pattern:
    text: str

    @cached_property
    def segments(self) -> tuple[str | re.Pattern[str], ...]:
        """``**`` kept as the string, every other segment compiled (validated on first use)."""
        return compile_pattern(self.text)

    @cached_property
    def everything(self) -> bool:
        return self.segments == (ANY,)

    @cached_property
    def names_folder(self) -> bool:
        """True when the last segment is a plain name: a folder of that name is taken whole."""
        return not has_wildcard(_normalise(self.text)[-1])

    @cached_property
    def folder_only(self) -> bool:
        """``raw/``: the trailing slash says raw is a folder, so a file named raw is not taken."""
        return self.names_folder and self.text.rstrip().endswith("/")

    def matches(self, path: str) -> bool:
        """True when the pattern matches the file ``path``.

        The positions in ``path`` reachable after each pattern segment are carried forward as a
        set, so no pattern, however many ``**`` or ``*`` it holds, costs more than
        O(pattern segments x path segments) segment matches.
        """
        if is_reserved(path):
            return False
        if self.everything:  # '**', the commonest pattern: no need to look at the path
            return True
        names = path.split("/")
        total = len(names)
        reach = {0}
        last = len(self.segments) - 1
        for index, segment in enumerate(self.segments):
            if not reach:
                return False
            if segment == ANY:
                # Inside a pattern: any number of folders, none included. Last: everything
                # below, so at least one more name (the file itself).
                start = min(reach) + (1 if index == last else 0)
                reach = set(range(start, total + 1)) if index < last else \
                    ({total} if start <= total else set())
            else:
                reach = {j + 1 for j in reach
                         if j < total and segment.fullmatch(names[j]) is not None}  # type: ignore[union-attr]
        if total in reach and not self.folder_only:
            return True
        # A plain last segment that matched a folder on the way takes the folder whole.
        return self.names_folder and any(0 < j < total for j in reach)


def has_wildcard(segment: str) -> bool:
    return "*" in segment or "?" in segment


def is_reserved(path: str) -> bool:
    return path == RESERVED or path.startswith(RESERVED + "/")


def _normalise(text: str) -> list[str]:
    if not text or not text.strip():
        raise ConfigError("empty pattern")
    if len(text) > MAX_PATTERN_LENGTH:
        raise ConfigError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    if "\x00" in text or "\\" in text:
        raise ConfigError(f"pattern {text!r} contains a NUL or a backslash")
    stripped = text.strip("/")
    if stripped.startswith("./"):
        stripped = stripped[2:]
    segments = [seg for seg in stripped.split("/") if seg not in {"", "."}]
    if any(seg == ".." for seg in segments):
        raise ConfigError(f"pattern {text!r} contains a '..' segment")
    if text.rstrip().endswith("/") and segments and segments[-1] != ANY and \
            has_wildcard(segments[-1]):
        raise ConfigError(f"pattern {text!r} ends with '/' after a wildcard, which would name "
                          f"folders by a wildcard: write {stripped + '/**'!r} for everything in "
                          f"those folders, or {stripped!r} for files")
    # Consecutive ** segments mean the same as one: collapsing them keeps matching linear.
    collapsed: list[str] = []
    for seg in segments:
        if seg == ANY and collapsed and collapsed[-1] == ANY:
            continue
        collapsed.append(seg)
    if not collapsed:
        collapsed = [ANY]
    return collapsed


def compile_pattern(text: str) -> tuple[str | re.Pattern[str], ...]:
    return tuple(seg if seg == ANY else _compile_segment(seg) for seg in _normalise(text))


def _compile_segment(segment: str) -> re.Pattern[str]:
    """One segment's glob as a regex that cannot backtrack catastrophically.

    Each literal run after a ``*`` is found at its earliest position and then held (a lookahead
    captured and back-referenced acts as an atomic group), as CPython's fnmatch does.
    """
    parts = re.sub(r"\*+", "*", segment).split("*")

    def literal(part: str) -> str:
        return "".join("." if char == "?" else re.escape(char) for char in part)

    out = literal(parts[0])
    for index, part in enumerate(parts[1:-1], start=1):
        out += f"(?=(?P<g{index}>.*?{literal(part)}))(?P=g{index})"
    if len(parts) > 1:
        out += ".*" + literal(parts[-1])
    return re.compile(out, re.DOTALL)


def parse(texts: tuple[str, ...] | list[str]) -> list[Pattern]:
    patterns = [Pattern(t) for t in texts]
    for pattern in patterns:
        pattern.segments  # validate now: a bad pattern is a usage error before any I/O
    return patterns
