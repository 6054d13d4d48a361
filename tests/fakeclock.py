"""A wall clock that a test moves: libfaketime (Debian package ``faketime``, installed by
scripts/setup.d/40-faketime.sh) preloaded into the processes that should share it.

Every process started with :meth:`FakeClock.env` reads its wall-clock time as the real time
plus the clock's offset, re-read from one file on every call, so :meth:`FakeClock.advance`
moves all of them at once, at the moment the test chooses. Only the wall clock moves
(``time.time``, ``datetime.now``: what credential expiry and request signing read); the
monotonic clock, on which timeouts and waits run, and file timestamps stay real.

Put the agent and the server that issues and checks its credentials (moto) on the same clock:
then a session moto issues after a jump lives its full length in the agent's eyes too, and
no request looks skewed to the server.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

SITE = Path(__file__).with_name("faketime_site")  # time.sleep around a libfaketime fault
LIBRARY_PATTERNS = ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1")


def library() -> str | None:
    """libfaketime's multi-threaded build (the agent and moto run threads), if installed."""
    for pattern in LIBRARY_PATTERNS:
        for path in sorted(glob.glob(pattern)):
            return path
    return None


class FakeClock:
    """The offset file and the environment that puts a process on this clock."""

    def __init__(self, path: Path) -> None:
        found = library()
        if found is None:
            raise FileNotFoundError("libfaketime is not installed (scripts/setup.d/40-faketime.sh)")
        self.library = found
        self.path = path
        self.offset = 0
        self._write()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Variables to add to a process's environment (``base``: its PYTHONPATH source)."""
        python_path = [str(SITE)] + [p for p in (base or {}).get("PYTHONPATH", "").split(
            os.pathsep) if p]
        return {
            "LD_PRELOAD": self.library,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",  # read the offset on every call: a jump is seen at once
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DISABLE_SHM": "1",  # nothing left in /dev/shm by a killed process
            "NO_FAKE_STAT": "1",  # file times stay real: put compares them across the jump
            "PYTHONPATH": os.pathsep.join(python_path),
        }

    def advance(self, seconds: int) -> None:
        """Move every process on this clock ``seconds`` ahead, at once."""
        self.offset += seconds
        self._write()

    def _write(self) -> None:
        # Whole or not at all: libfaketime rereads the file on every clock call.
        temporary = self.path.with_name(self.path.name + ".new")
        temporary.write_text(f"+{self.offset}\n")
        os.replace(temporary, self.path)
