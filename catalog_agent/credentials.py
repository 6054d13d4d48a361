"""Credentials: which AWS identity the agent acts as, and how it stays valid for a long transfer.

Base credentials come from, in this order of preference:

- ``use_credentials``: keys from the environment variables the configuration names;
- ``aws_profile``: a profile of ``aws_credentials_file``;
- otherwise boto3's default chain (environment keys, IRSA web identity, EKS Pod Identity,
  instance metadata), with the IRSA step replaced by our own so that it honours ``region``,
  ``sts_endpoint_url``, a session name that identifies run and step, and our refresh windows.

With ``role_arn`` the agent assumes that role on top of the base, unless the pod's IRSA role
already is ``role_arn`` (then the web identity is used directly, no second hop). Temporary
credentials are botocore ``RefreshableCredentials``: every signed request asks for them, and
they are fetched again before they expire, so a transfer outlasting a session finishes.

Secret values never leave this module except inside botocore's credential objects: errors name
variables, files and roles, never values. Every secret obtained here (a profile's keys, a token
file's token, each STS session's secret key and token, at each refresh too) is also handed to
the log scrubber (:func:`catalog_agent.logs.add_secrets`) the moment it is known.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from catalog_agent import tls
from catalog_agent.errors import AccessError, AgentError

if TYPE_CHECKING:
    import botocore.credentials
    import botocore.session

    from catalog_agent.config import Config

# Method names printed by ``config --check`` and logged, by botocore provider METHOD.
_METHODS = {
    "env": "environment",
    "explicit": "environment",
    "assume-role-with-web-identity": "irsa",
    "container-role": "container",
    "iam-role": "instance",
    "shared-credentials-file": "profile",
    "config-file": "profile",
    "assume-role": "profile",
    "sso": "profile",
    "login": "profile",
    "custom-process": "profile",
    "boto-config": "profile",
    "ec2-credentials-file": "instance",
}
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]", re.ASCII)
# Service-account tokens are a few KiB; a larger read is not a token and is not kept.
MAX_TOKEN_BYTES = 64 * 1024
MAX_SESSION_NAME = 64


@dataclass(frozen=True)
class Resolved:
    """The identity the agent acts as, and where it came from (for logs and ``config --check``)."""

    session: botocore.session.Session  # credentials registered: create_client uses them
    credentials: botocore.credentials.Credentials
    method: str  # irsa, pod-identity, assume-role, environment, profile, instance, container
    base: str  # for assume-role: the method of the credentials it stands on; else == method
    role_arn: str = ""
    session_name: str = ""

    def describe(self) -> str:
        text = self.method
        if self.method == "assume-role":
            text += f" {self.role_arn} on {self.base}"
        elif self.role_arn:
            text += f" {self.role_arn} (role_arn is the pod's IRSA role: used directly)"
        return text


def secret_values(config: Config | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Values that must never be printed: the logger scrubs them from every event."""
    environ = dict(os.environ) if environ is None else environ
    names = {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_CONTAINER_AUTHORIZATION_TOKEN"}
    if config is not None:
        names |= {config.aws_secret_access_key_name, config.aws_session_key_name}
    return [environ[n] for n in names if len(environ.get(n, "")) >= 8]


def session_name(run_id: str, step: str) -> str:
    """An STS RoleSessionName naming run and step: 2..64 characters of ``[\\w+=,.@-]``.

    It shows in CloudTrail and in the assumed-role ARN, so an operator can tell which step of
    which run made a request. Too long a name keeps its start and gains a short hash, so two
    long run ids never share a name.
    """
    raw = ".".join(part for part in ("catalog-agent", run_id, step) if part)
    name = _SESSION_NAME_UNSAFE.sub("-", raw)
    if len(name) > MAX_SESSION_NAME:
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
        name = name[:MAX_SESSION_NAME - 9] + "-" + digest
    return name


def environment_keys(config: Config, environ: Mapping[str, str] | None = None
                     ) -> tuple[str, str, str | None] | None:
    """Keys given in variables, as the configuration would resolve them, found without botocore.

    Importing botocore and resolving its chain costs most of a small get's start-up (about
    0.1 s); when the answer is plain keys in the environment, that is known from the variables
    alone. None: resolve as usual (a role, a profile, web identity, refreshable keys, or a
    missing variable, whose clear error comes from the usual path).
    """
    environ = os.environ if environ is None else environ
    if config.role_arn:
        return None
    if config.use_credentials:
        access = environ.get(config.aws_access_key_name, "")
        secret = environ.get(config.aws_secret_access_key_name, "")
        token = environ.get(config.aws_session_key_name, "")
    elif config.aws_profile or environ.get("AWS_CREDENTIAL_EXPIRATION"):
        return None
    else:  # botocore's chain starts with these variables, and stops there when both are set
        access = environ.get("AWS_ACCESS_KEY_ID", "")
        secret = environ.get("AWS_SECRET_ACCESS_KEY", "")
        token = environ.get("AWS_SESSION_TOKEN", "") or environ.get("AWS_SECURITY_TOKEN", "")
    if not (access and secret):
        return None
    return access, secret, token or None


def make_session(config: Config) -> botocore.session.Session:
    """A botocore session whose clients act as the identity the configuration asks for."""
    return resolve(config).session


def resolve(config: Config) -> Resolved:
    """Resolve base credentials, then the role on top of them; raise AccessError on failure."""
    import botocore.session

    session = botocore.session.Session()
    session.set_config_variable("region", config.region)
    session.set_config_variable("sts_regional_endpoints", "regional")
    name = session_name(config.run_id, config.step)
    sts = _sts_creator(config)
    try:
        if not config.use_credentials and not config.aws_profile and config.role_arn and \
                _irsa_role() == config.role_arn:
            creds = _web_identity(config, sts, config.role_arn, name,
                                  duration=config.session_duration_in_seconds)
            resolved = Resolved(session, creds, "irsa", "irsa", config.role_arn, name)
        else:
            base, method = _base(config, session, sts, name)
            if config.role_arn:
                creds = _assume_role(config, sts, base, method, name)
                resolved = Resolved(session, creds, "assume-role", method, config.role_arn, name)
            else:
                resolved = Resolved(session, base, method, method, "", name)
    except AgentError:
        raise
    except Exception as exc:  # noqa: BLE001 - every botocore failure becomes one clear line
        raise sts_error(exc, "", config) from None
    remember(resolved.credentials)
    _register(session, resolved.credentials)
    return resolved


def remember(creds: botocore.credentials.Credentials) -> None:
    """Hand the secret parts of ``creds`` to the log scrubber, now and at every refresh.

    Temporary credentials from botocore's own providers (Pod Identity, instance roles) refresh
    through their ``refresh_using`` function: it is wrapped so that each new session's secret
    key and token are scrubbed from the moment they exist.
    """
    from botocore.credentials import RefreshableCredentials

    from catalog_agent.logs import add_secrets

    if isinstance(creds, RefreshableCredentials):
        refresh = creds._refresh_using
        if not getattr(refresh, "remembers_secrets", False):
            def remembering() -> dict[str, Any]:
                data = refresh()
                add_secrets([data.get("secret_key"), data.get("token")])
                return data

            remembering.remembers_secrets = True  # type: ignore[attr-defined]
            creds._refresh_using = remembering
        frozen = creds.get_frozen_credentials()
    else:
        frozen = creds
    add_secrets([frozen.secret_key, frozen.token])


# --- base credentials ---


def _base(config: Config, session: botocore.session.Session, sts: Callable[..., Any],
          name: str) -> tuple[botocore.credentials.Credentials, str]:
    from botocore.credentials import Credentials

    if config.use_credentials:
        key = _required_variable(config.aws_access_key_name, "access key id")
        secret = _required_variable(config.aws_secret_access_key_name, "secret access key")
        token = os.environ.get(config.aws_session_key_name) or None
        creds, method = Credentials(key, secret, token, method="env"), "environment"
    elif config.aws_profile:
        creds, method = _profile(config), "profile"
    else:
        creds, method = _default_chain(config, session, sts, name)
    remember(creds)  # the base of an assumed role is a secret too
    return creds, method


def _required_variable(name: str, what: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise AccessError(f"use_credentials is true but the {what} variable {name} is not set",
                          hint="set it from a Secret, or set use_credentials: false to use "
                               "the pod's identity")
    return value


def _profile(config: Config) -> botocore.credentials.Credentials:
    import configparser  # here, not at the top: only a profile needs it (start-up time)

    from botocore.credentials import SharedCredentialProvider

    path = os.path.expanduser(config.aws_credentials_file)
    where = f"aws_profile {config.aws_profile!r}, credentials file {path}"
    if not os.path.isfile(path):
        raise AccessError(f"{where}: the file does not exist",
                          hint="mount the credentials Secret there or set aws_credentials_file")
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except PermissionError:
        raise AccessError(f"{where}: the file is not readable by uid {os.getuid()}",
                          hint="set the pod's securityContext.fsGroup so that the mounted "
                               "Secret is group-readable") from None
    except (configparser.Error, UnicodeDecodeError, OSError):
        raise AccessError(f"{where}: the file cannot be parsed as an AWS credentials "
                          f"file") from None
    if not parser.has_section(config.aws_profile):
        raise AccessError(f"{where}: the profile is not in the file",
                          hint=f"profiles in it: {', '.join(parser.sections()) or 'none'}")
    creds = SharedCredentialProvider(creds_filename=path, profile_name=config.aws_profile).load()
    if creds is None:
        raise AccessError(f"{where}: the profile has no aws_access_key_id and "
                          f"aws_secret_access_key")
    return creds


def _default_chain(config: Config, session: botocore.session.Session, sts: Callable[..., Any],
                   name: str) -> tuple[botocore.credentials.Credentials, str]:
    """boto3's chain, with its IRSA step made ours; the method name says which step won."""
    from botocore.credentials import CredentialProvider, create_credential_resolver

    _check_token_file("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "EKS Pod Identity token file")
    resolver = create_credential_resolver(session, region_name=config.region)
    role_arn = _irsa_role()
    if role_arn:
        class IrsaProvider(CredentialProvider):
            METHOD = "assume-role-with-web-identity"

            def load(self) -> botocore.credentials.Credentials:
                return _web_identity(config, sts, role_arn, name)

        resolver.insert_before("assume-role-with-web-identity", IrsaProvider())
    creds = resolver.load_credentials()
    if creds is None:
        raise AccessError("no AWS credentials found (no IRSA or Pod Identity token, no "
                          "environment keys, no profile, no instance role)",
                          hint="give the pod's service account an IAM role (IRSA or EKS Pod "
                               "Identity), or set use_credentials or aws_profile")
    method = _METHODS.get(getattr(creds, "method", ""), getattr(creds, "method", "") or "other")
    if method == "container":
        method = "pod-identity" if os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") \
            else "container"
    return creds, method


def _irsa_role() -> str:
    """The pod's IRSA role, when both IRSA variables are set."""
    if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return os.environ.get("AWS_ROLE_ARN", "")
    return ""


def _check_token_file(variable: str, what: str) -> None:
    """A token file that cannot be read is the most common IRSA failure: name it and the fix."""
    path = os.environ.get(variable, "")
    if not path:
        return
    try:
        with open(path, "rb") as handle:
            content = handle.read(MAX_TOKEN_BYTES)
    except PermissionError:
        raise AccessError(f"the {what} {path} (from {variable}) is not readable by uid "
                          f"{os.getuid()}",
                          hint="the projected token is readable by its owner and group only: "
                               "set the pod's securityContext.fsGroup (e.g. 65534) or run as "
                               "the user that owns it") from None
    except FileNotFoundError:
        raise AccessError(f"the {what} {path} (from {variable}) does not exist",
                          hint="is the service-account token volume mounted in this "
                               "container?") from None
    except OSError as exc:
        raise AccessError(f"the {what} {path} (from {variable}) cannot be read: "
                          f"{exc.strerror or exc}") from None
    from catalog_agent.logs import add_secrets

    add_secrets([content.decode("utf-8", "replace").strip()])  # a bearer token


# --- temporary credentials that refresh themselves ---


def _web_identity(config: Config, sts: Callable[..., Any], role_arn: str, name: str, *,
                  duration: int | None = None) -> botocore.credentials.Credentials:
    """IRSA: AssumeRoleWithWebIdentity with the projected service-account token."""
    from botocore.credentials import AssumeRoleWithWebIdentityCredentialFetcher

    path = os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]

    def token() -> str:
        from catalog_agent.logs import add_secrets

        _check_token_file("AWS_WEB_IDENTITY_TOKEN_FILE", "web identity token file")
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
        add_secrets([value])  # a bearer token: whoever holds it is the role
        return value

    token()  # fail early, with the hint, when the token cannot be read
    extra: dict[str, Any] = {"RoleSessionName": os.environ.get("AWS_ROLE_SESSION_NAME") or name}
    if duration:
        extra["DurationSeconds"] = duration
    fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
        client_creator=sts, web_identity_token_loader=token, role_arn=role_arn,
        extra_args=extra, cache=_NoCache())
    return _refreshable(config, fetcher, "AssumeRoleWithWebIdentity", role_arn,
                        "assume-role-with-web-identity")


def _assume_role(config: Config, sts: Callable[..., Any],
                 base: botocore.credentials.Credentials, base_method: str,
                 name: str) -> botocore.credentials.Credentials:
    from botocore.credentials import AssumeRoleCredentialFetcher

    fetcher = AssumeRoleCredentialFetcher(
        client_creator=sts, source_credentials=base, role_arn=config.role_arn,
        extra_args={"RoleSessionName": name,
                    "DurationSeconds": config.session_duration_in_seconds},
        cache=_NoCache())
    return _refreshable(config, fetcher, "AssumeRole", config.role_arn, "assume-role",
                        base_method=base_method)


def _refreshable(config: Config, fetcher: Any, operation: str, role_arn: str, method: str,
                 *, base_method: str = "") -> botocore.credentials.RefreshableCredentials:
    """Fetch now (errors surface here, with hints), then refresh ahead of expiry.

    The refresh windows scale with the session's lifetime: botocore's fixed 15/10 minute
    windows would refresh a 900 s session on every single request.
    """
    from botocore.credentials import RefreshableCredentials

    from catalog_agent.logs import get_logger

    def fetch() -> dict[str, Any]:
        from catalog_agent.logs import add_secrets

        try:
            data = fetcher.fetch_credentials()
            add_secrets([data.get("secret_key"), data.get("token")])
            return data
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise sts_error(exc, operation, config, role_arn=role_arn,
                            base=base_method) from None

    first = fetch()
    lifetime = _seconds_left(first["expiry_time"])
    advisory, mandatory = refresh_windows(lifetime)
    log = get_logger()

    def refresh() -> dict[str, Any]:
        try:
            data = fetch()
        except AgentError as exc:
            log.warning("credentials.refresh_failed", operation=operation, error=str(exc))
            raise
        log.info("credentials.refreshed", operation=operation, role_arn=role_arn,
                 expires=data["expiry_time"])
        return data

    return RefreshableCredentials.create_from_metadata(
        first, refresh_using=refresh, method=method, advisory_timeout=advisory,
        mandatory_timeout=mandatory)


class _NoCache(dict):  # type: ignore[type-arg]
    """botocore fetchers keep a cache with its own 15-minute window; ours decides alone."""

    def __contains__(self, key: object) -> bool:
        return False


def refresh_windows(lifetime: float) -> tuple[int, int]:
    """(advisory, mandatory) seconds before expiry at which credentials are fetched again.

    Advisory: one thread tries while the others carry on; mandatory: every request waits.
    """
    advisory = max(1, min(15 * 60, int(lifetime) // 3))
    mandatory = max(1, min(10 * 60, int(lifetime) // 6))
    return advisory, mandatory


def _seconds_left(expiry: str) -> float:
    from dateutil.parser import parse

    moment = parse(expiry)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (moment - datetime.datetime.now(datetime.timezone.utc)).total_seconds()


# --- STS clients and errors ---


def _sts_creator(config: Config) -> Callable[..., Any]:
    """Creates STS clients for the configured region, endpoint and TLS settings."""
    import botocore.session
    from botocore.config import Config as BotoConfig

    session = botocore.session.Session()
    session.set_config_variable("sts_regional_endpoints", "regional")
    base = BotoConfig(region_name=config.region, connect_timeout=10, read_timeout=30,
                      retries={"mode": config.retry_mode, "max_attempts": config.max_attempts},
                      user_agent_extra="catalog-agent")
    verify = tls.verify(config)

    def create(service: str, **kwargs: Any) -> Any:
        extra = kwargs.pop("config", None)
        kwargs.pop("region_name", None)
        return tls.fail_fast(session.create_client(
            service, region_name=config.region, endpoint_url=config.sts_endpoint_url or None,
            verify=verify, config=base.merge(extra) if extra else base, **kwargs))

    return create


def sts_client(config: Config, resolved: Resolved) -> Any:
    """An STS client acting as the resolved identity (for GetCallerIdentity)."""
    frozen = resolved.credentials.get_frozen_credentials()
    return _sts_creator(config)("sts", aws_access_key_id=frozen.access_key,
                                aws_secret_access_key=frozen.secret_key,
                                aws_session_token=frozen.token)


def _register(session: botocore.session.Session, creds: botocore.credentials.Credentials) -> None:
    """Make ``session.create_client`` use ``creds`` (refreshable ones keep refreshing)."""
    from botocore.credentials import CredentialProvider, CredentialResolver

    class Fixed(CredentialProvider):
        METHOD = getattr(creds, "method", "catalog-agent") or "catalog-agent"

        def load(self) -> botocore.credentials.Credentials:
            return creds

    session.register_component("credential_provider", CredentialResolver([Fixed()]))


def sts_error(exc: BaseException, operation: str, config: Config, *, role_arn: str = "",
              base: str = "") -> AgentError:
    """One line for an STS or credential failure, with a hint for the common causes."""
    from botocore import exceptions as bx

    role = role_arn or config.role_arn
    if isinstance(exc, AgentError):
        return exc
    refused = tls.certificate_error(exc)
    if refused is not None:
        return refused
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "error"
        message = _short(error.get("Message", ""))
        op = exc.operation_name or operation or "STS"
        text = f"{op} failed for role {role}: {code}: {message}" if role and "Role" in op \
            else f"{op} failed: {code}: {message}"
        return AccessError(text, hint=_sts_hint(op, code, message, role, base, config))
    purpose = f" to {operation}" if operation else ""
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                        bx.ReadTimeoutError, bx.ConnectionClosedError)):
        where = config.sts_endpoint_url or f"the regional endpoint of {config.region!r}"
        return AccessError(f"could not reach STS ({where}){purpose}: {_short(exc)}",
                           hint=f"check region ({config.region!r}) and sts_endpoint_url, and "
                                f"that the pod may reach STS (egress, VPC endpoint)")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AccessError(f"no usable AWS credentials{purpose}: {_short(exc)}",
                           hint="give the pod an IAM role (IRSA or EKS Pod Identity), or set "
                                "use_credentials or aws_profile")
    if isinstance(exc, bx.BotoCoreError):
        return AccessError(f"could not obtain AWS credentials{purpose}: {_short(exc)}")
    if isinstance(exc, OSError):
        return AccessError(f"could not obtain AWS credentials{purpose}: {exc.strerror or exc}")
    return AccessError(f"could not obtain AWS credentials{purpose}: "
                       f"{type(exc).__name__}: {_short(exc)}")


def _sts_hint(operation: str, code: str, message: str, role: str, base: str,
              config: Config) -> str | None:
    if operation == "AssumeRoleWithWebIdentity":
        if code in {"AccessDenied", "AccessDeniedException"}:
            return (f"the trust policy of {role} must allow sts:AssumeRoleWithWebIdentity for "
                    f"the cluster's OIDC provider, with the condition "
                    f"<oidc>:sub = system:serviceaccount:<namespace>:<service-account> and "
                    f"<oidc>:aud = sts.amazonaws.com")
        if code in {"InvalidIdentityToken", "ExpiredTokenException", "IDPRejectedClaim"}:
            return ("the service-account token was refused: is the cluster's OIDC provider "
                    "registered in IAM, with audience sts.amazonaws.com?")
    if operation == "AssumeRole" and code in {"AccessDenied", "AccessDeniedException"}:
        who = f"the base identity ({base})" if base else "the base identity"
        return (f"the trust policy of {role} must allow sts:AssumeRole from {who}, and "
                f"that identity's policy must allow sts:AssumeRole on {role}")
    if code in {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"}:
        return ("the base credentials were refused: check the key variables or profile (a "
                "temporary ASIA key needs its session token), and that STS is enabled in "
                f"region {config.region!r}")
    if code == "RegionDisabledException":
        return f"activate STS in region {config.region!r} (IAM account settings) or change region"
    if code == "ValidationError" and "chaining" in message.lower():
        return ("role_arn on top of IRSA, EKS Pod Identity or another assumed role is role "
                "chaining, which AWS caps at 3600 s whatever the role's MaxSessionDuration: set "
                "session_duration_in_seconds to 3600 or less (sessions refresh themselves)")
    if code == "ValidationError" and "duration" in message.lower():
        return ("session_duration_in_seconds exceeds the role's maximum session duration "
                "(raise the role's MaxSessionDuration or lower the setting)")
    if code == "ValidationError":
        return "is role_arn a role's ARN (arn:aws:iam::<account>:role/<name>)?"
    return None


def _short(exc: Any) -> str:
    """The error's text on one line, scrubbed of secrets before it is cut to 300 characters."""
    from catalog_agent.logs import clip

    return clip(" ".join(str(exc).split()), 300)
