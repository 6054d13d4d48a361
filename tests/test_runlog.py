"""magnus's run log as the source of expected hashes: its settings, shapes and precedence.

The shapes here are those magnus 0.4.22 writes (tests/test_magnus.py runs the real magnus);
these tests cover what a real run rarely shows: branches, later puts, get entries, bad
documents, store types magnus ships but the interop tests do not run (k8s-pvc), precedence.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from catalog_agent.errors import ConfigError
from catalog_agent.runlog import (RunLogStore, from_documents, parse_settings, path_in_run,
                                  put_entries, step_chunks)
from conftest import Agent, agent_env, log_events
from moto_support import MotoServer, moto_server  # noqa: F401 - the fixture

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64


def catalog_entry(path: str, digest: str, stage: str = "put") -> dict[str, str]:
    return {"name": path.split("/", 2)[-1], "data_hash": digest, "catalog_relative_path": path,
            "catalog_handler_location": "s://bucket", "stage": stage}


def step(name: str, *entries: dict[str, str], branches: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    return {"name": name, "internal_name": name, "status": "SUCCESS", "data_catalog": list(entries),
            "branches": branches or {}}


# --- settings (pure) ---------------------------------------------------------------------------

@pytest.mark.parametrize("section, message", [
    ("s3", "run_log_store: expected a mapping"),
    ({"config": {}}, "run_log_store.type"),
    ({"type": "s3"}, "s3_bucket is required"),
    ({"type": "chunked-s3", "config": {"prefix": "x"}}, "s3_bucket is required"),
    ({"type": "k8s-pvc", "config": {"persistent_volume_name": "v"}}, "mount_path is required"),
    ({"type": "s3", "config": {"s3_bucket": 5}}, "s3_bucket: expected a string"),
    ({"type": "file-system", "config": "x"}, "run_log_store.config: expected a mapping"),
    ({"type": "s3", "config": {"s3_bucket": "b", "prefix": "a/../b"}}, "'..'"),
])
def test_bad_sections_are_configuration_errors(section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(section, "file c.yaml")


def test_settings_read_only_what_locates_the_log() -> None:
    settings = parse_settings({"type": "s3", "config": {"s3_bucket": "b", "prefix": "/logs/",
                                                        "aws_profile": "x", "region": "y"}}, "f")
    assert settings == RunLogStore("s3", s3_bucket="b", prefix="/logs/")
    assert settings.location("r1") == "s3://b/logs/r1.json"
    assert parse_settings({"type": "chunked-s3", "config": {"s3_bucket": "b"}}, "f"
                          ).location("r1") == "s3://b/r1/"
    assert parse_settings({"type": "file-system"}, "f").location("r1") == ".run_log_store/r1.json"
    pvc = parse_settings({"type": "chunked-k8s-pvc", "config": {"mount_path": "/mnt/",
                                                                "log_folder": "logs"}}, "f")
    assert pvc.location("r1") == "/mnt/logs/r1/"
    assert parse_settings(None, "f") is None
    assert not parse_settings({"type": "buffered"}, "f").readable


# --- documents (pure) --------------------------------------------------------------------------

def test_every_put_is_taken_by_its_path_in_the_run_and_a_later_put_wins() -> None:
    run_log = {"status": "SUCCESS", "steps": {
        "make": step("make", catalog_entry("p/r1/data/a.csv", H1),
                     catalog_entry("p/r1/make", H3)),  # magnus's own step output, not data
        "par": step("par", branches={"par.b1": {"internal_name": "par.b1", "steps": {
            "par.b1.inner": step("par.b1.inner", catalog_entry("r1/data/deep/b.bin", H2))}}}),
        "use": step("use", catalog_entry("p/r1/data/a.csv", H2, stage="get")),
        "redo": step("redo", catalog_entry("p/r1/data/a.csv", H3)),
        "odd": step("odd", {"catalog_relative_path": "p/r1/data/c", "data_hash": "",
                            "stage": "put"}, catalog_entry("p/r9/data/c", H1)),
    }}
    logged = from_documents("s3://b/logs/r1.json", run_log, [], "p/r1/", "r1")
    assert logged.status == "SUCCESS"
    assert {k: (v.sha256, v.step) for k, v in logged.files.items()} == {
        "data/a.csv": (H3, "redo"), "make": (H3, "make"), "data/deep/b.bin": (H2, "par.b1.inner")}


def test_catalog_relative_path_in_both_of_magnus_forms() -> None:
    assert path_in_run("p/r1/data/x", "p/r1/", "r1") == "data/x"  # the S3 catalog: the key
    assert path_in_run("r1/data/x", "p/r1/", "r1") == "data/x"  # the file-system catalog
    assert path_in_run("r1\\data\\x", "r1/", "r1") == "data/x"  # os.sep on Windows
    assert path_in_run("p/r2/data/x", "p/r1/", "r1") is None
    assert path_in_run("p/r1/", "p/r1/", "r1") is None


def test_chunks_are_read_in_the_order_they_were_written() -> None:
    keys = ["l/r/RunLog", "l/r/StepLog-b-name-200", "l/r/StepLog-a-100", "l/r/BranchLog-x-50",
            "l/r/Parameter-p", "l/r/StepLog-c-30.json"]
    assert step_chunks(keys) == ["l/r/StepLog-c-30.json", "l/r/StepLog-a-100",
                                 "l/r/StepLog-b-name-200"]
    assert list(put_entries([step("s", catalog_entry("r/d/x", H1))])) == [("s", "r/d/x", H1)]


# --- through the CLI: file-system run logs written in magnus's shapes ---------------------------

def agent_in(offline_agent: Agent, cwd: Path) -> Agent:
    cwd.mkdir(parents=True, exist_ok=True)
    return Agent(offline_agent.env, cwd)


def write_config(path: Path, catalog: Path, run_log: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"catalog": {"type": "file-system", "config": {
        "catalog_location": str(catalog), "compute_data_folder": "data", "layout": "magnus"}},
        "run_log_store": run_log}))
    return path


def plant(catalog: Path, run_id: str, files: dict[str, bytes]) -> None:
    """Files as magnus's file-system catalog stores them: <location>/<run_id>/data/<path>."""
    for name, data in files.items():
        target = catalog / run_id / "data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def test_k8s_pvc_log_under_its_mount_path_verifies(offline_agent: Agent, tmp_path: Path) -> None:
    files = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"}
    plant(tmp_path / "cat", "r1", files)
    logs = tmp_path / "mnt" / "logs"
    logs.mkdir(parents=True)
    (logs / "r1.json").write_text(json.dumps({"run_id": "r1", "status": "SUCCESS", "steps": {
        "make": step("make", *[catalog_entry(f"r1/data/{n}", hashlib.sha256(d).hexdigest())
                               for n, d in files.items()])}}))
    config = write_config(tmp_path / "c.json", tmp_path / "cat", {"type": "k8s-pvc", "config": {
        "persistent_volume_name": "v", "mount_path": str(tmp_path / "mnt"),
        "log_folder": "logs"}})
    ran = agent_in(offline_agent, tmp_path / "pod")("get", "**", "--config", str(config),
                                                    "--run-id", "r1")
    assert ran.code == 0, ran.output
    done = next(e for e in log_events(ran.stderr) if e["event"] == "get.done")
    assert (done["files"], done["unverified"], done["verified_by_run_log"]) == (2, 0, 2)


def test_manifest_first_then_run_log_then_unverified(offline_agent: Agent, tmp_path: Path) -> None:
    """Where both exist the agent's manifest wins; a file neither records stays unverified."""
    pod = agent_in(offline_agent, tmp_path / "pod")
    config = write_config(tmp_path / "c.json", tmp_path / "cat", {"type": "file-system"})
    (tmp_path / "pod" / "data").mkdir()
    (tmp_path / "pod" / "data" / "mine.txt").write_bytes(b"agent's\n")
    put = pod("put", "mine.txt", "--config", str(config), "--run-id", "r1", "--step", "s")
    assert put.code == 0, put.output
    plant(tmp_path / "cat", "r1", {"magnus.txt": b"magnus\n", "nobody.txt": b"?\n"})
    logs = tmp_path / "pod" / ".run_log_store"  # the default, in the working directory
    logs.mkdir()
    (logs / "r1.json").write_text(json.dumps({"run_id": "r1", "status": "PROCESSING", "steps": {
        "make": step("make", catalog_entry("r1/data/magnus.txt",
                                           hashlib.sha256(b"magnus\n").hexdigest()),
                     catalog_entry("r1/data/mine.txt", H1))}}))  # stale: the manifest wins
    into = agent_in(offline_agent, tmp_path / "pod")
    ran = into("get", "**", "--config", str(config), "--run-id", "r1", "--dry-run")
    plan = {e["path"]: e for e in log_events(ran.stderr) if e["event"] == "dry-run"}
    assert {p: e.get("verified_by") for p, e in plan.items()} == {
        "magnus.txt": "run log", "nobody.txt": "", "mine.txt": None}  # mine.txt: unchanged
    assert plan["mine.txt"]["action"] == "skip"
    (tmp_path / "pod" / "data" / "mine.txt").unlink()
    got = into("get", "**", "--config", str(config), "--run-id", "r1")
    assert got.code == 0, got.output
    done = next(e for e in log_events(got.stderr) if e["event"] == "get.done")
    assert (done["files"], done["unverified"], done["verified_by_run_log"]) == (3, 1, 1)
    assert [e["path"] for e in log_events(got.stderr) if e["event"] == "unverified"] == [
        "nobody.txt"]


def test_a_run_log_that_disagrees_with_the_bytes_exits_6(offline_agent: Agent,
                                                         tmp_path: Path) -> None:
    plant(tmp_path / "cat", "r1", {"a.txt": b"real\n"})
    logs = tmp_path / "pod" / ".run_log_store"
    logs.mkdir(parents=True)
    (logs / "r1.json").write_text(json.dumps({"status": "SUCCESS", "steps": {
        "make": step("make", catalog_entry("r1/data/a.txt", H1))}}))
    config = write_config(tmp_path / "c.json", tmp_path / "cat", {"type": "file-system"})
    ran = agent_in(offline_agent, tmp_path / "pod")("get", "**", "--config", str(config),
                                                    "--run-id", "r1")
    assert ran.code == 6 and "hash mismatch" in ran.stderr, ran.output
    assert not (tmp_path / "pod" / "data" / "a.txt").exists()


@pytest.mark.parametrize("content, code, words", [
    (b"{not json", 6, "is not valid JSON"),
    (b"[1, 2]", 6, "is not a JSON object"),
])
def test_a_broken_run_log_is_refused(offline_agent: Agent, tmp_path: Path, content: bytes,
                                     code: int, words: str) -> None:
    plant(tmp_path / "cat", "r1", {"a.txt": b"a\n"})
    (tmp_path / "pod" / ".run_log_store").mkdir(parents=True)
    (tmp_path / "pod" / ".run_log_store" / "r1.json").write_bytes(content)
    config = write_config(tmp_path / "c.json", tmp_path / "cat", {"type": "file-system"})
    ran = agent_in(offline_agent, tmp_path / "pod")("get", "**", "--config", str(config),
                                                    "--run-id", "r1")
    assert ran.code == code and words in ran.stderr, ran.output
    assert "Traceback" not in ran.output and not (tmp_path / "pod" / "data").exists()


def test_missing_or_unreadable_types_leave_files_unverified(offline_agent: Agent,
                                                            tmp_path: Path) -> None:
    plant(tmp_path / "cat", "r1", {"a.txt": b"a\n"})
    pod = agent_in(offline_agent, tmp_path / "pod")
    for run_log, event in (({"type": "file-system"}, "no run log"),
                           ({"type": "buffered"}, "run log not read")):
        config = write_config(tmp_path / "c.json", tmp_path / "cat", run_log)
        ran = pod("get", "**", "--config", str(config), "--run-id", "r1", "--dry-run")
        assert ran.code == 0, ran.output
        assert any(e["event"] == event for e in log_events(ran.stderr)), ran.stderr
        (plan,) = [e for e in log_events(ran.stderr) if e["event"] == "dry-run"]
        assert plan["verified_by"] == "" and "unverified" in plan["reason"]


def test_a_bad_section_exits_2(offline_agent: Agent, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.json", tmp_path / "cat", {"type": "s3", "config": {}})
    ran = offline_agent("get", "**", "--config", str(config), "--run-id", "r1")
    assert ran.code == 2 and "s3_bucket is required for a run log store" in ran.stderr


# --- an S3 run log the agent's policy does not cover (moto: IAM policies enforced) ------------

def test_a_run_log_the_policy_does_not_cover_leaves_files_unverified(
        moto_server: MotoServer, tmp_path: Path) -> None:  # noqa: F811
    """docs/magnus.md keeps the run log under prefix logs; a role scoped to the catalog's prefix
    got AccessDenied reading it and the get failed with exit 4, where the docs promise that
    without a run log the files stay unverified."""
    import secrets

    admin = moto_server.client("s3")
    bucket = "runlog-" + secrets.token_hex(4)
    admin.create_bucket(Bucket=bucket)
    data = b"made by magnus\n"
    admin.put_object(Bucket=bucket, Key="pipes/r1/data/a.txt", Body=data)
    admin.put_object(Bucket=bucket, Key="logs/r1.json", Body=json.dumps({
        "run_id": "r1", "status": "SUCCESS", "steps": {"make": step("make", catalog_entry(
            "pipes/r1/data/a.txt", hashlib.sha256(data).hexdigest()))}}).encode())
    iam = moto_server.client("iam")
    user = "catalog-only-" + secrets.token_hex(4)
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="catalog", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": f"arn:aws:s3:::{bucket}/pipes/*"},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "catalog": {"type": "s3", "config": {
            "s3_bucket": bucket, "prefix": "pipes", "region": "us-east-1",
            "endpoint_url": moto_server.endpoint, "addressing_style": "path",
            "compute_data_folder": "data", "layout": "magnus"}},
        "run_log_store": {"type": "s3", "config": {"s3_bucket": bucket, "prefix": "logs"}}}))
    pod = tmp_path / "pod"
    pod.mkdir()

    def get(access_key: str, secret: str, *flags: str) -> Any:
        env = agent_env(tmp_path, {"AWS_ACCESS_KEY_ID": access_key,
                                   "AWS_SECRET_ACCESS_KEY": secret})
        return Agent(env, pod)("get", "**", "--config", str(config), "--run-id", "r1", *flags)

    ran = get(key["AccessKeyId"], key["SecretAccessKey"])
    assert ran.code == 0, ran.output
    (warning,) = [e for e in log_events(ran.stderr) if e["event"] == "run log not read"]
    assert warning["location"] == f"s3://{bucket}/logs/r1.json"
    assert "AccessDenied" in warning["reason"] and "stay unverified" in warning["reason"]
    assert "s3:GetObject" in warning["hint"] and "s3:ListBucket" in warning["hint"]
    done = next(e for e in log_events(ran.stderr) if e["event"] == "get.done")
    assert (done["files"], done["unverified"], done["verified_by_run_log"]) == (1, 1, 0)
    assert (pod / "data" / "a.txt").read_bytes() == data
    (pod / "data" / "a.txt").unlink()
    ran = get(key["AccessKeyId"], key["SecretAccessKey"], "--strict-verify")
    assert ran.code == 6 and "strict_verify" in ran.stderr, ran.output
    # The same get by an identity the policy lets read the log: verified from it.
    ran = get(moto_server.admin_key, moto_server.admin_secret)
    assert ran.code == 0, ran.output
    done = next(e for e in log_events(ran.stderr) if e["event"] == "get.done")
    assert (done["unverified"], done["verified_by_run_log"]) == (0, 1)
