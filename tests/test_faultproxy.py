"""The fault proxy itself (tests/faultproxy.py): it streams, keeps connections alive, tells
request kinds apart, and every fault does what it says. The large-object reliability tests
lean on it: a fault that never fires, or fires on the wrong request, would let them pass.

The client here is boto3 (or http.client with presigned URLs, to see raw bytes), the server the
session's SeaweedFS.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from faultplan import FaultPlan, Rule, classify
from faultproxy import FaultProxy

MiB = 1024 * 1024


def upstream_port(server: Any) -> int:
    return int(server.endpoint.rsplit(":", 1)[1])


def client_via(proxy: FaultProxy, server: Any, attempts: int = 1, pool: int = 10) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1",
                        aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key,
                        config=BotoConfig(s3={"addressing_style": "path"},
                                          max_pool_connections=pool,
                                          retries={"mode": "standard",
                                                   "total_max_attempts": attempts}))


def raw(proxy: FaultProxy, url: str) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the proxy and the path+query of a presigned URL."""
    parts = urlsplit(url)
    return (http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60),
            f"{parts.path}?{parts.query}")


# --- the plan: kinds, rules, determinism (no server) ---

@pytest.mark.parametrize(("method", "target", "headers", "kind"), [
    ("PUT", "/b/k?partNumber=3&uploadId=abc", {}, "part_upload"),
    ("PUT", "/b/k?uploadId=abc&partNumber=3", {"x-amz-copy-source": "b/o"}, "copy"),
    ("PUT", "/b/dir/k", {}, "put"),
    ("POST", "/b/k?uploadId=abc", {}, "complete"),
    ("POST", "/b/k?uploads", {}, "create"),
    ("POST", "/b/k?uploads=", {}, "create"),
    ("DELETE", "/b/k?uploadId=abc", {}, "abort"),
    ("DELETE", "/b/k", {}, "delete"),
    ("GET", "/b/k", {"range": "bytes=0-9"}, "ranged_get"),
    ("GET", "/b/k", {}, "get"),
    ("HEAD", "/b/k", {}, "head"),
    ("GET", "/b?list-type=2&prefix=r%2F", {}, "list"),
    ("GET", "/b/", {}, "list"),
    ("GET", "/b?uploads&prefix=r", {}, "list_uploads"),
    ("OPTIONS", "/b/k", {}, "other"),
])
def test_request_kinds(method: str, target: str, headers: dict[str, str], kind: str) -> None:
    assert classify(method, target, headers) == kind


def test_unknown_faults_and_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        Rule("explode")
    with pytest.raises(ValueError, match="unknown request kinds"):
        Rule("reset", ("part",))


def test_choices_are_seeded_and_independent_of_arrival_order() -> None:
    """A retried part gets the same fault in every run, whatever order parallel parts came in;
    a rate is a share; a limit caps the faults; another seed chooses others."""
    requests = [("PUT", f"/b/k?partNumber={n}&uploadId=u{n % 3}", {}) for n in range(1, 401)]
    requests += [("GET", "/b/k", {"range": f"bytes={n}-{n + 9}"}) for n in range(400)]

    def faulted(order: list[tuple[str, str, dict[str, str]]], seed: int) -> set[str]:
        plan = FaultPlan([Rule("slowdown", ("part_upload", "ranged_get"), rate=0.3)], seed=seed)
        return {f"{m} {t} {h}" for m, t, h in order if plan.choose(m, t, h).fault}

    first = faulted(requests, seed=5)
    assert first == faulted(list(reversed(requests)), seed=5)
    assert 180 < len(first) < 300  # 30 % of 800, give or take
    assert first != faulted(requests, seed=6)
    # A retry (the same request again) rolls afresh, deterministically too.
    plan = FaultPlan([Rule("internal", "part_upload", rate=0.5)], seed=1)
    again = FaultPlan([Rule("internal", "part_upload", rate=0.5)], seed=1)
    target = "/b/k?partNumber=1&uploadId=x"
    rolls = [plan.choose("PUT", target, {}).fault for _ in range(40)]
    assert rolls == [again.choose("PUT", target.replace("x", "y"), {}).fault for _ in range(40)]
    assert 5 < rolls.count("internal") < 35
    limited = FaultPlan([Rule("reset", "part_upload", limit=3), Rule("delay", "part_upload")])
    chosen = Counter(limited.choose("PUT", f"/b/k?partNumber={n}&uploadId=u", {}).fault
                     for n in range(1, 11))
    assert chosen == {"reset": 3, "delay": 7}
    assert limited.seen == {"part_upload": 10}


# --- through the proxy to SeaweedFS ---

def test_kinds_are_counted_as_they_pass(s3_server, bucket: str) -> None:
    with FaultProxy(upstream_port(s3_server)) as proxy:
        c = client_via(proxy, s3_server)
        upload = c.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
        etag = c.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1,
                             Body=b"x" * 100)["ETag"]
        c.list_multipart_uploads(Bucket=bucket)
        c.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=upload,
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        c.put_object(Bucket=bucket, Key="d/p", Body=b"hello")
        assert c.get_object(Bucket=bucket, Key="d/p")["Body"].read() == b"hello"
        assert c.get_object(Bucket=bucket, Key="d/p", Range="bytes=1-2")["Body"].read() == b"el"
        c.head_object(Bucket=bucket, Key="d/p")
        c.list_objects_v2(Bucket=bucket, Prefix="d/")
        c.delete_object(Bucket=bucket, Key="d/p")
        second = c.create_multipart_upload(Bucket=bucket, Key="n")["UploadId"]
        c.abort_multipart_upload(Bucket=bucket, Key="n", UploadId=second)
    assert proxy.seen == {"create": 2, "part_upload": 1, "list_uploads": 1, "complete": 1,
                          "put": 1, "get": 1, "ranged_get": 1, "head": 1, "list": 1,
                          "delete": 1, "abort": 1}
    assert sum(proxy.injected.values()) == 0


def test_each_fault_does_what_it_says(s3_server, bucket: str, s3) -> None:
    """One request per fault, with no retries, so each fault's raw effect shows."""
    rules = [Rule("slowdown", "put", limit=1, match="/slow"),
             Rule("internal", "get", limit=1),
             Rule("reset", "head", limit=1),
             Rule("lost_answer", "put", limit=1, match="/lost"),
             Rule("reset_request", "put", limit=1, match="/cut", cut_after=MiB),
             Rule("error_200", "complete", limit=1),
             Rule("delay", "list", min_delay=0.6, max_delay=0.6)]
    s3.put_object(Bucket=bucket, Key="there", Body=b"abc")
    with FaultProxy(upstream_port(s3_server), rules=rules, seed=3) as proxy:
        c = client_via(proxy, s3_server)
        with pytest.raises(ClientError) as slow:
            c.put_object(Bucket=bucket, Key="slow", Body=b"x")
        assert slow.value.response["Error"]["Code"] == "SlowDown"
        assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError) as internal:
            c.get_object(Bucket=bucket, Key="there")
        assert internal.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        with pytest.raises(BotoCoreError):
            c.head_object(Bucket=bucket, Key="there")
        with pytest.raises(BotoCoreError):  # forwarded and stored; the answer never came
            c.put_object(Bucket=bucket, Key="lost", Body=b"stored anyway")
        with pytest.raises(BotoCoreError):  # 1 MiB of 4 went to the server, then a reset
            c.put_object(Bucket=bucket, Key="cut", Body=os.urandom(4 * MiB))
        upload = c.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
        etag = c.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1,
                             Body=b"part")["ETag"]
        parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
        with pytest.raises(ClientError) as in_200:  # botocore makes it an error
            c.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=upload,
                                        MultipartUpload=parts)
        assert in_200.value.response["Error"]["Code"] == "InternalError"
        started = time.monotonic()
        c.list_objects_v2(Bucket=bucket)
        assert time.monotonic() - started >= 0.6
        # and each again, now past its limit, passes (the delay has no limit)
        c.put_object(Bucket=bucket, Key="slow", Body=b"x")
        assert c.get_object(Bucket=bucket, Key="there")["Body"].read() == b"abc"
        c.head_object(Bucket=bucket, Key="there")
        c.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=upload,
                                    MultipartUpload=parts)
    assert s3.get_object(Bucket=bucket, Key="lost")["Body"].read() == b"stored anyway"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="cut")
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"part"
    assert {(k, f): n for (k, f), n in proxy.plan.hits.items()} == {
        ("put", "slowdown"): 1, ("get", "internal"): 1, ("head", "reset"): 1,
        ("put", "lost_answer"): 1, ("put", "reset_request"): 1, ("complete", "error_200"): 1,
        ("list", "delay"): 1}


def test_botocore_retries_a_complete_answered_200_with_an_error(s3_server, bucket: str,
                                                                s3) -> None:
    """The reference the agent is held to: botocore retries CompleteMultipartUpload when S3
    answers 200 with an <Error> body (the proxy did not pass the first one on)."""
    with FaultProxy(upstream_port(s3_server), rules=[Rule("error_200", "complete", limit=1)]) \
            as proxy:
        c = client_via(proxy, s3_server, attempts=3)
        upload = c.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
        etag = c.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1,
                             Body=b"part")["ETag"]
        done = c.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=upload,
                                           MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                       "ETag": etag}]})
    assert done["ResponseMetadata"]["RetryAttempts"] == 1
    assert proxy.count("complete", "error_200") == 1 and proxy.seen["complete"] == 2
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"part"


def test_a_response_body_is_cut_after_n_bytes_then_reset(s3_server, bucket: str, s3) -> None:
    data = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "big"})
    with FaultProxy(upstream_port(s3_server),
                    rules=[Rule("reset_body", "get", limit=1, cut_after=MiB + 7)]) as proxy:
        conn, target = raw(proxy, url)
        conn.request("GET", target)
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == str(len(data))
        received = bytearray()
        with pytest.raises((OSError, http.client.IncompleteRead)):
            while block := response.read(64 * 1024):
                received += block
            raise http.client.IncompleteRead(bytes(received))  # ended early without a reset
        assert len(received) <= MiB + 7 and data.startswith(bytes(received))
        conn.close()
        conn, target = raw(proxy, url)  # the next one passes whole
        conn.request("GET", target)
        assert conn.getresponse().read() == data
    assert proxy.count("get", "reset_body") == 1


def test_expect_100_continue_and_keep_alive(s3_server, bucket: str, s3) -> None:
    """botocore sends ``Expect: 100-continue`` with bodies over 1 MiB: the proxy answers it, or
    answers a fault instead (the body never sent) and closes; otherwise one connection serves
    request after request."""
    data = os.urandom(2 * MiB + 3)
    with FaultProxy(upstream_port(s3_server),
                    rules=[Rule("slowdown", "put", limit=1)]) as proxy:
        c = client_via(proxy, s3_server, attempts=2, pool=1)
        put = c.put_object(Bucket=bucket, Key="e", Body=io.BytesIO(data))
        assert put["ResponseMetadata"]["RetryAttempts"] == 1
        assert proxy.continues == 1  # the first attempt got the 503 instead
        assert proxy.request_bytes == len(data)  # and sent no body
        for _ in range(10):
            assert c.get_object(Bucket=bucket, Key="e", Range="bytes=0-99")["Body"].read() \
                == data[:100]
            c.put_object(Bucket=bucket, Key="e2", Body=io.BytesIO(data))  # Expect, body, next
        assert proxy.continues == 11
        assert proxy.connections == 2  # the 503 closed the first; the rest shared one
    assert s3.get_object(Bucket=bucket, Key="e2")["Body"].read() == data


def test_a_chunked_request_body_passes(s3_server, bucket: str, s3) -> None:
    blocks = [os.urandom(size) for size in (1, 70_000, 300_000, 5)]
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "c"})
    with FaultProxy(upstream_port(s3_server)) as proxy:
        conn, target = raw(proxy, url)
        conn.request("PUT", target, body=iter(blocks), encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200, response.read()
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"".join(blocks)


@pytest.fixture
def chunked_server() -> Iterator[tuple[int, bytes]]:
    """SeaweedFS always answers with a Content-Length: a chunked answer needs another server."""
    body = os.urandom(300_000)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 70_000):
                block = body[start:start + 70_000]
                self.wfile.write(b"%x\r\n%b\r\n" % (len(block), block))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *_: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, *_: Any) -> None:  # the proxy resets it when it cuts a body
            pass

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], body
    server.shutdown()
    server.server_close()


def test_a_chunked_response_passes_and_can_be_cut(chunked_server: tuple[int, bytes]) -> None:
    port, body = chunked_server
    with FaultProxy(port, rules=[Rule("reset_body", "get", limit=1, cut_after=100_000)]) \
            as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request("GET", "/b/k")
        with pytest.raises((OSError, http.client.IncompleteRead)):
            conn.getresponse().read()
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        for _ in range(2):  # whole, and the connection stays usable
            conn.request("GET", "/b/k")
            response = conn.getresponse()
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.read() == body
    assert proxy.count("get", "reset_body") == 1 and proxy.connections == 2


_CLIENT = """
import hashlib, json, os, sys, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=os.environ["PROXY"], region_name="us-east-1",
                 config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
with open(sys.argv[1], "rb") as body:
    c.put_object(Bucket=os.environ["BUCKET"], Key="huge", Body=body)
digest, size = hashlib.sha256(), 0
for chunk in c.get_object(Bucket=os.environ["BUCKET"], Key="huge")["Body"].iter_chunks(1 << 20):
    digest.update(chunk)
    size += len(chunk)
print(json.dumps({"sha256": digest.hexdigest(), "size": size}))
"""


@pytest.mark.slow
def test_a_256_mib_object_streams_through_in_small_memory(s3_server, bucket: str, s3,
                                                          tmp_path: Path) -> None:
    """One PUT and one GET of 256 MiB (a client in another process, so that this process's
    traced memory is the proxy's alone): the proxy's peak stays a few MiB."""
    size = 256 * MiB
    source, digest = tmp_path / "huge", hashlib.sha256()
    with open(source, "wb") as out:
        for _ in range(size // (4 * MiB)):
            block = os.urandom(4 * MiB)
            out.write(block)
            digest.update(block)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key, "BUCKET": bucket}
    env.pop("AWS_ENDPOINT_URL", None)
    tracemalloc.start()
    try:
        with FaultProxy(upstream_port(s3_server)) as proxy:
            env["PROXY"] = proxy.endpoint
            tracemalloc.reset_peak()
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-c", _CLIENT, str(source)], env=env,
                                  capture_output=True, text=True, timeout=600)
            took = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    print(f"256 MiB put and get through the proxy: {took:.1f} s, proxy peak {peak / MiB:.1f} MiB")
    assert got == {"sha256": digest.hexdigest(), "size": size}
    assert proxy.request_bytes == size and proxy.response_bytes == size
    assert s3.head_object(Bucket=bucket, Key="huge")["ContentLength"] == size
    assert peak < 16 * MiB
