"""Corrupt objects and full disks during get: a clear error, and no partial or wrong file.

Corruption: the object's bytes are changed on the server after the put (as bit rot, a buggy
tool or an attacker would). Disk full: the data folder is a 1 MiB tmpfs when mount works here
(root with CAP_SYS_ADMIN), and a file-size limit (RLIMIT_FSIZE) always.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import log_events

from catalog_agent.local import PART_SUFFIX


def put_files(agent, folder: Path, files: dict[str, bytes], run: str = "r") -> None:  # noqa: ANN001
    for relative, data in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    done = agent("put", "**", "--run-id", run, "--step", "s", "--compute-data-folder",
                 str(folder))
    assert done.code == 0, done.output[-2000:]


def error_events(stderr: str) -> list[dict]:
    return [e for e in log_events(stderr) if e.get("level") == "error"]


def assert_only_verified(folder: Path, expected: dict[str, bytes]) -> list[str]:
    """Every file under ``folder`` is one of ``expected``, whole; returns their paths."""
    found = []
    for path in folder.rglob("*") if folder.exists() else []:
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            assert not relative.endswith(PART_SUFFIX), f"temporary file left: {relative}"
            assert relative in expected, f"unexpected file {relative}"
            assert path.read_bytes() == expected[relative], f"wrong bytes in {relative}"
            found.append(relative)
    return found


def one_clear_error(ran, code: int, *words: str) -> str:  # noqa: ANN001
    assert ran.code == code, ran.output[-3000:]
    assert "Traceback" not in ran.output
    errors = error_events(ran.stderr)
    assert len(errors) == 1, ran.stderr[-3000:]
    message = errors[0]["event"]
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("how", ["same-size", "other-size", "metadata-rewritten-too"])
def test_object_changed_after_put_makes_get_exit_6_and_write_nothing(
        agent, s3, bucket, s3_server, tmp_path: Path, how: str) -> None:
    files = {"a.bin": os.urandom(5000), "b.bin": os.urandom(7000)}
    put_files(agent, tmp_path / "out", files)
    original = s3.head_object(Bucket=bucket, Key="r/a.bin")
    bad = bytearray(files["a.bin"])
    bad[1234] ^= 0x01
    if how == "other-size":
        bad += b"more"
    metadata = dict(original["Metadata"])
    if how == "metadata-rewritten-too":  # the manifest still holds the true hash
        metadata["sha256"] = hashlib.sha256(bad).hexdigest()
    s3.put_object(Bucket=bucket, Key="r/a.bin", Body=bytes(bad), Metadata=metadata)

    into = tmp_path / "in"
    ran = agent("get", "a.bin", "--run-id", "r", "--compute-data-folder", str(into))
    one_clear_error(ran, 6, "hash mismatch", "a.bin")
    assert assert_only_verified(into, {}) == []  # nothing at all was written

    # With other, sound files in the same get: the corrupt one never appears, the rest are whole.
    ran = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(into))
    one_clear_error(ran, 6, "hash mismatch")
    assert "a.bin" not in assert_only_verified(into, files)
    assert s3_server.secret_key not in ran.output + (tmp_path / "termination-log").read_text()


def test_large_object_changed_after_put_is_refused_too(agent, s3, bucket,
                                                       tmp_path: Path) -> None:
    """Objects above the multipart threshold take s3transfer's path: same verification."""
    data = os.urandom(20 * 1024 * 1024)
    put_files(agent, tmp_path / "out", {"big.bin": data})
    metadata = s3.head_object(Bucket=bucket, Key="r/big.bin")["Metadata"]
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key="r/big.bin", Body=bytes(bad), Metadata=metadata)
    into = tmp_path / "in"
    ran = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(into))
    one_clear_error(ran, 6, "hash mismatch", "big.bin")
    assert assert_only_verified(into, {}) == []


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def test_disk_full_during_get_is_a_clear_error_without_partial_files(agent, tmp_path: Path
                                                                     ) -> None:
    """A 1 MiB tmpfs; where mount is not allowed, a per-file size limit plays the full disk."""
    files = {f"f{i}.bin": os.urandom(300 * 1024) for i in range(8)}  # 2.4 MB into 1 MiB
    put_files(agent, tmp_path / "out", files)
    into = tmp_path / "in-tmpfs"
    mounted = _can_mount_tmpfs(into)
    try:
        done = _get(agent, into, "**", limit=None if mounted else 200 * 1024)
        assert done.returncode == 5, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        errors = error_events(done.stderr)
        reason = "No space left on device" if mounted else "File too large"
        assert len(errors) == 1 and reason in errors[0]["event"], done.stderr[-2000:]
        landed = assert_only_verified(into, files)
        assert len(landed) < len(files)
    finally:
        if mounted:
            subprocess.run(["umount", str(into)], check=True)


def _get(agent, into: Path, pattern: str, *, limit: int | None  # noqa: ANN001
         ) -> subprocess.CompletedProcess[str]:
    """Run get, with writes limited to ``limit`` bytes per file (SIGXFSZ ignored, as a shell
    would) when given: writes past it fail with EFBIG."""
    def limited() -> None:
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "catalog_agent", "get", pattern, "--run-id",
                           "r", "--compute-data-folder", str(into)], cwd=agent.cwd,
                          env={**agent.env, "CATALOG_AGENT_CONCURRENCY": "2"},
                          capture_output=True, text=True, timeout=300, preexec_fn=limited)


def test_file_size_limit_during_get_is_a_clear_error_without_partial_files(
        agent, tmp_path: Path) -> None:
    """RLIMIT_FSIZE: writes past the limit fail with EFBIG (SIGXFSZ ignored, as a shell would)."""
    files = {"small-1.bin": os.urandom(20_000), "small-2.bin": os.urandom(30_000),
             "too-big.bin": os.urandom(600_000), "huge.bin": os.urandom(18 * 1024 * 1024)}
    put_files(agent, tmp_path / "out", files)
    into = tmp_path / "in"
    for pattern in ("too-big.bin", "huge.bin", "**"):
        done = _get(agent, into, pattern, limit=256 * 1024)
        assert done.returncode == 5, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        errors = error_events(done.stderr)
        assert len(errors) == 1 and "File too large" in errors[0]["event"], done.stderr[-2000:]
        landed = assert_only_verified(into, files)
        assert "too-big.bin" not in landed and "huge.bin" not in landed
    leftovers = [p.name for p in into.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], f"hidden files left: {leftovers}"
