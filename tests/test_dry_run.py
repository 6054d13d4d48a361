"""--dry-run for get, put and sync: the plan as log events, nothing written anywhere.

Against SeaweedFS (and moto's S3, which stores the hostile keys SeaweedFS refuses): every
listing, local folder and record file is compared before and after.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import Agent, Ran, log_events
from test_hostile_keys import BUCKET, _client, moto, moto_agent  # noqa: F401 - fixtures

FILES = {"a.csv": b"a,1\n", "b.txt": b"bee\n", "raw/c.csv": b"c,3\n", "raw/deep/d.bin": b"\x00d"}


def fill(folder: Path, contents: dict[str, bytes]) -> None:
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def objects(s3: Any, bucket: str) -> dict[str, str]:
    """Every key with its ETag: any write, even of the same bytes, would show."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: f"{o['ETag']}{o['LastModified']}" for p in pages
            for o in p.get("Contents", [])}


def plan_of(ran: Ran) -> list[dict[str, Any]]:
    return [e for e in log_events(ran.stderr) if e.get("event") == "dry-run"]


def done(ran: Ran, command: str) -> dict[str, Any]:
    return next(e for e in log_events(ran.stderr) if e.get("event") == f"{command}.done")


def test_put_dry_run_plans_and_writes_nothing(agent: Agent, s3: Any, bucket: str,
                                              tmp_path: Path) -> None:
    fill(tmp_path / "out", FILES)
    args = ("--run-id", "r", "--step", "s", "--compute-data-folder", str(tmp_path / "out"))
    ran = agent("put", "**", *args, "--dry-run", "--record", str(tmp_path / "rec.json"))
    assert ran.code == 0, ran.output
    assert objects(s3, bucket) == {}
    assert not (tmp_path / "rec.json").exists()
    assert {(e["action"], e["path"], e["key"], e["size"], e["sha256"]) for e in plan_of(ran)} == {
        ("put", n, f"r/{n}", len(d), hashlib.sha256(d).hexdigest()) for n, d in FILES.items()}
    summary = done(ran, "put")
    assert (summary["dry_run"], summary["files"], summary["planned_files"],
            summary["planned_bytes"]) == (True, 0, 4, sum(map(len, FILES.values())))

    assert agent("put", "**", *args).code == 0
    before = objects(s3, bucket)
    (tmp_path / "out" / "b.txt").write_bytes(b"changed\n")
    os.symlink("/etc/hostname", tmp_path / "out" / "link")
    again = agent("put", "**", *args, "--dry-run")
    assert again.code == 0, again.output
    actions = {e["path"]: (e["action"], e.get("reason", "")) for e in plan_of(again)}
    assert actions["b.txt"] == ("put", "")
    assert actions["a.csv"][0] == "skip" and "unchanged" in actions["a.csv"][1]
    assert actions["link"] == ("skip", "symlink leaving the data folder")
    assert len(actions) == 5
    assert objects(s3, bucket) == before  # no byte, no manifest, no multipart abort


def test_put_dry_run_refuses_as_the_put_would(agent: Agent, s3: Any, bucket: str,
                                              tmp_path: Path) -> None:
    fill(tmp_path / "out", {"ok.txt": b"ok\n"})
    os.symlink("/etc/hostname", tmp_path / "out" / "leak1")
    os.symlink("/etc/passwd", tmp_path / "out" / "leak2")
    args = ("--run-id", "r", "--step", "s", "--compute-data-folder", str(tmp_path / "out"))
    ran = agent("put", "**", *args, "--dry-run", "--strict-links")
    assert ran.code == 6, ran.output
    assert {(e["action"], e["path"]) for e in plan_of(ran)} == {("refuse", "leak1"),
                                                                ("refuse", "leak2")}
    assert [e["level"] for e in log_events(ran.stderr)].count("error") == 1
    missing = agent("put", "*.parquet", *args, "--dry-run")
    assert missing.code == 3 and "'*.parquet' matched nothing" in missing.stderr
    assert objects(s3, bucket) == {}


def test_get_dry_run_plans_and_writes_nothing(agent: Agent, s3: Any, bucket: str,
                                              tmp_path: Path) -> None:
    fill(tmp_path / "out", FILES)
    assert agent("put", "**", "--run-id", "r", "--step", "s",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    s3.put_object(Bucket=bucket, Key="r/foreign.txt", Body=b"another tool's\n")
    s3.put_object(Bucket=bucket, Key="r/meta.txt", Body=b"m\n",  # a put stopped before its
                  Metadata={"sha256": hashlib.sha256(b"m\n").hexdigest()})  # manifest
    before = objects(s3, bucket)
    into = tmp_path / "in" / "data"
    ran = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(into), "--dry-run",
                "--record", str(tmp_path / "rec.json"))
    assert ran.code == 0, ran.output
    assert not into.exists() and not (tmp_path / "in").exists()
    assert not (tmp_path / "rec.json").exists()
    plan = {e["path"]: e for e in plan_of(ran)}
    assert {p: (e["action"], e["verified_by"]) for p, e in plan.items()} == {
        **{n: ("get", "manifest") for n in FILES}, "foreign.txt": ("get", ""),
        "meta.txt": ("get", "object metadata")}
    assert "unverified" in plan["foreign.txt"]["reason"]
    assert (done(ran, "get")["planned_files"], done(ran, "get")["unverified"]) == (6, 1)

    assert agent("get", "raw", "--run-id", "r", "--compute-data-folder", str(into)).code == 0
    (into / "raw" / "c.csv").write_bytes(b"edited locally\n")
    again = agent("get", "raw", "--run-id", "r", "--compute-data-folder", str(into), "--dry-run")
    assert {e["path"]: e["action"] for e in plan_of(again)} == {"raw/c.csv": "get",
                                                                "raw/deep/d.bin": "skip"}
    assert (into / "raw" / "c.csv").read_bytes() == b"edited locally\n"
    assert objects(s3, bucket) == before
    missing = agent("get", "nothing/**", "--run-id", "r", "--compute-data-folder", str(into),
                    "--dry-run")
    assert missing.code == 3, missing.output


def test_sync_dry_run_copies_nothing(agent: Agent, s3: Any, bucket: str, tmp_path: Path) -> None:
    fill(tmp_path / "out", FILES)
    assert agent("put", "**", "--run-id", "r1", "--step", "s",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    before = objects(s3, bucket)
    ran = agent("sync", "--from-run", "r1", "--run-id", "r2", "--dry-run")
    assert ran.code == 0, ran.output
    assert objects(s3, bucket) == before
    assert {(e["action"], e["key"], e["target"]) for e in plan_of(ran)} == {
        ("copy", f"r1/{n}", f"r2/{n}") for n in FILES}
    assert done(ran, "sync")["manifests"] == 1


def test_dry_run_in_console_format(agent: Agent, tmp_path: Path) -> None:
    fill(tmp_path / "out", {"a.csv": b"a\n"})
    ran = agent("put", "a.csv", "--run-id", "r", "--step", "s", "--dry-run",
                "--compute-data-folder", str(tmp_path / "out"), "--log-format", "console")
    assert ran.code == 0, ran.output
    (line,) = [line for line in ran.stderr.splitlines() if "dry-run" in line]
    assert "action=put" in line and "path=a.csv" in line and "key=r/a.csv" in line
    assert not line.lstrip().startswith("{")


def test_dry_run_cannot_wait(offline_agent: Agent) -> None:
    ran = offline_agent("put", "**", "--dry-run", "--wait", "--run-id", "r", "--step", "s",
                        "--type", "file-system")
    assert ran.code == 2 and "--dry-run" in ran.stderr, ran.output


def test_get_and_sync_dry_runs_list_every_hostile_key_and_exit_6(moto: str,  # noqa: F811
                                                                 moto_agent: Agent,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    client = _client(moto)
    run = "dry-hostile"
    client.put_object(Bucket=BUCKET, Key=f"{run}/ok.txt", Body=b"fine")
    planted = ["../../escaped.txt", "a/../../escaped.txt", "/tmp/escaped.txt", "a\\b"]
    for key in planted:
        client.put_object(Bucket=BUCKET, Key=f"{run}/{key}", Body=b"evil")
    folder = tmp_path / "data"
    ran = moto_agent("get", "**", "--run-id", run, "--compute-data-folder", str(folder),
                     "--dry-run")
    assert ran.code == 6, ran.output
    refused = {e["path"] for e in plan_of(ran) if e["action"] == "refuse"}
    assert refused == {f"{run}/{k}" for k in planted}
    assert [e["level"] for e in log_events(ran.stderr)].count("error") == 1
    assert not folder.exists() and not Path("/tmp/escaped.txt").exists()
    synced = moto_agent("sync", "--from-run", run, "--run-id", run + "-2", "--dry-run")
    assert synced.code == 6, synced.output
    assert {e["path"] for e in plan_of(synced) if e["action"] == "refuse"} == refused
    assert client.list_objects_v2(Bucket=BUCKET, Prefix=run + "-2/").get("KeyCount", 0) == 0
