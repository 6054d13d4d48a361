"""Configuration: the magnus S3 catalog's keys, loaded from file, step entry, environment and flags.

Everything is validated here, once, into a frozen :class:`Config`; the rest of the agent never
sees a raw value. Each value remembers where it came from, so errors and ``catalog-agent config``
can say "from CATALOG_AGENT_REGION" rather than leaving the user to guess.

Precedence, highest first: flag > environment > step entry > catalog config > default; a key
may name AWS's own variables that come before its default (``region``: AWS_REGION, then
AWS_DEFAULT_REGION, which EKS injects for IRSA and Pod Identity).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from catalog_agent.errors import ConfigError

if TYPE_CHECKING:
    from catalog_agent.runlog import RunLogStore
from catalog_agent.layout import LAYOUTS, Layout, for_run, magnus_folder

DEFAULT_CONFIG_PATH = "/etc/catalog-agent/config.yaml"
ENV_PREFIX = "CATALOG_AGENT_"
MAX_CONFIG_BYTES = 1024 * 1024

# Where a key may be written in the file. Every key can also come from the environment.
CATALOG = "catalog"  # catalog.config
STEP = "step"  # dag.steps.<step>.catalog
RUN = "run"  # only environment and flags (who is running, not what the catalog is)


def _key(default: Any, help: str, *, where: tuple[str, ...] = (CATALOG,), kind: str = "str",
         choices: tuple[str, ...] = (), flag: bool = True, minimum: int | None = None,
         maximum: int | None = None, fallback_env: tuple[str, ...] = ()) -> Any:
    """Declare one configuration key: its default and how it is documented and validated.

    ``fallback_env``: variables not the agent's own (AWS's) read, in order, before the default
    when nothing else sets the key; an empty one counts as unset."""
    meta = {"help": help, "where": where, "kind": kind, "choices": choices, "flag": flag,
            "minimum": minimum, "maximum": maximum, "fallback_env": fallback_env}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """The validated configuration of one agent invocation."""

    # --- who is running ---
    run_id: str = _key("", "Run id: the catalog namespace <prefix>/<run_id>/.", where=(RUN,))
    step: str = _key("", "Step name: selects dag.steps.<step> and names the manifest.", where=(RUN,))
    # --- the catalog ---
    type: str = _key("s3", "Catalog type.", kind="choice", choices=("s3", "file-system"))
    s3_bucket: str = _key("", "S3 bucket of the catalog (required for type s3).")
    prefix: str = _key("", "Key prefix: runs live at <prefix>/<run_id>/.")
    catalog_location: str = _key(".catalog", "Folder of a file-system catalog.")
    compute_data_folder: str = _key("data/", "Local data folder of the step.", where=(CATALOG, STEP))
    layout: str = _key("run", "Object keys: run is <prefix>/<run_id>/<path>; magnus adds the "
                              "data folder's relative name, <prefix>/<run_id>/"
                              "<compute_data_folder>/<path>, as magnus writes them.",
                       kind="choice", choices=LAYOUTS)
    get: tuple[str, ...] = _key((), "Patterns to get (comma-separated in the environment).",
                                where=(STEP,), kind="list", flag=False)
    put: tuple[str, ...] = _key((), "Patterns to put (comma-separated in the environment).",
                                where=(STEP,), kind="list", flag=False)
    allow_missing: bool = _key(False, "A pattern that matches nothing is not an error.",
                               where=(CATALOG, STEP), kind="bool")
    # --- credentials (seed keys) ---
    aws_profile: str = _key("", "AWS profile; empty means boto3's default chain.")
    use_credentials: bool = _key(False, "Read keys from the environment variables named below.",
                                 kind="bool")
    aws_credentials_file: str = _key(str(Path.home() / ".aws" / "credentials"),
                                     "AWS shared credentials file used with aws_profile.")
    aws_access_key_name: str = _key("AWS_ACCESS_KEY_ID", "Variable holding the access key id.")
    aws_secret_access_key_name: str = _key("AWS_SECRET_ACCESS_KEY",
                                           "Variable holding the secret access key.")
    aws_session_key_name: str = _key("AWS_SESSION_TOKEN", "Variable holding the session token.")
    role_arn: str = _key("", "Role to assume on top of the base credentials.")
    session_duration_in_seconds: int = _key(900, "Duration of the assumed role's session.",
                                            kind="int", minimum=900, maximum=43200)
    region: str = _key("eu-west-1", "AWS region for S3 and STS.",
                       fallback_env=("AWS_REGION", "AWS_DEFAULT_REGION"))
    # --- S3-compatible stores ---
    endpoint_url: str = _key("", "S3 endpoint URL (S3-compatible stores).")
    sts_endpoint_url: str = _key("", "STS endpoint URL; default is the regional endpoint.")
    addressing_style: str = _key("auto", "S3 addressing style.", kind="choice",
                                 choices=("auto", "path", "virtual"))
    verify_tls: bool = _key(True, "Verify the TLS certificates of S3 and STS; false turns "
                                  "checking off, whatever the CA bundle.", kind="bool")
    ca_bundle: str = _key("", "CA bundle (PEM file) that S3 and STS certificates are checked "
                              "against; default AWS_CA_BUNDLE, else botocore's bundle.")
    server_side_encryption: str = _key("", "Server-side encryption of stored objects.",
                                       kind="choice", choices=("", "AES256", "aws:kms"))
    sse_kms_key_id: str = _key("", "KMS key for server-side encryption aws:kms.")
    # --- behaviour ---
    retry_mode: str = _key("standard", "botocore retry mode.", kind="choice",
                           choices=("standard", "adaptive"))
    max_attempts: int = _key(5, "Attempts per request, first one included.", kind="int",
                             minimum=1, maximum=20)
    concurrency: int = _key(64, "Files moved at once.", kind="int", minimum=1, maximum=256)
    multipart_threshold: int = _key(16 * 1024 ** 2, "Files of at least this many bytes are "
                                    "sent and fetched in parts.", kind="int",
                                    minimum=5 * 1024 ** 2, maximum=5 * 1024 ** 3)
    multipart_chunksize: int = _key(8 * 1024 ** 2, "Bytes per part (raised as needed so that no "
                                    "object needs more than 10,000 parts).", kind="int",
                                    minimum=5 * 1024 ** 2, maximum=5 * 1024 ** 3)
    strict_links: bool = _key(False, "A symlink or hard link leaving the data folder is an "
                                     "error rather than a skipped file.", kind="bool")
    strict_verify: bool = _key(False, "get refuses an object with no recorded hash (no manifest "
                                      "entry, no magnus run-log entry, no x-amz-meta-sha256) "
                                      "instead of fetching it unverified.",
                               where=(CATALOG, STEP), kind="bool")
    when: str = _key("success", "When put --wait/--on-sigterm puts: after the main command "
                                "succeeded, failed, or always.", where=(CATALOG, STEP),
                     kind="choice", choices=("success", "failure", "always"))
    log_format: str = _key("auto", "Log format: JSON lines, or console lines on a terminal.",
                           kind="choice", choices=("auto", "json", "console"))
    log_level: str = _key("info", "Lowest level logged.", kind="choice",
                          choices=("debug", "info", "warning", "error"))

    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    # magnus's run_log_store section (file only): where get finds the hashes magnus recorded.
    run_log_store: RunLogStore | None = field(default=None, compare=False, repr=False)  # noqa: F821

    @property
    def data_folder(self) -> Path:
        return Path(self.compute_data_folder)

    @property
    def key_layout(self) -> Layout:
        """Where the data folder's files live in this run's catalog (layout run or magnus)."""
        return for_run(self.layout, self.compute_data_folder, self.run_prefix)

    @property
    def run_prefix(self) -> str:
        """``<prefix>/<run_id>/`` (no leading segment when prefix is empty)."""
        return run_prefix(self.prefix, self.run_id)


@dataclass(frozen=True)
class KeySpec:
    """One configuration key as the loader and the docs see it."""

    name: str
    default: Any
    help: str
    where: tuple[str, ...]
    kind: str
    choices: tuple[str, ...]
    flag: bool
    minimum: int | None
    maximum: int | None
    fallback_env: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")


KEYS: dict[str, KeySpec] = {
    f.name: KeySpec(name=f.name, default=f.default, **f.metadata)
    for f in dataclasses.fields(Config)
    if f.name not in {"sources", "run_log_store"}
}

# Environment variables that are not keys but belong to the agent.
OTHER_ENV = {ENV_PREFIX + name for name in ("CONFIG", "STATUS_DIR", "TERMINATION_LOG", "WHEN",
                                            "WAIT_TIMEOUT", "HEARTBEAT_STALE_SECONDS",
                                            "FIRST_HEARTBEAT_SECONDS")}
# Kubernetes injects <SERVICE>_PORT... and <SERVICE>_SERVICE_HOST for services in the namespace.
_SERVICE_LINK = re.compile(r"_(PORT|SERVICE_HOST|SERVICE_PORT)(_.*)?$")

_TOP_LEVEL = {"catalog", "dag", "run_log_store", "executor", "secrets", "experiment_tracker"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def run_prefix(prefix: str, run_id: str) -> str:
    return f"{prefix}/{run_id}/" if prefix else f"{run_id}/"


def _suggest(name: str, valid: list[str]) -> str:
    import difflib  # here, not at the top: only a misspelt key needs it (start-up time)

    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _coerce(spec: KeySpec, value: Any, source: str) -> Any:
    """Turn a raw value into the key's type; text from the environment or a flag is parsed."""
    textual = isinstance(value, str) and not source.startswith("file")
    where = f"(from {source})"
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        if textual and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{spec.name}: expected a boolean (true/false), got "
                          f"{_type_name(value)} {_show(value)} {where}")
    if spec.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif textual and re.fullmatch(r"\s*[+-]?\d{1,12}\s*", value):
            number = int(value)
        else:
            raise ConfigError(f"{spec.name}: expected an integer, got {_type_name(value)} "
                              f"{_show(value)} {where}")
        if spec.minimum is not None and number < spec.minimum or \
                spec.maximum is not None and number > spec.maximum:
            raise ConfigError(f"{spec.name}: {number} is out of range "
                              f"{spec.minimum}..{spec.maximum} {where}")
        return number
    if spec.kind == "list":
        if any(isinstance(v, str) and not _is_utf8(v)
               for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{spec.name}: is not valid UTF-8 text {where}")
        if textual:
            items = [item.strip() for item in value.split(",")]
            return tuple(item for item in items if item)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"{spec.name}: expected a list of strings, got {_type_name(value)} "
                          f"{where}")
    if not isinstance(value, str):
        raise ConfigError(f"{spec.name}: expected a string, got {_type_name(value)} "
                          f"{_show(value)} {where}")
    if "\x00" in value:
        raise ConfigError(f"{spec.name}: contains a NUL character {where}")
    if not _is_utf8(value):
        raise ConfigError(f"{spec.name}: is not valid UTF-8 text {where}")
    if spec.kind == "choice" and value not in spec.choices:
        shown = ", ".join(repr(c) for c in spec.choices)
        raise ConfigError(f"{spec.name}: {_show(value)} is not one of {shown} {where}"
                          f"{_suggest(value, list(spec.choices))}")
    return value


def _is_utf8(value: str) -> bool:
    """False for undecodable bytes (surrogate escapes), which no S3 key or log can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value: Any) -> str:
    from catalog_agent.logs import clip

    return clip(repr(value), 60)  # scrubbed before it is cut: never half a secret


def _check_keys(found: Mapping[Any, Any], allowed: list[str], where: str) -> None:
    for key in found:
        if not isinstance(key, str) or key not in allowed:
            raise ConfigError(f"unknown key {_show(key)} in {where}"
                              f"{_suggest(str(key), allowed)}")


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        return {}  # an empty file: nothing to parse (and no YAML parser to load)
    import yaml  # imported here: a run configured by environment alone never pays for it

    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{line}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top, "
                          f"got {_type_name(document)}")
    return document


def _layers_from_file(document: Mapping[str, Any], path: str, step: str
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (catalog config, step entry) values of the file, every key checked for typos."""
    _check_keys(document, sorted(_TOP_LEVEL), f"config file {path}")
    catalog = document.get("catalog") or {}
    if not isinstance(catalog, dict):
        raise ConfigError(f"catalog: expected a mapping, got {_type_name(catalog)} "
                          f"(from file {path})")
    _check_keys(catalog, ["config", "type"], f"catalog (file {path})")
    catalog_values: dict[str, Any] = {}
    if "type" in catalog:
        catalog_values["type"] = catalog["type"]
    config = catalog.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"catalog.config: expected a mapping, got {_type_name(config)} "
                          f"(from file {path})")
    _check_keys(config, [k for k, s in KEYS.items() if CATALOG in s.where and k != "type"],
                f"catalog.config (file {path})")
    catalog_values.update(config)

    dag = document.get("dag") or {}
    steps = dag.get("steps") if isinstance(dag, dict) else None
    if dag and not isinstance(steps, dict):
        raise ConfigError(f"dag.steps: expected a mapping of step names (from file {path})")
    step_keys = [k for k, s in KEYS.items() if STEP in s.where]
    step_values: dict[str, Any] = {}
    for name, entry in (steps or {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"dag.steps.{name}: expected a mapping (from file {path})")
        step_catalog = entry.get("catalog")
        if step_catalog is None:
            continue
        if not isinstance(step_catalog, dict):
            raise ConfigError(f"dag.steps.{name}.catalog: expected a mapping (from file {path})")
        _check_keys(step_catalog, step_keys, f"dag.steps.{name}.catalog (file {path})")
        if str(name) == step:
            step_values = {k: v for k, v in step_catalog.items() if v is not None}
    return catalog_values, step_values


def _check_env(environ: Mapping[str, str]) -> None:
    known = {spec.env for spec in KEYS.values()} | OTHER_ENV
    for name in environ:
        if name.startswith(ENV_PREFIX) and name not in known and not _SERVICE_LINK.search(name):
            raise ConfigError(f"unknown environment variable {name}"
                              f"{_suggest(name, sorted(known))}")


def validate_name(what: str, value: str, source: str) -> None:
    """Refuse a run id or step name that could escape its place in a key."""
    if not value:
        raise ConfigError(f"{what} is empty (from {source})")
    if len(value) > 128:
        raise ConfigError(f"{what} is longer than 128 characters (from {source})")
    if _UNSAFE_NAME.search(value) or value in {".", ".."} or ".." in value:
        raise ConfigError(f"{what} {_show(value)} must not contain '/', '\\', '..' or control "
                          f"characters (from {source})")


def _normalise_prefix(prefix: str, source: str) -> str:
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    segments = stripped.split("/")
    if any(seg in {"", ".", ".."} for seg in segments) or "\\" in stripped:
        raise ConfigError(f"prefix {_show(prefix)} has an empty, '.' or '..' segment or a "
                          f"backslash (from {source})")
    return stripped


def load(*, config_path: str | None = None, flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration of one invocation.

    ``config_path`` is the ``--config`` flag; without it CATALOG_AGENT_CONFIG, then the
    default path, which may be absent (configuration by environment alone).
    """
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    _check_env(environ)
    unknown = set(flags) - set(KEYS)
    if unknown:
        raise ConfigError(f"unknown flag key {sorted(unknown)[0]}")

    if config_path:
        path, explicit = config_path, "--config"
    elif environ.get(ENV_PREFIX + "CONFIG"):
        path, explicit = environ[ENV_PREFIX + "CONFIG"], ENV_PREFIX + "CONFIG"
    else:
        path, explicit = DEFAULT_CONFIG_PATH, ""
    if not explicit and not os.path.exists(path):
        document: dict[str, Any] = {}
    else:
        document = _read_file(path)

    # The step must be known before the file's step entry can be chosen.
    step_raw = flags.get("step", environ.get(KEYS["step"].env, ""))
    catalog_values, step_values = _layers_from_file(document, path, str(step_raw))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, spec in KEYS.items():
        if name in flags:
            raw, source = flags[name], f"flag {spec.flag_name}"
        elif spec.env in environ:
            raw, source = environ[spec.env], f"variable {spec.env}"
        elif name in step_values:
            raw, source = step_values[name], f"file {path}, dag.steps.{step_raw}.catalog"
        elif name in catalog_values and catalog_values[name] is not None:
            where = "catalog.type" if name == "type" else "catalog.config"
            raw, source = catalog_values[name], f"file {path}, {where}"
        elif fallback := next((v for v in spec.fallback_env if environ.get(v)), None):
            raw, source = environ[fallback], f"variable {fallback}"
        else:
            sources[name] = "default"
            continue
        values[name] = _coerce(spec, raw, source)
        sources[name] = source

    if "prefix" in values:
        values["prefix"] = _normalise_prefix(values["prefix"], sources["prefix"])
    for name in ("run_id", "step"):
        if name in values and values[name] != "":
            validate_name(name.replace("_", " "), values[name], sources[name])
        elif name in values:
            raise ConfigError(f"{name.replace('_', ' ')} is empty (from {sources[name]})")
    run_log_store = None
    if document.get("run_log_store") is not None:  # magnus's section: read only when there
        from catalog_agent.runlog import parse_settings

        run_log_store = parse_settings(document["run_log_store"], f"file {path}")
    config = Config(**values, sources=sources, run_log_store=run_log_store)
    _cross_check(config)
    return config


def _cross_check(config: Config) -> None:
    src = config.sources
    if config.type == "s3" and not config.s3_bucket:
        raise ConfigError("s3_bucket is required for a catalog of type s3 (set catalog.config."
                          "s3_bucket, CATALOG_AGENT_S3_BUCKET or --s3-bucket)")
    if config.sse_kms_key_id and config.server_side_encryption != "aws:kms":
        raise ConfigError(f"sse_kms_key_id is set (from {src['sse_kms_key_id']}) but "
                          f"server_side_encryption is not 'aws:kms'")
    if config.ca_bundle and not os.path.isfile(config.ca_bundle):
        raise ConfigError(f"ca_bundle {config.ca_bundle} is not a file "
                          f"(from {src['ca_bundle']})")
    for name in ("endpoint_url", "sts_endpoint_url"):
        url = getattr(config, name)
        if url and not re.match(r"^https?://[^\s/]+", url):
            raise ConfigError(f"{name}: expected an http(s) URL (from {src[name]})")
    if not config.compute_data_folder:
        raise ConfigError(f"compute_data_folder is empty (from {src['compute_data_folder']})")
    if config.layout == "magnus":
        magnus_folder(config.compute_data_folder, src["compute_data_folder"])


def require_run(config: Config, *, step: bool = False) -> None:
    """Commands that touch a run need its id; put also needs the step's name."""
    if not config.run_id:
        raise ConfigError("run id is required: set --run-id or CATALOG_AGENT_RUN_ID")
    if step and not config.step:
        raise ConfigError("step name is required: set --step or CATALOG_AGENT_STEP")


def describe(config: Config) -> list[tuple[str, str, str]]:
    """Rows of (key, value, source) for ``catalog-agent config``; secrets never shown."""
    rows = []
    for name in KEYS:
        value = getattr(config, name)
        if isinstance(value, tuple):
            shown = ",".join(value)
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        if name in {"endpoint_url", "sts_endpoint_url"}:
            shown = redact_url(shown)
        rows.append((name, shown, config.sources.get(name, "default")))
    return rows


def redact_url(url: str) -> str:
    """Hide user:password@ in a URL."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", url)
