"""Hostile entries in the data folder, hostile patterns and absurd manifests.

A step's data folder is written by the step's own code, which may be buggy or compromised: a
symlink or a hard link to the pod's service-account token must never reach the bucket, and a
FIFO must never block the agent. Runs against the session's SeaweedFS.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from conftest import log_events

TOKEN = b"eyJhbGciOi-pretend-service-account-token-0123456789"


def error_events(stderr: str) -> list[dict]:
    return [e for e in log_events(stderr) if e.get("level") in {"error", "warning"}]


def stored_keys(s3, bucket: str, prefix: str) -> set[str]:  # noqa: ANN001
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def stored_bytes(s3, bucket: str, keys: set[str]) -> bytes:  # noqa: ANN001
    return b"".join(s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(keys))


def make_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "token").write_bytes(TOKEN)
    return outside


def make_device(path: Path) -> bool:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
        return True
    except PermissionError:
        return False


def hostile_folder(tmp_path: Path) -> tuple[Path, list[socket.socket]]:
    """A data folder holding every kind of entry the agent must not read through."""
    outside = make_outside(tmp_path)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "good.txt").write_bytes(b"good\n")
    (out / "sub" / "also-good.txt").write_bytes(b"also good\n")
    os.symlink(outside / "token", out / "token-link")
    os.symlink(outside, out / "folder-link")
    os.symlink("good.txt", out / "inside-link")  # stays inside: put with its target's bytes
    os.symlink(tmp_path / "nowhere", out / "dangling")
    os.link(outside / "token", out / "sub" / "hard-token")
    os.mkfifo(out / "fifo")
    os.mkfifo(out / "sub" / "fifo2")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    try:
        os.chdir(out)  # a relative bind: AF_UNIX paths are limited to 108 bytes
        server.bind("sock")
        server.listen(1)
    finally:
        os.chdir(cwd)
    if not make_device(out / "device"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("cannot create a device file (CI runs as root)")
        pytest.skip("creating a device file needs root")
    return out, [server]


def test_put_skips_links_out_fifos_sockets_and_devices_without_blocking(
        agent, s3, bucket, s3_server, tmp_path: Path) -> None:
    out, keep = hostile_folder(tmp_path)
    ran = agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder", str(out),
                timeout=60)  # a read of a FIFO would block for ever: the timeout is the check
    assert ran.code == 0, ran.output[-3000:]
    keys = stored_keys(s3, bucket, "r/")
    data = {k for k in keys if "/.catalog-agent/" not in k}
    assert data == {"r/good.txt", "r/sub/also-good.txt", "r/inside-link"}
    assert TOKEN not in stored_bytes(s3, bucket, keys)
    manifest = json.loads(s3.get_object(Bucket=bucket,
                                        Key="r/.catalog-agent/manifests/s.json")["Body"].read())
    assert {f["name"] for f in manifest["files"]} == {"good.txt", "sub/also-good.txt",
                                                      "inside-link"}
    skipped = {e["path"]: e["reason"] for e in error_events(ran.stderr)
               if e["event"] == "skipped"}
    assert set(skipped) == {"token-link", "folder-link", "dangling", "sub/hard-token", "fifo",
                            "sub/fifo2", "sock", "device"}
    assert "symlink" in skipped["token-link"] and "hard link" in skipped["sub/hard-token"]
    assert "FIFO" in skipped["fifo"]
    assert s3_server.secret_key not in ran.output
    for sock in keep:
        sock.close()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_strict_links_makes_a_link_leaving_the_folder_exit_6_and_store_nothing(
        agent, s3, bucket, tmp_path: Path, kind: str) -> None:
    outside = make_outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.txt").write_bytes(b"good\n")
    os.mkfifo(out / "fifo")  # not a link: skipped even when strict
    if kind == "symlink":
        os.symlink(outside / "token", out / "leak")
    else:
        os.link(outside / "token", out / "leak")
    ran = agent("put", "**", "--run-id", "strict", "--step", "s", "--strict-links",
                "--compute-data-folder", str(out), timeout=60)
    assert ran.code == 6, ran.output[-3000:]
    errors = [e for e in error_events(ran.stderr) if e["level"] == "error"]
    assert len(errors) == 1 and "leak" in errors[0]["event"]
    assert "Traceback" not in ran.output
    assert stored_keys(s3, bucket, "strict/") == set()

    relaxed = agent("put", "**", "--run-id", "strict", "--step", "s",
                    "--compute-data-folder", str(out), timeout=60)
    assert relaxed.code == 0, relaxed.output[-2000:]
    assert {k for k in stored_keys(s3, bucket, "strict/") if ".catalog-agent" not in k} == \
        {"strict/good.txt"}


def test_get_never_writes_through_a_symlink_planted_in_the_data_folder(
        agent, s3, bucket, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="g/sub/x.txt", Body=b"from the catalog")
    s3.put_object(Bucket=bucket, Key="g/y.txt", Body=b"from the catalog")
    outside = make_outside(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(outside, data / "sub")  # a folder link: get must not write into outside/
    ran = agent("get", "sub/**", "--run-id", "g", "--compute-data-folder", str(data))
    assert ran.code == 6, ran.output[-2000:]
    assert sorted(p.name for p in outside.iterdir()) == ["token"]

    os.symlink(outside / "token", data / "y.txt")  # a file link: replaced, never followed
    ran = agent("get", "y.txt", "--run-id", "g", "--compute-data-folder", str(data))
    assert ran.code == 0, ran.output[-2000:]
    assert (outside / "token").read_bytes() == TOKEN
    assert not (data / "y.txt").is_symlink()
    assert (data / "y.txt").read_bytes() == b"from the catalog"


BOMBS = ["**/**/**/**/**/**/**/**", "*a*a*a*a*a*a*a*a*a*a*b",
         "**/a*/**/a*/**/a*/**/a*/**/a*/**/b", "?" * 200 + "*b"]


@pytest.mark.parametrize("bomb", BOMBS)
def test_pattern_bombs_finish_with_the_documented_exit_code(agent, tmp_path: Path,
                                                            bomb: str) -> None:
    """Patterns that make backtracking matchers explode, against long names and deep paths."""
    out = tmp_path / "out"
    deep = out.joinpath(*["a" * 8] * 60)
    deep.mkdir(parents=True)
    for index in range(20):
        (deep / ("a" * 200 + str(index))).write_bytes(b"x")
        (out / ("a" * 240 + str(index))).write_bytes(b"y")
    seed = agent("put", "**", "--run-id", "bomb", "--step", "seed", "--compute-data-folder",
                 str(out), timeout=120)
    assert seed.code == 0, seed.output[-2000:]
    expected = 0 if bomb.startswith("**/**") else 3  # nothing ends in 'b'
    ran = agent("put", bomb, "--run-id", "bomb-2", "--step", "s", "--compute-data-folder",
                str(out), timeout=120)
    assert ran.code == expected, ran.output[-2000:]
    ran = agent("get", bomb, "--run-id", "bomb", "--compute-data-folder", str(tmp_path / "in"),
                timeout=120)
    assert ran.code == expected, ran.output[-2000:]
    if expected == 3:
        assert "matched nothing" in ran.stderr


def test_an_overlong_pattern_is_a_usage_error(agent, tmp_path: Path) -> None:
    ran = agent("put", "a" * 5000, "--run-id", "r", "--step", "s", "--compute-data-folder",
                str(tmp_path))
    assert ran.code == 2 and "longer than" in ran.stderr, ran.output[-2000:]


@pytest.mark.parametrize("kind", ["oversized", "nested", "no-files-list", "bad-entry"])
def test_an_absurd_manifest_makes_get_exit_6_and_write_nothing(agent, s3, bucket,
                                                               tmp_path: Path,
                                                               kind: str) -> None:
    from catalog_agent.manifest import MAX_ITEM_CHARS

    s3.put_object(Bucket=bucket, Key="m/data.txt", Body=b"data")
    if kind == "oversized":  # valid JSON, one field larger than any manifest field may be
        body = b'{"files": [], "pad": "' + b"x" * (MAX_ITEM_CHARS + 1) + b'"}'
        assert len(body) > MAX_ITEM_CHARS
    elif kind == "nested":
        body = b"[" * 200_000 + b"]" * 200_000
    elif kind == "no-files-list":
        body = b'{"files": {"name": "data.txt"}}'
    else:
        body = b'{"files": [{"name": "data.txt", "data_hash": "zz", "size": -1}]}'
    s3.put_object(Bucket=bucket, Key="m/.catalog-agent/manifests/s.json", Body=body)
    into = tmp_path / "in"
    ran = agent("get", "**", "--run-id", "m", "--compute-data-folder", str(into), timeout=300)
    assert ran.code == 6, ran.output[-2000:]
    assert "Traceback" not in ran.output
    errors = [e for e in error_events(ran.stderr) if e["level"] == "error"]
    assert len(errors) == 1, errors
    assert "manifest" in errors[0]["event"] or "larger than" in errors[0]["event"], errors
    assert not into.exists() or list(into.rglob("*")) == []


def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused_not_waited_on(tmp_path: Path
                                                                            ) -> None:
    """The race between scan and open, played in-process: exit-6 error, never a blocked read."""
    import threading

    from catalog_agent import local
    from catalog_agent.errors import IntegrityError

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    opened_folder = local.open_folder(folder, create=False)
    (entry,) = opened_folder.scan()
    (folder / "a.txt").unlink()
    os.mkfifo(folder / "a.txt")
    outcome: list[BaseException | object] = []

    def open_it() -> None:
        try:
            outcome.append(opened_folder.open_file(entry))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    worker = threading.Thread(target=open_it, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "opening blocked on a FIFO"
    assert isinstance(outcome[0], IntegrityError), outcome


def test_put_skips_a_local_name_that_is_not_valid_utf8(agent, s3, bucket, tmp_path: Path
                                                       ) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.txt").write_text("good")
    with open(os.path.join(os.fsencode(out), b"bad-\xff.txt"), "wb") as handle:
        handle.write(b"bad")
    ran = agent("put", "**", "--run-id", "utf", "--step", "s", "--compute-data-folder",
                str(out))
    assert ran.code == 0, ran.output[-2000:]
    skipped = [e for e in error_events(ran.stderr) if e["event"] == "skipped"]
    assert len(skipped) == 1 and "UTF-8" in skipped[0]["reason"]
    assert {k for k in stored_keys(s3, bucket, "utf/") if ".catalog-agent" not in k} == \
        {"utf/good.txt"}


def test_files_dated_past_2262_and_before_1970_are_put(agent, s3, bucket, tmp_path: Path
                                                       ) -> None:
    """Nanosecond times beyond 64 bits (ext4 keeps dates to 2446) and negative ones: a put
    takes them like any file (its check of what changed included), never an internal error."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "future.txt").write_text("from the future")
    (out / "past.txt").write_text("from the past")
    try:
        os.utime(out / "future.txt", ns=(10**19, 10**19))
    except (OSError, OverflowError) as exc:  # a file system that cannot hold the date
        pytest.fail(f"this file system refuses a date past 2262: {exc}")
    os.utime(out / "past.txt", ns=(-10**18, -10**18))
    ran = agent("put", "*", "--run-id", "r", "--step", "s", "--compute-data-folder", str(out))
    assert ran.code == 0, ran.output
    got = agent("get", "*", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert (tmp_path / "in" / "future.txt").read_text() == "from the future"
    assert (tmp_path / "in" / "past.txt").read_text() == "from the past"
