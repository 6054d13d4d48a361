"""Run one command and report its wall time, CPU seconds and peak memory, from a small parent.

Why a launcher: Linux records the parent's memory high-water mark into a child at exec (and
Python's subprocess forks or vforks from the benchmark's own, larger, process), so ru_maxrss
taken straight from the benchmark would be floored at the benchmark's own size. Forked from
this small interpreter instead, the floor is about 10 MiB. The same wait4 gives the child's user
and system CPU seconds (its own and those of any children it waited for).

Usage: python -S bench/launch.py RESULT_FILE COMMAND...; environment and output pass through.
"""

import json
import os
import sys
import time


def main() -> int:
    result, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(command[0], command)
        finally:
            os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(result, "w") as out:
        json.dump({"seconds": elapsed, "rss_kib": usage.ru_maxrss, "user": usage.ru_utime,
                   "sys": usage.ru_stime, "code": code}, out)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
