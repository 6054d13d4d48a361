"""The lean path's signer signs exactly as botocore's S3SigV4Auth (property test, no network).

Any difference in the canonical request (path encoding, query order, header folding, Host)
would make AWS refuse requests with SignatureDoesNotMatch for some keys only; this compares
the whole Authorization header for generated keys, queries, metadata and endpoints.
"""

from __future__ import annotations

import datetime
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog_agent.stores import sigv4
from catalog_agent.stores import wire

NOW = datetime.datetime(2026, 11, 25, 12, 34, 56, tzinfo=datetime.timezone.utc)

key_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   min_size=1, max_size=60)
query_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
meta_name = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
endpoints = st.sampled_from([
    "http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com", "http://LOCALHOST:9000",
    "https://minio.example.com:443/base", "http://user:pa%40ss@Store.Example.com:80/s3",
    "https://[::1]:8443", "http://[fe80::1]/path/to"])
styles = st.sampled_from(["path", "virtual"])
credentials = st.tuples(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=20),
                        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8,
                                max_size=40),
                        st.one_of(st.none(), st.text("abcdefXYZ0123456789/+=", min_size=8,
                                                     max_size=60)))


def botocore_authorization(method: str, url: str, headers: dict[str, str],
                           query: dict[str, str], creds: tuple[str, str, str | None],
                           region: str) -> str:
    """What botocore signs for the same request (its own canonicalisation throughout)."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), params=dict(query))
    auth = S3SigV4Auth(Credentials(*creds), "s3", region)
    auth._modify_request_before_signing = lambda r: None  # keep our X-Amz-* headers as given
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        auth.add_auth(request)
    return request.headers["Authorization"]


@settings(max_examples=300, deadline=None)
@given(key=key_text, query=st.dictionaries(query_text, query_text, max_size=4),
       meta=st.dictionaries(meta_name, header_value, max_size=3), endpoint=endpoints,
       style=styles, creds=credentials, method=st.sampled_from(["GET", "PUT", "POST", "HEAD",
                                                              "DELETE"]),
       payload=st.sampled_from([sigv4.EMPTY_SHA256, sigv4.UNSIGNED_PAYLOAD, "ab" * 32]),
       region=st.sampled_from(["us-east-1", "eu-west-1", "cn-north-1"]))
def test_authorization_equals_botocores(key: str, query: dict[str, str], meta: dict[str, str],
                                        endpoint: str, style: str,
                                        creds: tuple[str, str, str | None], method: str,
                                        payload: str, region: str) -> None:
    http = wire.endpoint(endpoint, region=region, bucket="my-bucket", addressing_style=style)
    path = sigv4.object_path(http.prefix, key)
    headers = {f"x-amz-meta-{name}": value for name, value in meta.items()}
    ours = sigv4.Signer(region).sign(method=method, host=http.host, path=path,
                            query=sigv4.canonical_query(query), headers=headers,
                            payload_sha256=payload, credentials=creds, now=NOW)
    url = http.origin + path
    given_headers = {k: v for k, v in ours.items() if k != "Authorization"}
    assert ours["Authorization"] == botocore_authorization(method, url, given_headers, query,
                                                           creds, region)
    # And the Host we send is botocore's Host for that URL: lowercase, no userinfo.
    assert ours["Host"] == sigv4.host_header(url)
    assert "@" not in ours["Host"] and ours["Host"] == ours["Host"].lower()


@pytest.mark.parametrize("url, host", [
    ("https://s3.amazonaws.com:443/b", "s3.amazonaws.com"),
    ("http://Example.COM:80/b", "example.com"),
    ("http://user:secret@example.com:8333/b", "example.com:8333"),
    ("https://[::1]:8443/", "[::1]:8443"),
    ("https://[::1]:443/", "[::1]"),
])
def test_host_has_no_userinfo_no_default_port_and_is_lowercase(url: str, host: str) -> None:
    assert sigv4.host_header(url) == host
    from botocore.auth import _host_from_url

    assert _host_from_url(url) == host


def test_the_endpoints_userinfo_never_reaches_a_header() -> None:
    where = wire.endpoint("http://user:secret@Store.example.com:8333", region="us-east-1",
                          bucket="b-1", addressing_style="path")
    assert where.host == "store.example.com:8333"
    assert urlsplit(where.origin).netloc == "store.example.com:8333"
    assert (where.hostname, where.port) == ("store.example.com", 8333)  # where it connects


def botocore_url(endpoint: str, bucket: str, key: str) -> str:
    """The URL a real botocore S3 client (virtual-hosted style asked for) builds for HeadObject,
    captured before it is sent."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.Session()
    session.set_credentials("AKIDEXAMPLE", "secret", None)
    client = session.create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                                   config=Config(s3={"addressing_style": "virtual"}))
    urls: list[str] = []

    class Captured(Exception):
        pass

    def before_send(request, **_):  # noqa: ANN001, ANN202
        urls.append(request.url)
        raise Captured()

    client.meta.events.register("before-send.s3", before_send)
    with pytest.raises(Captured):
        client.head_object(Bucket=bucket, Key=key)
    return urls[0]


@pytest.mark.parametrize("endpoint, bucket, url", [
    ("http://localhost:9000", "my-bucket", "http://my-bucket.localhost:9000/k"),
    ("http://localhost:9000", "a.b.c", "http://a.b.c.localhost:9000/k"),  # dots: over http
    ("https://minio.example.com", "a.b.c", "https://minio.example.com/a.b.c/k"),
    ("http://localhost:9000", "My_Bucket", "http://localhost:9000/My_Bucket/k"),
    ("http://localhost:9000", "ab", "http://localhost:9000/ab/k"),
    ("http://localhost:9000", "1.2.3.4", "http://localhost:9000/1.2.3.4/k"),
    ("http://localhost:9000", "a-.b", "http://localhost:9000/a-.b/k"),
    ("https://s3.eu-west-1.amazonaws.com", "ab", "https://s3.eu-west-1.amazonaws.com/ab/k"),
])
def test_virtual_hosted_only_for_buckets_botocore_puts_in_the_host(endpoint: str, bucket: str,
                                                                    url: str) -> None:
    """A custom endpoint with virtual-hosted style asked for: a bucket name that is no host name
    (upper case, '_', shorter than 3, an IPv4 address; dots over https) goes in the path."""
    where = wire.endpoint(endpoint, region="us-east-1", bucket=bucket,
                          addressing_style="virtual", environ={})
    assert where.origin + sigv4.object_path(where.prefix, "k") == url
    assert botocore_url(endpoint, bucket, "k") == url
