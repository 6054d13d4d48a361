"""Logging: structlog JSON lines for machines, console lines for people.

Every event carries ``run_id``, ``step`` and ``command`` (bound once per command), and passes a
scrubber that replaces known secret values, whatever path they took into the event.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_secrets: list[str] = []


def _scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _secrets:
        return event
    for key, value in event.items():
        if isinstance(value, str):
            for secret in _secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            event[key] = value
    return event


def scrub_text(text: str) -> str:
    """``text`` with every known secret value replaced: for output that is not a log event."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def configure(*, fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
              secrets: list[str] | None = None) -> None:
    stream = stream or sys.stderr
    _secrets[:] = sorted(set(secrets or []), key=len, reverse=True)
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
