"""podman for the tests: is it usable here, the Debian base image, the agent image, the pod runner.

Shared by the image tests, the pod runner tests and the chart tests. No Docker engine and no
registry exist on these machines, so the base image is made with debootstrap
(scripts/build-base-image) and passed to the Dockerfile as BASE_IMAGE. The flags that work in
an unprivileged container: vfs storage, runc, cgroupfs, host network for builds.

Builds are cached by content: the agent image carries a label with the hash of its build context
(the files .dockerignore admits) and of the base image; a session reuses the image when the
label matches and rebuilds it otherwise (about a minute). Each built image is committed as one
layer over the base (``--layers=false``): with the vfs driver every intermediate layer is a full
copy of the root file system, which made a layered build five times slower.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("TEST_CATALOG_AGENT_BASE_IMAGE", "localhost/debian-py:bookworm")
AGENT_IMAGE = os.environ.get("TEST_CATALOG_AGENT_IMAGE", "localhost/catalog-agent:test")
CONTEXT_LABEL = "io.catalog-agent.test.context-sha256"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
IN_CI = os.environ.get("CI", "").lower() == "true"

PODMAN = ["podman", "--storage-driver=vfs", "--runtime=runc", "--cgroup-manager=cgroupfs"]
# Without these, `podman run` fails here with "setrlimit RLIMIT_NOFILE: Operation not permitted".
RUN_FLAGS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096", "--pull=never"]
# Files of the build context: what .dockerignore admits (kept in step with it by a test).
CONTEXT_FILES = ["Dockerfile", "pyproject.toml", "entrypoint", "requirements.lock",
                 "requirements-build.lock"]
CONTEXT_TREES = ["catalog_agent"]


class PodmanUnavailable(RuntimeError):
    """podman cannot build or run containers on this machine (the message says why)."""


def podman(*args: str, check: bool = True, timeout: float = 600,
           input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run one podman command with this machine's flags; raise with its stderr when it fails."""
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                          input=input.decode() if input is not None else None)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}... failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return done


@functools.cache
def podman_problem() -> str | None:
    """Why podman cannot run containers here, or None when it can (checked once a session)."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/setup.d/10-podman.sh installs it as root)"
    if shutil.which("runc") is None and not os.access("/usr/sbin/runc", os.X_OK):
        return "runc is not installed (scripts/setup.d/10-podman.sh installs it as root)"
    if os.geteuid() != 0:
        return "the image tests need root (podman with the vfs driver, debootstrap)"
    try:
        podman("info", "--format", "{{.Store.GraphDriverName}}", timeout=120)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        return f"podman cannot run here: {exc}"
    return None


def require_podman() -> None:
    """Skip the calling test when podman cannot run (a failure under CI=true, by conftest)."""
    problem = podman_problem()
    if problem:
        pytest.skip(problem)


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def image_id(tag: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def image_label(tag: str, label: str) -> str:
    out = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', tag,
                 check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


@dataclass(frozen=True)
class Built:
    """An image the session can use, and what building it cost (0 when it was cached)."""

    tag: str
    seconds: float
    cached: bool


@functools.cache
def build_base_image() -> Built:
    """localhost/debian-py:bookworm from Debian's packages; skipped when it already exists."""
    if image_exists(BASE_IMAGE):
        return Built(BASE_IMAGE, 0.0, True)
    started = time.monotonic()
    done = subprocess.run([str(ROOT / "scripts" / "build-base-image")], capture_output=True,
                          text=True, timeout=1200,
                          env={**os.environ, "BASE_IMAGE_TAG": BASE_IMAGE})
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-base-image failed:\n{done.stderr[-3000:]}")
    return Built(BASE_IMAGE, time.monotonic() - started, False)


def context_digest(base_id: str) -> str:
    """SHA-256 over the build context's files (names and bytes) and the base image's id."""
    digest = hashlib.sha256(base_id.encode())
    paths = [ROOT / name for name in CONTEXT_FILES]
    for tree in CONTEXT_TREES:
        paths += [p for p in sorted((ROOT / tree).rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for path in paths:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


def package_version() -> str:
    namespace: dict[str, str] = {}
    exec((ROOT / "catalog_agent" / "__init__.py").read_text(), namespace)  # noqa: S102
    return namespace["__version__"]


@functools.cache
def build_agent_image(tag: str = AGENT_IMAGE) -> Built:
    """The agent image from the Dockerfile over the Debian base; reused when its context is unchanged."""
    base = build_base_image()
    digest = context_digest(image_id(base.tag))
    if image_exists(tag) and image_label(tag, CONTEXT_LABEL) == digest:
        return Built(tag, 0.0, True)
    previous = image_id(tag) if image_exists(tag) else ""
    started = time.monotonic()
    podman("build", "--layers=false", "--network=host", "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
           "--build-arg", f"BASE_IMAGE={base.tag}",
           "--build-arg", f"VERSION={package_version()}",
           "--build-arg", f"SOURCE={ROOT}",
           "--label", f"{CONTEXT_LABEL}={digest}",
           "-t", tag, str(ROOT), timeout=1800)
    seconds = time.monotonic() - started
    if previous and previous != image_id(tag):
        # The replaced image is garbage now; with vfs it holds a full root file system copy.
        podman("rmi", previous, check=False)
    remove_stale_images()
    return Built(tag, seconds, False)


def remove_stale_images() -> None:
    """Untagged agent images left by earlier or concurrent sessions (in use ones stay)."""
    stale = podman("images", "--quiet", "--filter", "dangling=true", "--filter",
                   f"label={CONTEXT_LABEL}", check=False).stdout.split()
    for image in dict.fromkeys(stale):
        podman("rmi", image, check=False)


def run_image(image: str, *args: str, entrypoint: Sequence[str] | None = None,
              user: str | None = None, read_only: bool = True,
              volumes: Sequence[tuple[str | Path, str]] = (), env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``podman run --rm`` the way a locked-down pod would: read-only root, no /tmp, host network."""
    command = ["run", "--rm", *RUN_FLAGS, "--network=host"]
    if read_only:
        command += ["--read-only", "--read-only-tmpfs=false"]
    if user is not None:
        command += ["--user", user]
    if entrypoint is not None:
        command += ["--entrypoint", _json_list(entrypoint)]
    for source, target in volumes:
        command += ["-v", f"{source}:{target}"]
    for key, value in (env or {}).items():
        command += ["-e", f"{key}={value}"]
    return podman(*command, image, *args, check=False, timeout=timeout)


def _json_list(items: Sequence[str]) -> str:
    import json

    return json.dumps(list(items))


@pytest.fixture(scope="session")
def agent_image() -> Iterator[Built]:
    """The agent image, built once per session (skips with the reason when podman cannot run)."""
    require_podman()
    built = build_agent_image()
    if not built.cached:
        print(f"\nbuilt {built.tag} in {built.seconds:.0f} s", file=sys.stderr)
    yield built


@pytest.fixture(scope="session")
def base_image() -> Built:
    """The Debian base image alone (with /bin/sh and python3): for pod runner tests."""
    require_podman()
    return build_base_image()
