"""Object keys and the relative paths they map to, and the checks that keep them inside a run.

A key comes from the store, which anyone with write access can fill: it is untrusted until
:func:`safe_relative_path` accepts it.
"""

from __future__ import annotations

from catalog_agent.errors import IntegrityError

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
MANIFESTS = ".catalog-agent/manifests/"
ERRORS = ".catalog-agent/errors/"


def object_key(run_prefix: str, relative: str) -> str:
    return run_prefix + relative


def manifest_key(run_prefix: str, step: str) -> str:
    return f"{run_prefix}{MANIFESTS}{step}.json"


def error_key(run_prefix: str, step: str) -> str:
    return f"{run_prefix}{ERRORS}{step}.json"


def unsafe_reason(relative: str) -> str | None:
    """Why ``relative`` may not become a local path, or None when it is safe."""
    if not relative:
        return "empty path"
    if "\x00" in relative:
        return "NUL character"
    if "\\" in relative:
        return "backslash"
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if relative.startswith("/"):
        return "absolute path"
    if len(relative.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    for segment in relative.split("/"):
        if segment in {"", ".", ".."}:
            return f"'{segment}' segment" if segment else "empty segment"
        if len(segment.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
            return f"a name longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def safe_relative_path(key: str, run_prefix: str) -> str:
    """The path of ``key`` relative to the run, refused when it could leave the data folder."""
    if not key.startswith(run_prefix):
        raise IntegrityError(f"key {key!r} is outside the run prefix {run_prefix!r}")
    relative = key[len(run_prefix):]
    reason = unsafe_reason(relative)
    if reason:
        raise IntegrityError(f"refusing key {key!r}: {reason} would leave the data folder")
    return relative
