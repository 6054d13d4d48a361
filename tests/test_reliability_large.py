"""Faults where they hurt: on the multipart parts, the CompleteMultipartUpload and the ranged
GET parts of a 64 MiB object, through the streaming fault proxy (tests/faultproxy.py) in front
of the session's SeaweedFS, with the real CLI.

Either the command completes with every hash right (the bucket's objects read back and hashed,
the data folder's files hashed, the manifest's hashes) and the faults counted as retries in
``put.done``/``get.done``, or, when the faults persist, it exits 5 with nothing partial: no
manifest, no large object, no unfinished multipart upload, no file or temporary file in the
data folder (a small file put whole before the failure may stay in the bucket, as after any
failed put: without a manifest the step does not look done). The proxy's counters show each
fault really happened, on the kind of request named.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import Agent, Ran, agent_env, log_events
from faultproxy import FaultProxy, Rule

from catalog_agent.stores.s3 import ABORT_SECONDS
from catalog_agent.stores.s3_client import SETTLE_AFTER_STOP

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LARGE = "model/weights.bin"
SMALL = "model/config.json"
LARGE_SIZE = 64 * MiB + 777_777  # not a whole number of parts: the last part is short
STEP = "train"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A data folder with one 64 MiB file and one small one; relative path -> SHA-256."""
    folder = tmp_path_factory.mktemp("large") / "out"
    (folder / "model").mkdir(parents=True)
    digest = hashlib.sha256()
    with open(folder / LARGE, "wb") as out:
        left = LARGE_SIZE
        while left:
            block = os.urandom(min(4 * MiB, left))
            out.write(block)
            digest.update(block)
            left -= len(block)
    small = json.dumps({"layers": 12, "note": "beside the weights"}).encode()
    (folder / SMALL).write_bytes(small)
    return folder, {LARGE: digest.hexdigest(), SMALL: hashlib.sha256(small).hexdigest()}


def agent_on(server: Any, tmp_path: Path, bucket: str) -> Agent:
    """The CLI for ``bucket`` (as the ``agent`` fixture makes it, for a bucket of our own)."""
    return Agent(agent_env(tmp_path, server.env, {
        "CATALOG_AGENT_S3_BUCKET": bucket, "CATALOG_AGENT_REGION": "us-east-1",
        "CATALOG_AGENT_ADDRESSING_STYLE": "path"}), tmp_path)


@pytest.fixture(scope="module")
def stored(s3_server: Any, data: tuple[Path, dict[str, str]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bucket holding run ``stored`` of the data folder, put without faults; its name."""
    name = "large-" + os.urandom(4).hex()
    s3_server.create_bucket(name)
    folder, hashes = data
    put = agent_on(s3_server, tmp_path_factory.mktemp("stored"), name)(
        "put", "**", "--run-id", "stored", "--step", STEP, "--compute-data-folder", str(folder))
    assert put.code == 0, put.output[-3000:]
    check_put_complete(s3_server.client(), name, "stored", hashes)
    yield name
    s3_server.client().delete_bucket(Bucket=name)


def through(proxy: FaultProxy, attempts: int = 5) -> dict[str, str]:
    return {"CATALOG_AGENT_ENDPOINT_URL": proxy.endpoint, "AWS_ENDPOINT_URL_S3": proxy.endpoint,
            "CATALOG_AGENT_MAX_ATTEMPTS": str(attempts)}


def upstream(server: Any) -> int:
    return int(server.endpoint.rsplit(":", 1)[1])


def done_event(ran: Ran, command: str) -> dict[str, Any]:
    found = [e for e in log_events(ran.stderr) if e.get("event") == f"{command}.done"]
    assert found, f"no {command}.done event in:\n{ran.stderr[-3000:]}"
    return found[-1]


def stored_sha256(s3: Any, bucket: str, key: str) -> str:
    """The object's bytes, read back from the server (not through the proxy) and hashed."""
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
        digest.update(chunk)
    return digest.hexdigest()


def unfinished_uploads(s3: Any, bucket: str) -> list[tuple[str, str]]:
    return [(u["Key"], u["UploadId"])
            for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def check_put_complete(s3: Any, bucket: str, run: str, hashes: dict[str, str]) -> None:
    """Every object hashes right, as do its metadata and the manifest; no upload is left."""
    manifest = json.loads(s3.get_object(
        Bucket=bucket, Key=f"{run}/.catalog-agent/manifests/{STEP}.json")["Body"].read())
    assert {f["name"]: f["data_hash"] for f in manifest["files"]} == hashes
    for relative, sha in hashes.items():
        key = f"{run}/{relative}"
        assert stored_sha256(s3, bucket, key) == sha, key
        assert s3.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"] == sha, key
    assert unfinished_uploads(s3, bucket) == []


def check_nothing_partial(s3: Any, bucket: str, run: str, hashes: dict[str, str]) -> None:
    """No manifest (the step does not look done), no large object, no unfinished multipart
    upload; a small file put before the failure may stay, whole (the next put rewrites it)."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{run}/").get("Contents", [])
    keys = {o["Key"] for o in listed}
    assert keys <= {f"{run}/{SMALL}"}, keys
    for key in keys:
        assert stored_sha256(s3, bucket, key) == hashes[SMALL]
    assert unfinished_uploads(s3, bucket) == []


def check_failed_cleanly(ran: Ran, tmp_path: Path) -> None:
    """Exit 5 with one error line (no traceback) and the error in the termination message."""
    assert ran.code == 5, ran.output[-3000:]
    errors = [e for e in log_events(ran.stderr) if e.get("level") == "error"]
    assert len(errors) == 1 and errors[0].get("exit_code") == 5, ran.stderr[-3000:]
    assert "Traceback" not in ran.output
    assert (tmp_path / "termination-log").read_text().strip()


def files_in(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` (hidden temporary files too) -> its SHA-256."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() or path.is_symlink():
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                while block := source.read(4 * MiB):
                    digest.update(block)
            found[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return found


def forced(proxy: FaultProxy) -> int:
    """Faults that each cost the client a retry (a delay costs none)."""
    return sum(n for fault, n in proxy.injected.items() if fault != "delay")


# --- faults that pass: the command completes, every hash right, the retries counted ---

def test_put_survives_faults_on_create_and_part_uploads(agent: Agent, s3_server: Any, s3: Any,
                                                        bucket: str, data) -> None:
    folder, hashes = data
    rules = [Rule("slowdown", "create", limit=1),
             Rule("slowdown", "part_upload", match="('partNumber', '2')", limit=2),  # twice
             Rule("internal", "part_upload", limit=1),
             Rule("reset", "part_upload", limit=1),
             Rule("reset_request", "part_upload", limit=1),  # half the part, then a reset
             Rule("reset_request", "part_upload", limit=1, cut_after=100_000),
             Rule("lost_answer", "part_upload", limit=1),  # stored, but the client never knew
             Rule("delay", "part_upload", rate=0.3, max_delay=0.5),
             Rule("internal", "put", limit=1)]  # the small file or the manifest
    with FaultProxy(upstream(s3_server), rules=rules, seed=12) as proxy:
        put = agent("put", "**", "--run-id", "parts", "--step", STEP, "--compute-data-folder",
                    str(folder), env=through(proxy), timeout=600)
    assert put.code == 0, put.output[-3000:]
    check_put_complete(s3, bucket, "parts", hashes)
    print(f"part faults: {dict(proxy.plan.hits)}; seen {dict(proxy.seen)}; "
          f"retries counted {done_event(put, 'put')['retries']}")
    assert proxy.count("create", "slowdown") == 1
    assert proxy.count("part_upload", "slowdown") == 2
    for fault, times in (("internal", 1), ("reset", 1), ("reset_request", 2),
                         ("lost_answer", 1)):
        assert proxy.count("part_upload", fault) == times, (fault, dict(proxy.plan.hits))
    assert proxy.count("put", "internal") == 1
    assert proxy.seen["part_upload"] >= 2 + 7  # a multipart upload, and every fault retried
    assert done_event(put, "put")["retries"] >= forced(proxy) == 9


def test_put_survives_faults_on_complete_multipart_upload(agent: Agent, s3_server: Any,
                                                          s3: Any, bucket: str, data) -> None:
    """500, a reset before the answer, then the answer lost after S3 completed the upload
    (the retried Complete of a completed upload is answered 200, by SeaweedFS as by S3)."""
    folder, hashes = data
    rules = [Rule("internal", "complete", limit=1), Rule("reset", "complete", limit=1),
             Rule("lost_answer", "complete", limit=1)]
    with FaultProxy(upstream(s3_server), rules=rules, seed=13) as proxy:
        put = agent("put", "**", "--run-id", "complete", "--step", STEP,
                    "--compute-data-folder", str(folder), env=through(proxy), timeout=600)
    assert put.code == 0, put.output[-3000:]
    check_put_complete(s3, bucket, "complete", hashes)
    assert proxy.plan.hits == {("complete", "internal"): 1, ("complete", "reset"): 1,
                               ("complete", "lost_answer"): 1}
    assert proxy.seen["complete"] == 4
    assert done_event(put, "put")["retries"] >= 3


def test_put_retries_a_complete_multipart_upload_answered_200_with_an_error(
        agent: Agent, s3_server: Any, s3: Any, bucket: str, data) -> None:
    """S3 may answer CompleteMultipartUpload 200 OK with an <Error> body; botocore retries
    that (tests/test_faultproxy.py shows it), and so must the agent."""
    folder, hashes = data
    with FaultProxy(upstream(s3_server), rules=[Rule("error_200", "complete", limit=1)],
                    seed=14) as proxy:
        put = agent("put", "**", "--run-id", "c200", "--step", STEP, "--compute-data-folder",
                    str(folder), env=through(proxy), timeout=600)
    assert proxy.count("complete", "error_200") == 1
    assert put.code == 0, put.output[-3000:]
    check_put_complete(s3, bucket, "c200", hashes)
    assert proxy.seen["complete"] == 2
    assert done_event(put, "put")["retries"] >= 1


def _put_stopped_while_creating(agent: Agent, s3_server: Any, s3: Any, bucket: str,
                                folder: Path, run: str, hold: float) -> tuple[float, Any]:
    """A put whose CreateMultipartUpload the server has done but whose answer (the upload's
    id) the proxy holds back ``hold`` seconds; SIGTERM while it is held. (seconds from the
    signal to the exit, the proxy)."""
    rules = [Rule("delay", "create", limit=1, min_delay=hold, max_delay=hold)]
    with FaultProxy(upstream(s3_server), rules=rules, seed=16) as proxy:
        put = subprocess.Popen(
            [sys.executable, "-m", "catalog_agent", "put", "**", "--run-id", run, "--step",
             STEP, "--compute-data-folder", str(folder)],
            env={**agent.env, **through(proxy), "CATALOG_AGENT_CONCURRENCY": "1"},
            cwd=agent.cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not unfinished_uploads(s3, bucket):  # created; its answer is being held
                assert put.poll() is None and time.monotonic() < deadline, put.communicate()
                time.sleep(0.05)
            put.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            out, err = put.communicate(timeout=120)
            stopped = time.monotonic() - signalled
        finally:
            put.kill()
    assert put.returncode == 143, (out + err)[-3000:]
    assert "Traceback" not in out + err
    assert proxy.seen["create"] == 1  # (a delay is counted when it ends)
    assert f"{run}/.catalog-agent/manifests/{STEP}.json" not in {
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    return stopped, proxy


def test_sigterm_while_an_upload_is_being_created_still_aborts_it(
        agent: Agent, s3_server: Any, s3: Any, bucket: str, data) -> None:
    """The answer comes within the settle time after SIGTERM: the put learns the upload's id
    and aborts it, instead of leaving an upload nobody knows of."""
    stopped, proxy = _put_stopped_while_creating(agent, s3_server, s3, bucket, data[0],
                                                 "held", hold=2.0)
    assert proxy.count("create", "delay") == 1
    assert proxy.seen["abort"] >= 1, dict(proxy.seen)
    assert unfinished_uploads(s3, bucket) == []
    assert stopped < SETTLE_AFTER_STOP + ABORT_SECONDS


def test_sigterm_while_an_upload_is_created_too_slowly_leaves_it_to_the_next_put(
        agent: Agent, s3_server: Any, s3: Any, bucket: str, data) -> None:
    """An answer held past the settle time is given up (the pod's grace period comes first):
    the put still stops with 143, and the step's next put aborts the upload left behind."""
    folder, hashes = data
    stopped, proxy = _put_stopped_while_creating(agent, s3_server, s3, bucket, folder, "slow",
                                                 hold=SETTLE_AFTER_STOP + 15)
    assert stopped < SETTLE_AFTER_STOP + 5, stopped  # not the 20 s of the held answer
    assert proxy.seen["abort"] == 0, dict(proxy.seen)
    assert len(unfinished_uploads(s3, bucket)) == 1
    again = agent("put", "**", "--run-id", "slow", "--step", STEP, "--compute-data-folder",
                  str(folder), timeout=600)
    assert again.code == 0, again.output[-3000:]
    check_put_complete(s3, bucket, "slow", hashes)  # no unfinished upload among them


def test_get_survives_faults_on_ranged_parts(s3_server: Any, stored: str, data,
                                             tmp_path: Path) -> None:
    _, hashes = data
    into = tmp_path / "in"
    rules = [Rule("slowdown", "list", limit=1),
             Rule("reset_body", "get", limit=1),  # the manifest, cut halfway
             # The first part (fetched alone, before the others start) twice, then passing.
             Rule("internal", "ranged_get", match="bytes=0-", limit=2),
             # The other parts, as they run in parallel.
             *[Rule(fault, "ranged_get", exclude="bytes=0-", limit=1, cut_after=cut)
               for fault, cut in (("slowdown", None), ("internal", None), ("reset", None),
                                  ("lost_answer", None),
                                  ("reset_body", None), ("reset_body", None),  # cut halfway
                                  ("reset_body", 1))],  # cut after the first byte
             Rule("delay", "ranged_get", rate=0.3, max_delay=0.5)]
    with FaultProxy(upstream(s3_server), rules=rules, seed=15) as proxy:
        got = agent_on(s3_server, tmp_path, stored)(
            "get", "**", "--run-id", "stored", "--compute-data-folder", str(into),
            env=through(proxy), timeout=600)
    assert got.code == 0, got.output[-3000:]
    assert files_in(into) == hashes
    print(f"ranged faults: {dict(proxy.plan.hits)}; seen {dict(proxy.seen)}; "
          f"retries counted {done_event(got, 'get')['retries']}")
    assert proxy.count("list", "slowdown") == 1 and proxy.count("get", "reset_body") == 1
    for fault, times in (("slowdown", 1), ("internal", 3), ("reset", 1), ("lost_answer", 1),
                         ("reset_body", 3)):
        assert proxy.count("ranged_get", fault) == times, (fault, dict(proxy.plan.hits))
    assert proxy.seen["ranged_get"] >= 2 + 9  # ranged parts, and every fault retried
    assert done_event(got, "get")["retries"] >= forced(proxy) == 11


# --- faults that persist: exit 5 and nothing partial ---

@pytest.mark.parametrize("fault", ["slowdown", "reset_request"])
def test_put_exits_5_and_leaves_nothing_when_every_part_upload_fails(
        fault: str, agent: Agent, s3_server: Any, s3: Any, bucket: str, data,
        tmp_path: Path) -> None:
    folder, hashes = data
    with FaultProxy(upstream(s3_server), rules=[Rule(fault, "part_upload")], seed=16) as proxy:
        put = agent("put", "**", "--run-id", "doomed", "--step", STEP, "--compute-data-folder",
                    str(folder), env=through(proxy, attempts=2), timeout=600)
    check_failed_cleanly(put, tmp_path)
    assert proxy.count("part_upload", fault) >= 2 and proxy.seen["complete"] == 0
    check_nothing_partial(s3, bucket, "doomed", hashes)
    assert files_in(folder) == hashes  # the source is untouched


@pytest.mark.parametrize("fault", ["internal", "error_200"])
def test_put_exits_5_and_leaves_nothing_when_every_complete_fails(
        fault: str, agent: Agent, s3_server: Any, s3: Any, bucket: str, data,
        tmp_path: Path) -> None:
    folder, hashes = data
    with FaultProxy(upstream(s3_server), rules=[Rule(fault, "complete")], seed=17) as proxy:
        put = agent("put", "**", "--run-id", "doomed", "--step", STEP, "--compute-data-folder",
                    str(folder), env=through(proxy, attempts=2), timeout=600)
    check_failed_cleanly(put, tmp_path)
    assert proxy.count("complete", fault) >= 1 and proxy.seen["abort"] >= 1
    check_nothing_partial(s3, bucket, "doomed", hashes)


@pytest.mark.parametrize("fault", ["slowdown", "reset_body"])
def test_get_exits_5_and_leaves_nothing_when_every_ranged_part_fails(
        fault: str, s3_server: Any, stored: str, tmp_path: Path) -> None:
    into = tmp_path / "in"
    with FaultProxy(upstream(s3_server), rules=[Rule(fault, "ranged_get")], seed=18) as proxy:
        got = agent_on(s3_server, tmp_path, stored)(
            "get", LARGE, "--run-id", "stored", "--compute-data-folder", str(into),
            env=through(proxy, attempts=2), timeout=600)
    check_failed_cleanly(got, tmp_path)
    assert proxy.count("ranged_get", fault) >= 2
    assert files_in(into) == {}  # no file, no temporary file
