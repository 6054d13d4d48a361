"""A faulty network between the agent and a real SeaweedFS: 503s, 500s, resets and delays.

The proxy (tests/faultproxy.py) injects the faults; the agent must retry per request, never
restart the whole transfer, and end with every byte verified and the retries counted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from conftest import log_events
from faultproxy import FaultProxy, Rates

FILES = 500


events = log_events


def done_event(stderr: str, command: str) -> dict:
    found = [e for e in events(stderr) if e.get("event") == f"{command}.done"]
    assert found, f"no {command}.done event in:\n{stderr[-3000:]}"
    return found[-1]


def no_secret(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def make_files(folder: Path, count: int) -> dict[str, str]:
    """``count`` files of varied sizes (0 B to ~40 KiB) in a few folders; returns path -> sha256."""
    hashes = {}
    for index in range(count):
        relative = f"part-{index % 7}/file-{index:04d}.bin"
        data = os.urandom((index * 811) % 40_000)
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hashes[relative] = hashlib.sha256(data).hexdigest()
    return hashes


def test_put_and_get_of_500_files_survive_a_faulty_network(agent, s3_server, tmp_path: Path,
                                                           s3, bucket) -> None:
    out, into = tmp_path / "out", tmp_path / "in"
    hashes = make_files(out, FILES)
    upstream = int(s3_server.endpoint.rsplit(":", 1)[1])
    rates = Rates(slowdown=0.06, internal=0.04, reset=0.04, reset_body=0.04, delay=0.08)
    with FaultProxy(upstream, rates, seed=9) as proxy:
        env = {"CATALOG_AGENT_ENDPOINT_URL": proxy.endpoint,
               "AWS_ENDPOINT_URL_S3": proxy.endpoint,
               "CATALOG_AGENT_MAX_ATTEMPTS": "10", "CATALOG_AGENT_CONCURRENCY": "8"}
        put = agent("put", "**", "--run-id", "net", "--step", "make",
                    "--compute-data-folder", str(out), env=env, timeout=600)
        assert put.code == 0, put.output[-3000:]
        put_requests = proxy.requests
        put_faults = sum(proxy.injected.values())
        got = agent("get", "**", "--run-id", "net", "--compute-data-folder", str(into),
                    env=env, timeout=600)
        assert got.code == 0, got.output[-3000:]
        faults = dict(proxy.injected)

    # The proxy really did inject faults of every kind, on both commands.
    assert all(faults.get(kind, 0) > 0 for kind in ("slowdown", "internal", "reset",
                                                    "reset_body", "delay")), faults
    assert put_faults > 0 and sum(faults.values()) > put_faults
    assert proxy.requests > put_requests

    # Every file arrived, and its bytes hash to what was put; no temporary file is left.
    arrived = {p.relative_to(into).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in into.rglob("*") if p.is_file()}
    assert arrived == hashes

    # What is stored hashes right too (bypassing the proxy), and the manifest lists it all.
    manifest = json.loads(s3.get_object(Bucket=bucket,
                                        Key="net/.catalog-agent/manifests/make.json")["Body"].read())
    assert {f["name"]: f["data_hash"] for f in manifest["files"]} == hashes
    sample = sorted(hashes)[::50]
    for relative in sample:
        body = s3.get_object(Bucket=bucket, Key=f"net/{relative}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashes[relative]

    # The summary events count the retries the faults forced.
    put_done, get_done = done_event(put.stderr, "put"), done_event(got.stderr, "get")
    print(f"faults injected {faults} over {proxy.requests} requests; retries counted: "
          f"put {put_done['retries']}, get {get_done['retries']}")
    assert put_done["files"] == FILES and get_done["files"] == FILES
    assert put_done["retries"] > 0 and get_done["retries"] > 0
    # Every fault costs at least one retry (a delay costs none).
    forced = sum(v for k, v in faults.items() if k != "delay")
    assert put_done["retries"] + get_done["retries"] >= forced * 0.9
    no_secret(s3_server.secret_key, put.output, got.output,
              (tmp_path / "termination-log").read_text())


def test_retries_are_zero_on_a_clean_network(agent, tmp_path: Path) -> None:
    """The counter counts retries, not requests: a clean run reports none."""
    out = tmp_path / "out"
    make_files(out, 20)
    put = agent("put", "**", "--run-id", "clean", "--step", "s", "--compute-data-folder",
                str(out))
    assert put.code == 0, put.output
    assert done_event(put.stderr, "put")["retries"] == 0
    got = agent("get", "**", "--run-id", "clean", "--compute-data-folder", str(tmp_path / "in"))
    assert got.code == 0, got.output
    assert done_event(got.stderr, "get")["retries"] == 0
