"""The package builds cleanly: no deprecation warning from the build backend, an SPDX licence,
the build lock inside [build-system] requires, and a ``--version`` that tells the truth.

The wheel is built twice, as users and the image build it: ``pip wheel`` with build isolation
(what ``pip install .`` does, setuptools from the index) and with the image's pinned build tools
(requirements-build.lock, ``--no-build-isolation``, as the Dockerfile's build stage).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from catalog_agent import __version__

ROOT = Path(__file__).resolve().parents[1]
WARNING = re.compile(r"deprecat|BuildBackendWarning|SetuptoolsWarning", re.I)


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args[:4]))} ... failed:\n{output[-4000:]}"
    return output


def _backend_output(output: str) -> list[str]:
    """The lines that are not pip's own notes about this machine's extra package folders."""
    return [line for line in output.splitlines() if "WARNING: Location" not in line]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what a build reads (pip builds in the source tree; the checkout stays clean)."""
    folder = tmp_path_factory.mktemp("packaging") / "src"
    folder.mkdir()
    for name in ("pyproject.toml", "README.md", "entrypoint"):
        shutil.copy2(ROOT / name, folder / name)
    shutil.copytree(ROOT / "catalog_agent", folder / "catalog_agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def _check_wheel(folder: Path) -> None:
    (wheel,) = folder.glob("catalog_agent-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines(), metadata[:1500]
    assert f"Version: {__version__}" in metadata.splitlines()


@pytest.mark.parametrize("how", ["isolated", "image-build-lock"])
def test_the_wheel_builds_without_a_deprecation_warning(source: Path, tmp_path: Path,
                                                        how: str) -> None:
    out = tmp_path / "wheels"
    verbose = "-v"  # the backend's own output (setuptools prints its warnings there)
    if how == "isolated":
        output = _run(sys.executable, "-m", "pip", "wheel", verbose, "--no-deps",
                      "--wheel-dir", out, source)
    else:
        _run(sys.executable, "-m", "venv", tmp_path / "build")
        pip = tmp_path / "build" / "bin" / "pip"
        _run(pip, "install", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
             "-r", ROOT / "requirements-build.lock")
        output = _run(pip, "wheel", verbose, "--no-deps", "--no-build-isolation",
                      "--wheel-dir", out, source)
    warnings = [line for line in _backend_output(output) if WARNING.search(line)]
    assert warnings == [], "\n".join(warnings)
    _check_wheel(out)


def test_the_build_lock_satisfies_the_build_system() -> None:
    """The image builds the wheel with the locked setuptools: it must be one pyproject allows."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements-build.lock")
                           .read_text(), re.M))
    for text in requires:
        requirement = Requirement(text)
        assert requirement.name in pins, f"{requirement.name} is not in requirements-build.lock"
        assert requirement.specifier.contains(pins[requirement.name]), \
            f"requirements-build.lock pins {requirement.name}=={pins[requirement.name]}, " \
            f"outside {requirement}: run scripts/lock-requirements"


def test_the_license_is_an_spdx_expression() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_version_option_prints_the_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "catalog_agent", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"catalog-agent, version {__version__}"
