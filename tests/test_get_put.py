"""get and put through the real CLI against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import log_events
from moto_support import moto_server  # noqa: F401 - a fixture

NAMES = [
    "plain.txt",
    "with space.csv",
    "ünïcødé/日本語.txt",
    "plus+sign.txt",
    "percent%20.txt",
    "hash#tag.txt",
    "question?.txt",
    "equals=sign.txt",
    "brackets[1](2){3}.txt",
    "L" * 200 + ".bin",
    "/".join(f"d{i}" for i in range(30)) + "/deep.txt",
    "empty.txt",
]


def fill(folder: Path, names: list[str]) -> dict[str, bytes]:
    contents = {}
    for index, name in enumerate(names):
        data = b"" if name == "empty.txt" else (name.encode() + b"\n") * (index + 1)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        contents[name] = data
    return contents


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*") if p.is_file()}


events = log_events


def summary(stderr: str, command: str) -> dict:
    return next(e for e in events(stderr) if e["event"] == f"{command}.done")


def keys(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_hard_names_round_trip_byte_for_byte(agent, tmp_path: Path, s3, bucket: str) -> None:
    sent = fill(tmp_path / "out", NAMES)
    put = agent("put", "**", "--run-id", "r1", "--step", "make", "--prefix", "cat/alog",
                "--compute-data-folder", str(tmp_path / "out"))
    assert put.code == 0, put.output
    stored = keys(s3, bucket)
    assert f"cat/alog/r1/{NAMES[2]}" in stored
    assert "cat/alog/r1/.catalog-agent/manifests/make.json" in stored
    got = agent("get", "**", "--run-id", "r1", "--prefix", "cat/alog",
                "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert files_under(tmp_path / "in") == sent
    assert summary(got.stderr, "get")["files"] == len(NAMES)


def test_layout_without_prefix_has_no_leading_segment(agent, tmp_path: Path, s3,
                                                      bucket: str) -> None:
    fill(tmp_path / "out", ["a.txt"])
    assert agent("put", "a.txt", "--run-id", "r2", "--step", "s",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    assert keys(s3, bucket) == ["r2/.catalog-agent/manifests/s.json", "r2/a.txt"]


def test_manifest_records_magnus_fields_and_objects_carry_their_hash(agent, tmp_path: Path, s3,
                                                                     bucket: str) -> None:
    sent = fill(tmp_path / "out", ["m/a.csv", "m/b.csv", "other.txt"])
    ran = agent("put", "m", "--run-id", "r", "--step", "stepA", "--prefix", "p",
                "--compute-data-folder", str(tmp_path / "out"))
    assert ran.code == 0, ran.output
    body = s3.get_object(Bucket=bucket, Key="p/r/.catalog-agent/manifests/stepA.json")["Body"]
    manifest = json.loads(body.read())
    assert manifest["run_id"] == "r" and manifest["step"] == "stepA"
    by_name = {f["name"]: f for f in manifest["files"]}
    assert set(by_name) == {"m/a.csv", "m/b.csv"}
    for name, record in by_name.items():
        assert record == {
            "name": name, "data_hash": hashlib.sha256(sent[name]).hexdigest(),
            "size": len(sent[name]), "catalog_relative_path": f"r/{name}",
            "catalog_handler_location": f"s3://{bucket}/p", "stage": "put",
            "executable": False}
        head = s3.head_object(Bucket=bucket, Key=f"p/r/{name}")
        assert head["Metadata"]["sha256"] == record["data_hash"]


def test_pattern_matching_nothing_exits_3_and_writes_nothing(agent, tmp_path: Path, s3,
                                                              bucket: str) -> None:
    fill(tmp_path / "out", ["a.csv"])
    put = agent("put", "a.csv", "*.parquet", "--run-id", "r", "--step", "s",
                "--compute-data-folder", str(tmp_path / "out"))
    assert put.code == 3 and "'*.parquet' matched nothing" in put.stderr
    assert keys(s3, bucket) == []
    assert agent("put", "a.csv", "--run-id", "r", "--step", "s",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    get = agent("get", "a.csv", "missing/**", "--run-id", "r",
                "--compute-data-folder", str(tmp_path / "in"))
    assert get.code == 3 and "'missing/**' matched nothing" in get.stderr
    assert not (tmp_path / "in").exists()
    allowed = agent("get", "a.csv", "missing/**", "--run-id", "r", "--allow-missing",
                    "--compute-data-folder", str(tmp_path / "in"))
    assert allowed.code == 0 and files_under(tmp_path / "in") == {"a.csv": b"a.csv\n"}


def test_changed_object_fails_get_with_6_and_leaves_nothing(agent, tmp_path: Path, s3,
                                                            bucket: str) -> None:
    fill(tmp_path / "out", ["good.txt", "bad.txt"])
    assert agent("put", "**", "--run-id", "r", "--step", "s",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    s3.put_object(Bucket=bucket, Key="r/bad.txt", Body=b"tampered!")
    got = agent("get", "bad.txt", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 6, got.output
    assert "hash mismatch for 'r/bad.txt'" in got.stderr
    assert list((tmp_path / "in").rglob("*")) == []  # no final file, no temporary file
    # The same bytes under metadata that lies are caught too: the manifest is the record.
    s3.put_object(Bucket=bucket, Key="r/bad.txt", Body=b"bad.txt\n" * 3,
                  Metadata={"sha256": hashlib.sha256(b"bad.txt\n" * 3).hexdigest()})
    assert agent("get", "bad.txt", "--run-id", "r",
                 "--compute-data-folder", str(tmp_path / "in")).code == 6


def test_objects_from_other_tools_are_fetched_and_logged_unverified(agent, tmp_path: Path, s3,
                                                                    bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="r/foreign.bin", Body=b"\x00\x01")
    s3.put_object(Bucket=bucket, Key="r/folder/", Body=b"")  # a console "folder" marker
    got = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert files_under(tmp_path / "in") == {"foreign.bin": b"\x00\x01"}
    assert any(e["event"] == "unverified" and e["path"] == "foreign.bin"
               for e in events(got.stderr))
    assert summary(got.stderr, "get")["unverified"] == 1


def test_unchanged_files_are_skipped_by_put_and_get(agent, tmp_path: Path) -> None:
    out, into = tmp_path / "out", tmp_path / "in"
    fill(out, ["a", "b", "c/d"])
    args = ("--run-id", "r", "--step", "s", "--compute-data-folder", str(out))
    first = summary(agent("put", "**", *args).stderr, "put")
    assert (first["files"], first["skipped"]) == (3, 0)
    second = summary(agent("put", "**", *args).stderr, "put")
    assert (second["files"], second["skipped"], second["bytes"]) == (0, 3, 0)
    (out / "a").write_bytes(b"changed")
    third = summary(agent("put", "**", *args).stderr, "put")
    assert (third["files"], third["skipped"]) == (1, 2)

    get_args = ("get", "**", "--run-id", "r", "--compute-data-folder", str(into))
    assert summary(agent(*get_args).stderr, "get")["files"] == 3
    (into / "b").write_bytes(b"b\n")  # same size, but one byte differs (the index)
    os.remove(into / "c" / "d")
    again = summary(agent(*get_args).stderr, "get")
    assert (again["files"], again["skipped"]) == (2, 1)
    assert (into / "a").read_bytes() == b"changed" and (into / "b").read_bytes() == b"b\n" * 2


def test_files_land_usable_with_modes_and_executable_bit(agent, tmp_path: Path) -> None:
    out, into = tmp_path / "out", tmp_path / "in"
    fill(out, ["bin/run.sh", "data/x.csv"])
    os.chmod(out / "bin" / "run.sh", 0o700)
    os.chmod(out / "data" / "x.csv", 0o600)
    assert agent("put", "**", "--run-id", "r", "--step", "s",
                 "--compute-data-folder", str(out)).code == 0
    old = os.umask(0o077)
    try:
        assert agent("get", "**", "--run-id", "r", "--compute-data-folder", str(into)).code == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(into / "bin" / "run.sh") == 0o755
    assert mode(into / "data" / "x.csv") == 0o644
    assert mode(into / "bin") == 0o755 and mode(into / "data") == 0o755


def test_put_never_follows_links_out_of_the_data_folder(agent, tmp_path: Path, s3,
                                                        bucket: str) -> None:
    secret = tmp_path / "token"
    secret.write_text("service-account-token-value")
    out = tmp_path / "out"
    fill(out, ["real.txt"])
    (out / "token-link").symlink_to(secret)
    (out / "inner-link").symlink_to(out / "real.txt")
    os.link(secret, out / "hard-token")
    os.mkfifo(out / "pipe")
    ran = agent("put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder", str(out),
                timeout=60)
    assert ran.code == 0, ran.output
    assert keys(s3, bucket) == ["r/.catalog-agent/manifests/s.json", "r/inner-link", "r/real.txt"]
    warned = {e["path"] for e in events(ran.stderr) if e["event"] == "skipped"}
    assert warned == {"token-link", "hard-token", "pipe"}
    strict = agent("put", "**", "--run-id", "r2", "--step", "s", "--strict-links",
                   "--compute-data-folder", str(out), timeout=60)
    assert strict.code == 6 and "refusing to put" in strict.stderr
    assert not [k for k in keys(s3, bucket) if k.startswith("r2/")]


def test_get_refuses_to_write_through_a_symlinked_folder(agent, tmp_path: Path) -> None:
    fill(tmp_path / "out", ["sub/x.txt"])
    assert agent("put", "**", "--run-id", "r", "--step", "s",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sub").symlink_to(elsewhere)
    got = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 6 and "is a symlink" in got.stderr
    assert list(elsewhere.iterdir()) == []


def test_step_entries_and_record_files(agent, tmp_path: Path, bucket: str) -> None:
    config = tmp_path / "catalog.yaml"
    config.write_text(f"""
catalog:
  type: s3
  config:
    s3_bucket: {bucket}
    prefix: pipe
    compute_data_folder: {tmp_path / 'global'}
dag:
  steps:
    produce:
      catalog:
        compute_data_folder: {tmp_path / 'produce'}
        put: ["*.csv", "model"]
    consume:
      catalog:
        get: ["model/**"]
""")
    sent = fill(tmp_path / "produce", ["a.csv", "b.txt", "model/w.bin"])
    env = {"CATALOG_AGENT_CONFIG": str(config), "CATALOG_AGENT_S3_BUCKET": None,
           "CATALOG_AGENT_RUN_ID": "run-9"}
    put = agent("put", "--step", "produce", "--record", str(tmp_path / "put.json"), env=env)
    assert put.code == 0, put.output
    record = json.loads((tmp_path / "put.json").read_text())
    assert sorted(f["name"] for f in record["files"]) == ["a.csv", "model/w.bin"]
    got = agent("get", "--step", "consume", "--record", str(tmp_path / "get.json"), env=env)
    assert got.code == 0, got.output
    assert files_under(tmp_path / "global") == {"model/w.bin": sent["model/w.bin"]}
    got_record = json.loads((tmp_path / "get.json").read_text())
    assert [(f["name"], f["stage"]) for f in got_record["files"]] == [("model/w.bin", "get")]
    assert got_record["files"][0]["data_hash"] == hashlib.sha256(sent["model/w.bin"]).hexdigest()


def test_sync_copies_a_run_server_side_and_ls_lists_it(agent, tmp_path: Path, s3,
                                                      bucket: str) -> None:
    sent = fill(tmp_path / "out", ["a.txt", "d/b.txt"])
    assert agent("put", "**", "--run-id", "old", "--step", "s1", "--prefix", "p",
                 "--compute-data-folder", str(tmp_path / "out")).code == 0
    synced = agent("sync", "--from-run", "old", "--run-id", "new", "--prefix", "p")
    assert synced.code == 0, synced.output
    manifest = json.loads(s3.get_object(
        Bucket=bucket, Key="p/new/.catalog-agent/manifests/s1.json")["Body"].read())
    assert {f["catalog_relative_path"] for f in manifest["files"]} == {"new/a.txt", "new/d/b.txt"}
    listed = agent("ls", "--json", "--run-id", "new", "--prefix", "p")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows == [{"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "step": "s1"} for name, data in sorted(sent.items())]
    got = agent("get", "**", "--run-id", "new", "--prefix", "p",
                "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0 and files_under(tmp_path / "in") == sent
    only = agent("ls", "d", "--run-id", "new", "--prefix", "p")
    assert only.code == 0 and only.stdout.split()[-1] == "d/b.txt"


def test_every_log_line_is_json_with_the_context(agent, tmp_path: Path) -> None:
    fill(tmp_path / "out", ["a"])
    ran = agent("put", "a", "--run-id", "r", "--step", "s",
                "--compute-data-folder", str(tmp_path / "out"))
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert lines, ran.output
    for line in lines:
        event = json.loads(line)
        assert {"event", "level", "timestamp", "run_id", "step", "command"} <= set(event)
        assert (event["run_id"], event["step"], event["command"]) == ("r", "s", "put")
    done = summary(ran.stderr, "put")
    assert {"files", "bytes", "skipped", "seconds", "mb_per_second"} <= set(done)


def test_termination_message_summarises_the_command(agent, tmp_path: Path) -> None:
    fill(tmp_path / "out", ["a"])
    agent("put", "a", "--run-id", "r", "--step", "s", "--compute-data-folder", str(tmp_path / "out"))
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["command"] == "put" and message["files"] == 1 and message["exit_code"] == 0
    agent("get", "nothing-here", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["exit_code"] == 3 and "matched nothing" in message["error"]


def test_access_failures_exit_4(agent, tmp_path: Path) -> None:
    missing = agent("get", "**", "--run-id", "r", "--s3-bucket", "no-such-bucket-here",
                    "--compute-data-folder", str(tmp_path / "in"))
    assert missing.code == 4 and "no such bucket 'no-such-bucket-here'" in missing.stderr
    wrong = agent("get", "**", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"),
                  env={"AWS_SECRET_ACCESS_KEY": "not-the-right-secret-at-all"})
    assert wrong.code == 4 and "access denied" in wrong.stderr
    assert "not-the-right-secret-at-all" not in wrong.output


def test_unreachable_server_exits_5_after_retries(agent, tmp_path: Path) -> None:
    from catalog_agent.devserver import free_ports

    port = free_ports(1)[0]
    fill(tmp_path / "out", ["a"])
    ran = agent("put", "a", "--run-id", "r", "--step", "s", "--max-attempts", "2",
                "--compute-data-folder", str(tmp_path / "out"),
                env={"CATALOG_AGENT_ENDPOINT_URL": f"http://127.0.0.1:{port}"}, timeout=120)
    assert ran.code == 5, ran.output
    assert "failed after retries" in ran.stderr and "Traceback" not in ran.output


@pytest.mark.parametrize("mode, key_id", [("AES256", None), ("aws:kms", "alias/catalog")])
def test_server_side_encryption_is_requested(moto_server, offline_agent, tmp_path: Path,
                                             mode: str, key_id: str | None) -> None:
    # SeaweedFS answers SSE requests with InternalError without a KMS set up; moto's S3 stores
    # and reports them, which is what this test needs to see.
    s3 = moto_server.client("s3")
    bucket = "sse-" + mode.replace(":", "").lower()
    s3.create_bucket(Bucket=bucket)
    fill(tmp_path / "out", ["a"])
    extra = ["--sse-kms-key-id", key_id] if key_id else []
    ran = offline_agent("put", "a", "--run-id", "r", "--step", "s", "--s3-bucket", bucket,
                        "--server-side-encryption", mode, *extra, "--region", "us-east-1",
                        "--compute-data-folder", str(tmp_path / "out"),
                        env={"CATALOG_AGENT_ENDPOINT_URL": moto_server.endpoint,
                             "AWS_ACCESS_KEY_ID": moto_server.admin_key,
                             "AWS_SECRET_ACCESS_KEY": moto_server.admin_secret})
    assert ran.code == 0, ran.output
    for key in ("r/a", "r/.catalog-agent/manifests/s.json"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == mode
        if key_id:
            assert key_id in head.get("SSEKMSKeyId", "")


@pytest.mark.parametrize("size", [16 * 1024 * 1024 + 5, 40 * 1024 * 1024])
def test_large_files_use_multipart_and_verify(agent, tmp_path: Path, s3, bucket: str,
                                              size: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    data = os.urandom(1024 * 1024) * (size // (1024 * 1024)) + os.urandom(size % (1024 * 1024))
    (out / "big.bin").write_bytes(data)
    assert agent("put", "big.bin", "--run-id", "r", "--step", "s",
                 "--compute-data-folder", str(out)).code == 0
    assert "-" in s3.head_object(Bucket=bucket, Key="r/big.bin")["ETag"]  # multipart ETag
    got = agent("get", "big.bin", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert hashlib.sha256((tmp_path / "in" / "big.bin").read_bytes()).hexdigest() == \
        hashlib.sha256(data).hexdigest()


def test_patterns_from_the_environment(agent, tmp_path: Path) -> None:
    fill(tmp_path / "out", ["a.csv", "b.txt", "sub/c.csv"])
    env = {"CATALOG_AGENT_PUT": "*.csv, sub", "CATALOG_AGENT_GET": "**/*.csv"}
    assert agent("put", "--run-id", "r", "--step", "s", "--compute-data-folder",
                 str(tmp_path / "out"), env=env).code == 0
    assert agent("get", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"),
                 env=env).code == 0
    assert sorted(files_under(tmp_path / "in")) == ["a.csv", "sub/c.csv"]
    none = agent("get", "--run-id", "r", "--compute-data-folder", str(tmp_path / "in"))
    assert none.code == 2 and "nothing to get" in none.stderr


def test_console_log_format_is_for_people(agent, tmp_path: Path) -> None:
    fill(tmp_path / "out", ["a"])
    ran = agent("put", "a", "--run-id", "r", "--step", "s", "--log-format", "console",
                "--compute-data-folder", str(tmp_path / "out"))
    assert ran.code == 0
    line = ran.stderr.strip().splitlines()[-1]
    assert not line.startswith("{") and "put.done" in line and "files=1" in line
