"""TLS for every connection the agent makes: which CAs it trusts, and what a refused
certificate means.

One answer for the three HTTP paths (the agent's own S3 requests, :mod:`.stores.s3_client`;
botocore's S3 client; STS), so they can never disagree. The order is botocore's: the ``ca_bundle`` key,
then ``AWS_CA_BUNDLE``, then botocore's own default (certifi's bundle when certifi is
installed, else the ``cacert.pem`` botocore ships). The image installs only the locked
dependencies, which have no certifi, so it trusts botocore's bundle; nothing here may import
certifi. ``verify_tls: false`` turns checking off, whatever the bundle.

A certificate the agent refuses (unknown CA, a name it was not issued for, expired) is not
retried: it fails the same way every time. It becomes one :class:`CertificateError` line (exit
4, like every other access failure) naming the endpoint and the problem.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from catalog_agent.errors import CertificateError, ConfigError

if TYPE_CHECKING:
    from catalog_agent.config import Config

ENV_BUNDLE = "AWS_CA_BUNDLE"


def verify(config: Config, *, lazy: bool = False) -> str | bool:
    """What connections check certificates against: False (not at all) or a CA bundle file.

    Passed as ``verify=`` to every botocore client, and to the lean path's pool, explicitly:
    a ``True`` would make botocore skip ``AWS_CA_BUNDLE`` (it reads the variable only when
    ``verify`` is None).

    ``lazy``: for the agent's own client, which builds its TLS context (:func:`client_context`)
    only when a connection needs TLS. Then nothing named gives True instead of botocore's
    bundle (finding it imports certifi: some 7 ms), and a named bundle is checked to be a
    readable PEM file but not loaded (loading the system's bundle of public CAs takes some
    25 ms, wasted on an http endpoint).
    """
    if not config.verify_tls:
        _unchecked()
        return False
    if config.ca_bundle:  # checked to be a file when the configuration was loaded
        return _loadable(config.ca_bundle, f"ca_bundle {config.ca_bundle} (from "
                                           f"{config.sources['ca_bundle']})", load=not lazy)
    bundle = os.environ.get(ENV_BUNDLE, "")
    if bundle:
        if not os.path.isfile(bundle):
            raise ConfigError(f"{ENV_BUNDLE} {bundle} is not a file",
                              hint="mount the CA bundle there, or unset the variable")
        return _loadable(bundle, f"{ENV_BUNDLE} {bundle}", load=not lazy)
    return True if lazy else default_bundle()


# How each named bundle was named (``ca_bundle ... (from ...)``, ``AWS_CA_BUNDLE ...``), for
# the error of a bundle that fails to load only when a connection first needs it.
_named: dict[str, str] = {}

# The PEM labels OpenSSL loads a certificate from: RHEL's ca-bundle.trust.crt uses TRUSTED.
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----")
_SCAN = 1 << 20  # a bundle is scanned for that label this much at a time


@functools.cache
def _loadable(bundle: str, named: str, *, load: bool = True) -> str:
    """``bundle`` once it is a readable file holding PEM certificates (and, with ``load``, once
    it has loaded as a CA bundle): a DER certificate, an empty file or a Secret mounted under
    the wrong key would otherwise fail deep in the first connection, as an internal error,
    without naming the file."""
    _named[bundle] = named
    try:
        with open(bundle, "rb") as file:
            found, tail = False, b""
            while not found and (block := file.read(_SCAN)):
                found = _PEM_CERTIFICATE.search(tail + block) is not None
                tail = block[-64:]  # a label cut between two blocks
    except OSError as exc:  # e.g. a Secret mounted 0400 for another uid
        raise ConfigError(f"{named} cannot be read: {exc.strerror or exc}",
                          hint="the agent's uid must be able to read the CA bundle (a Secret's "
                               "defaultMode, or fsGroup)") from None
    if not found:
        raise _not_a_bundle(named, "no PEM certificate in it")
    if load:
        client_context(bundle)  # the context the agent's own connections then use
    return bundle


def _not_a_bundle(named: str, reason: str) -> ConfigError:
    return ConfigError(f"{named} is not a CA bundle: {reason}",
                       hint="a CA bundle is a PEM file of '-----BEGIN CERTIFICATE-----' "
                            "blocks (a DER certificate converts with: openssl x509 "
                            "-inform der -in ca.der -out ca.pem)")


@functools.cache
def client_context(verify: bool | str) -> ssl.SSLContext:
    """The agent's own connections' TLS, checked against ``verify`` (a CA bundle; botocore's
    own when True) or unchecked (False): loaded once per process, however many clients.
    A bundle that does not load is a :class:`ConfigError` naming it as the user did."""
    if verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    bundle = verify if isinstance(verify, str) else default_bundle()
    try:
        return ssl.create_default_context(cafile=bundle)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(reason))  # CPython's source line
        raise _not_a_bundle(_named.get(bundle, f"CA bundle {bundle}"),
                            reason.lower().replace("_", " ")) from None


@functools.cache
def _unchecked() -> None:
    """Once per process, one log event, instead of urllib3's two-line InsecureRequestWarning
    on stderr for every single request (which would break the JSON log lines)."""
    import warnings

    from urllib3.exceptions import InsecureRequestWarning

    from catalog_agent.logs import get_logger

    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    get_logger().warning("TLS certificates are not checked", reason="verify_tls is false")


def default_bundle() -> str:
    """botocore's own CA bundle: certifi's when importable, else botocore's ``cacert.pem``
    (as botocore.httpsession.get_cert_path, without importing botocore: start-up time)."""
    import importlib.util

    if importlib.util.find_spec("certifi") is not None:
        import certifi

        return str(certifi.where())
    spec = importlib.util.find_spec("botocore")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(list(spec.submodule_search_locations)[0], "cacert.pem")


def certificate_problem(exc: BaseException) -> str | None:
    """Why a certificate was refused, if that is what ``exc`` (from urllib3, botocore or ssl,
    however deeply wrapped) comes down to; None for any other failure."""
    pending: list[Any] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return (current.verify_message or current.reason or str(current)).rstrip(".")
        if type(current).__name__ == "CertificateError":  # urllib3's own host name check
            return str(current).rstrip(".")
        pending.extend(current.args)
        kwargs = getattr(current, "kwargs", None)  # botocore keeps the cause in kwargs
        if isinstance(kwargs, dict):
            pending.extend(kwargs.values())
        pending += [getattr(current, "reason", None), current.__cause__, current.__context__]
    return None


def certificate_error(exc: BaseException, endpoint: str = "") -> CertificateError | None:
    """The agent's error for a refused certificate, or None when ``exc`` is something else.

    ``endpoint``: where the connection went; else taken from a botocore error's URL.
    """
    problem = certificate_problem(exc)
    if problem is None:
        return None
    where = origin(endpoint or _url_of(exc)) or "the endpoint"
    return CertificateError(f"TLS certificate of {where} not trusted: {problem}",
                            hint=_hint(problem))


def origin(url: str) -> str:
    """scheme://host:port of a URL, without user:password@, path or query."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme and host else ""


def fail_fast(client: Any) -> Any:
    """Make a botocore client give up at once on a refused certificate, not retry it.

    botocore retries its SSLError like any connection error (up to ``max_attempts``, with
    back-off); a certificate refused once is refused every time.
    """
    client.meta.events.register_first("needs-retry", _refuse_retry)
    return client


def _refuse_retry(caught_exception: BaseException | None = None, **_: Any) -> None:
    if caught_exception is not None:
        error = certificate_error(caught_exception)
        if error is not None:
            raise error


def _url_of(exc: BaseException) -> str:
    kwargs = getattr(exc, "kwargs", None)
    if isinstance(kwargs, dict):
        return str(kwargs.get("endpoint_url") or "")
    return ""


def _hint(problem: str) -> str:
    text = problem.lower()
    if "mismatch" in text or "doesn't match" in text or "not valid for" in text:
        return ("the host of endpoint_url (or sts_endpoint_url) must be a name the certificate "
                "was issued for (its subjectAltName)")
    if "expired" in text or "not yet valid" in text:
        return "the server's certificate must be renewed (or this machine's clock is wrong)"
    return ("set ca_bundle (or AWS_CA_BUNDLE) to a PEM file holding the CA that signed the "
            "server's certificate; without either, botocore's bundle of public CAs is used; "
            "verify_tls: false turns checking off")
