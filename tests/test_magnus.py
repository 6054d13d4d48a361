"""Interoperability with the real magnus (magnus-extensions[aws] 0.2.13, magnus 0.4.22).

magnus runs from its own venv (.tools/magnus-venv, scripts/setup.d/40-magnus.sh, pinned with
hashes in tests/magnus/requirements.lock), real pipelines of shell tasks
(``magnus execute -f pipeline.yaml -c config.yaml --run-id ID``) against the session's SeaweedFS
and a file-system catalog. The agent and magnus read the same config.yaml (``layout: magnus``
included: magnus ignores the key). Every byte and every hash is checked both ways.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Ran, clean_env, log_events

REPO = Path(__file__).resolve().parents[1]
MAGNUS_VENV = REPO / ".tools" / "magnus-venv"
SETUP = REPO / "scripts" / "setup.d" / "40-magnus.sh"
PREFIX = "pipes"
LOG_PREFIX = "logs"
# Names as magnus handles them: nested folders, a space, an empty file. No name may contain the
# run id or the prefix: magnus's S3 get strips both with str.replace wherever they occur.
FILES = ["top.txt", "empty.txt", "raw/day-1.csv", "raw/day 2.csv", "raw/deep/e.bin"]


@pytest.fixture(scope="session")
def magnus_bin() -> Path:
    """magnus's CLI in its own venv; the setup script installs it when missing (about 10 s)."""
    done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    binary = MAGNUS_VENV / "bin" / "magnus"
    if done.returncode != 0 or not binary.is_file():
        pytest.skip(f"magnus could not be installed by {SETUP.name}: {done.stderr[-1500:]}")
    return binary


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_files(folder: Path, names: list[str] = FILES, big: bool = False) -> dict[str, bytes]:
    """Random contents (never the same twice), written under ``folder``."""
    sent: dict[str, bytes] = {}
    for name in names:
        size = 0 if name == "empty.txt" else 1 + secrets.randbelow(5000)
        sent[name] = secrets.token_bytes(size)
    if big:  # above boto3's 8 MB multipart threshold: magnus uploads it in parts
        sent["raw/big.bin"] = secrets.token_bytes(9 * 1024 * 1024 + 17)
    for name, data in sent.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return sent


@dataclass
class Interop:
    """A magnus working directory, its config.yaml, and both tools run against it."""

    root: Path
    env: dict[str, str]
    bucket: str
    magnus_bin: Path
    s3: Any
    run_id: str = field(default_factory=lambda: "interop-" + secrets.token_hex(4))

    def config(self, *, catalog: str = "s3", run_log: str = "s3",
               run_log_config: dict[str, Any] | None = None) -> Path:
        """One config.yaml for magnus and the agent (its keys are magnus's, plus layout)."""
        aws = {"aws_profile": "default", "region": "us-east-1"}
        if catalog == "s3":
            catalog_config = {"s3_bucket": self.bucket, "prefix": PREFIX, **aws}
        else:
            catalog_config = {"catalog_location": str(self.root / "catalog")}
        catalog_config.update({"compute_data_folder": "data", "layout": "magnus"})
        if run_log in ("s3", "chunked-s3"):
            log_config = {"s3_bucket": self.bucket, "prefix": LOG_PREFIX, **aws}
        else:
            log_config = dict(run_log_config or {})
        document = {"catalog": {"type": catalog, "config": catalog_config},
                    "run_log_store": {"type": run_log, "config": log_config}}
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def magnus(self, steps: list[dict[str, Any]], *, expect: str = "SUCCESS") -> str:
        """Run a pipeline of shell tasks; returns magnus's output."""
        dag: dict[str, Any] = {"start_at": steps[0]["name"], "steps": {}}
        for index, step in enumerate(steps):
            entry = {"type": "task", "command_type": "shell", "command": step["command"],
                     "next": steps[index + 1]["name"] if index + 1 < len(steps) else "success"}
            if step.get("catalog"):
                entry["catalog"] = step["catalog"]
            dag["steps"][step["name"]] = entry
        dag["steps"]["success"] = {"type": "success"}
        dag["steps"]["fail"] = {"type": "fail"}
        (self.root / "pipeline.yaml").write_text(yaml.safe_dump({"dag": dag}, sort_keys=False))
        started = time.monotonic()
        done = subprocess.run(
            [str(self.magnus_bin), "execute", "-f", "pipeline.yaml", "-c", "config.yaml",
             "--run-id", self.run_id], cwd=self.root, env=self.env, capture_output=True,
            text=True, timeout=600)
        output = done.stdout + done.stderr
        status = self.run_log_status()
        assert status == expect, f"magnus run {status} ({time.monotonic() - started:.1f} s):\n" \
                                 f"{output[-6000:]}"
        return output

    def run_log_status(self) -> str:
        """The status magnus recorded, read from whichever store the config names."""
        config = yaml.safe_load((self.root / "config.yaml").read_text())
        kind = config["run_log_store"]["type"]
        if kind == "s3":
            doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"{LOG_PREFIX}/"
                                                f"{self.run_id}.json")["Body"].read())
        elif kind == "chunked-s3":
            doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"{LOG_PREFIX}/"
                                                f"{self.run_id}/RunLog")["Body"].read())
        else:
            folder = Path(config["run_log_store"]["config"].get("log_folder", ".run_log_store"))
            folder = folder if folder.is_absolute() else self.root / folder
            path = folder / self.run_id / "RunLog.json" if kind == "chunked-fs" else \
                folder / f"{self.run_id}.json"
            doc = json.loads(path.read_text())
        return str(doc["status"])

    def put_hashes(self) -> dict[str, str]:
        """magnus's run log (the s3 store) read independently: catalog path -> data_hash."""
        doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"{LOG_PREFIX}/"
                                            f"{self.run_id}.json")["Body"].read())
        return {item["catalog_relative_path"]: item["data_hash"]
                for step in doc["steps"].values() for item in step["data_catalog"]
                if item["stage"] == "put"}

    def get_hashes(self, step: str) -> dict[str, str]:
        doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=f"{LOG_PREFIX}/"
                                            f"{self.run_id}.json")["Body"].read())
        return {item["name"]: item["data_hash"] for item in doc["steps"][step]["data_catalog"]
                if item["stage"] == "get"}

    def agent(self, *args: str, cwd: Path) -> Ran:
        cwd.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "catalog_agent", *args, "--config",
                               str(self.root / "config.yaml"), "--run-id", self.run_id],
                              cwd=cwd, env=self.env, capture_output=True, text=True, timeout=300)
        return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def interop(tmp_path: Path, magnus_bin: Path, s3_server, bucket: str, s3) -> Interop:  # noqa: ANN001
    """magnus's working directory with a [default] profile for both tools (magnus-extensions
    fails with ProfileNotFound on the documented empty aws_profile)."""
    root = tmp_path / "magnus"
    root.mkdir()
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n")
    env = clean_env(home)
    env.update({"AWS_ENDPOINT_URL": s3_server.endpoint,  # magnus's S3 code has no endpoint key
                "CATALOG_AGENT_LOG_FORMAT": "json",
                "CATALOG_AGENT_TERMINATION_LOG": str(tmp_path / "termination-log"),
                "PYTHONWARNINGS": "ignore"})  # magnus's pkg_resources deprecation warning
    return Interop(root, env, bucket, magnus_bin, s3)


def summary(ran: Ran, command: str) -> dict[str, Any]:
    events = [e for e in log_events(ran.stderr) if e.get("event") == f"{command}.done"]
    assert len(events) == 1, ran.output
    return events[0]


def assert_verified_from_the_run_log(ran: Ran, count: int) -> None:
    """Every file fetched and verified against magnus's hash: none logged unverified."""
    assert ran.code == 0, ran.output
    events = log_events(ran.stderr)
    assert [e for e in events if e.get("event") == "unverified"] == [], ran.stderr
    done = summary(ran, "get")
    assert (done["files"], done["unverified"], done["verified_by_run_log"]) == (count, 0, count)
    assert done["run_log"], done


# --- magnus puts, the agent gets ---------------------------------------------------------------

MAGNUS_PUTS = [
    # (catalog, run log store, a big file, the agent runs in magnus's working directory and
    # finds the default .run_log_store there; else a separate folder, and file-system logs in
    # an absolute log_folder)
    pytest.param("s3", "s3", True, False, id="s3-catalog-s3-log"),
    pytest.param("s3", "file-system", False, True, id="s3-catalog-file-system-log"),
    pytest.param("s3", "chunked-s3", False, False, id="s3-catalog-chunked-s3-log"),
    pytest.param("file-system", "file-system", False, False, id="fs-catalog-file-system-log"),
    pytest.param("file-system", "chunked-fs", False, False, id="fs-catalog-chunked-fs-log"),
]


@pytest.mark.parametrize("catalog, run_log, big, same_dir", MAGNUS_PUTS)
def test_magnus_puts_the_agent_gets_every_file_verified(interop: Interop, catalog: str,
                                                        run_log: str, big: bool,
                                                        same_dir: bool) -> None:
    absolute = run_log in ("file-system", "chunked-fs") and not same_dir
    interop.config(catalog=catalog, run_log=run_log, run_log_config={
        "log_folder": str(interop.root / "run-logs")} if absolute else None)
    sent = make_files(interop.root / "src", big=big)
    interop.magnus([{"name": "make", "command": "mkdir -p data && cp -R src/. data/",
                     "catalog": {"put": ["**/*"]}}])
    if catalog == "s3":  # magnus's layout: <prefix>/<run_id>/<compute_data_folder>/<path>
        keys = [o["Key"] for o in interop.s3.list_objects_v2(
            Bucket=interop.bucket, Prefix=f"{PREFIX}/{interop.run_id}/data/")["Contents"]]
        assert sorted(keys) == sorted(f"{PREFIX}/{interop.run_id}/data/{n}" for n in sent)
    else:
        assert files_under(interop.root / "catalog" / interop.run_id / "data") == sent
    if run_log == "s3":  # magnus's record, read independently: the whole key and its hash
        assert {k: v for k, v in interop.put_hashes().items() if "/data/" in k} == {
            f"{PREFIX}/{interop.run_id}/data/{n}": sha256(d) for n, d in sent.items()}

    if same_dir:  # the next pod mounts the same working directory: .run_log_store is found
        shutil.rmtree(interop.root / "data")
        where = interop.root
    else:
        where = interop.root.parent / "agent-pod"
    got = interop.agent("get", "**", cwd=where)
    assert_verified_from_the_run_log(got, len(sent))
    assert files_under(where / "data") == sent
    events = log_events(got.stderr)
    (read,) = [e for e in events if e.get("event") == "run log read"]
    assert (read["run_status"], read["hashes"]) == ("SUCCESS", len(sent)), read

    again = interop.agent("get", "**", cwd=where)  # a restarted init container: all verified
    assert (summary(again, "get")["files"], summary(again, "get")["skipped"]) == (0, len(sent))


def test_a_tampered_object_magnus_recorded_is_refused(interop: Interop) -> None:
    interop.config()
    sent = make_files(interop.root / "src")
    interop.magnus([{"name": "make", "command": "mkdir -p data && cp -R src/. data/",
                     "catalog": {"put": ["**/*"]}}])
    key = f"{PREFIX}/{interop.run_id}/data/raw/day-1.csv"
    interop.s3.put_object(Bucket=interop.bucket, Key=key, Body=b"forged," + sent["raw/day-1.csv"])
    where = interop.root.parent / "agent-pod"
    got = interop.agent("get", "raw/day-1.csv", cwd=where)
    assert got.code == 6, got.output
    errors = [e for e in log_events(got.stderr) if e["level"] == "error"]
    assert len(errors) == 1 and "hash mismatch" in errors[0]["event"] and key in errors[0]["event"]
    assert not (where / "data" / "raw" / "day-1.csv").exists()
    assert not (where / "data").exists() or files_under(where / "data") == {}
    assert "Traceback" not in got.output


def test_without_a_run_log_magnus_files_stay_unverified(interop: Interop) -> None:
    """The same catalog with no run_log_store section: fetched, but logged unverified."""
    interop.config()
    sent = make_files(interop.root / "src", names=["top.txt", "raw/day-1.csv"])
    interop.magnus([{"name": "make", "command": "mkdir -p data && cp -R src/. data/",
                     "catalog": {"put": ["**/*"]}}])
    config = yaml.safe_load((interop.root / "config.yaml").read_text())
    del config["run_log_store"]
    (interop.root / "config.yaml").write_text(yaml.safe_dump(config))
    got = interop.agent("get", "**", cwd=interop.root.parent / "agent-pod")
    assert got.code == 0, got.output
    unverified = sorted(e["path"] for e in log_events(got.stderr) if e["event"] == "unverified")
    assert unverified == sorted(sent)
    assert summary(got, "get")["unverified"] == len(sent)


# --- the agent puts, magnus gets ---------------------------------------------------------------

@pytest.mark.parametrize("catalog", ["s3", "file-system"])
def test_the_agent_puts_magnus_next_step_gets(interop: Interop, catalog: str) -> None:
    interop.config(catalog=catalog, run_log="s3")
    pod = interop.root.parent / "agent-pod"
    sent = make_files(pod / "data")
    put = interop.agent("put", "**", "--step", "prepare", cwd=pod)
    assert put.code == 0, put.output
    if catalog == "s3":
        keys = {o["Key"] for o in interop.s3.list_objects_v2(
            Bucket=interop.bucket, Prefix=f"{PREFIX}/{interop.run_id}/")["Contents"]}
        assert {f"{PREFIX}/{interop.run_id}/data/{n}" for n in sent} <= keys
    # magnus's get checks every byte itself (sha256sum -c) before the step may succeed.
    lines = "".join(f"{sha256(d)}  data/{n}\n" for n, d in sent.items())
    (interop.root / "expected.sha256").write_text(lines)
    for name in sent:  # magnus's S3 get writes into existing folders only
        (interop.root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
    # magnus's S3 get takes '*' as everything in the data folder; its file-system get globs.
    pattern = "*" if catalog == "s3" else "**/*"
    interop.magnus([{"name": "use", "command": "sha256sum -c expected.sha256",
                     "catalog": {"get": [pattern]}}])
    assert files_under(interop.root / "data") == sent
    if catalog == "s3":
        assert interop.get_hashes("use") == {f"data/{n}": sha256(d) for n, d in sent.items()}


# --- one run, both tools ---------------------------------------------------------------------

def test_a_run_that_mixes_magnus_and_agent_steps(interop: Interop) -> None:
    """magnus puts; a step running the agent (as a pod would) gets them verified from the run
    log of the run in progress, transforms and puts; magnus's next step gets the result."""
    interop.config()
    sent = make_files(interop.root / "src", names=["raw/day-1.csv", "raw/day 2.csv", "top.txt"])
    combined = sent["raw/day 2.csv"] + sent["raw/day-1.csv"]  # sorted by name
    agent = f"{sys.executable} -m catalog_agent"
    common = f"--config ../config.yaml --run-id {interop.run_id}"
    transform = (f"cd pod && {agent} get 'raw/*' {common} 2> get.log && mkdir -p data/out && "
                 f"cat data/raw/*.csv > data/out/combined.csv && "
                 f"{agent} put 'out/**' --step transform {common} 2> put.log")
    (interop.root / "pod").mkdir()
    (interop.root / "data" / "out").mkdir(parents=True)  # for magnus's get (no mkdir)
    (interop.root / "expected.sha256").write_text(f"{sha256(combined)}  data/out/combined.csv\n")
    interop.magnus([
        {"name": "generate", "command": "mkdir -p data && cp -R src/. data/",
         "catalog": {"put": ["**/*"]}},
        {"name": "transform", "command": transform},
        {"name": "check", "command": "sha256sum -c expected.sha256",
         "catalog": {"get": ["out/*"]}},
    ])
    get_log = (interop.root / "pod" / "get.log").read_text()
    got = Ran(0, "", get_log)
    assert_verified_from_the_run_log(got, 2)
    (read,) = [e for e in log_events(get_log) if e.get("event") == "run log read"]
    assert read["run_status"] == "PROCESSING"  # read while magnus's run was going on
    assert files_under(interop.root / "pod" / "data" / "raw") == {
        n.removeprefix("raw/"): d for n, d in sent.items() if n.startswith("raw/")}
    assert (interop.root / "data" / "out" / "combined.csv").read_bytes() == combined
    assert interop.get_hashes("check") == {"data/out/combined.csv": sha256(combined)}
    manifest = json.loads(interop.s3.get_object(
        Bucket=interop.bucket, Key=f"{PREFIX}/{interop.run_id}/.catalog-agent/manifests/"
                                   f"transform.json")["Body"].read())
    assert [(f["name"], f["data_hash"], f["catalog_relative_path"]) for f in manifest["files"]] \
        == [("out/combined.csv", sha256(combined), f"{interop.run_id}/data/out/combined.csv")]



# --- the pattern rule, as magnus's own put applies it -------------------------------------------

PATTERN_TREE = ["top.csv", "notes.txt", "x.csv/inner.txt", "raw/a.csv", "raw/b.txt",
                "raw/deep/c.csv"]


@pytest.mark.parametrize("pattern", ["*", "*.csv", "raw/*", "raw/*.csv", "**/*.csv"])
def test_a_pattern_puts_what_magnus_puts(interop: Interop, pattern: str) -> None:
    """The same pattern in a step's catalog put (magnus) and on the agent's put: the same files,
    a folder named like a wildcard's match (x.csv/) taken by neither."""
    interop.config(catalog="file-system", run_log="file-system")
    make_files(interop.root / "src", names=PATTERN_TREE)
    interop.magnus([{"name": "make", "command": "mkdir -p data && cp -R src/. data/",
                     "catalog": {"put": [pattern]}}])
    by_magnus = files_under(interop.root / "catalog" / interop.run_id / "data")
    interop.run_id += "-agent"
    put = interop.agent("put", pattern, "--step", "make", cwd=interop.root)
    assert put.code == 0, put.output
    by_agent = files_under(interop.root / "catalog" / interop.run_id / "data")
    assert sorted(by_agent) == sorted(by_magnus)
    assert by_agent == by_magnus
    expected = {"*": ["notes.txt", "top.csv"], "*.csv": ["top.csv"],
                "raw/*": ["raw/a.csv", "raw/b.txt"], "raw/*.csv": ["raw/a.csv"],
                "**/*.csv": ["raw/a.csv", "raw/deep/c.csv", "top.csv"]}[pattern]
    assert sorted(by_agent) == expected
