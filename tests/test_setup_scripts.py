"""scripts/setup.d: the Debian-package helper, run as a fresh machine runs it.

scripts/bootstrap runs `bash scripts/setup.d/<step>.sh` from the repository's root; the steps
source debian-packages.bash. apt-get and id are replaced by recording fakes on PATH, so the
tests see exactly which apt-get commands a step would run, as root and not, without installing
anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "scripts" / "setup.d" / "debian-packages.bash"


def fake_bin(folder: Path, *, uid: int, keep_path: bool = True,
             apt_fails: str = "") -> dict[str, str]:
    """A PATH whose apt-get records its arguments (one line per call) and whose id says uid.
    apt_fails: the apt-get commands (a shell pattern, e.g. "update|install") that exit 100, as
    apt-get does when a mirror is unreachable or a package unknown."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "apt-get.log"
    fail = f'case "$1" in {apt_fails}) exit 100;; esac\n' if apt_fails else ""
    (folder / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n{fail}')
    (folder / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for tool in ("apt-get", "id"):
        (folder / tool).chmod(0o755)
    if not keep_path:  # only what the steps themselves need, so that no tool is found on PATH
        for tool in ("dirname", "basename", "sha256sum", "cut"):
            (folder / tool).symlink_to(f"/usr/bin/{tool}")
    path = f"{folder}:{os.environ['PATH']}" if keep_path else str(folder)
    return {**os.environ, "PATH": path}


def apt_calls(folder: Path) -> list[str]:
    log = folder / "apt-get.log"
    return log.read_text().splitlines() if log.exists() else []


def run_bash(script: str | Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def helper_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "step.sh"
    script.write_text(f"set -euo pipefail\nsource {HELPER}\n{body}\n")
    return script


def tree(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under folder (symlinks not followed) with its mode, size and mtime."""
    found = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent, name)
            st = path.lstat()
            found[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def test_every_step_only_checks_on_a_machine_that_has_everything(tmp_path: Path) -> None:
    """The bootstrap's loop, as it runs after a first bootstrap: nothing installed, no installer
    even started, nothing under .tools touched, nothing said about installing on either stream.

    Its precondition is that scripts/bootstrap has run in this checkout: in CI it has (.ci/run
    runs scripts/test, which bootstraps before pytest). Every installer the steps use (apt-get,
    npm, the Python that makes magnus's venv) is a recording fake that fails, so a checkout that
    was never bootstrapped fails this test, saying so, instead of installing during it (a step
    may still remove what it found out of date, as it would in bootstrap)."""
    fake = tmp_path / "bin"
    env = fake_bin(fake, uid=0)
    installers = tmp_path / "installers.log"
    for tool in ("npm", "python"):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {installers}\nexit 1\n')
        (fake / tool).chmod(0o755)
    env["PYTHON"] = str(fake / "python")  # 40-magnus.sh's "$PYTHON" -m venv
    tools = ROOT / ".tools"
    before = tree(tools)
    loop = 'set -e; for step in scripts/setup.d/*.sh; do bash "$step"; done'  # as scripts/bootstrap
    done = subprocess.run(["/bin/bash", "-c", loop], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    started = apt_calls(fake) + (installers.read_text().splitlines() if installers.exists() else [])
    assert done.returncode == 0 and started == [], (
        f"a step started installing {started} (exit {done.returncode}): run scripts/bootstrap "
        f"first (CI does), or a step does not recognise what it installed\n{done.stderr}")
    for stream in (done.stdout, done.stderr):
        assert "install" not in stream.lower(), stream
    assert tree(tools) == before


def test_missing_packages_are_installed_with_one_update_and_one_install(tmp_path: Path) -> None:
    (tmp_path / "lib" / "x86" / "faketime").mkdir(parents=True)
    (tmp_path / "lib" / "x86" / "faketime" / "lib.so").write_text("")
    fake = tmp_path / "bin"
    script = helper_script(tmp_path, f"""
want first-missing no-such-command-here /no/such/path
want present-by-command sh
want present-by-glob no-such-command-here '{tmp_path}/lib/*/faketime/lib.so'
want second-missing '{tmp_path}/lib/*/nothing/lib.so'
install_wanted "the tests that need them will skip"
echo "after: ${{#_wanted_missing[@]}} missing"
""")
    done = run_bash(script, fake_bin(fake, uid=0))
    assert done.returncode == 0, done.stderr
    assert apt_calls(fake) == ["update -qq", "install -y -qq first-missing second-missing"]
    assert "step.sh: installing first-missing second-missing" in done.stderr
    assert "after: 0 missing" in done.stdout


def test_not_root_names_the_missing_packages_and_installs_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    script = helper_script(tmp_path, """
want missing-one no-such-command-here
install_wanted "the image tests will skip (fail under CI=true)" || { echo skipped; exit 0; }
echo "not reached"
""")
    done = run_bash(script, fake_bin(fake, uid=1000))
    assert done.returncode == 0, done.stderr
    assert apt_calls(fake) == []
    assert done.stdout.split() == ["skipped"]
    assert "step.sh: missing missing-one and not root: the image tests will skip " \
           "(fail under CI=true)" in done.stderr


def test_nothing_missing_runs_no_apt_get_even_as_root(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    script = helper_script(tmp_path, 'want shell sh bash\ninstall_wanted "never said"')
    done = run_bash(script, fake_bin(fake, uid=0))
    assert done.returncode == 0 and done.stderr == ""
    assert apt_calls(fake) == []


@pytest.mark.parametrize("failing, command", [
    ("update", "apt-get update -qq"),
    ("install", "apt-get install -y -qq missing-one missing-two"),
])
def test_a_failing_apt_get_returns_2_and_says_which_command(tmp_path: Path, failing: str,
                                                            command: str) -> None:
    """Called left of `||`, as the steps call it, where bash ignores `set -e`."""
    fake = tmp_path / "bin"
    script = helper_script(tmp_path, """
want missing-one no-such-command-here
want missing-two no-such-command-here
install_wanted "never said" || { echo "returned $?"; exit 0; }
echo "returned 0"
""")
    done = run_bash(script, fake_bin(fake, uid=0, apt_fails=failing))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["returned 2"]
    assert f"step.sh: could not install missing-one missing-two: {command} failed (exit 100)" \
        in done.stderr.splitlines()
    assert apt_calls(fake) == ["update -qq", "install -y -qq missing-one missing-two"][
        :1 if failing == "update" else 2]


STEPS_WITH_PACKAGES = sorted(step.name for step in (ROOT / "scripts" / "setup.d").glob("*.sh")
                             if "install_wanted" in step.read_text())


@pytest.mark.parametrize("step", STEPS_WITH_PACKAGES)
def test_a_step_fails_when_apt_get_fails(tmp_path: Path, step: str) -> None:
    """A fresh machine whose apt-get fails (exit 100): the step exits non-zero, so
    scripts/bootstrap (`set -e`, `bash "$step"`) stops there, and names what it could not install.

    The step runs as bootstrap runs it, from a copy of the repository's setup files (so that
    .tools, installed or not, does not matter), with a PATH where none of its tools is found and a
    compgen that finds no file (the helper's test of the absolute paths that prove a package), so
    that every package it wants is missing, as on a fresh machine."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts" / "setup.d", repo / "scripts" / "setup.d")
    shutil.copytree(ROOT / "tests" / "mermaid", repo / "tests" / "mermaid")
    fake = tmp_path / "bin"
    env = fake_bin(fake, uid=0, keep_path=False, apt_fails="update|install")
    no_files = tmp_path / "no-files.bash"
    no_files.write_text("compgen() { return 1; }\n")
    env["BASH_ENV"] = str(no_files)
    packages = re.findall(r"^want (\S+)", (repo / "scripts" / "setup.d" / step).read_text(), re.M)
    done = subprocess.run(["/bin/bash", f"scripts/setup.d/{step}"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert f"{step}: could not install {' '.join(packages)}: apt-get update -qq failed " \
           "(exit 100)" in done.stderr.splitlines(), done.stderr
    assert apt_calls(fake) == ["update -qq"]
    assert done.stdout == ""


@pytest.mark.parametrize("step, installs", [("10-podman.sh", ["podman"])])
def test_a_real_step_installs_what_is_missing_from_a_bare_path(tmp_path: Path, step: str,
                                                               installs: list[str]) -> None:
    """The step as bootstrap runs it, with a PATH where podman is not found (runc and
    debootstrap are proven by their absolute paths, which this machine has after bootstrap)."""
    if not (Path("/usr/sbin/runc").exists() and Path("/usr/sbin/debootstrap").exists()):
        pytest.skip("runc or debootstrap not at /usr/sbin: run scripts/bootstrap")
    fake = tmp_path / "bin"
    done = run_bash(f"scripts/setup.d/{step}", fake_bin(fake, uid=0, keep_path=False))
    assert done.returncode == 0, done.stderr
    assert apt_calls(fake) == ["update -qq", f"install -y -qq {' '.join(installs)}"]
