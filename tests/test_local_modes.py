"""The modes of what get creates: a main container of another uid must be able to use them.

In a pod the agent runs as uid 65532 and the step's image as root, uid 1000 or anything else;
the pod's fsGroup is the group they share, and Kubernetes marks a volume with fsGroup by the
setgid bit (an emptyDir is 02777, group fsGroup). The rule (docs/safety.md): in a folder with
the setgid bit, get makes folders 02775 and files 0664 (0775 executable); elsewhere 0755 and
0644 (0755). Played for real: the step is a shell run as uid 1000 with only the shared group.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Agent

FS_GROUP = 4242
STEP_UID = 1000


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder any uid may walk into (pytest's own base folder is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="catalog-agent-modes-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def as_step(cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run as the step would: another uid, with the pod's fsGroup among its groups."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("acting as another uid needs root and setpriv (util-linux)")
    return subprocess.run(["setpriv", f"--reuid={STEP_UID}", f"--regid={STEP_UID}",
                           f"--groups={FS_GROUP}", "sh", "-c", script], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def get_into(offline_agent: Agent, catalog: Path, into: Path) -> None:
    """Put a few files into a folder catalog, then get them into ``into`` under umask 077:
    the modes must not depend on the agent's umask."""
    out = catalog.parent / "out"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "a.csv").write_text("a\n")
    (out / "raw" / "run.sh").write_text("#!/bin/sh\n")
    (out / "raw" / "run.sh").chmod(0o755)
    env = {"CATALOG_AGENT_TYPE": "file-system", "CATALOG_AGENT_CATALOG_LOCATION": str(catalog)}
    ran = offline_agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                        str(out), env=env)
    assert ran.code == 0, ran.output
    done = subprocess.run([sys.executable, "-m", "catalog_agent", "get", "**", "--run-id", "r",
                           "--compute-data-folder", str(into)], cwd=offline_agent.cwd,
                          env={**offline_agent.env, **env}, capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: os.umask(0o077))
    assert done.returncode == 0, done.stderr


def modes(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid)
            for p in sorted([root, *root.rglob("*")])}


def test_in_a_volume_shared_by_group_the_step_can_write_what_get_made(
        offline_agent: Agent, tmp_path: Path, world: Path) -> None:
    """A step that gets data/** and then writes data/raw/clean.csv got EACCES: get made
    data/raw 0755 for its own uid."""
    volume = world / "volume"
    volume.mkdir()
    os.chown(volume, -1, FS_GROUP)
    volume.chmod(0o2777)  # an emptyDir with fsGroup
    get_into(offline_agent, tmp_path / "catalog", volume / "data")
    assert modes(volume / "data") == {
        ".": (0o2775, FS_GROUP), "raw": (0o2775, FS_GROUP), "raw/a.csv": (0o664, FS_GROUP),
        "raw/run.sh": (0o775, FS_GROUP)}
    step = as_step(volume, "echo clean > data/raw/clean.csv && echo more >> data/raw/a.csv && "
                           "mkdir data/raw/new && mv data/raw/run.sh data/run.sh")
    assert step.returncode == 0, step.stderr
    assert (volume / "data" / "raw" / "a.csv").read_text() == "a\nmore\n"


def test_elsewhere_get_keeps_what_it_makes_to_its_own_uid(
        offline_agent: Agent, tmp_path: Path, world: Path) -> None:
    folder = world / "plain"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    get_into(offline_agent, tmp_path / "catalog", folder / "data")
    assert {k: m for k, (m, _) in modes(folder / "data").items()} == {
        ".": 0o755, "raw": 0o755, "raw/a.csv": 0o644, "raw/run.sh": 0o755}
    step = as_step(folder, "echo clean > data/raw/clean.csv")
    assert step.returncode != 0 and "Permission denied" in step.stderr
