"""On the wire, the lean S3 path behaves as botocore does, and what it sends is what it hashed.

Against SeaweedFS (real signatures, real checksum verification) where the behaviour can be
provoked, against a scripted loopback server (tests/scripted_s3.py) where no real server does
it on demand, and as pure functions for the retry policy and the part plan.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

import pytest

from catalog_agent.stores import retries
from catalog_agent.stores.s3 import (MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, part_ranges,
                                     part_size_for)
from catalog_agent.stores import wire
from catalog_agent.stores.s3_client import S3Client
from catalog_agent.stores.wire import Payload
from tests.conftest import Agent, agent_env, log_events
from tests.scripted_s3 import ScriptedS3, error, listing

GiB, MiB, TiB = 1024 ** 3, 1024 ** 2, 1024 ** 4
T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() == "true"


def lean(server, bucket: str, **options) -> S3Client:  # noqa: ANN001 - a SeaweedServer
    """The agent's own S3 client for ``bucket`` (used inside ``asyncio.run``)."""
    settings = {"attempts": 3, "on_retry": lambda: None, **options}
    where = wire.endpoint(server.endpoint, region="us-east-1", bucket=bucket,
                          addressing_style="path")
    return S3Client(where, region="us-east-1",
                    credentials=lambda: (server.access_key, server.secret_key, None),
                    verify=True, **settings)


def on_loop(work: Callable[[S3Client], Awaitable[T]], client: S3Client) -> T:
    async def main() -> T:
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


# --- the part plan (pure) ---

@pytest.mark.parametrize("size", [0, 1, 16 * MiB, 78 * GiB, 80 * GiB, 500 * GiB, TiB, 5 * TiB])
def test_no_upload_needs_more_than_10000_parts(size: int) -> None:
    part = part_size_for(size)
    ranges = part_ranges(size, part)
    assert len(ranges) <= MAX_PARTS
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(end - start == part for start, end in ranges[:-1])


def test_the_part_size_grows_only_when_it_must() -> None:
    assert part_size_for(78 * GiB) == 8 * MiB  # 9,984 parts of 8 MiB
    assert part_size_for(79 * GiB) == 16 * MiB  # would need 10,112
    assert part_size_for(10 * MiB, preferred=1) == MIN_PART_SIZE


# --- the retry policy (pure) ---

def test_standard_back_off_is_botocores() -> None:
    policy = retries.RetryPolicy(mode="standard", max_attempts=5, jitter=lambda: 1.0)
    assert [policy.delay(n, retries.TRANSIENT) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert [policy.delay(n, retries.THROTTLING) for n in (1, 2, 6)] == [1.0, 2.0, 20.0]
    assert policy.delay(1, retries.TRANSIENT, retry_after="3000") == 3.0
    assert policy.delay(1, retries.TRANSIENT, retry_after="60000") == 5.05  # at most +5 s
    assert retries.RetryPolicy.classify(503, "SlowDown") == retries.THROTTLING
    assert retries.RetryPolicy.classify(500, "InternalError") == retries.TRANSIENT
    assert retries.RetryPolicy.classify(None, "") == retries.TRANSIENT
    assert retries.RetryPolicy.classify(403, "RequestTimeTooSkewed") == retries.SKEW
    assert retries.RetryPolicy.classify(403, "AccessDenied") is None
    assert retries.RetryPolicy.classify(404, "NoSuchKey") is None


def test_the_retry_budget_runs_out_and_successes_refill_it() -> None:
    policy = retries.RetryPolicy(mode="standard", max_attempts=5)
    spent = [policy.acquire(retries.TRANSIENT) for _ in range(40)]
    assert spent.count(retries.RETRY_COST) == retries.QUOTA // retries.RETRY_COST  # 35
    assert spent[-1] is None and policy.exhausted
    policy.succeeded(retries.RETRY_COST)
    assert policy.acquire(retries.TRANSIENT) == retries.RETRY_COST


# --- against SeaweedFS ---

def test_the_server_refuses_bytes_that_are_not_the_ones_hashed(s3_server, bucket: str,
                                                               s3) -> None:
    """The checksum each upload carries is verified: other bytes never become an object."""
    from botocore.exceptions import ClientError

    sent, claimed = b"the bytes on the wire", b"the bytes that were hashed"
    part = os.urandom(5 * MiB)

    async def work(client: S3Client) -> None:
        forged = Payload(len(sent), data=sent, sha256=hashlib.sha256(claimed).hexdigest())
        with pytest.raises(ClientError, match="BadDigest|XAmzContentSHA256Mismatch"):
            await client.put("forged", forged, {})
        upload = await client.create_upload("parted", {})
        with pytest.raises(ClientError, match="BadDigest|XAmzContentSHA256Mismatch"):
            await client.upload_part("parted", upload, 1, Payload(
                len(part), data=part, sha256=hashlib.sha256(part[:-1] + b"!").hexdigest()))
        await client.abort("parted", upload)
        await client.put("honest", Payload.of(sent), {})

    on_loop(work, lean(s3_server, bucket, attempts=1))
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="forged")
    assert s3.get_object(Bucket=bucket, Key="honest")["Body"].read() == sent


def test_a_body_not_read_to_the_end_closes_its_connection(s3_server, bucket: str, s3) -> None:
    """Its unread bytes would otherwise be read as the next answer on that connection."""
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    retried: list[int] = []

    class Enough(Exception):
        pass

    async def work(client: S3Client) -> bytes:
        for _ in range(3):
            def stop_early(block: bytes) -> None:
                raise Enough()

            with pytest.raises(Enough):
                await client.get("big", stop_early)
            assert client._idle == [] and len(client._all) == 0  # closed, not pooled
        got = bytearray()
        await client.get("big", got.extend)
        assert len(client._idle) == 1  # read to the end: kept for the next request
        return bytes(got)

    assert on_loop(work, lean(s3_server, bucket, on_retry=lambda: retried.append(1))) == data
    assert retried == []


def test_adaptive_mode_slows_the_agent_down_after_throttling(agent, s3_server,
                                                              tmp_path: Path) -> None:
    """``retry_mode: adaptive`` in the catalog config: after S3's SlowDown answers, the agent's
    client waits for the tokens of botocore's rate limiter before each request it sends.

    Through the fault proxy, the first 4 PUTs (4 in flight at once) are answered 503 SlowDown.
    Each throttled answer sets the limiter's fill rate to at most 0.7 times the rate measured
    or allowed before (after 2 listings and these 4: 2.3 a second at the very most, usually
    botocore's floor of 0.5), from where it grows again as a cubic of the time since. Counted
    where the requests arrive: in the 2 s after the first SlowDown, 12 PUT attempts at the very
    most (the 4 throttled, then fewer than 9 tokens), 5 usually; a client that sends without
    the limiter's tokens sends all of them (44, and the manifest's: 45 seen) within about half
    a second. A busy machine sends fewer,
    never more, in those 2 s: the bound cannot flake that way.
    """
    from faultproxy import FaultProxy, Rule

    out = tmp_path / "out"
    out.mkdir()
    for index in range(40):
        (out / f"f{index}").write_text(str(index))
    config = tmp_path / "catalog.yaml"
    config.write_text("catalog:\n  type: s3\n  config:\n    retry_mode: adaptive\n")
    arrivals: list[tuple[float, str, str | None]] = []  # (when, kind, fault) at the proxy
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with FaultProxy(port, rules=[Rule("slowdown", ("put",), limit=4)]) as proxy:
        choose = proxy.plan.choose

        def recorded(method: str, target: str, headers: dict[str, str]):  # noqa: ANN202
            choice = choose(method, target, headers)
            arrivals.append((time.monotonic(), choice.kind, choice.fault))
            return choice

        proxy.plan.choose = recorded  # type: ignore[method-assign]
        ran = agent("put", "**", "--run-id", "ad", "--step", "s", "--compute-data-folder",
                    str(out), env={"CATALOG_AGENT_CONFIG": str(config),
                                   "CATALOG_AGENT_ENDPOINT_URL": proxy.endpoint,
                                   "AWS_ENDPOINT_URL_S3": proxy.endpoint,
                                   "CATALOG_AGENT_CONCURRENCY": "4"})
    assert ran.code == 0, ran.output[-2000:]
    assert proxy.count("put", "slowdown") == 4
    puts = [(when, fault) for when, kind, fault in arrivals if kind == "put"]
    assert len(puts) >= 40 + 4  # every file once, the 4 throttled again
    first = min(when for when, fault in puts if fault)
    soon = [when for when, _ in puts if first <= when <= first + 2.0]
    assert len(soon) <= 12, [round(when - first, 2) for when, _ in puts]


def test_keys_with_awkward_characters_are_signed_right(s3_server, bucket: str, s3) -> None:
    names = ["sp ace/plus+and%percent", "ünïcödé/日本語.txt", "tilde~star*bang!quote'",
             "semi;colon=equals&amp", "brackets[]{}()"]

    async def work(client: S3Client) -> None:
        for name in names:
            await client.put(name, Payload.of(name.encode()),
                             {"x-amz-meta-note": "  folded   spaces  "})
        listed = {key async for page in client.list_pages("") for key, _, _ in page}
        assert listed == set(names)
        for name in names:
            got = bytearray()
            reply = await client.get(name, got.extend)
            assert bytes(got) == name.encode()
            assert reply.headers["x-amz-meta-note"] == "folded   spaces"  # signed folded

    on_loop(work, lean(s3_server, bucket))


def test_an_endpoint_with_userinfo_and_upper_case_works(agent, s3_server, tmp_path: Path
                                                        ) -> None:
    host = s3_server.endpoint.replace("127.0.0.1", "LOCALHOST").replace("http://",
                                                                          "http://user:pw@")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("a")
    env = {"CATALOG_AGENT_ENDPOINT_URL": host}
    ran = agent("put", "**", "--run-id", "u", "--step", "s", "--compute-data-folder", str(out),
                env=env)
    assert ran.code == 0, ran.output[-2000:]
    ran = agent("get", "**", "--run-id", "u", "--compute-data-folder", str(tmp_path / "in"),
                env=env)
    assert ran.code == 0, ran.output[-2000:]
    assert (tmp_path / "in" / "a.txt").read_text() == "a"


def test_a_multipart_upload_at_a_forced_small_part_size(agent, s3, bucket: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    data = os.urandom(12 * MiB + 7)
    (out / "big.bin").write_bytes(data)
    small = {"CATALOG_AGENT_MULTIPART_THRESHOLD": str(5 * MiB),
             "CATALOG_AGENT_MULTIPART_CHUNKSIZE": str(5 * MiB)}
    ran = agent("put", "big.bin", "--run-id", "mp", "--step", "s", "--compute-data-folder",
                str(out), env=small)
    assert ran.code == 0, ran.output[-2000:]
    head = s3.head_object(Bucket=bucket, Key="mp/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 MiB + 5 MiB + 2 MiB
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    ran = agent("get", "big.bin", "--run-id", "mp", "--compute-data-folder",
                str(tmp_path / "in"), env=small)
    assert ran.code == 0, ran.output[-2000:]
    assert (tmp_path / "in" / "big.bin").read_bytes() == data


@pytest.fixture
def faketime() -> str:
    found = shutil.which("faketime")
    if not found:
        pytest.skip("faketime is not installed (scripts/setup.d installs Debian's faketime)")
    return found


def test_a_skewed_clock_is_corrected_from_the_servers_date(agent, faketime: str,
                                                           tmp_path: Path) -> None:
    """SeaweedFS refuses requests signed 15 minutes off its clock; the agent adopts it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("a" * 1000)
    ran = run_skewed(agent, faketime, "-2h", "put", "**", "--run-id", "sk", "--step", "s",
                     "--compute-data-folder", str(out))
    assert ran.code == 0, ran.output[-2000:]
    (skew,) = [e for e in log_events(ran.stderr) if e["event"] == "clock skew corrected"]
    assert 7000 < skew["offset_seconds"] < 7400
    ran = run_skewed(agent, faketime, "+3h", "get", "**", "--run-id", "sk",
                     "--compute-data-folder", str(tmp_path / "in"))
    assert ran.code == 0, ran.output[-2000:]
    assert (tmp_path / "in" / "a.txt").read_text() == "a" * 1000


def run_skewed(agent: Agent, faketime: str, offset: str, *args: str):  # noqa: ANN201
    import subprocess
    import sys

    done = subprocess.run([faketime, "-f", offset, sys.executable, "-m", "catalog_agent", *args],
                          cwd=agent.cwd, env=agent.env, capture_output=True, text=True,
                          timeout=300)
    from tests.conftest import Ran

    return Ran(done.returncode, done.stdout, done.stderr)


# --- against a scripted server ---

def scripted_agent(tmp_path: Path, endpoint: str, **settings: str) -> Agent:
    env = agent_env(tmp_path, {
        "AWS_ACCESS_KEY_ID": "AKIASCRIPTED", "AWS_SECRET_ACCESS_KEY": "scripted-secret",
        "CATALOG_AGENT_ENDPOINT_URL": endpoint, "CATALOG_AGENT_S3_BUCKET": "scripted",
        "CATALOG_AGENT_REGION": "us-east-1", "CATALOG_AGENT_ADDRESSING_STYLE": "path",
        **settings})
    return Agent(env, tmp_path)


def test_a_listing_that_repeats_its_continuation_token_stops(tmp_path: Path) -> None:
    def answer(request):  # noqa: ANN001, ANN202
        if request.query.get("list-type") == "2":
            return listing([(f"r/{len(request.query)}.txt", 1)], token="same-token")
        return error("NoSuchKey", 404)

    with ScriptedS3(answer) as server:
        ran = scripted_agent(tmp_path, server.endpoint)("get", "**", "--run-id", "r",
                                                        "--compute-data-folder",
                                                        str(tmp_path / "in"), timeout=60)
    assert ran.code == 5, ran.output[-2000:]
    assert "repeated a continuation token" in ran.stderr
    assert len([r for r in server.requests if r.query.get("list-type")]) <= 3
    assert "Traceback" not in ran.output


def test_a_server_failing_every_upload_exhausts_the_retry_budget(tmp_path: Path) -> None:
    """20 attempts for each of many requests would take many minutes; the budget stops it."""
    def answer(request):  # noqa: ANN001, ANN202
        if request.method == "GET" and "uploads" in request.query:
            return 200, {}, b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>" \
                            b"</ListMultipartUploadsResult>"
        if request.method == "GET":
            return listing([])
        return error("InternalError", 500)

    out = tmp_path / "out"
    out.mkdir()
    for index in range(200):
        (out / f"f{index}").write_text(str(index))
    with ScriptedS3(answer) as server:
        started = time.monotonic()
        ran = scripted_agent(tmp_path, server.endpoint, CATALOG_AGENT_MAX_ATTEMPTS="20",
                             CATALOG_AGENT_CONCURRENCY="16")(
            "put", "**", "--run-id", "r", "--step", "s", "--compute-data-folder", str(out),
            timeout=300)
        took = time.monotonic() - started
    puts = [r for r in server.requests if r.method == "PUT"]
    assert ran.code == 5, ran.output[-2000:]
    assert "retry budget exhausted" in ran.stderr
    # every first attempt is free; retries stop when the 500 units are spent (35 x 14)
    assert len(puts) <= 16 + 200 // 16 + 40, len(puts)
    assert took < 120, took
    assert not any(r.path.endswith("manifests/s.json") for r in puts)


def test_complete_multipart_answering_200_with_an_error_is_retried(tmp_path: Path) -> None:
    """S3 may fail a CompleteMultipartUpload after it has sent 200: botocore retries it."""
    completes: list[int] = []

    def answer(request):  # noqa: ANN001, ANN202
        if request.method == "GET" and "uploads" in request.query:
            return 200, {}, b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>" \
                            b"</ListMultipartUploadsResult>"
        if request.method == "GET":
            return listing([])
        if request.method == "POST" and "uploads" in request.query:
            return 200, {}, b"<InitiateMultipartUploadResult><UploadId>u-1</UploadId>" \
                            b"</InitiateMultipartUploadResult>"
        if request.method == "POST" and "uploadId" in request.query:
            completes.append(1)
            if len(completes) == 1:
                return 200, {}, b"<Error><Code>InternalError</Code><Message>late failure" \
                                b"</Message></Error>"
            return 200, {}, b"<CompleteMultipartUploadResult><ETag>\"x-2\"</ETag>" \
                            b"</CompleteMultipartUploadResult>"
        return 200, {"ETag": '"part"'}, b""

    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin").write_bytes(os.urandom(6 * MiB))
    with ScriptedS3(answer) as server:
        ran = scripted_agent(tmp_path, server.endpoint,
                             CATALOG_AGENT_MULTIPART_THRESHOLD=str(5 * MiB),
                             CATALOG_AGENT_MULTIPART_CHUNKSIZE=str(5 * MiB))(
            "put", "big.bin", "--run-id", "r", "--step", "s", "--compute-data-folder",
            str(out), timeout=120)
    assert ran.code == 0, ran.output[-2000:]
    assert len(completes) == 2
    (done,) = [e for e in log_events(ran.stderr) if e["event"] == "put.done"]
    assert done["retries"] == 1
    parts = [r for r in server.requests if r.method == "PUT" and "partNumber" in r.query]
    assert sorted(r.query["partNumber"] for r in parts) == ["1", "2"]
    assert all(r.headers.get("x-amz-checksum-sha256") for r in parts)
