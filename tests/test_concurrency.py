"""Correctness under concurrency: thousands of files through the real CLI and a real
SeaweedFS, many at once, every byte and every hash checked. No timing is asserted here: speed
lives in the benchmark (bench/, scripts/bench).

Sizes are chosen to cross every path of the S3 store: empty files, single requests of all sizes,
and objects above the multipart threshold whose size is no multiple of the part size (parallel
multipart upload, parallel ranged GETs hashed in order).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from catalog_agent.stores.s3 import DEFAULT_PART_SIZE as PART_SIZE
from catalog_agent.stores.s3 import DEFAULT_THRESHOLD as MULTIPART_THRESHOLD

MiB = 1024 * 1024


def make_tree(root: Path, count: int, folders: int, seed: int) -> dict[str, bytes]:
    """``count`` files of varied sizes (0 B to 200 KiB) in ``folders`` folders, two levels deep."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        size = rng.choice([0, 1, 17, 4096, rng.randrange(1, 64 * 1024),
                           rng.randrange(64 * 1024, 200 * 1024)])
        relative = f"set/d{i % folders:02d}/e{(i // folders) % 3}/f{i:05d}.bin"
        files[relative] = rng.randbytes(size)
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def add_large(root: Path, files: dict[str, bytes], seed: int) -> None:
    """Two objects above the multipart threshold, neither a whole number of parts."""
    rng = random.Random(seed)
    for name, size in (("big/a.bin", MULTIPART_THRESHOLD + 3 * PART_SIZE + 12345),
                       ("big/b.bin", MULTIPART_THRESHOLD + 1)):
        data = rng.randbytes(size)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        files[name] = data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def events(output: str) -> list[dict]:
    found = []
    for line in output.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def done_event(output: str, name: str) -> dict:
    return next(e for e in events(output) if e.get("event") == name)


def assert_tree_equal(folder: Path, files: dict[str, bytes]) -> None:
    """Exactly ``files`` under ``folder``: same names, every byte equal, no temporary left."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert found == set(files), (sorted(found - set(files))[:5], sorted(set(files) - found)[:5])
    for relative, data in files.items():
        got = (folder / relative).read_bytes()
        assert got == data, f"{relative}: {len(got)} bytes differ from the {len(data)} put"


def assert_bucket_holds(s3, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    """Every object, read back by boto3 (not by the agent), holds the bytes and their hash."""
    listed = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            listed[obj["Key"][len(prefix):]] = obj["Size"]
    data_keys = {k: v for k, v in listed.items() if not k.startswith(".catalog-agent/")}
    assert data_keys == {k: len(v) for k, v in files.items()}

    def check(relative: str) -> None:
        response = s3.get_object(Bucket=bucket, Key=prefix + relative)
        body = response["Body"].read()
        assert body == files[relative], relative
        assert response["Metadata"].get("sha256") == sha256(files[relative]), relative

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(check, files))


def test_thousands_of_files_round_trip_with_many_workers(agent, s3, bucket: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = make_tree(out, count=3000, folders=30, seed=8)
    add_large(out, files, seed=9)

    put = agent("put", "**", "--run-id", "many", "--step", "producer", "--concurrency", "64",
                "--compute-data-folder", str(out), timeout=900)
    assert put.code == 0, put.output[-3000:]
    summary = done_event(put.output, "put.done")
    assert summary["files"] == len(files)
    assert summary["bytes"] == sum(len(d) for d in files.values())

    # The catalog as another tool sees it: every object and its recorded hash.
    assert_bucket_holds(s3, bucket, "many/", files)
    manifest = json.loads(s3.get_object(
        Bucket=bucket, Key="many/.catalog-agent/manifests/producer.json")["Body"].read())
    recorded = {e["name"]: e["data_hash"] for e in manifest["files"]}
    assert recorded == {name: sha256(data) for name, data in files.items()}

    # Back through the agent, into a fresh folder, with more workers than connections it keeps.
    into = tmp_path / "in"
    got = agent("get", "**", "--run-id", "many", "--concurrency", "128",
                "--compute-data-folder", str(into), timeout=900)
    assert got.code == 0, got.output[-3000:]
    summary = done_event(got.output, "get.done")
    assert summary["files"] == len(files) and summary["unverified"] == 0
    assert_tree_equal(into, files)
    # A second get finds every file present with the right hash and moves nothing.
    again = agent("get", "**", "--run-id", "many", "--compute-data-folder", str(into))
    assert again.code == 0, again.output[-3000:]
    assert done_event(again.output, "get.done")["skipped"] == len(files)


def test_concurrent_processes_share_a_run(agent, s3, bucket: str, tmp_path: Path) -> None:
    """Two steps put into one run at once, then two gets read it at once: nothing mixed up."""
    import subprocess
    import sys

    trees = {}
    for step in ("left", "right"):
        root = tmp_path / step
        trees[step] = {f"{step}/{k}": v for k, v in
                       make_tree(root / step, count=800, folders=16, seed=len(step)).items()}

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "catalog_agent", *args], cwd=agent.cwd,
                                env=agent.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    puts = [start("put", f"{step}/**", "--run-id", "shared", "--step", step,
                  "--compute-data-folder", str(tmp_path / step)) for step in trees]
    for process in puts:
        _out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]

    everything = {**trees["left"], **trees["right"]}
    assert_bucket_holds(s3, bucket, "shared/", everything)

    folders = [tmp_path / "got-a", tmp_path / "got-b"]
    gets = [start("get", "**", "--run-id", "shared", "--concurrency", "32",
                  "--compute-data-folder", str(folder)) for folder in folders]
    for process in gets:
        _out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]
    for folder in folders:
        assert_tree_equal(folder, everything)


@pytest.mark.parametrize("workers", ["1", "256"])
def test_extreme_worker_counts_move_every_byte(agent, bucket: str, tmp_path: Path,
                                               workers: str) -> None:
    out = tmp_path / "out"
    files = make_tree(out, count=400 if workers == "1" else 1500, folders=7, seed=int(workers))
    put = agent("put", "set", "--run-id", "w", "--step", "s", "--concurrency", workers,
                "--compute-data-folder", str(out), timeout=900)
    assert put.code == 0, put.output[-3000:]
    into = tmp_path / "in"
    got = agent("get", "set", "--run-id", "w", "--concurrency", workers,
                "--compute-data-folder", str(into), timeout=900)
    assert got.code == 0, got.output[-3000:]
    assert_tree_equal(into, files)
    for relative, data in list(files.items())[:50]:
        assert hashlib.sha256((into / relative).read_bytes()).hexdigest() == sha256(data)
    assert not [p for p in into.rglob("*.catalog-agent.part")]
    assert os.listdir(into) == ["set"]


def test_awkward_names_survive_listing_and_signing(agent, s3, bucket: str,
                                                   tmp_path: Path) -> None:
    """Names that URL encoding, '+' decoding and SigV4's canonical URI must all agree on."""
    out = tmp_path / "out"
    names = ["a+b.txt", "space here.txt", "pct%20literal.txt", "ümlaut/ß.bin", "q?x=1&y=2.txt",
             "tilde~semi;colon.txt", "brackets[1](2){3}.txt", "at@hash#.txt", "equals=.txt",
             "comma,quote'.txt", "many/levels/deep/file.txt"]
    files = {f"odd/{n}": hashlib.sha256(n.encode()).digest() * 100 for n in names}
    for relative, data in files.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(data)
    put = agent("put", "odd", "--run-id", "names", "--step", "s",
                "--compute-data-folder", str(out))
    assert put.code == 0, put.output[-3000:]
    assert_bucket_holds(s3, bucket, "names/", files)
    got = agent("get", "odd", "--run-id", "names", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output[-3000:]
    assert_tree_equal(tmp_path / "in", files)
