"""The console script's entry: catch SIGTERM and SIGINT before anything else is imported.

A native sidecar (``put --on-sigterm``) beside a main command that fails at once gets the
kubelet's SIGTERM within milliseconds of starting, long before the CLI's imports (click,
structlog, botocore) are done. Without a handler that signal kills the process (or, for the
container's PID 1, is discarded by the kernel): nothing is put and no error is recorded.

So this module imports only ``signal``, installs a handler that just records the signal, makes
sure neither signal is blocked (a parent may have blocked them; a blocked signal would wait
unseen), and only then imports the CLI, which takes the recorded signals over
(:func:`take_early_signals`) when it installs its own handlers. Only the interpreter's own
start-up, before this module runs, is left uncovered.
"""

import signal

_early: list[int] = []


def _record(signum: int, _frame: object) -> None:
    _early.append(signum)


def install() -> None:
    """Record SIGTERM and SIGINT from now on, and let them through if they were blocked."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


def take_early_signals() -> list[int]:
    """The signals recorded before the CLI installed its own handlers (each returned once)."""
    taken = list(_early)
    del _early[:len(taken)]
    return taken


def main() -> None:
    """``catalog-agent``: the handlers first, then the CLI."""
    install()
    from catalog_agent.cli import main as cli_main

    cli_main()
