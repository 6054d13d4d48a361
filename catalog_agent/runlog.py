"""magnus's run log as a source of expected hashes: what magnus put, and the SHA-256 it recorded.

magnus keeps no hash on the objects it puts; it records each file of a step's put in that step's
log (``data_catalog``: ``data_hash``, ``catalog_relative_path``, ``stage``). When the
configuration file has a ``run_log_store`` section of a type magnus ships, get reads that run's
log and verifies magnus's files against it instead of fetching them ``unverified``.

Where magnus 0.4.22 / magnus-extensions 0.2.13 keep a run's log:

=================  ===================================================================
``file-system``    ``<log_folder>/<run_id>.json`` (log_folder default ``.run_log_store``,
                   relative to the working directory)
``k8s-pvc``        the same under ``<mount_path>/<log_folder>``
``chunked-fs``     ``<log_folder>/<run_id>/RunLog.json``, ``StepLog-<step>-<ns>.json``, ...
``chunked-k8s-pvc`` the same under ``<mount_path>/<log_folder>``
``s3``             ``s3://<s3_bucket>/<prefix>/<run_id>.json``
``chunked-s3``     ``s3://<s3_bucket>/<prefix>/<run_id>/RunLog``, ``StepLog-<step>-<ns>``, ...
                   (no ``.json`` suffix: magnus stores them under ``Path.name``)
=================  ===================================================================

``catalog_relative_path`` is the whole key for magnus-extensions' S3 catalog
(``<prefix>/<run_id>/<folder>/<file>``) and ``<run_id>/<folder>/<file>`` for magnus's
file-system catalog; both become a path in the run here.

Parsing is pure; :func:`read` is the only I/O, one GET (or one file read), or one listing and a
GET per step for the chunked stores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from catalog_agent.errors import AccessError, CertificateError, ConfigError, IntegrityError, \
    TransferError

if TYPE_CHECKING:
    from catalog_agent.config import Config
    from catalog_agent.run_state import RunState
    from catalog_agent.stores.base import Store

MAX_RUN_LOG_BYTES = 64 * 1024 * 1024
FILE_TYPES = ("file-system", "k8s-pvc")
CHUNKED_FILE_TYPES = ("chunked-fs", "chunked-k8s-pvc")
S3_TYPES = ("s3", "chunked-s3")
READABLE = FILE_TYPES + CHUNKED_FILE_TYPES + S3_TYPES
DEFAULT_LOG_FOLDER = ".run_log_store"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STEP_CHUNK = re.compile(r"StepLog-(?P<name>.+)-(?P<ns>\d+)(\.json)?")


@dataclass(frozen=True)
class RunLogStore:
    """The parts of magnus's ``run_log_store`` section the agent needs to find a run's log."""

    type: str
    s3_bucket: str = ""
    prefix: str = ""
    log_folder: str = DEFAULT_LOG_FOLDER
    mount_path: str = ""

    @property
    def readable(self) -> bool:
        return self.type in READABLE

    @property
    def folder(self) -> str:
        """The log folder of the file types (relative to the working directory unless absolute)."""
        if self.mount_path:
            return self.mount_path.rstrip("/") + "/" + self.log_folder
        return self.log_folder

    def location(self, run_id: str) -> str:
        """Where this run's log is, as a log line shows it."""
        prefix = self.prefix.strip("/")
        base = f"{prefix}/{run_id}" if prefix else run_id
        if self.type == "s3":
            return f"s3://{self.s3_bucket}/{base}.json"
        if self.type == "chunked-s3":
            return f"s3://{self.s3_bucket}/{base}/"
        if self.type in CHUNKED_FILE_TYPES:
            return f"{self.folder}/{run_id}/"
        return f"{self.folder}/{run_id}.json"


def parse_settings(section: Any, where: str) -> RunLogStore | None:
    """The ``run_log_store`` section of the config file; None when absent. Only the keys that
    say where the log is are read: the rest is magnus's (credentials are the agent's own)."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"run_log_store: expected a mapping (from {where})")
    kind = section.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"run_log_store.type: expected a string such as 'file-system', 's3' "
                          f"or 'chunked-s3' (from {where})")
    config = section.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"run_log_store.config: expected a mapping (from {where})")
    values: dict[str, str] = {}
    for name in ("s3_bucket", "prefix", "log_folder", "mount_path"):
        value = config.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or "\x00" in value:
            raise ConfigError(f"run_log_store.config.{name}: expected a string (from {where})")
        values[name] = value
    settings = RunLogStore(kind, **values)
    if kind in S3_TYPES and not settings.s3_bucket:
        raise ConfigError(f"run_log_store.config.s3_bucket is required for a run log store of "
                          f"type {kind} (from {where})")
    if kind in ("k8s-pvc", "chunked-k8s-pvc") and not settings.mount_path:
        raise ConfigError(f"run_log_store.config.mount_path is required for a run log store of "
                          f"type {kind} (from {where})")
    prefix_parts = settings.prefix.strip("/").split("/")
    if settings.prefix.strip("/") and any(p in {"", ".", ".."} for p in prefix_parts):
        raise ConfigError(f"run_log_store.config.prefix {settings.prefix!r} has an empty, '.' "
                          f"or '..' segment (from {where})")
    return settings


@dataclass(frozen=True)
class Logged:
    """A file as magnus's run log recorded its put."""

    sha256: str
    step: str


@dataclass
class RunLog:
    """What one run's log says: its status and the hash of each file put, by path in the run."""

    location: str
    found: bool = False
    status: str = ""
    files: dict[str, Logged] = field(default_factory=dict)


def path_in_run(catalog_relative_path: str, run_prefix: str, run_id: str) -> str | None:
    """A ``catalog_relative_path`` as a path in the run, or None when it names another run."""
    path = catalog_relative_path.replace("\\", "/")  # magnus joins with os.sep
    for head in (run_prefix, f"{run_id}/"):
        if path.startswith(head) and len(path) > len(head):
            return path[len(head):]
    return None


def put_entries(step_logs: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """(step, catalog_relative_path, data_hash) of every put, in the order the steps ran;
    steps inside branches (parallel, map) included."""
    for step in step_logs:
        if not isinstance(step, dict):
            continue
        name = step.get("internal_name") or step.get("name") or ""
        for item in step.get("data_catalog") or []:
            if not isinstance(item, dict) or item.get("stage") != "put":
                continue
            path, digest = item.get("catalog_relative_path"), item.get("data_hash")
            if isinstance(path, str) and path and isinstance(digest, str) and \
                    _HEX64.fullmatch(digest):
                yield str(name), path, digest
        for branch in (step.get("branches") or {}).values():
            if isinstance(branch, dict):
                yield from put_entries((branch.get("steps") or {}).values())


def _document(raw: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise IntegrityError(f"magnus run log {where} is not valid JSON") from None
    if not isinstance(document, dict):
        raise IntegrityError(f"magnus run log {where} is not a JSON object")
    return document


def from_documents(location: str, run_log: dict[str, Any], step_logs: list[dict[str, Any]],
                   run_prefix: str, run_id: str) -> RunLog:
    """A run log from its documents: the whole log, or (chunked) the RunLog and its steps."""
    logged = RunLog(location, found=True, status=str(run_log.get("status") or ""))
    steps = list((run_log.get("steps") or {}).values()) + step_logs
    for step, path, digest in put_entries(steps):
        in_run = path_in_run(path, run_prefix, run_id)
        if in_run is not None:
            logged.files[in_run] = Logged(digest, step)  # a later put of the key wins
    return logged


def step_chunks(keys: Iterable[str]) -> list[str]:
    """The StepLog chunks of a chunked store, in the order they were created."""
    found = []
    for key in keys:
        match = _STEP_CHUNK.fullmatch(key.rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group("ns")), key))
    return [key for _, key in sorted(found)]


def read(settings: RunLogStore, config: Config, *, catalog: Store | None = None) -> RunLog:
    """Read the run's log from its store; a log that does not exist gives ``found=False``.

    ``catalog`` is reused when the log lives in the catalog's own bucket (one client).
    """
    run_id = config.run_id
    location = settings.location(run_id)
    store, owned = _open(settings, config, catalog)
    try:
        prefix = settings.prefix.strip("/")
        base = f"{prefix}/{run_id}" if prefix and settings.type in S3_TYPES else run_id
        if settings.type in ("s3",) + FILE_TYPES:
            raw = store.read_small(f"{base}.json", MAX_RUN_LOG_BYTES)
            if raw is None:
                return RunLog(location)
            return from_documents(location, _document(raw, location), [], config.run_prefix,
                                  run_id)
        suffix = ".json" if settings.type in CHUNKED_FILE_TYPES else ""
        keys = [obj.key for obj in store.list(base + "/")]
        if f"{base}/RunLog{suffix}" not in keys:
            return RunLog(location)
        run_raw = store.read_small(f"{base}/RunLog{suffix}", MAX_RUN_LOG_BYTES) or b"{}"
        steps = []
        for key in step_chunks(keys):
            raw = store.read_small(key, MAX_RUN_LOG_BYTES)
            if raw is not None:
                steps.append(_document(raw, f"{location}{key.rsplit('/', 1)[-1]}"))
        return from_documents(location, _document(run_raw, location), steps,
                              config.run_prefix, run_id)
    finally:
        if owned:
            store.close()


def _open(settings: RunLogStore, config: Config, catalog: Store | None) -> tuple[Store, bool]:
    """The store holding the log, and whether it was opened here (and must be closed)."""
    if settings.type in S3_TYPES:
        if catalog is not None and config.type == "s3" and settings.s3_bucket == config.s3_bucket:
            return catalog, False
        import dataclasses

        from catalog_agent.stores import open_store

        return open_store(dataclasses.replace(config, type="s3",
                                              s3_bucket=settings.s3_bucket)), True
    from catalog_agent.stores.filesystem import FileSystemStore

    return FileSystemStore(settings.folder), True


def learn(config: Config, catalog: Store, state: RunState, log: Any) -> str:
    """Give ``state`` magnus's hashes of the objects no manifest records; returns the run log's
    location, or '' when none was read. Read only when needed: a run the agent alone wrote
    costs no request."""
    settings = config.run_log_store
    if settings is None or state.all_recorded():
        return ""
    if not settings.readable:
        log.warning("run log not read", run_log_store=settings.type,
                    reason=f"the agent reads run logs of types {', '.join(READABLE)}: files "
                           f"without a manifest stay unverified")
        return ""
    location = settings.location(config.run_id)
    try:
        found = read(settings, config, catalog=catalog)
    except CertificateError:
        raise  # the endpoint's certificate, not the run log's permissions
    except (AccessError, PermissionError) as exc:
        # The run log often lives under another prefix than the catalog (magnus's example
        # uses logs/), which a policy scoped to the catalog's prefix does not cover: no log
        # read, as if there were none, rather than a get that fails.
        why = exc.message if isinstance(exc, AccessError) else f"{location}: {exc.strerror}"
        log.warning("run log not read", location=location,
                    reason=f"{why}; files without a manifest stay unverified (strict_verify "
                           f"refuses them)",
                    hint=f"reading it needs s3:GetObject on its keys and s3:ListBucket on its "
                         f"prefix ({location}), or read access to its folder")
        return ""
    except OSError as exc:  # a local log folder (file-system stores) that cannot be read
        raise TransferError(f"cannot read magnus run log {location}: "
                            f"{exc.strerror or exc}") from None
    if not found.found:
        log.info("no run log", location=found.location,
                 reason="files without a manifest stay unverified")
        return ""
    count = state.learn_run_log(found.files)
    log.info("run log read", location=found.location, run_status=found.status, hashes=count)
    return found.location
