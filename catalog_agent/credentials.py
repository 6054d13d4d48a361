"""Credentials: which AWS identity the agent acts as.

By default boto3's own chain (IRSA web identity, EKS Pod Identity, environment, profiles,
instance metadata). ``use_credentials`` reads keys from named environment variables and
``aws_profile`` picks a profile from ``aws_credentials_file``. Values never leave this module
except inside botocore's credential objects: errors name variables and files, never values.
"""

from __future__ import annotations

import configparser
import os
from typing import TYPE_CHECKING

from catalog_agent.errors import AccessError

if TYPE_CHECKING:
    import botocore.session

    from catalog_agent.config import Config


def secret_values(config: Config | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Values that must never be printed: the logger scrubs them from every event."""
    environ = dict(os.environ) if environ is None else environ
    names = {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_CONTAINER_AUTHORIZATION_TOKEN"}
    if config is not None:
        names |= {config.aws_secret_access_key_name, config.aws_session_key_name}
    return [environ[n] for n in names if len(environ.get(n, "")) >= 8]


def make_session(config: Config) -> botocore.session.Session:
    """A botocore session holding the base credentials the configuration asks for."""
    import botocore.session

    session = botocore.session.Session()
    if config.aws_profile:
        _use_profile(session, config)
    if config.use_credentials:
        key = _required_variable(config.aws_access_key_name, "access key id")
        secret = _required_variable(config.aws_secret_access_key_name, "secret access key")
        token = os.environ.get(config.aws_session_key_name) or None
        session.set_credentials(key, secret, token)
    return session


def _required_variable(name: str, what: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise AccessError(f"use_credentials is true but the {what} variable {name} is not set")
    return value


def _use_profile(session: botocore.session.Session, config: Config) -> None:
    path = os.path.expanduser(config.aws_credentials_file)
    if not os.path.isfile(path):
        raise AccessError(f"aws_profile {config.aws_profile!r}: credentials file {path} "
                          f"does not exist")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, UnicodeDecodeError):
        raise AccessError(f"credentials file {path} cannot be parsed") from None
    if not parser.has_section(config.aws_profile):
        raise AccessError(f"aws_profile {config.aws_profile!r} is not in credentials file "
                          f"{path}")
    session.set_config_variable("credentials_file", path)
    session.set_config_variable("profile", config.aws_profile)
