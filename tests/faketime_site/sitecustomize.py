"""Imported at start-up (as ``sitecustomize``) only by the processes a test runs under
libfaketime: the agent and moto's server in the credential-refresh tests (tests/fakeclock.py).

Debian bookworm's libfaketime 0.9.10 turns ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``
into an invalid request when the monotonic clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC=1):
it converts the deadline as if it were faked wall-clock time. Python's ``time.sleep`` makes
exactly that call, so every sleep (botocore's and the agent's retry back-off) fails with
EINVAL. Fixed upstream in libfaketime 0.9.11 ("Honor fake_monotonic_clock setting in
clock_nanosleep", issue #426). Until then, and only when the fault is present, ``time.sleep``
waits the same time in ``select()``, which libfaketime passes through untouched.
"""

from __future__ import annotations

import select
import time

_sleep = time.sleep


def _sleep_is_broken() -> bool:
    try:
        _sleep(0.0001)
    except OSError:
        return True
    return False


def _select_sleep(seconds: float) -> None:
    """time.sleep's contract (non-negative, at least ``seconds`` of monotonic time)."""
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        select.select([], [], [], left)


if _sleep_is_broken():
    time.sleep = _select_sleep
