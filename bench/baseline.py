"""An earlier commit of the agent, run beside the current code in the same benchmark.

The commit's tree is extracted once (``git archive``) into ``bench/.baseline/<sha>/`` (git-ignored)
and reused while present. It runs with the benchmark's own interpreter and libraries: the same
``.venv/bin/catalog-agent`` launcher as the current code, with ``PYTHONPATH`` pointing at the
extracted tree, so that only the agent's code differs between the two. (``git archive`` rather
than ``git worktree add``: nothing is registered in the shared repository, and a half-written
tree is never reused, since the folder appears only complete.)
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).parent / ".baseline"
REPOSITORY = Path(__file__).parent.parent
ENTRY_POINT = "catalog_agent.cli:main"


class BaselineError(Exception):
    """The baseline commit cannot be prepared or does not import."""


@dataclass(frozen=True)
class Baseline:
    ref: str  # as given, e.g. "aa8d515"
    sha: str
    tree: Path
    command: list[str]  # argv prefix that starts this agent

    @property
    def tool(self) -> str:
        return f"catalog-agent@{self.ref}"

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.tree)}


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, check=True)
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode(errors="replace").strip().splitlines()
        raise BaselineError(f"git {' '.join(args)}: {message[-1] if message else exc}") from None
    return out.stdout.decode().strip()


def _extract(sha: str, tree: Path) -> None:
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=REPOSITORY,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(partial, filter="data")
    partial.rename(tree)


def _command(tree: Path) -> list[str]:
    """The venv's launcher when the commit declares the same entry point, else ``-m``."""
    launcher = Path(sys.executable).parent / "catalog-agent"
    try:
        scripts = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        scripts = {}
    if scripts.get("catalog-agent") == ENTRY_POINT and launcher.exists():
        return [str(launcher)]
    return [sys.executable, "-m", "catalog_agent"]


def prepare(ref: str, work: Path) -> Baseline:
    """Extract ``ref`` (once) and check that the interpreter imports the agent from it."""
    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") if ref else ""
    except BaselineError:
        sha = ""
    if not sha:
        raise BaselineError(f"--baseline {ref!r} is not a commit of {REPOSITORY}")
    tree = FOLDER / sha[:12]
    if not tree.is_dir():
        print(f"extracting {ref} ({sha[:12]}) into {tree}", flush=True)
        _extract(sha, tree)
    baseline = Baseline(ref, sha, tree, _command(tree))
    # Run from the scratch folder, as the tools are: `python -m` would put the working
    # directory (perhaps this repository) ahead of PYTHONPATH.
    probe = subprocess.run(
        [sys.executable, "-c", "import catalog_agent.cli, catalog_agent; print(catalog_agent.__file__)"],
        cwd=work, env={**os.environ, **baseline.env()}, capture_output=True, text=True)
    where = probe.stdout.strip()
    if probe.returncode != 0 or not Path(where).resolve().is_relative_to(tree.resolve()):
        detail = probe.stderr.strip().splitlines()[-1:] or [where]
        raise BaselineError(f"the agent at {ref} does not import from {tree}: {detail[0]}")
    return baseline
