"""botocore clients built from the configuration, and botocore errors turned into agent errors."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from catalog_agent import tls
from catalog_agent.errors import AccessError, AgentError, TransferError

if TYPE_CHECKING:
    from catalog_agent.config import Config

ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                "InvalidToken", "AllAccessDisabled", "AccountProblem", "InvalidClientTokenId",
                "UnrecognizedClientException", "403", "Forbidden"}
# The request's credentials themselves were refused (not a policy): each with what to check.
REFUSED_HINTS = {
    "SignatureDoesNotMatch": "the secret access key does not belong to the access key id: "
                             "check the secret's variable, file or profile",
    "InvalidAccessKeyId": "S3 does not know the access key id: check it, and that temporary "
                          "keys (ASIA...) come with their session token",
    "InvalidClientTokenId": "the access key id is not known: check it, and that temporary "
                            "keys (ASIA...) come with their session token",
    "InvalidToken": "the session token does not belong to the access key id: check the "
                    "session token's variable",
    "ExpiredToken": "the session token has expired: renew the temporary credentials, or let "
                    "the agent refresh them (IRSA, Pod Identity or role_arn)",
}
REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}


def s3_client(config: Config, *, pool_size: int, session: Any = None) -> Any:
    """One S3 client for the whole command: thread-safe, with a pool sized to the workers.

    ``session``: a botocore session from :func:`catalog_agent.credentials.resolve`, when the
    caller has resolved credentials already (``config --check``); else they are resolved here.
    """
    from botocore.config import Config as BotoConfig

    from catalog_agent.credentials import make_session

    session = session or make_session(config)
    boto_config = BotoConfig(
        region_name=config.region,
        retries={"mode": config.retry_mode, "max_attempts": config.max_attempts},
        max_pool_connections=pool_size,
        s3={"addressing_style": config.addressing_style},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
        user_agent_extra="catalog-agent",
    )
    client = session.create_client("s3", endpoint_url=config.endpoint_url or None,
                                   verify=tls.verify(config), config=boto_config)
    return tls.fail_fast(client)


class RetryCounter:
    """Counts requests sent again after a transient failure, for the command's summary event.

    botocore retries quietly; without a count, a run that survived a storm of 503s looks the
    same in the logs as a clean one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, count: int = 1) -> None:
        with self._lock:
            self.count += count

    def on_request_created(self, request: Any, **_: Any) -> None:
        """botocore ``request-created`` hook: attempt 2 and later are retries."""
        context = getattr(request, "context", None) or {}
        if (context.get("retries") or {}).get("attempt", 1) > 1:
            self.add()


def count_retries(client: Any) -> RetryCounter:
    """Attach a :class:`RetryCounter` to every request ``client`` makes."""
    counter = RetryCounter()
    client.meta.events.register("request-created.s3", counter.on_request_created)
    return counter


def translate(exc: BaseException, what: str, *, bucket: str = "") -> AgentError:
    """One clear agent error for a botocore failure; ``what`` names the operation and key."""
    from botocore import exceptions as bx

    if isinstance(exc, AgentError):
        return exc
    refused = tls.certificate_error(exc)
    if refused is not None:
        return refused
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AccessError(f"no AWS credentials found while trying to {what}",
                           hint="give the pod an IRSA role, or set use_credentials/aws_profile")
    if isinstance(exc, bx.CredentialRetrievalError) or type(exc).__name__ == "CredentialRetrievalError":
        return AccessError(f"could not obtain AWS credentials while trying to {what}: "
                           f"{_short(exc)}")
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or str(
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        message = _short(error.get("Message", "")) or code
        if code in REFUSED_HINTS:
            return AccessError(f"access denied to {what}: {code}: {message}",
                               hint=REFUSED_HINTS[code])
        if code in ACCESS_CODES:
            return AccessError(f"access denied to {what}: {code}: {message}",
                               hint=f"the identity's IAM policy must allow s3:ListBucket on "
                                    f"arn:aws:s3:::{bucket or '<bucket>'} and s3:GetObject, "
                                    f"s3:PutObject on the run's keys (and the bucket policy "
                                    f"must not deny them)")
        if code == "NoSuchBucket":
            return AccessError(f"no such bucket {bucket!r} ({what})")
        if code in REGION_CODES:
            actual = _bucket_region(exc.response)
            return AccessError(f"wrong region for bucket {bucket!r} ({what}): {code}",
                               hint=f"the bucket is in {actual}: set region: {actual}"
                               if actual else "set region to the bucket's region")
        return TransferError(f"{what} failed: {code}: {message}")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                        bx.ReadTimeoutError, bx.ConnectTimeoutError)):
        return TransferError(f"{what} failed after retries: {_short(exc)}")
    if isinstance(exc, bx.BotoCoreError):
        return TransferError(f"{what} failed: {_short(exc)}")
    if isinstance(exc, OSError):
        return TransferError(f"{what} failed: {exc.strerror or exc}")
    return TransferError(f"{what} failed: {type(exc).__name__}: {_short(exc)}")


def _bucket_region(response: dict[str, Any]) -> str:
    """The bucket's real region, as S3 reports it in a redirect or a malformed-header error."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    error = response.get("Error", {}) or {}
    region = headers.get("x-amz-bucket-region") or error.get("Region") or error.get("Expected")
    return str(region) if region else ""


def _short(exc: Any) -> str:
    """The error's text on one line, scrubbed of secrets before it is cut to 300 characters."""
    from catalog_agent.logs import clip

    return clip(" ".join(str(exc).split()), 300)
