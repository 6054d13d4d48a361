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
    def regex(self) -> re.Pattern[str]:
        return compile_pattern(self.text)

    def matches(self, path: str) -> bool:
        """True when the pattern matches ``path`` or one of its parent directories."""
        if is_reserved(path):
            return False
        if self.regex.fullmatch(path):
            return True
        parent = path
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if self.regex.fullmatch(parent):
                return True
        return False


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


def parse(texts: tuple[str, ...] | list[str]) -> list[Pattern]:
    patterns = [Pattern(t) for t in texts]
    for pattern in patterns:
        pattern.regex  # validate now: a bad pattern is a usage error before any I/O
    return patterns
