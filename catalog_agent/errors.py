"""Errors as types: each carries the exit code the README documents.

The CLI turns any AgentError into one log line and its exit code, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_MATCH = 3
EXIT_ACCESS = 4
EXIT_TRANSFER = 5
EXIT_INTEGRITY = 6
EXIT_WAIT_TIMEOUT = 7
EXIT_MAIN_LOST = 8
EXIT_INTERRUPTED = 143

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_INTERNAL: "unexpected internal error (a bug: please report it)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_NO_MATCH: "a pattern matched nothing",
    EXIT_ACCESS: "credentials or access (no credentials, AccessDenied, no such bucket, "
                 "TLS certificate not trusted)",
    EXIT_TRANSFER: "transfer failed after retries",
    EXIT_INTEGRITY: "integrity or safety violation (hash mismatch, unsafe key or link, a file "
                    "changed while it was put)",
    EXIT_WAIT_TIMEOUT: "put --wait gave up: --wait-timeout expired before the main command ended",
    EXIT_MAIN_LOST: "put --wait: the main command's end is unknown (its heartbeat went stale or "
                    "never appeared, and it left no exit code); nothing was put",
    EXIT_INTERRUPTED: "stopped by SIGTERM or SIGINT before finishing (nothing partial left)",
}


class AgentError(Exception):
    """Base of every error the agent reports to its user."""

    exit_code: int = 1
    kind: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(AgentError):
    """The configuration, a flag or an argument is invalid."""

    exit_code = EXIT_USAGE
    kind = "config"


class NoMatchError(AgentError):
    """A get or put pattern matched nothing."""

    exit_code = EXIT_NO_MATCH
    kind = "no-match"


class AccessError(AgentError):
    """Credentials are missing or the store refused access."""

    exit_code = EXIT_ACCESS
    kind = "access"


class CertificateError(AccessError):
    """The endpoint's TLS certificate was refused (unknown CA, wrong host name, expired)."""

    kind = "tls"


class TransferError(AgentError):
    """A transfer failed after its retries."""

    exit_code = EXIT_TRANSFER
    kind = "transfer"


class IntegrityError(AgentError):
    """A hash did not match, or a key, path or link is unsafe."""

    exit_code = EXIT_INTEGRITY
    kind = "integrity"


class FileChanged(IntegrityError):
    """A local file was written, resized or replaced while the agent was reading it."""

    kind = "file-changed"


class WaitTimeout(AgentError):
    """put --wait: the main command had not ended when --wait-timeout expired."""

    exit_code = EXIT_WAIT_TIMEOUT
    kind = "wait-timeout"


class MainLost(AgentError):
    """put --wait: the heartbeat went stale or never appeared, and there is no exit code.

    The step may have died, or only its heartbeat may have: it may still be writing its files,
    so nothing is put, whatever ``when`` says, and the put fails visibly.
    """

    exit_code = EXIT_MAIN_LOST
    kind = "main-lost"


class Interrupted(AgentError):
    """SIGTERM or SIGINT arrived before the command finished."""

    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"
