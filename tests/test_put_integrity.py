"""A file that changes while put reads it fails the put: exit 6, the file named, no manifest,
and no object whose bytes differ from the hash recorded for it.

The races are played at the seams of the transfer (after the hash, before the upload) against
SeaweedFS, deterministically; one test plays them as they happen, with a writer appending to a
file throughout a put through the CLI.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from catalog_agent import commands, config, transfer
from catalog_agent.errors import FileChanged
from catalog_agent.hashing import digest_file
from tests.conftest import log_events

MiB = 1024 * 1024
MANIFEST = ".catalog-agent/manifests/s.json"


def load(s3_server, bucket: str, folder: Path, **flags: Any) -> config.Config:  # noqa: ANN001
    env = {"CATALOG_AGENT_ENDPOINT_URL": s3_server.endpoint, "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_REGION": "us-east-1",
           "CATALOG_AGENT_ADDRESSING_STYLE": "path", "CATALOG_AGENT_RUN_ID": "r",
           "CATALOG_AGENT_STEP": "s", "CATALOG_AGENT_COMPUTE_DATA_FOLDER": str(folder),
           "CATALOG_AGENT_CONFIG": "/dev/null", "CATALOG_AGENT_MAX_ATTEMPTS": "3"}
    env.update({k: str(v) for k, v in flags.items()})
    return config.load(environ={k: v for k, v in env.items() if not k.startswith("AWS_")})


def after_hashing(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """The seam: ``change`` runs once, right after the transfer hashed a file."""
    done: list[bool] = []

    def hashed_then_changed(*args: Any, **kwargs: Any) -> Any:
        digest = digest_file(*args, **kwargs)
        if not done:
            done.append(True)
            change()
        return digest

    monkeypatch.setattr(transfer, "digest_file", hashed_then_changed)


def put(cfg: config.Config, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The real put, in this process (the ``keys`` fixture gives it the server's keys)."""
    return commands.put(cfg, ("**",), record=None, cancel=threading.Event())


def objects(s3, bucket: str) -> dict[str, bytes]:  # noqa: ANN001
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def assert_nothing_inconsistent(s3, bucket: str) -> None:  # noqa: ANN001
    """No manifest, and every stored object holds exactly the bytes its metadata hash names."""
    stored = objects(s3, bucket)
    assert f"r/{MANIFEST}" not in stored
    for key, data in stored.items():
        meta = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
        assert meta.get("sha256") == hashlib.sha256(data).hexdigest(), key
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.fixture
def keys(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("size", [1000, 2 * MiB, 12 * MiB], ids=["in-memory", "streamed",
                                                                   "multipart"])
def test_a_file_rewritten_in_place_after_hashing_fails_the_put(
        s3_server, bucket: str, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        keys: None, size: int) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "f.bin"
    path.write_bytes(os.urandom(size))
    (folder / "other.txt").write_text("other")
    before = os.stat(path)

    def rewrite() -> None:  # same size, mtime put back: only ctime and the bytes tell
        with open(path, "r+b") as handle:
            handle.write(os.urandom(min(size, 4096)))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    after_hashing(monkeypatch, rewrite)
    cfg = load(s3_server, bucket, folder, CATALOG_AGENT_CONCURRENCY="1",
               CATALOG_AGENT_MULTIPART_THRESHOLD=str(5 * MiB),
               CATALOG_AGENT_MULTIPART_CHUNKSIZE=str(5 * MiB))
    with pytest.raises(FileChanged, match=r"f\.bin changed while it was being put"):
        put(cfg, monkeypatch)
    assert_nothing_inconsistent(s3, bucket)


@pytest.mark.parametrize("size", [1000, 2 * MiB, 12 * MiB], ids=["in-memory", "streamed",
                                                                   "multipart"])
def test_a_file_that_grows_after_hashing_fails_the_put(
        s3_server, bucket: str, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        keys: None, size: int) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "f.bin"
    original = os.urandom(size)
    path.write_bytes(original)

    def grow() -> None:
        with open(path, "ab") as handle:
            handle.write(b"appended by the step")

    after_hashing(monkeypatch, grow)
    cfg = load(s3_server, bucket, folder, CATALOG_AGENT_MULTIPART_THRESHOLD=str(5 * MiB),
               CATALOG_AGENT_MULTIPART_CHUNKSIZE=str(5 * MiB))
    with pytest.raises(FileChanged, match=r"f\.bin changed while it was being put \(size"):
        put(cfg, monkeypatch)
    assert_nothing_inconsistent(s3, bucket)
    stored = objects(s3, bucket)
    assert stored.get("r/f.bin", original) == original  # bounded to the hashed size


def test_a_file_changed_between_scan_and_open_fails_the_put(
        s3_server, bucket: str, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        keys: None) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "f.txt").write_text("scanned")
    real_open = transfer.Folder.open_file

    def changed_then_opened(self, entry):  # noqa: ANN001, ANN202
        with open(folder / "f.txt", "a") as handle:
            handle.write(" and then written")
        return real_open(self, entry)

    monkeypatch.setattr(transfer.Folder, "open_file", changed_then_opened)
    cfg = load(s3_server, bucket, folder)
    with pytest.raises(FileChanged, match=r"f\.txt changed after the scan"):
        put(cfg, monkeypatch)
    assert objects(s3, bucket) == {}


def test_a_file_appended_to_throughout_a_put_exits_6(agent, s3, bucket: str,
                                                      tmp_path: Path) -> None:
    """As it happens in a pod: the step still writes while the put runs."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_bytes(os.urandom(3 * MiB))
    for index in range(20):
        (out / f"done-{index}.txt").write_text(str(index))
    stop = threading.Event()

    def writer() -> None:
        with open(out / "log.txt", "ab", buffering=0) as handle:
            while not stop.is_set():
                handle.write(b"another line\n")
                stop.wait(0.001)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        ran = agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder",
                    str(out))
    finally:
        stop.set()
        thread.join()
    assert ran.code == 6, ran.output[-2000:]
    errors = [e for e in log_events(ran.stderr) if e["level"] == "error"]
    assert len(errors) == 1 and "log.txt changed" in errors[0]["event"], errors
    assert "Traceback" not in ran.output
    assert_nothing_inconsistent(s3, bucket)


@pytest.mark.parametrize("size, part_size", [
    (3 * MiB, MiB),  # parts end where the blocks do
    (3 * MiB + 5, MiB),  # a short last part
    (5 * MiB + 1, 3 * MiB // 2),  # parts that end inside a block
    (MiB // 2, MiB),  # one part, shorter than a part
])
def test_each_parts_checksum_is_the_sha256_of_its_bytes(tmp_path: Path, size: int,
                                                        part_size: int) -> None:
    """The whole file's hash and each part's (hashed on two threads) are those of the bytes,
    part by part; a stop set before the read stops it."""
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        digest = digest_file(fd, size, part_size=part_size)
        stop = threading.Event()
        stop.set()
        with pytest.raises(Exception, match="stopped before the transfer finished"):
            digest_file(fd, size, part_size=part_size, cancel=stop)
    finally:
        os.close(fd)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert digest.part_size == part_size
    assert list(digest.part_sha256) == [hashlib.sha256(data[start:start + part_size]).digest()
                                        for start in range(0, size, part_size)]
