"""Path patterns: one rule for get and put.

- ``*`` and ``?`` match within one path segment (never across ``/``);
- ``**`` as a whole segment matches any number of segments, none included;
- a pattern matching a directory takes everything under it;
- nothing under the reserved ``.catalog-agent/`` folder ever matches.

Paths are POSIX-style and relative to the compute data folder (put) or to the run (get).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from catalog_agent.errors import ConfigError

RESERVED = ".catalog-agent"
MAX_PATTERN_LENGTH = 1024


@dataclass(frozen=True)
class Pattern:
    text: str

    @cached_property
    def segments(self) -> tuple[str | re.Pattern[str], ...]:
        """``**`` kept as the string, every other segment compiled (validated on first use)."""
        return compile_pattern(self.text)

    def matches(self, path: str) -> bool:
        """True when the pattern matches ``path`` or one of its parent directories.

        Segments are matched by dynamic programming over (pattern segment, path segment), so
        no pattern, however many ``**`` or ``*`` it holds, can take more than
        O(pattern segments x path segments) segment matches.
        """
        if is_reserved(path):
            return False
        pattern = self.segments
        names = path.split("/")
        count, total = len(pattern), len(names)
        # ok[i][j]: pattern[i:] matches some prefix of names[j:] of at least one name, or
        # (i == count) the names before j were all consumed and j >= 1 (a parent matched).
        following = [j >= 1 for j in range(total + 1)]
        for i in range(count - 1, -1, -1):
            segment = pattern[i]
            current = [False] * (total + 1)
            for j in range(total, -1, -1):
                if segment == "**":
                    current[j] = following[j] or (j < total and current[j + 1])
                else:
                    current[j] = (j < total and following[j + 1]
                                  and segment.fullmatch(names[j]) is not None)  # type: ignore[union-attr]
            following = current
        return following[0]


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
    # Consecutive ** segments mean the same as one: collapsing them keeps matching linear.
    collapsed: list[str] = []
    for seg in segments:
        if seg == "**" and collapsed and collapsed[-1] == "**":
            continue
        collapsed.append(seg)
    if not collapsed:
        collapsed = ["**"]
    return collapsed


def compile_pattern(text: str) -> tuple[str | re.Pattern[str], ...]:
    segments = _normalise(text)
    if len(segments) > 1 and segments[-1] == "**":
        # "raw/**" means what is inside raw, not raw itself; parents already match by prefix.
        segments[-1] = "*"
    return tuple(seg if seg == "**" else _compile_segment(seg) for seg in segments)


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
