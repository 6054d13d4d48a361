"""100,000 files through put and get: every byte, every hash and the manifest checked.

Correctness at scale only; no time is asserted (speed is the benchmark's business, README
"Performance"). The data folder mixes sizes around the in-memory limit (256 KiB) and empty
files, in 1,000 folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from catalog_agent import manifest
from tests.conftest import log_events

FILES = 100_000
FOLDERS = 1_000


def write_tree(root: Path) -> dict[str, str]:
    """FILES files in FOLDERS folders; their SHA-256 by relative path."""
    rng = random.Random(14)
    hashes: dict[str, str] = {}
    block = rng.randbytes(300 * 1024)
    for index in range(FILES):
        folder = f"d{index % FOLDERS:04d}"
        if index < FOLDERS:
            (root / folder).mkdir(parents=True)
        size = 1024 if index % 50 else rng.choice([0, 1, 256 * 1024, 256 * 1024 + 1, 70_000])
        offset = rng.randrange(0, len(block) - size + 1)
        data = index.to_bytes(4, "big") + block[offset:offset + size]
        relative = f"{folder}/f{index:06d}.bin"
        with open(root / relative, "wb") as handle:
            handle.write(data)
        hashes[relative] = hashlib.sha256(data).hexdigest()
    return hashes


@pytest.mark.slow
def test_100000_files_put_and_get_every_byte_and_hash(agent, s3, bucket: str,
                                                      tmp_path: Path) -> None:
    out, into = tmp_path / "out", tmp_path / "in"
    hashes = write_tree(out)
    ran = agent("put", "**", "--run-id", "big", "--step", "s", "--compute-data-folder",
                str(out), timeout=1800)
    assert ran.code == 0, ran.output[-3000:]
    (done,) = [e for e in log_events(ran.stderr) if e["event"] == "put.done"]
    assert done["files"] == FILES and done["skipped"] == 0

    # The manifest, read as any JSON reader would: every file, its hash and size.
    body = s3.get_object(Bucket=bucket, Key="big/.catalog-agent/manifests/s.json")["Body"].read()
    files = json.loads(body)["files"]
    assert {f["name"]: f["data_hash"] for f in files} == hashes
    assert all(f["size"] == os.path.getsize(out / f["name"]) for f in files[::97])
    assert [e.name for e in manifest.read([body], "m")] == [f["name"] for f in files]

    # The objects themselves, independently of the agent, for a sample.
    for relative in random.Random(7).sample(sorted(hashes), 200):
        got = s3.get_object(Bucket=bucket, Key=f"big/{relative}")
        data = got["Body"].read()
        assert hashlib.sha256(data).hexdigest() == hashes[relative] == got["Metadata"]["sha256"]

    ran = agent("get", "**", "--run-id", "big", "--compute-data-folder", str(into),
                timeout=1800)
    assert ran.code == 0, ran.output[-3000:]
    (done,) = [e for e in log_events(ran.stderr) if e["event"] == "get.done"]
    assert done["files"] == FILES and done["unverified"] == 0
    found = {}
    for folder in sorted(os.listdir(into)):
        for name in os.listdir(into / folder):
            relative = f"{folder}/{name}"
            found[relative] = hashlib.sha256((into / relative).read_bytes()).hexdigest()
    assert found == hashes  # every byte: no file missing, extra, partial or different

    again = agent("get", "**", "--run-id", "big", "--compute-data-folder", str(into),
                  timeout=1800)
    assert again.code == 0, again.output[-3000:]
    (done,) = [e for e in log_events(again.stderr) if e["event"] == "get.done"]
    assert (done["files"], done["skipped"]) == (0, FILES)  # all present: each checked, skipped
