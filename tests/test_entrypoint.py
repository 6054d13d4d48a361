"""The entrypoint wrapper, run for real under every shell it promises: dash, bash, busybox ash.

Each test runs the top-level ``entrypoint`` file as a process with a temporary status folder and
checks what a put container would see there: the exit code file and the heartbeat.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "entrypoint"
PACKAGED = ROOT / "catalog_agent" / "entrypoint"


def _shell(name: str) -> list[str]:
    if name == "busybox":
        path = shutil.which("busybox")
        if not path:
            pytest.skip("busybox is not installed (scripts/setup.d/20-shells.sh installs it)")
        return [path, "sh"]
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (scripts/setup.d/20-shells.sh installs it)")
    return [path]


SHELLS = ["dash", "bash", "busybox"]


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> list[str]:
    return _shell(request.param)


def _env(status: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOG_AGENT_")}
    env["CATALOG_AGENT_STATUS_DIR"] = str(status)
    return env


def _start(shell: list[str], status: Path, *command: str, **popen: object
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([*shell, str(WRAPPER), "--", *command], env=_env(status), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _wait_for(predicate, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_packaged_copy_is_identical_to_the_top_level_wrapper() -> None:
    assert PACKAGED.read_bytes() == WRAPPER.read_bytes(), \
        "catalog_agent/entrypoint must be a copy of ./entrypoint: cp entrypoint catalog_agent/"
    assert WRAPPER.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_is_recorded_and_returned(shell: list[str], tmp_path: Path, code: int) -> None:
    status = tmp_path / "status"
    done = subprocess.run([*shell, str(WRAPPER), "--", "sh", "-c", f"exit {code}"],
                          env=_env(status), capture_output=True, text=True, timeout=30)
    assert done.returncode == code, done.stderr
    assert (status / "exit-code").read_bytes() == f"{code}\n".encode()
    assert (status / "heartbeat").exists()
    assert sorted(p.name for p in status.iterdir()) == ["exit-code", "heartbeat"]


def test_arguments_stdin_and_output_pass_through(shell: list[str], tmp_path: Path) -> None:
    status = tmp_path / "status"
    script = 'printf "%s|" "$@"; read line; printf "[%s]" "$line"; echo err >&2'
    done = subprocess.run([*shell, str(WRAPPER), "--", "sh", "-c", script, "sh", "a b", "",
                           "*", "--"], env=_env(status), capture_output=True, text=True,
                          input="from stdin\n", timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a b||*|--|[from stdin]"
    assert done.stderr == "err\n"


def test_command_not_found_records_127(shell: list[str], tmp_path: Path) -> None:
    status = tmp_path / "status"
    done = subprocess.run([*shell, str(WRAPPER), "--", str(tmp_path / "no-such-command")],
                          env=_env(status), capture_output=True, text=True, timeout=30)
    assert done.returncode == 127
    assert (status / "exit-code").read_text() == "127\n"


def test_sigterm_is_forwarded_and_the_command_decides_the_code(shell: list[str],
                                                                tmp_path: Path) -> None:
    status = tmp_path / "status"
    ready = tmp_path / "ready"
    handler = (f"import signal, sys, time, pathlib\n"
               f"signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
               f"pathlib.Path({str(ready)!r}).touch()\n"
               f"time.sleep(60)\n")
    proc = _start(shell, status, sys.executable, "-c", handler)
    _wait_for(ready.exists)
    proc.send_signal(signal.SIGTERM)  # to the wrapper only, as Kubernetes does to PID 1
    assert proc.wait(timeout=20) == 7
    assert (status / "exit-code").read_text() == "7\n"


def test_sigterm_kills_a_command_without_handler_with_143(shell: list[str],
                                                         tmp_path: Path) -> None:
    status = tmp_path / "status"
    proc = _start(shell, status, "sleep", "60")
    _wait_for((status / "heartbeat").exists)
    time.sleep(0.3)  # the command has started
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert (status / "exit-code").read_text() == "143\n"


def test_sigint_reaches_a_command_with_its_own_handler(shell: list[str], tmp_path: Path) -> None:
    status = tmp_path / "status"
    ready = tmp_path / "ready"
    handler = (f"import signal, sys, time, pathlib\n"
               f"signal.signal(signal.SIGINT, lambda *_: sys.exit(9))\n"
               f"pathlib.Path({str(ready)!r}).touch()\n"
               f"time.sleep(60)\n")
    proc = _start(shell, status, sys.executable, "-c", handler)
    _wait_for(ready.exists)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 9
    assert (status / "exit-code").read_text() == "9\n"


def test_heartbeat_is_refreshed_while_the_command_runs(shell: list[str], tmp_path: Path) -> None:
    status = tmp_path / "status"
    proc = _start(shell, status, "sleep", "5")
    _wait_for((status / "heartbeat").exists)
    first = (status / "heartbeat").stat().st_mtime_ns
    _wait_for(lambda: (status / "heartbeat").stat().st_mtime_ns != first, timeout=10)
    assert not (status / "exit-code").exists()  # still running
    assert proc.wait(timeout=20) == 0
    assert (status / "exit-code").read_text() == "0\n"


def test_heartbeat_stops_when_the_wrapper_is_killed(shell: list[str], tmp_path: Path) -> None:
    status = tmp_path / "status"
    proc = _start(shell, status, "sleep", "30", start_new_session=True)
    _wait_for((status / "heartbeat").exists)
    os.killpg(proc.pid, signal.SIGKILL)  # a cgroup kill: wrapper, loop and command together
    proc.wait(timeout=10)
    time.sleep(0.5)
    before = (status / "heartbeat").stat().st_mtime_ns
    time.sleep(4.5)  # more than two beats
    assert (status / "heartbeat").stat().st_mtime_ns == before
    assert not (status / "exit-code").exists()


def test_an_earlier_exit_code_is_removed_before_the_command_runs(shell: list[str],
                                                                  tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.mkdir()
    (status / "exit-code").write_text("0\n")
    done = subprocess.run([*shell, str(WRAPPER), "--", "sh", "-c",
                           f'test ! -e "{status}/exit-code" || exit 42; exit 5'],
                          env=_env(status), capture_output=True, text=True, timeout=30)
    assert done.returncode == 5
    assert (status / "exit-code").read_text() == "5\n"


def test_without_a_command_it_prints_usage_and_records_2(shell: list[str],
                                                        tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.mkdir()
    done = subprocess.run([*shell, str(WRAPPER)], env=_env(status), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "usage: entrypoint -- CMD" in done.stderr
    assert (status / "exit-code").read_text() == "2\n"


def test_an_unwritable_status_folder_is_refused_without_running(shell: list[str],
                                                               tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    marker = tmp_path / "ran"
    done = subprocess.run([*shell, str(WRAPPER), "--", "touch", str(marker)],
                          env=_env(blocker / "status"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert "is not writable" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not marker.exists()


def test_executed_directly_through_its_shebang(tmp_path: Path) -> None:
    status = tmp_path / "status"
    done = subprocess.run([str(WRAPPER), "--", "sh", "-c", "exit 4"], env=_env(status),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 4
    assert (status / "exit-code").read_text() == "4\n"


def test_install_entrypoint_copies_a_runnable_wrapper(offline_agent, tmp_path: Path) -> None:
    target = tmp_path / "shared" / "bin"
    ran = offline_agent("install-entrypoint", str(target))
    assert ran.code == 0, ran.output
    installed = target / "entrypoint"
    assert installed.read_bytes() == WRAPPER.read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert [p.name for p in target.iterdir()] == ["entrypoint"]
    status = tmp_path / "status"
    done = subprocess.run([str(installed), "--", "sh", "-c", "exit 6"], env=_env(status),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 6
    assert (status / "exit-code").read_text() == "6\n"
    # Again over the existing file (an init container restarted).
    assert offline_agent("install-entrypoint", str(target)).code == 0
    assert installed.read_bytes() == WRAPPER.read_bytes()


def test_install_entrypoint_into_an_unwritable_place_is_one_line_exit_2(offline_agent,
                                                                         tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ran = offline_agent("install-entrypoint", str(blocker / "bin"))
    assert ran.code == 2
    assert "cannot write" in ran.stderr and "Traceback" not in ran.stderr
    assert ran.stderr.strip().count("\n") == 0
