"""moto's server with signature checking on, plus the AWS behaviours its server lacks.

Run as ``python tests/moto_aws.py -H HOST -p PORT`` (tests/moto_support.py does). It is
moto's own server (``moto.server``: same app, same request handler, same IAM engine) with:

- **Unsigned AssumeRoleWithWebIdentity**, as in AWS, where the call carries no signature
  (the token is the credential). moto checks a signature on every request once auth is
  enforced and fails the unsigned call with a 500 (``IAMRequestBase`` reads a missing
  Authorization header); its PUBLIC_OPERATIONS escape works only for JSON services named in
  an X-Amz-Target header, which STS's query protocol has none of. Here the call passes the
  signature check and is authorised by the role's trust policy instead: the role must exist
  and allow ``sts:AssumeRoleWithWebIdentity`` to a ``Federated`` principal, else STS's own
  AccessDenied (403). Not checked: the JWT itself (moto holds no OIDC provider keys) and
  trust-policy conditions on its claims.
- **The wrong-region redirect**: moto serves a bucket whatever region a request is signed
  for; S3 answers ``301 PermanentRedirect`` with ``x-amz-bucket-region`` (HEAD: no body).
  Here a path-style S3 request signed for another region than its bucket's gets that answer.
- **The role-chaining cap**: AWS refuses an AssumeRole signed by temporary credentials (an
  assumed role's, IRSA's, Pod Identity's: access keys ``ASIA...``) that asks for more than
  3,600 s, with ``400 ValidationError`` "... exceeds the 1 hour session limit for roles assumed
  by role chaining"; moto grants any duration. Here such a request gets AWS's answer.
- **Test controls** under ``/_catalog_tests/`` (moto's own ``/moto-api/`` style): the access
  key id of every request in arrival order, and a gate that holds the first request matching
  a pattern until the test releases it, so a test can act (move the clock, withdraw a trust
  policy) while a transfer is provably mid-way.

Every other request goes to moto unchanged, and moto checks its signature and IAM policy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Iterable

UNSIGNED_ACTIONS = {"AssumeRoleWithWebIdentity"}
CONTROL = "/_catalog_tests/"
HOLD_TIMEOUT = 300.0  # a test that never releases must not hang the server forever
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/")
_STS_DENIED = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
               '<Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform '
               'sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>{request_id}'
               '</RequestId></ErrorResponse>')
_CHAINING = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
             '<Type>Sender</Type><Code>ValidationError</Code><Message>The requested '
             'DurationSeconds exceeds the 1 hour session limit for roles assumed by role '
             'chaining.</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>')
CHAINED_MAX_SECONDS = 3600
_REDIRECT = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code>'
             '<Message>The bucket you are attempting to access must be addressed using the '
             'specified endpoint. Please send all future requests to this endpoint.</Message>'
             '<Endpoint>{bucket}.s3.{region}.amazonaws.com</Endpoint><Bucket>{bucket}</Bucket>'
             '<RequestId>{request_id}</RequestId></Error>')


# --- unsigned web identity ---


def allow_unsigned_web_identity() -> None:
    """Let moto's auth check pass unsigned AssumeRoleWithWebIdentity, judged by trust policy."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    checked = ActionAuthenticatorMixin._authenticate_and_authorize_action

    def authenticate(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        enforced = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
        if enforced and "Authorization" not in self.headers \
                and self._get_action() in UNSIGNED_ACTIONS:
            _check_web_identity_trust(self.current_account, self._get_param("RoleArn") or "")
            return
        checked(self, iam_request_cls, resource)

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate  # type: ignore[method-assign]


class WebIdentityDenied(Exception):
    """STS's answer when the role's trust policy does not admit a web identity."""


def _check_web_identity_trust(account: str, role_arn: str) -> None:
    from werkzeug.exceptions import HTTPException

    from moto.iam.models import iam_backends

    try:
        role = iam_backends[account]["aws"].get_role_by_arn(role_arn)
        policy = json.loads(role.assume_role_policy_document)
    except Exception:  # noqa: BLE001 - no such role, or no readable trust policy
        policy = {"Statement": []}
    if _trusts_web_identity(policy):
        return

    class Denied(HTTPException):
        code = 403

    raise Denied(description=_STS_DENIED.format(request_id=_request_id()))


def _trusts_web_identity(policy: dict[str, Any]) -> bool:
    """An Allow (and no Deny) of sts:AssumeRoleWithWebIdentity for a Federated principal."""
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for statement in statements:
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(re.fullmatch(a.replace("*", ".*"), "sts:AssumeRoleWithWebIdentity")
                   for a in actions):
            continue
        principal = statement.get("Principal", {})
        federated = isinstance(principal, dict) and bool(principal.get("Federated"))
        if statement.get("Effect") == "Deny" and (federated or principal == "*"):
            return False
        if statement.get("Effect") == "Allow" and federated:
            allowed = True
    return allowed


def _request_id() -> str:
    import uuid

    return str(uuid.uuid4())


# --- the WSGI layer: wrong-region redirects, request log, hold gate ---


class AwsLayer:
    """WSGI middleware in front of moto's app."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._requests: list[dict[str, str]] = []
        self._hold: dict[str, str] | None = None
        self._held = threading.Event()
        self._release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(path[len(CONTROL):], environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        query = environ.get("QUERY_STRING", "")
        found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        key, region, service = found.groups() if found else ("", "", "")
        target = path + ("?" + query if query else "")
        with self._lock:
            self._requests.append({"method": method, "target": target, "key": key,
                                   "service": service})
            hold = self._hold
            if hold and method == hold["method"] and re.search(hold["pattern"], target):
                self._hold = None
            else:
                hold = None
        if hold is not None:
            self._held.set()
            self._release.wait(HOLD_TIMEOUT)
        if service == "sts" and key.startswith("ASIA"):
            body = _read_body(environ)
            environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
            if _chained_beyond_the_cap(body):
                return _answer(start_response, "400 Bad Request",
                               _CHAINING.format(request_id=_request_id()).encode())
        if service == "s3":
            bucket_region = _bucket_region(path.lstrip("/").split("/", 1)[0])
            if bucket_region and bucket_region != region:
                return _redirect(environ, start_response, path.lstrip("/").split("/", 1)[0],
                                 bucket_region)
        return self.app(environ, start_response)

    def _control(self, name: str, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if name == "requests" and method == "GET":
            with self._lock:
                body: Any = list(self._requests)
        elif name == "hold" and method == "POST":
            spec = json.loads(_read_body(environ) or b"{}")
            with self._lock:
                self._hold = {"method": spec["method"], "pattern": spec["pattern"]}
                self._held.clear()
                self._release.clear()
            body = {"armed": True}
        elif name == "hold" and method == "GET":
            with self._lock:
                body = {"armed": self._hold is not None, "held": self._held.is_set()}
        elif name == "release" and method == "POST":
            self._release.set()
            body = {"released": True}
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"unknown control\n"]
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]


def _bucket_region(bucket: str) -> str:
    """The region moto created ``bucket`` in, or '' when there is no such bucket."""
    if not bucket:
        return ""
    from moto.s3.models import s3_backends

    owner = s3_backends.bucket_accounts.get(bucket)
    if owner is None:
        return ""
    partition, account = owner
    found = s3_backends[account][partition].buckets.get(bucket)
    return str(found.region_name) if found is not None else ""


def _redirect(environ: dict[str, Any], start_response: Any, bucket: str,
              region: str) -> list[bytes]:
    _read_body(environ)  # the client sends its whole body before it reads an answer
    body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else _REDIRECT.format(
        bucket=bucket, region=region, request_id=_request_id()).encode()
    start_response("301 Moved Permanently", [
        ("Content-Type", "application/xml"), ("x-amz-bucket-region", region),
        ("Content-Length", str(len(body)))])
    return [body]


def _chained_beyond_the_cap(body: bytes) -> bool:
    """An AssumeRole (signed by temporary credentials) asking for more than an hour."""
    from urllib.parse import parse_qs

    form = parse_qs(body.decode("utf-8", "replace"))
    duration = (form.get("DurationSeconds") or ["0"])[0]
    return form.get("Action") == ["AssumeRole"] and duration.isdigit() and \
        int(duration) > CHAINED_MAX_SECONDS


def _answer(start_response: Any, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _read_body(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


def main(argv: list[str] | None = None) -> None:
    """moto.server.main's server, with the additions above."""
    from werkzeug.serving import run_simple

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("-c", "--cert", default="", help="serve https with this certificate")
    parser.add_argument("-k", "--key", default="", help="the certificate's private key")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto.server.main does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    allow_unsigned_web_identity()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, AwsLayer(app), threaded=True,
               request_handler=MotoRequestHandler,
               ssl_context=(args.cert, args.key) if args.cert else None)


if __name__ == "__main__":
    main()
