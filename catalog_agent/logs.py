"""Logging: structlog JSON lines for machines, console lines for people.

Every event carries ``run_id``, ``step`` and ``command`` (bound once per command), and passes a
scrubber that replaces known secret values, whatever path they took into the event, however
deep in it (a list or mapping of values is scrubbed item by item).

Known secrets are of two kinds: the values of the credential variables, given to
:func:`configure`, and credentials the agent obtains itself (STS sessions, profile keys, token
files), added by :mod:`catalog_agent.credentials` with :func:`add_secrets` when obtained or
refreshed. Text that is cut for length is scrubbed first (:func:`clip`): a secret cut in half
would no longer be recognised, and its first half would leak.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Iterable, TextIO

import structlog

MASK = "***"
# Shorter values are not treated as secrets: masking them would mangle ordinary text.
MIN_SECRET_LENGTH = 8

_lock = threading.Lock()
_configured: frozenset[str] = frozenset()
_obtained: frozenset[str] = frozenset()
# Longest first, so a secret containing another is replaced whole. Replaced, never mutated:
# readers in other threads see one consistent tuple.
_secrets: tuple[str, ...] = ()


def _update() -> None:
    global _secrets
    _secrets = tuple(sorted(_configured | _obtained, key=len, reverse=True))


def add_secrets(values: Iterable[Any]) -> None:
    """Scrub these values too from now on (credentials the agent obtained); keeps the others."""
    global _obtained
    fresh = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
    if not fresh - _obtained:
        return
    with _lock:
        _obtained = _obtained | fresh
        _update()


def scrub_text(text: str) -> str:
    """``text`` with every known secret value replaced: for output that is not a log event."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_value(value: Any) -> Any:
    """``value`` with secrets replaced in every string it holds, keys of mappings included.

    Objects of other types are rendered as text first (the JSON renderer would print their
    ``repr``), so nothing reaches the output unscrubbed.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {scrub_value(k) if isinstance(k, str) else k: scrub_value(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub_value(item) for item in value]
    if isinstance(value, bytes):
        return scrub_text(value.decode("utf-8", "backslashreplace"))
    return scrub_text(repr(value) if not isinstance(value, BaseException) else str(value))


def clip(text: str, limit: int, marker: str = "...") -> str:
    """``text`` scrubbed, then cut to at most ``limit`` characters (``marker`` ending a cut)."""
    text = scrub_text(text)
    if len(text) <= limit:
        return text
    return text[:max(0, limit - len(marker))] + marker


def _scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _secrets:
        return event
    for key, value in list(event.items()):
        event[key] = scrub_value(value)
    return event


def configure(*, fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
              secrets: list[str] | None = None) -> None:
    """Set up structlog; ``secrets`` replaces the configured ones (obtained ones stay)."""
    global _configured
    stream = stream or sys.stderr
    with _lock:
        _configured = frozenset(s for s in (secrets or []) if len(s) >= MIN_SECRET_LENGTH)
        _update()
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def bind(**values: Any) -> None:
    structlog.contextvars.bind_contextvars(**values)


def get_logger() -> Any:
    return structlog.get_logger()
