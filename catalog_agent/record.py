"""The record a command leaves: the termination message and the ``--record`` file.

The termination message is what ``kubectl describe pod`` shows: a JSON summary of at most
4 KiB, written to /dev/termination-log (or CATALOG_AGENT_TERMINATION_LOG) when writable.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from catalog_agent.errors import TransferError
from catalog_agent.manifest import Entry

TERMINATION_LOG = "/dev/termination-log"
MAX_TERMINATION_BYTES = 4096


def termination_message(summary: dict[str, Any]) -> bytes:
    """``summary`` as compact JSON, its error shortened until the whole fits in 4 KiB.

    Every value is scrubbed of known secrets first, nested ones included, and before anything
    is cut: a secret cut in half would no longer be recognised.
    """
    from catalog_agent.logs import scrub_value

    data = scrub_value(dict(summary))
    encoded = _encode(data)
    while len(encoded) > MAX_TERMINATION_BYTES and data.get("error"):
        error = str(data["error"])
        data["error"] = error[: max(0, len(error) - (len(encoded) - MAX_TERMINATION_BYTES) - 4)] + "..."
        encoded = _encode(data)
    if len(encoded) > MAX_TERMINATION_BYTES:
        slim = {k: data[k] for k in ("command", "exit_code") if k in data}
        encoded = json.dumps(slim, separators=(",", ":")).encode("utf-8")
    return encoded


def _encode(data: dict[str, Any]) -> bytes:
    # backslashreplace: a file name with undecodable bytes must not stop the message itself
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "backslashreplace")


def write_termination_message(summary: dict[str, Any], path: str | None = None) -> bool:
    """Write the message; a path that is not writable is ignored (outside Kubernetes)."""
    path = path or os.environ.get("CATALOG_AGENT_TERMINATION_LOG") or TERMINATION_LOG
    try:
        with open(path, "wb") as handle:
            handle.write(termination_message(summary))
    except OSError:
        return False
    return True


def write_record(path: str, entries: Iterable[Entry], *, command: str, run_id: str,
                 step: str) -> None:
    """The ``--record`` file: what this get or put moved, in manifest fields, atomically (written
    piece by piece, as a manifest is).

    The record often goes to a folder the step shares: the temporary file beside it gets a
    random name, created only if nothing is there and never through a link (``O_EXCL``,
    ``O_NOFOLLOW``), so a link the step planted at a predictable name cannot redirect the
    write; the rename then replaces whatever is at ``path`` itself, never what it points to.
    The folder is reached as a data folder is (:func:`~catalog_agent.local.open_folder`): a
    link the step planted in a volume on the way is refused (exit 6), not followed.
    """
    from catalog_agent.local import FolderMissing, open_folder, temporary_name
    from catalog_agent.manifest import encode, header

    where, name = os.path.split(path)
    try:  # the folder as open_folder reaches a data folder: no link a step planted followed
        folder = open_folder(where or ".", create=False, what="record folder")
    except FolderMissing:
        raise TransferError(f"cannot write the record {path}: its folder does not "
                            f"exist") from None
    try:
        temporary = temporary_name(name)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o666, dir_fd=folder.fd)
        except OSError as exc:
            raise TransferError(f"cannot write the record {path}: "
                                f"{exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                for piece in encode(header(run_id=run_id, step=step, command=command), entries):
                    handle.write(piece)
            os.replace(temporary, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
        except BaseException as exc:
            try:
                os.unlink(temporary, dir_fd=folder.fd)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError):  # e.g. the disk full: named, not an internal error
                raise TransferError(f"cannot write the record {path}: "
                                    f"{exc.strerror or exc}") from None
            raise
    finally:
        folder.close()
