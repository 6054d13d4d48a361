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
    def segments(self) -> tuple[str, ...]:
        segments = tuple(_normalise(self.text))
        if len(segments) > 1 and segments[-1] == "**":  # "raw/**" needs something under raw/
            segments = segments[:-1] + ("*", "**")
        return segments

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """The same rule as a regular expression (for display; matching never backtracks)."""
        return compile_pattern(self.text)

    def matches(self, path: str) -> bool:
        """True when the pattern matches ``path`` or one of its parent directories."""
        if is_reserved(path):
            return False
        parts = path.split("/")
        return any(_match_segments(self.segments, parts[:end])
                   for end in range(len(parts), 0, -1))


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


def compile_pattern(text: str) -> re.Pattern[str]:
    segments = _normalise(text)
    out = ""
    for index, seg in enumerate(segments):
        last = index == len(segments) - 1
        if seg == "**":
            out += ".*" if last else "(?:[^/]*/)*"
            continue
        for char in re.sub(r"\*+", "*", seg):  # a*** means a*: no needless backtracking
            if char == "*":
                out += "[^/]*"
            elif char == "?":
                out += "[^/]"
            else:
                out += re.escape(char)
        if not last:
            out += "/"
    return re.compile(out, re.DOTALL)


def _match_segments(pattern: tuple[str, ...], parts: list[str]) -> bool:
    """``**`` is any run of segments; other segments match one each (a glob, see _match_glob).

    The wildmatch algorithm: on a mismatch, only the last ``**`` takes one more segment, so the
    time is at most len(pattern) * len(parts) glob matches whatever the input. A regular
    expression here backtracks exponentially on patterns like ``*a*a*a*a*b`` (a pattern bomb).
    """
    p = s = 0
    star_p, star_s = -1, 0
    while s < len(parts):
        if p < len(pattern) and pattern[p] == "**":
            star_p, star_s = p, s
            p += 1
        elif p < len(pattern) and _match_glob(pattern[p], parts[s]):
            p += 1
            s += 1
        elif star_p >= 0:
            star_s += 1
            p, s = star_p + 1, star_s
        else:
            return False
    return all(seg == "**" for seg in pattern[p:])


def _match_glob(glob: str, name: str) -> bool:
    """``*`` is any run of characters, ``?`` one character; the same linear-time algorithm."""
    g = n = 0
    star_g, star_n = -1, 0
    while n < len(name):
        if g < len(glob) and glob[g] == "*":
            star_g, star_n = g, n
            g += 1
        elif g < len(glob) and (glob[g] == "?" or glob[g] == name[n]):
            g += 1
            n += 1
        elif star_g >= 0:
            star_n += 1
            g, n = star_g + 1, star_n
        else:
            return False
    return all(char == "*" for char in glob[g:])


def parse(texts: tuple[str, ...] | list[str]) -> list[Pattern]:
    patterns = [Pattern(t) for t in texts]
    for pattern in patterns:
        pattern.segments  # validate now: a bad pattern is a usage error before any I/O
    return patterns
