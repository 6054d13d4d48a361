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
from typing import Iterator

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


def _as_a_container_starts_it() -> None:
    """Default dispositions, as a container runtime gives PID 1. A harness started with nohup,
    or as a background job of a script, ignores SIGINT (and SIGHUP, SIGQUIT); a shell that
    inherits an ignored signal may not trap it (POSIX), so the wrapper could not forward it."""
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def _start(shell: list[str], status: Path, *command: str, **popen: object
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([*shell, str(WRAPPER), "--", *command], env=_env(status), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_as_a_container_starts_it, **popen)


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


# --- a heartbeat that keeps going while the wrapper lives ----------------------------------------

def _parent_of(pid: int) -> int | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat_line.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent_of(int(entry)) == pid:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def _heartbeat_process(wrapper: int, command: list[str]) -> int:
    """The wrapper's child that is not the command (whose argv is ``command``)."""
    found: list[int] = []

    def one() -> bool:
        found[:] = [p for p in _children(wrapper) if _cmdline(p) not in ([], command)]
        return len(found) == 1

    _wait_for(one)
    return found[0]


def _sleep_of(heartbeat: int) -> int:
    found: list[int] = []

    def one() -> bool:
        found[:] = [p for p in _children(heartbeat) if _cmdline(p)[:1] == ["sleep"]]
        return len(found) == 1

    _wait_for(one)
    return found[0]


def _beats(status: Path, count: int, timeout: float = 20.0) -> None:
    """Wait until the heartbeat's mtime has changed ``count`` more times."""
    last = (status / "heartbeat").stat().st_mtime_ns
    for _ in range(count):
        def changed() -> bool:
            nonlocal last
            now = (status / "heartbeat").stat().st_mtime_ns
            if now != last:
                last = now
                return True
            return False
        _wait_for(changed, timeout=timeout)


def test_heartbeat_goes_on_when_its_sleep_is_killed(shell: list[str], tmp_path: Path) -> None:
    """A step that kills `sleep` processes (pkill sleep, kill -9) must not stop the heartbeat."""
    status = tmp_path / "status"
    proc = _start(shell, status, "sleep", "30", start_new_session=True)
    try:
        _wait_for((status / "heartbeat").exists)
        beat = _heartbeat_process(proc.pid, ["sleep", "30"])
        for signum in (signal.SIGKILL, signal.SIGTERM):
            os.kill(_sleep_of(beat), signum)
            _beats(status, 2)  # two more beats: the loop went on
        assert proc.poll() is None and not (status / "exit-code").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_heartbeat_goes_on_after_a_signal_to_the_whole_process_group(shell: list[str],
                                                                      tmp_path: Path) -> None:
    """`kill -TERM 0` from a step that handles SIGTERM itself: the step and the wrapper live on,
    and so must the heartbeat (and its sleep)."""
    status = tmp_path / "status"
    ready = tmp_path / "ready"
    script = (f"import os, pathlib, signal, time\n"
              f"signal.signal(signal.SIGTERM, lambda *_: None)\n"
              f"time.sleep(0.5)\n"
              f"os.kill(0, signal.SIGTERM)\n"  # the whole process group, as `kill -TERM 0`
              f"pathlib.Path({str(ready)!r}).touch()\n"
              f"time.sleep(5)\n")
    proc = _start(shell, status, sys.executable, "-c", script, start_new_session=True)
    try:
        _wait_for(ready.exists)
        _beats(status, 2)
        assert proc.poll() is None and not (status / "exit-code").exists()
        assert proc.wait(timeout=30) == 0
        assert (status / "exit-code").read_text() == "0\n"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_heartbeat_stops_when_only_the_wrapper_is_killed(shell: list[str],
                                                          tmp_path: Path) -> None:
    """The heartbeat follows the wrapper, not the command: its recovery must not outlive it."""
    status = tmp_path / "status"
    proc = _start(shell, status, "sleep", "30", start_new_session=True)
    try:
        _wait_for((status / "heartbeat").exists)
        beat = _heartbeat_process(proc.pid, ["sleep", "30"])
        proc.kill()  # the wrapper alone
        proc.wait(timeout=10)
        _wait_for(lambda: _cmdline(beat) == [], timeout=10)  # the loop ended by itself
        before = (status / "heartbeat").stat().st_mtime_ns
        time.sleep(2.5)
        assert (status / "heartbeat").stat().st_mtime_ns == before
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_sleep_that_cannot_run_ends_the_heartbeat_instead_of_spinning(shell: list[str],
                                                                       tmp_path: Path) -> None:
    """No `sleep` on PATH: a bounded number of quick beats, then the loop stops (put then
    reports a stale heartbeat) instead of burning a core while the step runs."""
    status = tmp_path / "status"
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("mkdir", "rm", "mv"):
        (tools / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {**_env(status), "PATH": str(tools)}
    proc = subprocess.Popen([*shell, str(WRAPPER), "--", sys.executable, "-c",
                             "import time; time.sleep(4)"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait_for((status / "heartbeat").exists)
        time.sleep(1.5)
        beats = int((status / "heartbeat").read_text() or "0")
        assert 1 <= beats <= 52
        before = (status / "heartbeat").stat().st_mtime_ns
        time.sleep(1.0)
        assert (status / "heartbeat").stat().st_mtime_ns == before, "still spinning"
        assert proc.wait(timeout=20) == 0
        assert (status / "exit-code").read_text() == "0\n"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _pids_cgroup_root() -> Path:
    """Where the pids controller is mounted (cgroup v1 ``pids``, or v2 with pids enabled)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point, rest = fields[4], fields[fields.index("-") + 1:]
        fs_type, options = rest[0], rest[2] if len(rest) > 2 else ""
        if fs_type == "cgroup" and "pids" in options.split(","):
            return Path(mount_point)
        if fs_type == "cgroup2" and "pids" in (Path(mount_point) / "cgroup.controllers"
                                               ).read_text().split():
            return Path(mount_point)
    pytest.skip("no cgroup pids controller is mounted here")


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A fresh pids cgroup (removed afterwards): the kernel's pids limit, as a pod has."""
    root = _pids_cgroup_root()
    group = root / f"catalog-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
        (group / "pids.max").write_text("max")
    except OSError as exc:
        pytest.skip(f"cannot create a pids cgroup under {root}: {exc} (needs root)")
    yield group
    deadline = time.monotonic() + 10
    while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)  # a last sleep of the killed loop may still run for a moment
    for pid in (group / "cgroup.procs").read_text().split():
        (root / "cgroup.procs").write_text(pid)
    group.rmdir()


def _limit_hits(group: Path) -> int:
    events = dict(line.split() for line in (group / "pids.events").read_text().splitlines())
    return int(events.get("max", "0"))


def test_heartbeat_survives_a_fork_that_fails_at_the_pids_limit(shell: list[str],
                                                              tmp_path: Path,
                                                              pids_cgroup: Path) -> None:
    """The loop alone is put at its pids limit while its sleep runs, so its next fork fails
    (dash and busybox exit on a failed fork; bash retries for a while); once a fork has been
    refused, the limit is lifted: the heartbeat must go on, for good."""
    status = tmp_path / "status"
    proc = _start(shell, status, "sleep", "30", start_new_session=True)
    try:
        _wait_for((status / "heartbeat").exists)
        beat = _heartbeat_process(proc.pid, ["sleep", "30"])
        _sleep_of(beat)  # the loop is sleeping: its sleep stays outside the group
        (pids_cgroup / "pids.max").write_text("1")
        (pids_cgroup / "cgroup.procs").write_text(str(beat))
        _wait_for(lambda: _limit_hits(pids_cgroup) > 0, timeout=10)  # a fork was refused
        (pids_cgroup / "pids.max").write_text("max")
        _beats(status, 3)
        assert proc.poll() is None and not (status / "exit-code").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
