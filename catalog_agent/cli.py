"""The command line: every configuration key is a flag and a CATALOG_AGENT_* variable.

This module parses, wires and reports; the work is in :mod:`catalog_agent.commands`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

import click

from catalog_agent import __version__
from catalog_agent.config import KEYS, Config, describe, load
from catalog_agent.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, AgentError, \
    ConfigError
from catalog_agent.record import write_termination_message

DRY_RUN_HELP = ("Plan only: list what would move, be skipped or be refused and why; write "
                "nothing anywhere (same exit codes for no match and unsafe keys).")
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def _key_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --config and one flag per configuration key (its variable is named in the help)."""
    for spec in reversed(list(KEYS.values())):
        if not spec.flag:
            continue
        help_text = f"{spec.help} [env {spec.env}]"
        if spec.kind == "bool":
            negative = "--no-" + spec.name.replace("_", "-")
            option = click.option(f"{spec.flag_name}/{negative}", spec.name, default=None,
                                  help=help_text)
        else:
            option = click.option(spec.flag_name, spec.name, default=None, metavar="TEXT"
                                  if spec.kind != "choice" else "|".join(c or "''" for c in
                                                                         spec.choices),
                                  help=help_text)
        func = option(func)
    return click.option("--config", "config_path", default=None, metavar="FILE",
                        help="Config file [env CATALOG_AGENT_CONFIG; default "
                             "/etc/catalog-agent/config.yaml]")(func)


def _split(kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """(config path, key flags, the command's own options)."""
    config_path = kwargs.pop("config_path", None)
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in KEYS}
    return config_path, flags, kwargs


def _early_logging(flags: dict[str, Any]) -> None:
    """Logging before the configuration is valid: so that a config error is logged properly."""
    from catalog_agent.logs import configure

    fmt = flags.get("log_format") or os.environ.get("CATALOG_AGENT_LOG_FORMAT", "auto")
    level = flags.get("log_level") or os.environ.get("CATALOG_AGENT_LOG_LEVEL", "info")
    from catalog_agent.credentials import secret_values

    # Secrets are known before the configuration is: a config error may quote one.
    configure(fmt=fmt if fmt in {"auto", "json", "console"} else "auto",
              level=level if level in {"debug", "info", "warning", "error"} else "info",
              secrets=secret_values())


def run(command: str, body: Callable[[Config, threading.Event], dict[str, Any] | None],
        config_path: str | None, flags: dict[str, Any], *, dry_run: bool = False) -> None:
    """Load the configuration, run ``body``, log its summary, exit with the documented code."""
    from catalog_agent import logs
    from catalog_agent.credentials import secret_values

    cancel = threading.Event()
    early = _on_signals(cancel)  # first: a signal from now on is never lost
    _early_logging(flags)
    logs.bind(command=command, run_id=flags.get("run_id") or os.environ.get(
        "CATALOG_AGENT_RUN_ID", ""), step=flags.get("step") or os.environ.get(
        "CATALOG_AGENT_STEP", ""))
    log = logs.get_logger()
    if early:
        log.info("signal received while starting", signals=early)
    started = time.monotonic()
    summary: dict[str, Any] = {"command": command}
    code = 0
    try:
        config = load(config_path=config_path, flags=flags)
        logs.configure(fmt=config.log_format, level=config.log_level,
                       secrets=secret_values(config))
        logs.bind(run_id=config.run_id, step=config.step)
        summary = body(config, cancel) or summary
        log.info(f"{command}.done", **{k: v for k, v in summary.items() if k != "command"})
    except AgentError as exc:
        code = exc.exit_code
        summary.update(getattr(exc, "summary", None) or {})  # e.g. a lifecycle put's facts
        summary["error"] = str(exc)
        if dry_run:  # the plan lists the refused paths (up to 1,000), the error line the first
            for item in getattr(exc, "refused", []):
                log.info("dry-run", action="refuse", path=item.relative, reason=item.reason)
        log.error(str(exc), error_kind=exc.kind, exit_code=code)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        summary["error"] = "interrupted"
        log.error("interrupted", exit_code=code)
    except Exception as exc:  # noqa: BLE001 - no traceback for users; the type says where
        code = EXIT_INTERNAL
        summary["error"] = f"internal error: {type(exc).__name__}: {exc}"
        log.error(summary["error"], exit_code=code)
        # For a bug report: --log-level debug adds the traceback (scrubbed like every event).
        log.debug("traceback", traceback=traceback.format_exc())
    summary["exit_code"] = code
    summary.setdefault("seconds", round(time.monotonic() - started, 3))
    write_termination_message(summary)  # scrubs every value before anything is cut
    sys.exit(code)


def _signal_names(signums: list[int]) -> list[str]:
    return [signal.Signals(n).name for n in signums]


def _on_signals(cancel: threading.Event) -> list[str]:
    """SIGTERM and SIGINT stop the transfer cleanly: in-flight work aborts, nothing partial stays.

    Also takes over what the launcher recorded before the CLI was imported: a signal that came
    early sets ``cancel`` as if it came now (for ``put --on-sigterm``, the cue to put). The
    handler is installed before the recorded signals are read, so none falls in between.
    Returns the names of the early signals.
    """
    from catalog_agent.launcher import take_early_signals

    def handler(signum: int, _frame: Any) -> None:
        cancel.set()

    if threading.current_thread() is not threading.main_thread():
        return []
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    early = take_early_signals()
    if early:
        cancel.set()
    return _signal_names(early)


def _default_signals() -> None:
    """For commands that have no transfer to stop: a signal ends them as usual (exit 143)."""
    from catalog_agent.launcher import take_early_signals

    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if take_early_signals():
        sys.exit(EXIT_INTERRUPTED)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(__version__, prog_name="catalog-agent")
def main() -> None:
    """Move a pipeline step's files through an S3 data catalog.

    \b
    get   fetch the step's inputs from s3://<bucket>/<prefix>/<run_id>/ (init container)
    put   store the step's outputs there after the step (post-step container)
    """


@main.command(epilog=EPILOG)
@click.argument("patterns", nargs=-1)
@click.option("--record", metavar="FILE", help="Write what was moved, in manifest fields.")
@click.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)
@_key_options
def get(**kwargs: Any) -> None:
    """Fetch files matching PATTERNS (or the step's get list) into the data folder."""
    from catalog_agent import commands

    config_path, flags, own = _split(kwargs)
    run("get", lambda config, cancel: commands.get(config, own["patterns"],
                                                   record=own["record"], cancel=cancel,
                                                   dry_run=own["dry_run"]),
        config_path, flags, dry_run=own["dry_run"])


@main.command(epilog=EPILOG)
@click.argument("patterns", nargs=-1)
@click.option("--record", metavar="FILE", help="Write what was moved, in manifest fields.")
@click.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)
@click.option("--wait", is_flag=True,
              help="First wait for the main command's exit code (entrypoint wrapper), then put "
                   "according to --when. See docs/lifecycle.md.")
@click.option("--on-sigterm", is_flag=True,
              help="Native sidecar: wait for SIGTERM, read the main command's exit code, then "
                   "put according to --when.")
@click.option("--status-dir", metavar="DIR", default=None,
              help="Status folder shared with the wrapper [env CATALOG_AGENT_STATUS_DIR; "
                   "default /var/run/catalog-agent]")
@click.option("--wait-timeout", metavar="SECONDS", default=None,
              help="Give up waiting after SECONDS, exit 7 [env CATALOG_AGENT_WAIT_TIMEOUT; "
                   "default 0: no limit]")
@click.option("--heartbeat-stale-seconds", metavar="SECONDS", default=None,
              help="A heartbeat unchanged this long with no exit code: the main command's end "
                   "is unknown, exit 8, nothing put [env CATALOG_AGENT_HEARTBEAT_STALE_SECONDS; "
                   "default 30]")
@click.option("--first-heartbeat-seconds", metavar="SECONDS", default=None,
              help="No heartbeat this long after put started: the wrapper never ran, exit 8, "
                   "nothing put [env CATALOG_AGENT_FIRST_HEARTBEAT_SECONDS; default 1800; "
                   "0: no limit]")
@_key_options
def put(**kwargs: Any) -> None:
    """Store files matching PATTERNS (or the step's put list) and write the step manifest."""
    from catalog_agent import commands, lifecycle

    config_path, flags, own = _split(kwargs)

    def body(config: Config, cancel: threading.Event) -> dict[str, Any]:
        def plain() -> dict[str, Any]:
            return commands.put(config, own["patterns"], record=own["record"], cancel=cancel,
                                dry_run=own["dry_run"])

        mode = lifecycle.settings(wait=own["wait"], on_sigterm=own["on_sigterm"],
                                  status_dir=own["status_dir"], wait_timeout=own["wait_timeout"],
                                  stale_seconds=own["heartbeat_stale_seconds"],
                                  first_heartbeat_seconds=own["first_heartbeat_seconds"])
        if mode is None:
            return plain()
        if own["dry_run"]:
            raise ConfigError("--dry-run plans a put now: it cannot wait (--wait, --on-sigterm)")
        commands.check_put(config, own["patterns"])  # before a wait that may last hours
        return lifecycle.run_put(config, mode, cancel, plain)

    run("put", body, config_path, flags, dry_run=own["dry_run"])


@main.command("install-entrypoint", epilog=EPILOG)
@click.argument("directory", metavar="DIR")
def install_entrypoint(directory: str) -> None:
    """Copy the entrypoint wrapper to DIR/entrypoint (mode 0755), e.g. a shared emptyDir."""
    from catalog_agent.lifecycle import install_entrypoint as install

    _default_signals()
    summary: dict[str, Any] = {"command": "install-entrypoint"}
    _early_logging({})
    from catalog_agent import logs

    logs.bind(command="install-entrypoint")
    try:
        summary["path"] = str(install(directory))
        code = 0
        logs.get_logger().info("install-entrypoint.done", path=summary["path"])
    except AgentError as exc:
        code = exc.exit_code
        summary["error"] = str(exc)
        logs.get_logger().error(str(exc), error_kind=exc.kind, exit_code=code)
    summary["exit_code"] = code
    write_termination_message(summary)
    sys.exit(code)


@main.command(epilog=EPILOG)
@click.option("--from-run", required=True, help="Run whose catalog is copied into --run-id.")
@click.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)
@_key_options
def sync(**kwargs: Any) -> None:
    """Copy a previous run's catalog into this run, server-side (for re-runs)."""
    from catalog_agent import commands

    config_path, flags, own = _split(kwargs)
    run("sync", lambda config, cancel: commands.sync(config, own["from_run"], cancel=cancel,
                                                     dry_run=own["dry_run"]),
        config_path, flags, dry_run=own["dry_run"])


@main.command(epilog=EPILOG)
@click.argument("patterns", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_key_options
def ls(**kwargs: Any) -> None:
    """List a run's files with size, SHA-256 and the step that put them."""
    from catalog_agent import commands

    config_path, flags, own = _split(kwargs)

    def body(config: Config, _cancel: threading.Event) -> dict[str, Any]:
        files = size = 0
        out = sys.stdout
        for row in commands.ls(config, own["patterns"]):  # rows as they come: a run may hold
            if own["as_json"]:                            # a million files
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                out.write(f"{row['size']:>12}  {row['sha256'][:16] or '-':<16}  "
                          f"{row['step'] or '-':<16}  {row['path']}\n")
            files += 1
            size += row["size"]
        out.flush()
        return {"command": "ls", "files": files, "bytes": size}

    run("ls", body, config_path, flags)


@main.command("config", epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--check", "check", is_flag=True,
              help="Resolve credentials, print the method and identity, and check that the "
                   "run's prefix can be listed, written and read (needs --run-id).")
@_key_options
def config_command(**kwargs: Any) -> None:
    """Print the effective configuration and where each value came from (no secrets)."""
    config_path, flags, own = _split(kwargs)

    def body(config: Config, _cancel: threading.Event) -> dict[str, Any]:
        if own["check"]:
            from catalog_agent.check import report

            return report(config, as_json=own["as_json"], echo=click.echo)
        from catalog_agent.logs import scrub_text

        rows = [(k, scrub_text(v), s) for k, v, s in describe(config)]
        if own["as_json"]:
            click.echo(json.dumps({k: {"value": v, "source": s} for k, v, s in rows}, indent=1))
        else:
            width = max(len(k) for k, _, _ in rows)
            for key, value, source in rows:
                click.echo(f"{key:<{width}}  {value or '-':<40}  {source}")
        return {"command": "config"}

    run("config", body, config_path, flags)


@main.command(epilog=EPILOG)
@click.option("--keep", is_flag=True, help="Keep the server's folder and print where it is.")
def demo(keep: bool) -> None:
    """Run a two-step pipeline against an embedded local S3 server (SeaweedFS)."""
    from catalog_agent.demo import run_demo

    _default_signals()
    try:
        sys.exit(run_demo(keep=keep))
    except AgentError as exc:
        click.echo(f"demo failed: {exc}", err=True)
        sys.exit(exc.exit_code)

