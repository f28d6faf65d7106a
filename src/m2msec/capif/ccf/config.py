"""``m2msec ccf serve --config FILE``: the CCF's settings, every one with a default (docs/ccf.md "Running").

With no file the CCF runs on embedded defaults: loopback, an SQLite store beside ``m2msec keys``'s, a CA and a
server certificate of its own for :data:`DEFAULT_CCF_HOST`. A file (TOML) sets any field of :class:`CCFConfig` by the
same name; unknown keys and wrong types are :class:`~m2msec.errors.ConfigurationError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from m2msec.capif.certificates import DEFAULT_CERTIFICATE_DAYS
from m2msec.capif.tokens import DEFAULT_ACCESS_TOKEN_LIFETIME, MAX_ACCESS_TOKEN_LIFETIME
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import validate_fqdn
from m2msec.tomlfile import load_settings

__all__ = ["DEFAULT_CCF_HOST", "DEFAULT_LISTEN", "CCFConfig", "default_store_url", "load_config"]

#: where ``m2msec ccf serve`` listens without a configuration: loopback only
DEFAULT_LISTEN: Final = "127.0.0.1:8445"
#: the CCF's host name without a configuration (its server certificate, JWT issuer and CA name constraint)
DEFAULT_CCF_HOST: Final = "ccf.m2msec.localhost"


def default_store_url() -> str:
    """``$M2MSEC_CCF_STORE``, else an SQLite file beside ``m2msec keys``'s default store."""
    env = os.environ.get("M2MSEC_CCF_STORE")
    if env:
        return env
    from m2msec.cli.common import default_db

    return "sqlite://" + str(default_db().with_name("ccf.db"))


def _origin(text: str) -> str:
    """``https://host[:port]`` exactly (a trailing ``/`` dropped): what every Location header starts with."""
    bad = ConfigurationError("api_root must be https://host[:port] (no path, query, fragment or user)")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise bad
    try:
        url = urllib.parse.urlsplit(text.removesuffix("/"))
        port = url.port
    except ValueError:
        raise bad from None
    host = url.hostname
    if url.scheme != "https" or not host or url.path or url.query or url.fragment or "@" in url.netloc or port == 0:
        raise bad
    if ":" not in host:  # not an IPv6 literal: an IPv4 address or a host name
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            try:
                validate_fqdn(host.rstrip("."), role="api_root host")
            except IdentifierError:
                raise bad from None
    return f"https://{url.netloc}"


@dataclass(frozen=True)
class CCFConfig:
    listen: str = DEFAULT_LISTEN
    ccf_host: str = DEFAULT_CCF_HOST
    #: the apiRoot announced in Location headers; "" = ``https://<ccf_host>:<port>``
    api_root: str = ""
    #: ``sqlite:///path`` or ``postgresql://user@host/db`` (docs/store.md); "" = :func:`default_store_url`
    store: str = ""
    #: the store's master key file; else ``M2MSEC_MASTER_KEY``, else (SQLite only) ``<db>.key``
    master_key_file: str = ""
    #: lifetime of the access tokens of the token endpoint (seconds, at most 3600)
    access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME
    #: validity of the certificates the CCF issues to invokers and API provider functions (days)
    certificate_days: int = DEFAULT_CERTIFICATE_DAYS
    #: the ``aud`` every onboarding credential must carry; "" = none
    onboarding_audience: str = ""
    handshake_timeout: float = 10.0
    #: D149: let API invokers have notifications sent to loopback, private and other internal addresses
    invoker_private_destinations: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "ccf_host", validate_fqdn(self.ccf_host.rstrip("."), role="CCF host name"))
        except IdentifierError as exc:
            raise ConfigurationError(str(exc)) from None
        if not 1 <= self.access_token_lifetime <= MAX_ACCESS_TOKEN_LIFETIME:
            raise ConfigurationError(f"access_token_lifetime must be 1..{MAX_ACCESS_TOKEN_LIFETIME} seconds")
        if not 1 <= self.certificate_days <= 3650:
            raise ConfigurationError("certificate_days must be 1..3650")
        if not self.handshake_timeout > 0:
            raise ConfigurationError("handshake_timeout must be a positive number of seconds")
        if self.api_root:
            object.__setattr__(self, "api_root", _origin(self.api_root))

    @property
    def store_url(self) -> str:
        return self.store or default_store_url()

    def with_overrides(self, **values: Any) -> CCFConfig:
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


def load_config(path: Path | None) -> CCFConfig:
    """The settings in ``path`` (TOML), or the defaults when ``path`` is None."""
    return CCFConfig() if path is None else load_settings(path, CCFConfig)
