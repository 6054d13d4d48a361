"""The pod lifecycle: when a put beside the main container runs, and whether it puts at all.

The ``entrypoint`` wrapper in the main container leaves two files in a shared status folder:
``heartbeat`` (refreshed every 2 s while the command runs) and ``exit-code`` (written once,
atomically, when it ends). ``put --wait`` polls for the exit code, ``put --on-sigterm`` (a
native sidecar) waits for the SIGTERM Kubernetes sends after the main container ended; both
then apply the ``when`` policy. Contract: docs/lifecycle.md.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from catalog_agent.config import Config
from catalog_agent.errors import EXIT_INTERNAL, AgentError, ConfigError, Interrupted, MainLost, \
    WaitTimeout
from catalog_agent.logs import get_logger

DEFAULT_STATUS_DIR = "/var/run/catalog-agent"
EXIT_CODE_FILE = "exit-code"
HEARTBEAT_FILE = "heartbeat"
DEFAULT_STALE_SECONDS = 30.0
# How long put --wait waits for the first heartbeat: the main container's image pull and start.
# Generous, since pulls of large images from a busy registry take minutes; 0: no bound.
DEFAULT_FIRST_HEARTBEAT_SECONDS = 1800.0
# The wrapper writes at most "255\n": anything longer is not its work, and is never read whole.
MAX_EXIT_CODE_BYTES = 16
_EXIT_CODE = re.compile(rb"[0-9]{1,3}\n?")
POLL_SECONDS = 0.5
WAITING_LOG_INTERVAL = 60.0
# After SIGTERM in sidecar mode the main container has ended: its exit code is there or will
# be within moments (the wrapper writes it just before it exits).
AFTER_SIGTERM_SECONDS = 5.0
WAIT = "wait"
ON_SIGTERM = "on-sigterm"


@dataclass(frozen=True)
class Outcome:
    """How the main command ended: its exit code, or None when it died without leaving one."""

    exit_code: int | None
    reason: str

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Settings:
    """The lifecycle options of one put, validated (flags over environment over defaults)."""

    mode: str  # WAIT or ON_SIGTERM
    status_dir: Path
    wait_timeout: float  # 0: no limit
    stale_seconds: float
    first_heartbeat_seconds: float = DEFAULT_FIRST_HEARTBEAT_SECONDS  # 0: no limit


def settings(*, wait: bool, on_sigterm: bool, status_dir: str | None, wait_timeout: str | None,
             stale_seconds: str | None, first_heartbeat_seconds: str | None = None,
             environ: Mapping[str, str] | None = None) -> Settings | None:
    """The lifecycle settings of a put, or None for a plain put; bad values are ConfigErrors."""
    environ = os.environ if environ is None else environ
    if wait and on_sigterm:
        raise ConfigError("--wait and --on-sigterm exclude each other: --wait for a container "
                          "beside the main one, --on-sigterm for a native sidecar")
    if not (wait or on_sigterm):
        for flag, value in (("--status-dir", status_dir), ("--wait-timeout", wait_timeout),
                            ("--heartbeat-stale-seconds", stale_seconds),
                            ("--first-heartbeat-seconds", first_heartbeat_seconds)):
            if value is not None:
                raise ConfigError(f"{flag} applies only with --wait or --on-sigterm")
        return None
    if on_sigterm:
        for flag, value in (("--wait-timeout", wait_timeout),
                            ("--heartbeat-stale-seconds", stale_seconds),
                            ("--first-heartbeat-seconds", first_heartbeat_seconds)):
            if value is not None:
                raise ConfigError(f"{flag} applies only with --wait (--on-sigterm waits for "
                                  f"SIGTERM, which Kubernetes sends after the main container)")
    folder, folder_source = _pick(status_dir, "CATALOG_AGENT_STATUS_DIR", environ,
                                  DEFAULT_STATUS_DIR, "--status-dir")
    if not folder:
        raise ConfigError(f"status folder is empty (from {folder_source})")
    timeout = _seconds(*_pick(wait_timeout, "CATALOG_AGENT_WAIT_TIMEOUT", environ, "0",
                              "--wait-timeout"), what="wait timeout", minimum=0.0)
    stale = _seconds(*_pick(stale_seconds, "CATALOG_AGENT_HEARTBEAT_STALE_SECONDS", environ,
                            str(DEFAULT_STALE_SECONDS), "--heartbeat-stale-seconds"),
                     what="heartbeat stale seconds", minimum=1.0)
    first = _seconds(*_pick(first_heartbeat_seconds, "CATALOG_AGENT_FIRST_HEARTBEAT_SECONDS",
                            environ, str(DEFAULT_FIRST_HEARTBEAT_SECONDS),
                            "--first-heartbeat-seconds"),
                     what="first heartbeat seconds", minimum=0.0)
    return Settings(ON_SIGTERM if on_sigterm else WAIT, Path(folder), timeout, stale, first)


def _pick(flag: str | None, env: str, environ: Mapping[str, str], default: str,
          flag_name: str) -> tuple[str, str]:
    if flag is not None:
        return flag, f"flag {flag_name}"
    if env in environ:
        return environ[env], f"variable {env}"
    return default, "default"


def _seconds(text: str, source: str, *, what: str, minimum: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = float("nan")
    if not value >= minimum or value == float("inf"):  # also rejects NaN
        from catalog_agent.logs import clip

        raise ConfigError(f"{what}: expected a number of seconds >= {minimum:g}, got "
                          f"{clip(repr(text), 40)} (from {source})")
    return value


def read_outcome(status_dir: Path) -> Outcome | None:
    """The outcome recorded by the wrapper, or None while there is no exit-code file yet.

    The status folder is shared with a step that may run unreviewed code, so the file is
    opened without following a link and without blocking (a FIFO there must not hang the put,
    a link to /dev/zero must not fill its memory), must be a regular file of a few bytes, and
    must hold a decimal code. Anything else is an outcome too: a failed step, with the reason.
    """
    path = status_dir / EXIT_CODE_FILE
    not_ours = "not an exit code written by the entrypoint wrapper"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else \
            f"cannot be opened ({exc.strerror or exc})"
        return Outcome(None, f"{path} {what}, {not_ours}")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Outcome(None, f"{path} is a {_file_kind(info.st_mode)}, {not_ours}")
        if info.st_size > MAX_EXIT_CODE_BYTES:
            return Outcome(None, f"{path} holds {info.st_size} bytes, {not_ours}")
        raw = os.read(fd, MAX_EXIT_CODE_BYTES + 1)
    except OSError as exc:
        return Outcome(None, f"{path} cannot be read ({exc.strerror or exc}), {not_ours}")
    finally:
        os.close(fd)
    if not _EXIT_CODE.fullmatch(raw) or int(raw) > 255:
        shown = raw[:MAX_EXIT_CODE_BYTES].decode("ascii", "backslashreplace")
        return Outcome(None, f"{path} holds {shown!r}, {not_ours}")
    code = int(raw)
    return Outcome(code, f"the main command exited with {code}")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "folder"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _heartbeat_mtime(status_dir: Path) -> int | None:
    """The heartbeat's mtime, not following a link (a planted link must not look alive)."""
    try:
        return os.stat(status_dir / HEARTBEAT_FILE, follow_symlinks=False).st_mtime_ns
    except OSError:
        return None


def wait_for_exit(status_dir: Path, *, timeout: float, stale_seconds: float,
                  cancel: threading.Event, first_heartbeat: float = 0.0,
                  poll: float = POLL_SECONDS,
                  clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Wait until the main command has ended; raise MainLost when that can no longer be known.

    Staleness is how long the heartbeat's mtime has not changed while we watched, on our own
    monotonic clock, so the two containers' clocks need not agree. A heartbeat not there yet is
    not stale (the main container may still be pulling its image) for ``first_heartbeat``
    seconds (0: for ever); one that disappears after it was seen counts as unchanged.
    A stale or absent heartbeat never counts as the step's outcome: the step may still be
    running with only its heartbeat stopped, so the put fails visibly instead (MainLost).
    """
    log = get_logger()
    if not status_dir.is_dir():
        log.warning("status folder missing", status_dir=str(status_dir),
                    reason="not created yet, or the shared volume is not mounted in this "
                           "container; waiting for the wrapper to create it")
    started = clock()
    last_log = started - WAITING_LOG_INTERVAL
    seen_mtime: int | None = None
    changed_at = started
    while True:
        outcome = read_outcome(status_dir)
        if outcome is not None:
            return outcome
        now = clock()
        mtime = _heartbeat_mtime(status_dir)
        if mtime is not None and mtime != seen_mtime:
            seen_mtime, changed_at = mtime, now
        elif seen_mtime is not None and now - changed_at >= stale_seconds:
            # The wrapper writes the exit code after its last beat: look once more.
            outcome = read_outcome(status_dir)
            if outcome is not None:
                return outcome
            raise MainLost(
                f"heartbeat stale: {status_dir / HEARTBEAT_FILE} unchanged for "
                f"{now - changed_at:.0f} s and no exit code: the main container died without "
                f"one (killed with its cgroup: OOM, eviction) or only its heartbeat stopped; "
                f"nothing was put, since the step may still be writing",
                hint="docs/lifecycle.md, 'Stale heartbeat'")
        elif seen_mtime is None and first_heartbeat and now - started >= first_heartbeat:
            outcome = read_outcome(status_dir)
            if outcome is not None:
                return outcome
            raise MainLost(
                f"no heartbeat in {status_dir} after {first_heartbeat:g} s "
                f"(--first-heartbeat-seconds): the entrypoint wrapper never started; nothing "
                f"was put",
                hint="is the main command wrapped by the entrypoint, does the main image have "
                     "/bin/sh, and is the status folder mounted and writable in the main "
                     "container? A slow image pull needs a larger bound")
        if timeout and now - started >= timeout:
            state = "its heartbeat is fresh" if mtime is not None else "no heartbeat yet"
            raise WaitTimeout(f"no exit code in {status_dir} after {timeout:g} s "
                              f"(--wait-timeout; {state}); nothing was put")
        if now - last_log >= WAITING_LOG_INTERVAL:
            last_log = now
            log.info("waiting", status_dir=str(status_dir), heartbeat=mtime is not None,
                     waited_seconds=round(now - started))
        if cancel.wait(poll):
            raise Interrupted("stopped by a signal while waiting for the main container; "
                              "nothing was put")


def wait_for_sigterm(cancel: threading.Event) -> None:
    """Block until SIGTERM or SIGINT (the CLI's handler sets ``cancel``), then re-arm it.

    The first signal is the cue to put, not a request to stop: clearing the event lets a
    second signal cancel the put itself.
    """
    log = get_logger()
    log.info("waiting for SIGTERM", reason="native sidecar: Kubernetes sends it after the "
                                           "main containers have ended")
    while not cancel.wait(1.0):
        pass
    cancel.clear()


def outcome_after_sigterm(status_dir: Path, cancel: threading.Event,
                          grace: float = AFTER_SIGTERM_SECONDS,
                          clock: Callable[[], float] = time.monotonic) -> Outcome:
    """The exit code the main container left; absent after ``grace`` seconds counts as failure."""
    deadline = clock() + grace
    while True:
        outcome = read_outcome(status_dir)
        if outcome is not None:
            return outcome
        if clock() >= deadline:
            return Outcome(None, f"no exit code in {status_dir} when SIGTERM arrived, so the "
                                 f"main container ended without the entrypoint wrapper or was "
                                 f"killed")
        if cancel.wait(0.2):
            raise Interrupted("stopped by a second signal before the put started; "
                              "nothing was put")


def decide(when: str, outcome: Outcome) -> tuple[bool, str]:
    """(put?, why) for the policy ``when`` (success, failure, always) and the step's outcome."""
    if when == "always":
        return True, f"when=always ({outcome.reason})"
    if when == "success":
        if outcome.succeeded:
            return True, f"when=success and {outcome.reason}"
        return False, f"when=success but the step failed: {outcome.reason}"
    if when == "failure":
        if not outcome.succeeded:
            return True, f"when=failure and the step failed: {outcome.reason}"
        return False, f"when=failure but the step succeeded: {outcome.reason}"
    raise ConfigError(f"when: {when!r} is not one of 'success', 'failure', 'always'")


def error_document(*, run_id: str, step: str, mode: str, error: AgentError, when: str,
                   outcome: Outcome | None) -> bytes:
    """What ``.catalog-agent/errors/<step>.json`` says about a failed lifecycle put."""
    from catalog_agent.logs import clip, scrub_value

    doc: dict[str, Any] = {
        "run_id": run_id,
        "step": step,
        "command": "put",
        "mode": mode,
        "exit_code": error.exit_code,
        "error": clip(str(error), 4000),  # scrubbed before it is cut: no half secret
        "kind": error.kind,
        "when": when,
        "main_exit_code": outcome.exit_code if outcome else None,
        "main_outcome": clip(outcome.reason, 4000) if outcome else None,
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return (json.dumps(scrub_value(doc), indent=1, ensure_ascii=False) + "\n").encode(
        "utf-8", "backslashreplace")


class InternalError(AgentError):
    """An unexpected error (a bug) in a lifecycle put: exit 1 as any bug, but recorded like any
    failed put, since a native sidecar's exit code alone fails nothing (the Job succeeds)."""

    exit_code = EXIT_INTERNAL
    kind = "internal"


class LifecycleError(AgentError):
    """An error of a lifecycle put, carrying the lifecycle facts for the termination message."""

    def __init__(self, cause: AgentError, facts: dict[str, Any]) -> None:
        super().__init__(cause.message, hint=cause.hint)
        self.exit_code = cause.exit_code
        self.kind = cause.kind
        self.summary = {**getattr(cause, "summary", {}), **facts}


def run_put(config: Config, lifecycle: Settings, cancel: threading.Event,
            do_put: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Wait (for the exit code or SIGTERM), apply the policy, put or skip, record a failure.

    ``do_put`` is the plain put. Any failure, an unexpected one (a bug, exit 1) included, writes
    the error document (best effort) and is re-raised as an agent error with the lifecycle
    facts attached, so the termination message carries them.
    """
    log = get_logger()
    facts: dict[str, Any] = {"mode": lifecycle.mode, "when": config.when,
                             "status_dir": str(lifecycle.status_dir)}
    outcome: Outcome | None = None
    try:
        if lifecycle.mode == WAIT:
            outcome = wait_for_exit(lifecycle.status_dir, timeout=lifecycle.wait_timeout,
                                    stale_seconds=lifecycle.stale_seconds, cancel=cancel,
                                    first_heartbeat=lifecycle.first_heartbeat_seconds)
        else:
            wait_for_sigterm(cancel)
            outcome = outcome_after_sigterm(lifecycle.status_dir, cancel)
        facts["main_exit_code"] = outcome.exit_code
        go, why = decide(config.when, outcome)
        facts["decision"], facts["reason"] = ("put" if go else "skipped"), why
        if not go:
            log.info("put.skipped", reason=why, when=config.when,
                     main_exit_code=outcome.exit_code)
            return {"command": "put", "files": 0, "bytes": 0, "skipped": 0, **facts}
        log.info("putting", reason=why, when=config.when, main_exit_code=outcome.exit_code)
        return {**do_put(), **facts}
    except AgentError as exc:
        _write_error_document(config, lifecycle, exc, outcome)
        raise LifecycleError(exc, facts) from None
    except Exception as exc:  # noqa: BLE001 - a bug: recorded all the same, exit 1 kept
        log.debug("traceback", traceback=traceback.format_exc())  # --log-level debug, as the CLI
        error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
        _write_error_document(config, lifecycle, error, outcome)
        raise LifecycleError(error, facts) from None


def _write_error_document(config: Config, lifecycle: Settings, error: AgentError,
                          outcome: Outcome | None) -> None:
    """Best effort: a store that cannot be reached leaves the log and termination message."""
    from catalog_agent.keys import error_key
    from catalog_agent.stores import open_store

    log = get_logger()
    key = error_key(config.run_prefix, config.step)
    try:
        store = open_store(config)
        try:
            store.write_small(key, error_document(run_id=config.run_id, step=config.step,
                                                  mode=lifecycle.mode, error=error,
                                                  when=config.when, outcome=outcome))
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - the original error is what matters
        log.warning("error document not written", key=key, reason=str(exc))
        return
    log.info("error document written", key=key)


def packaged_entrypoint() -> bytes:
    """The wrapper shipped inside the package (a copy of the repository's top-level file)."""
    from importlib.resources import files

    return (files("catalog_agent") / "entrypoint").read_bytes()


def install_entrypoint(directory: str) -> Path:
    """Copy the wrapper to ``directory/entrypoint``, mode 0755, through a temporary name.

    An init container runs this into a shared emptyDir, so the step's own image needs no change
    beyond its command. A reader never sees half a script. The temporary file has a random name,
    is created only where nothing is (no link followed) and gets its mode through its own
    descriptor: nothing another process puts at a name can take the write or the chmod.
    """
    from catalog_agent.local import temporary_name

    if not directory:
        raise ConfigError("install-entrypoint: DIR is empty")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "entrypoint"
        temporary = folder / temporary_name("entrypoint")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o755)
            with os.fdopen(fd, "wb") as handle:
                handle.write(packaged_entrypoint())
                os.fchmod(handle.fileno(), 0o755)  # the file written, whatever the umask
            os.replace(temporary, target)
        finally:
            if os.path.lexists(temporary):  # the name itself, a link included
                temporary.unlink()
    except OSError as exc:
        raise ConfigError(f"install-entrypoint: cannot write {folder}/entrypoint: "
                          f"{exc.strerror or exc}") from None
    return target
