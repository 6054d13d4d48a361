"""Which HTTP proxy the agent's S3 requests go through, decided as botocore decides it.

botocore (STS, sync's server-side copies, ``config --check``) honours ``HTTPS_PROXY``,
``HTTP_PROXY`` and ``NO_PROXY`` (and their lower-case forms, which win): it asks
``urllib.request.proxy_bypass`` whether the endpoint is exempt and takes the proxy named for
the endpoint's scheme from ``urllib.request.getproxies()`` (botocore.utils.get_environ_proxies,
httpsession.ProxyConfiguration). The agent's own client must do exactly the same, or one half
of a command would go through the proxy and the other try to go around it. So ``NO_PROXY`` is
what urllib reads: host names and domain suffixes (``.example.com``, ``example.com``), with or
without a port, and ``*``; not IP ranges in CIDR form (botocore does not read them either).

A proxy URL's ``user:password@`` becomes a ``Proxy-Authorization: Basic`` header, as botocore
sends it; it is never logged: :attr:`Proxy.display` has no userinfo.
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from catalog_agent.errors import AccessError, ConfigError


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy: reached over ``scheme`` (http, or https for TLS to the proxy itself)."""

    scheme: str
    hostname: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # "Basic ..."; a secret

    @property
    def display(self) -> str:
        """The proxy as logs and errors name it: no user, no password."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.scheme}://{host}:{self.port}"


def for_endpoint(scheme: str, netloc: str) -> Proxy | None:
    """The proxy for requests to ``scheme://netloc`` (the endpoint as botocore is given it),
    or None to connect directly."""
    wanted = f"{scheme}_proxy"
    if not any(name.lower() == wanted for name in os.environ):
        return None  # the usual case, without the cost of importing urllib.request at start-up
    from urllib.request import getproxies, proxy_bypass

    try:
        if proxy_bypass(netloc):
            return None
    except (TypeError, socket.gaierror):  # as botocore.utils.should_bypass_proxies
        pass
    url = getproxies().get(scheme)
    if not url:
        return None
    return parse(url, f"{scheme.upper()}_PROXY")


def parse(url: str, variable: str) -> Proxy:
    """A proxy URL as botocore reads it (``host:port`` alone means ``http://host:port``)."""
    if "://" in url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{variable} names a proxy of scheme {url.split('://')[0]!r}: only "
                          f"http:// and https:// proxies are supported")
    if not url.startswith(("http:", "https:")):
        url = ("http:" if url.startswith("//") else "http://") + url
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ConfigError(f"{variable} is not a proxy URL of the form http://host:port",
                          hint="or https://host:port for TLS to the proxy; user:password@ "
                               "before the host for a proxy that asks for a login")
    authorization = None
    if parts.username and parts.password:
        login = f"{unquote(parts.username)}:{unquote(parts.password)}"
        authorization = "Basic " + base64.b64encode(login.encode("utf-8")).decode("ascii")
    return Proxy(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                 authorization)


def connect_request(proxy: Proxy, hostname: str, port: int) -> bytes:
    """The CONNECT request that opens a tunnel to ``hostname:port`` for TLS."""
    authority = f"[{hostname}]:{port}" if ":" in hostname else f"{hostname}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refused(proxy: Proxy, status: int, target: str) -> Exception:
    """A proxy's final "no": an access error (407, 403: the same every time) or a connection
    error to retry (502, 503, 504: the proxy could not reach the endpoint)."""
    if status in (401, 403, 407):
        hint = ("put the proxy's user and password in the proxy variable: "
                "http://user:password@host:port" if status == 407 and not proxy.authorization
                else "the proxy's user and password, or its rules for this endpoint")
        return AccessError(f"the proxy {proxy.display} refused the connection to {target}: "
                           f"{status}", hint=hint)
    return ConnectionError(f"the proxy {proxy.display} answered {status} to "
                                  f"CONNECT {target}")
