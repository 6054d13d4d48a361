"""The agent installed the way the image installs it, in a throw-away venv: exactly
requirements.lock (hash-checked, ``--no-deps``) plus the project, nothing else. Then its CLI
talks https to SeaweedFS, with and without a CA, with no CA variable in its environment.

Why: the development venv holds every test dependency (certifi among them), so a module the
agent imports but the lock does not pin works in every other test and fails only in the image.
This test fails then too, in seconds rather than at an image build, and on any machine with
pip and the package index (pip's own cache is used; everything else lives in the test's tmp).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Ran, agent_env, log_events
from tls_support import TestPki, pki, tls_bucket, tls_s3_server, without_ca_variables  # noqa: F401

from catalog_agent import devserver

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["pyproject.toml", "entrypoint"]
PROJECT_TREES = ["catalog_agent"]


def _run(*args: str | Path, timeout: float = 600) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:4]))}... failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def locked_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv holding exactly requirements.lock and the project; its path."""
    folder = tmp_path_factory.mktemp("locked-venv")
    source = folder / "src"  # a copy: pip builds in the source tree, the checkout stays clean
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, source / name)
    for tree in PROJECT_TREES:
        shutil.copytree(ROOT / tree, source / tree,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (source / "README.md").write_text("")  # as in the Dockerfile: pyproject's readme
    venv = folder / "venv"
    started = time.monotonic()
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps",
         "--only-binary=:all:", "-r", ROOT / "requirements.lock")
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", source)
    print(f"\nlocked venv made in {time.monotonic() - started:.1f} s", file=sys.stderr)
    yield venv
    shutil.rmtree(folder, ignore_errors=True)


def test_locked_venv_holds_the_lock_and_the_project_only(locked_venv: Path) -> None:
    done = subprocess.run([str(locked_venv / "bin" / "python"), "-m", "pip", "list",
                           "--format=freeze"], capture_output=True, text=True, check=True)
    installed = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1]
                 for line in done.stdout.splitlines() if "==" in line}
    for tool in ("pip", "setuptools"):  # the venv's own installer, not the agent's
        installed.pop(tool, None)
    pins = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in re.findall(
        r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", (ROOT / "requirements.lock").read_text(), re.M)}
    assert pins
    assert installed.pop("catalog-agent", None), done.stdout
    assert installed == pins


def locked_cli(venv: Path, tmp_path: Path, server: devserver.SeaweedServer, bucket: str,
               *args: str, extra: dict[str, str] | None = None) -> Ran:
    """The venv's ``catalog-agent`` against the TLS server, with no CA variable and nothing
    of the development venv on its path."""
    env = without_ca_variables(agent_env(tmp_path, {
        "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "CATALOG_AGENT_ENDPOINT_URL": server.https_endpoint, "CATALOG_AGENT_S3_BUCKET": bucket,
        "CATALOG_AGENT_REGION": "us-east-1", "CATALOG_AGENT_ADDRESSING_STYLE": "path",
        "CATALOG_AGENT_RUN_ID": "run-1"}))
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra or {})
    done = subprocess.run([str(venv / "bin" / "catalog-agent"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return Ran(done.returncode, done.stdout, done.stderr)


def test_locked_venv_cli_talks_https_with_a_ca_or_unchecked_and_refuses_cleanly_without(
        locked_venv: Path, tls_s3_server: devserver.SeaweedServer, tls_bucket: str,  # noqa: F811
        pki: TestPki, tmp_path: Path) -> None:  # noqa: F811
    out, into = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    into.mkdir()
    files = {"a.txt": b"locked\n", "model/w.bin": os.urandom(200_000)}
    for relative, data in files.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(data)

    def cli(*args: str, **extra: str) -> Ran:
        return locked_cli(locked_venv, tmp_path, tls_s3_server, tls_bucket, *args, extra=extra)

    refused = cli("put", "**", "--step", "s", "--compute-data-folder", str(out))
    assert refused.code == 4, refused.output
    assert "Traceback" not in refused.output and "ModuleNotFoundError" not in refused.output
    errors = [e for e in log_events(refused.stderr) if e.get("level") == "error"]
    assert len(errors) == 1, refused.stderr
    assert errors[0]["event"].startswith(f"TLS certificate of {tls_s3_server.https_endpoint} not "
                                         f"trusted: unable to get local issuer certificate")

    put = cli("put", "**", "--step", "s", "--compute-data-folder", str(out),
              CATALOG_AGENT_CA_BUNDLE=str(pki.ca))
    assert put.code == 0, put.output
    get = cli("get", "**", "--compute-data-folder", str(into), AWS_CA_BUNDLE=str(pki.ca))
    assert get.code == 0, get.output
    for relative, data in files.items():
        assert hashlib.sha256((into / relative).read_bytes()).digest() == \
            hashlib.sha256(data).digest(), relative

    unchecked = tmp_path / "unchecked"
    get = cli("get", "**", "--compute-data-folder", str(unchecked), CATALOG_AGENT_VERIFY_TLS="false")
    assert get.code == 0, get.output
    assert [e["event"] for e in log_events(get.stderr) if e.get("level") == "warning"] == \
        ["TLS certificates are not checked"], get.stderr
    for relative, data in files.items():
        assert (unchecked / relative).read_bytes() == data, relative
