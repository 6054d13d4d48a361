"""The pod lifecycle end to end: real processes sharing a temporary folder, against SeaweedFS.

A "pod" here is the entrypoint wrapper running a main command (a Python script that writes the
step's outputs) and the real agent CLI as the put container, sharing a status folder and a data
folder, exactly as two containers share emptyDir volumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "entrypoint"
RUN, STEP = "r1", "train"


class Pod:
    """Paths and processes of one simulated pod."""

    def __init__(self, agent: Any, tmp_path: Path) -> None:
        self.agent = agent
        self.status = tmp_path / "status"
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.termination = tmp_path / "termination-log"
        self.env = {**agent.env, "CATALOG_AGENT_STATUS_DIR": str(self.status),
                    "CATALOG_AGENT_RUN_ID": RUN, "CATALOG_AGENT_STEP": STEP,
                    "CATALOG_AGENT_COMPUTE_DATA_FOLDER": str(self.data)}

    def main(self, code: int, *, delay: float = 1.0, sigterm_exit: int | None = None,
             new_session: bool = False) -> subprocess.Popen[str]:
        """The wrapper running a step that waits ``delay`` s, writes out.txt, exits ``code``."""
        script = (
            "import pathlib, signal, sys, time\n"
            f"data = pathlib.Path({str(self.data)!r})\n"
            f"if {sigterm_exit!r} is not None:\n"
            "    def stop(*_):\n"
            "        (data / 'checkpoint.txt').write_text('saved on SIGTERM')\n"
            f"        sys.exit({sigterm_exit!r})\n"
            "    signal.signal(signal.SIGTERM, stop)\n"
            "(data / 'started').write_text('')\n"
            f"time.sleep({delay})\n"
            "(data / 'out.txt').write_text('result of the step')\n"
            f"sys.exit({code})\n")
        return subprocess.Popen(["sh", str(WRAPPER), "--", sys.executable, "-c", script],
                                env=self.env, cwd=self.agent.cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=new_session)

    def put(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "catalog_agent", "put", *args],
                                env={**self.env, **(env or {})}, cwd=self.agent.cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def message(self) -> dict[str, Any]:
        raw = self.termination.read_bytes()
        assert len(raw) <= 4096
        return json.loads(raw)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    """Wait for the process; one still running after ``timeout`` is killed (and fails)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s; output:\n{out}{err}") from None
    return proc.returncode, out + getattr(proc, "seen", "") + err


def until_event(proc: subprocess.Popen[str], name: str, timeout: float = 60) -> None:
    """Read the agent's log until event ``name``: then it is waiting, its handlers installed."""
    deadline = time.monotonic() + timeout
    seen = getattr(proc, "seen", "")
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if line.startswith("{") and json.loads(line).get("event") == name:
            proc.seen = seen  # type: ignore[attr-defined]
            return
    raise AssertionError(f"no {name!r} event; log so far:\n{seen}")


def events(output: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def wait_for(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


MANIFEST = f"{RUN}/.catalog-agent/manifests/{STEP}.json"
ERRORS = f"{RUN}/.catalog-agent/errors/{STEP}.json"
GRACE_SECONDS = 30  # terminationGracePeriodSeconds, by default: then the kubelet kills


@pytest.fixture
def pod(agent: Any, tmp_path: Path) -> Pod:
    return Pod(agent, tmp_path)


def test_wait_puts_after_the_main_command_succeeds(pod: Pod, s3: Any, bucket: str) -> None:
    put = pod.put("--wait", "**")  # started first, as a container beside the main one
    main = pod.main(0, delay=2.0)
    assert main.wait(timeout=60) == 0
    code, output = finish(put)
    assert code == 0, output
    assert s3.get_object(Bucket=bucket, Key=f"{RUN}/out.txt")["Body"].read() == \
        b"result of the step"
    assert MANIFEST in keys(s3, bucket)
    assert ERRORS not in keys(s3, bucket)
    message = pod.message()
    assert message["command"] == "put" and message["exit_code"] == 0
    assert message["decision"] == "put" and message["main_exit_code"] == 0
    assert message["mode"] == "wait" and message["files"] == 2  # out.txt and started


def test_wait_skips_when_the_main_command_fails(pod: Pod, s3: Any, bucket: str) -> None:
    put = pod.put("--wait", "**")
    main = pod.main(3)
    assert main.wait(timeout=60) == 3
    code, output = finish(put)
    assert code == 0, output
    assert keys(s3, bucket) == []
    skipped = [e for e in events(output) if e["event"] == "put.skipped"]
    assert len(skipped) == 1 and "exited with 3" in skipped[0]["reason"]
    assert skipped[0]["main_exit_code"] == 3 and skipped[0]["when"] == "success"
    message = pod.message()
    assert message["decision"] == "skipped" and message["exit_code"] == 0
    assert "when=success" in message["reason"]


@pytest.mark.parametrize("when,main_code,puts,source", [
    ("success", 0, True, "flag"),
    ("success", 1, False, "default"),
    ("failure", 0, False, "env"),
    ("failure", 1, True, "file"),
    ("always", 0, True, "env"),
    ("always", 1, True, "flag"),
])
def test_the_three_policies(pod: Pod, s3: Any, bucket: str, tmp_path: Path, when: str,
                            main_code: int, puts: bool, source: str) -> None:
    args, env = ["--wait", "**"], {}
    if source == "flag":
        args += ["--when", when]
    elif source == "env":
        env["CATALOG_AGENT_WHEN"] = when
    elif source == "file":
        config = tmp_path / "config.yaml"
        config.write_text(f"catalog:\n  type: s3\n  config:\n    s3_bucket: {bucket}\n"
                          f"dag:\n  steps:\n    {STEP}:\n      catalog:\n        when: {when}\n")
        env["CATALOG_AGENT_CONFIG"] = str(config)
    put = pod.put(*args, env=env)
    main = pod.main(main_code, delay=0.2)
    assert main.wait(timeout=60) == main_code
    code, output = finish(put)
    assert code == 0, output
    assert (f"{RUN}/out.txt" in keys(s3, bucket)) is puts
    assert (MANIFEST in keys(s3, bucket)) is puts
    message = pod.message()
    assert message["when"] == when and message["main_exit_code"] == main_code
    assert message["decision"] == ("put" if puts else "skipped")


def test_a_misspelt_policy_is_one_line_exit_2(pod: Pod) -> None:
    code, output = finish(pod.put("--wait", "--when", "sucess", "**"))
    assert code == 2
    assert "did you mean 'success'" in output and "Traceback" not in output


def assert_main_lost(pod: Pod, s3: Any, bucket: str, code: int, output: str, words: str
                     ) -> dict[str, Any]:
    """Exit 8, nothing put, the error document and the termination message say why."""
    assert code == 8, output
    assert "Traceback" not in output
    assert keys(s3, bucket) == [ERRORS], "nothing but the error document may be written"
    doc = json.loads(s3.get_object(Bucket=bucket, Key=ERRORS)["Body"].read())
    assert doc["exit_code"] == 8 and doc["kind"] == "main-lost" and doc["mode"] == "wait"
    assert doc["main_exit_code"] is None and words in doc["error"]
    message = pod.message()
    assert message["exit_code"] == 8 and words in message["error"]
    assert "decision" not in message  # no put and no skip was decided
    return message


@pytest.mark.parametrize("when", ["success", "failure", "always"])
def test_stale_heartbeat_is_exit_8_and_puts_nothing_whatever_when(pod: Pod, s3: Any,
                                                                  bucket: str,
                                                                  when: str) -> None:
    """The step (or only its heartbeat) died without an exit code: never a quiet exit 0, and
    never a put of files the step may still be writing."""
    main = pod.main(0, delay=600, new_session=True)
    put = pod.put("--wait", "--when", when, "--heartbeat-stale-seconds", "3", "**")
    wait_for((pod.data / "started").exists)
    wait_for((pod.status / "heartbeat").exists)
    os.killpg(main.pid, signal.SIGKILL)  # OOM: the wrapper and its command die together
    main.wait(timeout=10)
    killed_at = time.monotonic()
    code, output = finish(put, timeout=60)
    print(f"put concluded {time.monotonic() - killed_at:.1f} s after the SIGKILL")
    assert not (pod.status / "exit-code").exists()
    message = assert_main_lost(pod, s3, bucket, code, output, "heartbeat stale")
    assert message["when"] == when


@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_heartbeat_that_never_appears_ends_the_wait_with_exit_8(pod: Pod, s3: Any,
                                                                  bucket: str, tmp_path: Path,
                                                                  source: str) -> None:
    """The main container's status folder is not the put's (the volume is not mounted in
    main, so the wrapper refuses to run): no heartbeat ever comes, and the bound ends the
    wait instead of leaving the pod running for ever."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    env_main = {**pod.env, "CATALOG_AGENT_STATUS_DIR": str(blocked / "status")}
    main = subprocess.run(["sh", str(WRAPPER), "--", "true"], env=env_main,
                          capture_output=True, text=True, timeout=30)
    assert main.returncode == 2 and "not writable" in main.stderr
    args, env = ["--wait", "**"], {}
    if source == "flag":
        args += ["--first-heartbeat-seconds", "2"]
    else:
        env["CATALOG_AGENT_FIRST_HEARTBEAT_SECONDS"] = "2"
    started = time.monotonic()
    code, output = finish(pod.put(*args, env=env), timeout=60)
    assert time.monotonic() - started < 45
    assert_main_lost(pod, s3, bucket, code, output, "no heartbeat")
    assert "/bin/sh" in output  # the hint names the usual causes


def test_first_heartbeat_bound_is_validated_and_documented(pod: Pod) -> None:
    code, output = finish(pod.put("--wait", "--first-heartbeat-seconds", "soon", "**"))
    assert code == 2 and "first heartbeat seconds" in output
    code, output = finish(pod.put("--on-sigterm", "--first-heartbeat-seconds", "5", "**"))
    assert code == 2 and "applies only with --wait" in output
    help_text = subprocess.run([sys.executable, "-m", "catalog_agent", "put", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "CATALOG_AGENT_FIRST_HEARTBEAT_SECONDS" in help_text and "1800" in help_text


def test_sigterm_is_forwarded_to_the_main_command(pod: Pod, s3: Any, bucket: str) -> None:
    put = pod.put("--wait", "**")
    main = pod.main(1, delay=600, sigterm_exit=0)  # saves a checkpoint on SIGTERM, exits 0
    wait_for((pod.data / "started").exists)
    main.send_signal(signal.SIGTERM)  # to the wrapper (PID 1 of the container)
    assert main.wait(timeout=30) == 0
    assert (pod.status / "exit-code").read_text() == "0\n"
    code, output = finish(put)
    assert code == 0, output
    assert s3.get_object(Bucket=bucket, Key=f"{RUN}/checkpoint.txt")["Body"].read() == \
        b"saved on SIGTERM"


def test_wait_timeout_puts_nothing_exits_7_and_records_an_error(pod: Pod, s3: Any,
                                                                bucket: str) -> None:
    started = time.monotonic()
    code, output = finish(pod.put("--wait", "--wait-timeout", "2", "**"))
    assert code == 7, output
    assert time.monotonic() - started < 60
    assert "no exit code" in output and "Traceback" not in output
    assert "status folder missing" in output  # no wrapper ever ran: say so while waiting
    assert keys(s3, bucket) == [ERRORS]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=ERRORS)["Body"].read())
    assert doc["exit_code"] == 7 and doc["mode"] == "wait" and doc["step"] == STEP
    assert doc["main_exit_code"] is None
    message = pod.message()
    assert message["exit_code"] == 7 and "wait-timeout" in message["error"]


def test_sigterm_while_waiting_stops_with_143_and_puts_nothing(pod: Pod, s3: Any,
                                                              bucket: str) -> None:
    put = pod.put("--wait", "**")
    until_event(put, "waiting")
    put.send_signal(signal.SIGTERM)
    code, output = finish(put, timeout=30)
    assert code == 143, output
    assert MANIFEST not in keys(s3, bucket)
    assert pod.message()["exit_code"] == 143


def test_native_sidecar_puts_on_sigterm_after_the_main_container(pod: Pod, s3: Any,
                                                                 bucket: str) -> None:
    sidecar = pod.put("--on-sigterm", "**")
    until_event(sidecar, "waiting for SIGTERM")
    main = pod.main(0, delay=0.5)
    assert main.wait(timeout=60) == 0
    time.sleep(1.5)
    assert sidecar.poll() is None, "the sidecar must wait for SIGTERM, not for the exit code"
    assert keys(s3, bucket) == []
    sidecar.send_signal(signal.SIGTERM)  # what the kubelet sends once the main container ended
    code, output = finish(sidecar)
    assert code == 0, output
    assert f"{RUN}/out.txt" in keys(s3, bucket) and MANIFEST in keys(s3, bucket)
    message = pod.message()
    assert message["mode"] == "on-sigterm" and message["decision"] == "put"


def test_native_sidecar_skips_when_the_main_command_failed(pod: Pod, s3: Any,
                                                           bucket: str) -> None:
    sidecar = pod.put("--on-sigterm", "**")
    until_event(sidecar, "waiting for SIGTERM")
    assert pod.main(4, delay=0.2).wait(timeout=60) == 4
    time.sleep(1.0)
    sidecar.send_signal(signal.SIGTERM)
    code, output = finish(sidecar)
    assert code == 0, output
    assert keys(s3, bucket) == []
    assert pod.message()["decision"] == "skipped"


def test_native_sidecar_without_an_exit_code_treats_the_step_as_failed(pod: Pod, s3: Any,
                                                                       bucket: str) -> None:
    (pod.data / "partial.txt").write_text("partial")
    sidecar = pod.put("--on-sigterm", "--when", "failure", "**")
    until_event(sidecar, "waiting for SIGTERM")
    sidecar.send_signal(signal.SIGTERM)
    code, output = finish(sidecar)
    assert code == 0, output
    message = pod.message()
    assert message["main_exit_code"] is None and "no exit code" in message["reason"]
    assert f"{RUN}/partial.txt" in keys(s3, bucket)


def test_native_sidecar_failed_put_writes_the_error_document(pod: Pod, s3: Any,
                                                             bucket: str) -> None:
    sidecar = pod.put("--on-sigterm", "no-such-file.txt")
    until_event(sidecar, "waiting for SIGTERM")
    assert pod.main(0, delay=0.2).wait(timeout=60) == 0
    time.sleep(1.0)
    sidecar.send_signal(signal.SIGTERM)
    code, output = finish(sidecar)
    assert code == 3, output  # a pattern matched nothing
    assert keys(s3, bucket) == [ERRORS]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=ERRORS)["Body"].read())
    assert doc["exit_code"] == 3 and doc["mode"] == "on-sigterm" and doc["kind"] == "no-match"
    assert doc["run_id"] == RUN and doc["main_exit_code"] == 0
    assert "no-such-file.txt" in doc["error"]
    message = pod.message()
    assert message["exit_code"] == 3 and "no-such-file.txt" in message["error"]
    assert message["mode"] == "on-sigterm" and message["main_exit_code"] == 0


def test_a_bug_in_a_sidecar_put_is_recorded_like_any_failed_put(pod: Pod, s3: Any, bucket: str,
                                                                  tmp_path: Path) -> None:
    """An internal error (exit 1) left no error document: a native sidecar's exit code fails
    no Job, so the failed put went unseen. The bug is played by a sitecustomize that breaks
    commands.put in the agent's process."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import catalog_agent.commands as commands\n"
        "def broken(*args, **kwargs):\n"
        "    return {}['a key nobody set']\n"
        "commands.put = broken\n")
    sidecar = pod.put("--on-sigterm", "out.txt", env={"PYTHONPATH": str(site)})
    until_event(sidecar, "waiting for SIGTERM")
    assert pod.main(0, delay=0.2).wait(timeout=60) == 0
    sidecar.send_signal(signal.SIGTERM)
    code, output = finish(sidecar)
    assert code == 1, output
    assert "Traceback" not in output
    (error,) = [e for e in events(output) if e["level"] == "error"]
    assert error["event"] == "internal error: KeyError: 'a key nobody set'"
    assert keys(s3, bucket) == [ERRORS]
    doc = json.loads(s3.get_object(Bucket=bucket, Key=ERRORS)["Body"].read())
    assert (doc["exit_code"], doc["kind"], doc["mode"]) == (1, "internal", "on-sigterm")
    assert doc["error"] == error["event"] and doc["main_exit_code"] == 0
    message = pod.message()
    assert (message["exit_code"], message["mode"], message["decision"]) == (1, "on-sigterm",
                                                                           "put")
    assert message["error"] == error["event"]


def test_lifecycle_options_need_a_lifecycle_mode(pod: Pod) -> None:
    code, output = finish(pod.put("--wait-timeout", "5", "**"))
    assert code == 2 and "applies only with --wait" in output
    code, output = finish(pod.put("--wait", "--on-sigterm", "**"))
    assert code == 2 and "exclude each other" in output
    code, output = finish(pod.put("--wait", "--heartbeat-stale-seconds", "0", "**"))
    assert code == 2 and "heartbeat stale seconds" in output


def test_a_put_without_patterns_fails_before_waiting(pod: Pod) -> None:
    started = time.monotonic()
    code, output = finish(pod.put("--wait"), timeout=30)
    assert code == 2 and "nothing to put" in output
    assert time.monotonic() - started < 30


def test_termination_message_stays_under_4_kib_with_a_huge_error() -> None:
    from catalog_agent.record import termination_message

    raw = termination_message({"command": "put", "exit_code": 5, "files": 1, "bytes": 2,
                               "skipped": 0, "error": "x" * 20000})
    assert len(raw) <= 4096
    parsed = json.loads(raw)
    assert parsed["exit_code"] == 5 and parsed["error"].endswith("...")


# --- an exit-code file the step may have planted ------------------------------------------------

def _limited_memory() -> None:
    """preexec for puts that read hostile files: an old agent reading /dev/zero for ever would
    otherwise take the whole machine's memory before failing."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _plant(status: Path, kind: str) -> str:
    """Put something other than the wrapper's work at <status>/exit-code; the words expected."""
    status.mkdir()
    target = status / "exit-code"
    if kind == "fifo":
        os.mkfifo(target)
        return "is a FIFO"
    if kind == "link-to-dev-zero":
        target.symlink_to("/dev/zero")
        return "is a symbolic link"
    if kind == "link-to-a-zero":
        (status.parent / "elsewhere").write_text("0\n")
        target.symlink_to(status.parent / "elsewhere")
        return "is a symbolic link"
    if kind == "huge":
        with open(target, "wb") as handle:
            handle.truncate(8 << 30)  # sparse: 8 GiB that take no disk
        return f"holds {8 << 30} bytes"
    if kind == "folder":
        target.mkdir()
        return "is a folder"
    text = {"garbage": "yes\n", "negative": "-1\n", "too-big": "256\n", "empty": "",
            "spaces": " 0 \n"}[kind]
    target.write_text(text)
    return f"holds {text!r}"


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero", "link-to-a-zero", "huge",
                                  "folder", "garbage", "negative", "too-big", "empty",
                                  "spaces"])
def test_an_exit_code_that_is_not_the_wrappers_counts_as_a_failed_step(
        pod: Pod, s3: Any, bucket: str, kind: str) -> None:
    """Never followed, never blocking, never read whole: the step counts as failed, with the
    reason, at once (well within --wait-timeout)."""
    words = _plant(pod.status, kind)
    (pod.data / "debug.log").write_text("what the step left")
    started = time.monotonic()
    put = subprocess.Popen([sys.executable, "-m", "catalog_agent", "put", "--wait", "--when",
                            "failure", "--wait-timeout", "30", "**"], env=pod.env,
                           cwd=pod.agent.cwd, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, preexec_fn=_limited_memory)
    code, output = finish(put, timeout=40)
    assert time.monotonic() - started < 25, "the put waited on the planted file"
    assert code == 0, output
    message = pod.message()
    assert message["main_exit_code"] is None and message["decision"] == "put"
    assert words in message["reason"] and "not an exit code" in message["reason"]
    assert f"{RUN}/debug.log" in keys(s3, bucket)  # when=failure: the failed step's files


def test_a_planted_exit_code_with_when_success_is_skipped_not_put(pod: Pod, s3: Any,
                                                                  bucket: str) -> None:
    _plant(pod.status, "link-to-a-zero")  # would read "0" if the link were followed
    (pod.data / "out.txt").write_text("x")
    code, output = finish(pod.put("--wait", "--wait-timeout", "30", "**"), timeout=40)
    assert code == 0, output
    assert keys(s3, bucket) == []
    message = pod.message()
    assert message["decision"] == "skipped" and "symbolic link" in message["reason"]


def test_sigterm_still_stops_a_wait_next_to_a_planted_heartbeat_fifo(pod: Pod, s3: Any,
                                                                     bucket: str) -> None:
    pod.status.mkdir()
    os.mkfifo(pod.status / "heartbeat")
    put = pod.put("--wait", "**")
    until_event(put, "waiting")
    time.sleep(1.0)  # a few polls of the FIFO
    put.send_signal(signal.SIGTERM)
    code, output = finish(put, timeout=30)
    assert code == 143, output
    assert MANIFEST not in keys(s3, bucket)


# --- a native sidecar told to put within milliseconds of its start ----------------------------

def _sidecar(pod: Pod, *args: str, env: dict[str, str] | None = None,
             block_sigterm: bool = False) -> subprocess.Popen[str]:
    """put --on-sigterm, optionally started with SIGTERM blocked: a SIGTERM sent right after
    the exec then waits, pending, through the interpreter's start until the agent lets it in;
    so it arrives before any import, every time (where an unblocked one would race them)."""
    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    return subprocess.Popen([sys.executable, "-m", "catalog_agent", "put", "--on-sigterm",
                             *args], env={**pod.env, **(env or {})}, cwd=pod.agent.cwd,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=block if block_sigterm else None)


def _caught_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.parametrize("when,main_code,puts", [("failure", 3, True), ("success", 3, False),
                                                 ("success", 0, True)])
def test_native_sidecar_signalled_at_once_still_decides_and_puts(pod: Pod, s3: Any,
                                                                 bucket: str, when: str,
                                                                 main_code: int,
                                                                 puts: bool) -> None:
    """The main command failed (or succeeded) at once: the kubelet's SIGTERM reaches the
    sidecar right after its exec, before the CLI is even imported. Eight times each."""
    assert subprocess.run(["sh", str(WRAPPER), "--", "sh", "-c", f"exit {main_code}"],
                          env=pod.env, timeout=30).returncode == main_code
    (pod.data / "partial.txt").write_text("what the step wrote")
    for attempt in range(8):
        step = f"s{attempt}"
        sidecar = _sidecar(pod, "--when", when, "**", env={"CATALOG_AGENT_STEP": step},
                           block_sigterm=True)
        sidecar.send_signal(signal.SIGTERM)
        code, output = finish(sidecar, timeout=60)
        assert code == 0, output
        message = pod.message()
        assert message["mode"] == "on-sigterm" and message["main_exit_code"] == main_code
        assert message["decision"] == ("put" if puts else "skipped"), output
        manifest = f"{RUN}/.catalog-agent/manifests/{step}.json"
        assert (manifest in keys(s3, bucket)) is puts
        assert "signal received while starting" in output
    assert (f"{RUN}/partial.txt" in keys(s3, bucket)) is puts


def test_native_sidecar_signalled_at_once_records_a_failed_put(pod: Pod, s3: Any,
                                                               bucket: str) -> None:
    assert subprocess.run(["sh", str(WRAPPER), "--", "true"], env=pod.env,
                          timeout=30).returncode == 0
    for attempt in range(4):
        sidecar = _sidecar(pod, "no-such-file.txt", block_sigterm=True)
        sidecar.send_signal(signal.SIGTERM)
        code, output = finish(sidecar, timeout=60)
        assert code == 3, output
        doc = json.loads(s3.get_object(Bucket=bucket, Key=ERRORS)["Body"].read())
        assert doc["mode"] == "on-sigterm" and doc["exit_code"] == 3
        assert doc["main_exit_code"] == 0
        assert pod.message()["exit_code"] == 3
        s3.delete_object(Bucket=bucket, Key=ERRORS)


def test_native_sidecar_signalled_as_soon_as_it_catches_sigterm(pod: Pod, s3: Any,
                                                                bucket: str) -> None:
    """Unblocked: SIGTERM sent the moment the process shows a SIGTERM handler (/proc SigCgt),
    i.e. right after the launcher installed it, while the CLI is still being imported."""
    assert subprocess.run(["sh", str(WRAPPER), "--", "true"], env=pod.env,
                          timeout=30).returncode == 0
    (pod.data / "out.txt").write_text("result")
    for attempt in range(6):
        step = f"u{attempt}"
        sidecar = _sidecar(pod, "**", env={"CATALOG_AGENT_STEP": step})
        deadline = time.monotonic() + 30
        while not _caught_signals(sidecar.pid) & (1 << (signal.SIGTERM - 1)):
            assert time.monotonic() < deadline and sidecar.poll() is None
        sidecar.send_signal(signal.SIGTERM)
        code, output = finish(sidecar, timeout=60)
        assert code == 0, output
        assert pod.message()["decision"] == "put"
        assert f"{RUN}/.catalog-agent/manifests/{step}.json" in keys(s3, bucket)


def test_the_signal_handlers_come_before_any_other_import() -> None:
    """The console script and `python -m catalog_agent` start in the launcher, which imports
    nothing but `signal` before its handlers are in place."""
    probe = ("import sys\n"
             "before = set(sys.modules)\n"
             "import catalog_agent.launcher as launcher\n"
             "print(sorted(set(sys.modules) - before))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout.replace("'", '"'))) <= {
        "catalog_agent", "catalog_agent.launcher", "signal"}
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["catalog-agent"] == "catalog_agent.launcher:main"
    assert "catalog_agent.launcher" in (ROOT / "catalog_agent" / "__main__.py").read_text()
    assert (ROOT / "catalog_agent" / "__init__.py").read_text().count("import") == 0


def test_early_signals_still_stop_the_commands_that_have_nothing_to_put(tmp_path: Path) -> None:
    """A SIGTERM before install-entrypoint has run: it stops with 143, as it did before the
    launcher recorded signals."""
    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    proc = subprocess.Popen([sys.executable, "-m", "catalog_agent", "install-entrypoint",
                             str(tmp_path / "bin")], preexec_fn=block, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.send_signal(signal.SIGTERM)
    code, output = finish(proc, timeout=60)
    assert code == 143, output
    assert not (tmp_path / "bin" / "entrypoint").exists()


# --- stopping cleanly on SIGTERM during a transfer ---

def _big_files(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        with open(folder / f"big{index}.bin", "wb") as handle:
            handle.write(os.urandom(1024 * 1024) * (size // (1024 * 1024)))


def test_sigterm_during_put_aborts_multipart_uploads_and_writes_no_manifest(
        pod: Pod, s3: Any, bucket: str) -> None:
    _big_files(pod.data, 3, 96 * 1024 * 1024)
    put = pod.put("**", env={"CATALOG_AGENT_CONCURRENCY": "1"})
    wait_for(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), timeout=120)
    put.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code, output = finish(put, timeout=120)
    stopped = time.monotonic() - signalled
    print(f"put stopped {stopped:.2f} s after SIGTERM")
    assert code == 143, output
    assert stopped < GRACE_SECONDS, output  # parts on the wire may finish first, not longer
    assert MANIFEST not in keys(s3, bucket)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for key in keys(s3, bucket):  # only whole objects (a small file finished before the signal)
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == \
            (pod.data / key[len(RUN) + 1:]).stat().st_size
    assert len(keys(s3, bucket)) < 3
    message = pod.message()
    assert message["exit_code"] == 143 and "stopped" in message["error"]
    # What moved before the stop: whole files only in "files" (none of the big ones finished).
    assert message["files"] == len(keys(s3, bucket)) and message["skipped"] == 0


def test_sigterm_during_get_leaves_no_partial_file(pod: Pod, agent: Any, s3: Any, bucket: str,
                                                   tmp_path: Path) -> None:
    source = tmp_path / "source"
    _big_files(source, 3, 64 * 1024 * 1024)
    ran = agent("put", "**", "--run-id", RUN, "--step", "up", "--compute-data-folder",
                str(source))
    assert ran.code == 0, ran.output
    target = tmp_path / "target"
    get = subprocess.Popen([sys.executable, "-m", "catalog_agent", "get", "**", "--run-id", RUN,
                            "--compute-data-folder", str(target)],
                           env={**agent.env, "CATALOG_AGENT_CONCURRENCY": "1"}, cwd=agent.cwd,
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: target.exists() and any(target.iterdir()), timeout=60)
    get.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code, output = finish(get, timeout=120)
    print(f"get stopped {time.monotonic() - signalled:.2f} s after SIGTERM")
    assert code == 143, output
    left = sorted(p.name for p in target.iterdir())
    # Only complete, verified files may be at their final names; nothing temporary remains.
    for name in left:
        assert name.startswith("big") and name.endswith(".bin"), left
        assert (target / name).read_bytes() == (source / name).read_bytes()
    assert len(left) < 3
    message = pod.message()
    assert message["command"] == "get" and message["exit_code"] == 143
    assert message["files"] == len(left)


def test_hashing_before_a_put_stops_on_sigterm(tmp_path: Path) -> None:
    """Hashing a large file must not outlast the grace period: it stops between blocks."""
    import threading

    from catalog_agent.errors import Interrupted
    from catalog_agent.hashing import digest_file

    path = tmp_path / "big"
    path.write_bytes(b"x" * 3_000_000)
    cancel = threading.Event()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert digest_file(fd, 3_000_000, part_size=None, cancel=cancel).size == 3_000_000
        cancel.set()
        with pytest.raises(Interrupted):
            digest_file(fd, 3_000_000, part_size=None, cancel=cancel)
    finally:
        os.close(fd)
