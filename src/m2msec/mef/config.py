"""``m2msec mef serve --config FILE``: the MEF's settings, every one with a default (docs/mef.md "Running").

Without a file the MEF runs on embedded defaults: loopback port 8446 (the gateway uses 8443, the MAF 8444, the
CCF 8445), an SQLite store ``mef.db`` beside ``m2msec keys``'s, PSK MEF Handshakes only. A file (TOML) sets any
of :class:`MEFConfig`'s fields by the same name; unknown keys and wrong types are ConfigurationError.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import validate_fqdn
from m2msec.tomlfile import load_settings

__all__ = ["DEFAULT_LISTEN", "DEFAULT_MAX_CREDENTIAL_LIFETIME", "DEFAULT_MEF_FQDN", "DEFAULT_SP_ID", "MEFConfig",
           "default_store_url", "load_config"]

#: where ``m2msec mef serve`` listens without a configuration: loopback only
DEFAULT_LISTEN: Final = "127.0.0.1:8446"
#: the MEF-FQDN (the ``@`` part of every KeID) without a configuration
DEFAULT_MEF_FQDN: Final = "mef.m2msec.localhost"
#: the SP-ID SP-relative enrolee IDs are completed with
DEFAULT_SP_ID: Final = "m2msec.localhost"
#: D191: the longest lifetime a fetched credential is given (and the default Enrolment Expiry), seconds
DEFAULT_MAX_CREDENTIAL_LIFETIME: Final = 86400.0


def default_store_url() -> str:
    """``$M2MSEC_MEF_STORE``, else an SQLite file ``mef.db`` beside ``m2msec keys``'s default store."""
    env = os.environ.get("M2MSEC_MEF_STORE")
    if env:
        return env
    from m2msec.cli.common import default_db

    return "sqlite://" + str(default_db().with_name("mef.db"))


@dataclass(frozen=True)
class MEFConfig:
    listen: str = DEFAULT_LISTEN
    mef_fqdn: str = DEFAULT_MEF_FQDN
    sp_id: str = DEFAULT_SP_ID
    #: ``sqlite:///path`` or ``postgresql://user@host/db`` (docs/store.md); "" = :func:`default_store_url`
    store: str = ""
    #: the store's master key file; else ``M2MSEC_MASTER_KEY``, else (SQLite only) ``<db>.key``
    master_key_file: str = ""
    #: the MEF's FQDN certificate chain and key (PEM) and the CAs of enrolee/target certificates: all or none
    certificate: str = ""
    private_key: str = ""
    client_trust_anchors: str = ""
    client_crl: str = ""
    #: cipher profiles of PSK MEF Handshakes (``m2msec gateway --profiles`` names)
    profiles: str = "onem2m,ecdhe-psk,tls13"
    #: the Remote Management Server URI given to enrolees that ask for remote management ("" = none)
    remote_management_uri: str = ""
    max_credential_lifetime: float = DEFAULT_MAX_CREDENTIAL_LIFETIME
    handshake_timeout: float = 10.0
    #: seconds between purges of expired Enrolment Keys
    purge_interval: float = 60.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mef_fqdn", validate_fqdn(self.mef_fqdn.rstrip("."), role="MEF-FQDN"))
            object.__setattr__(self, "sp_id", validate_fqdn(self.sp_id.removeprefix("//"), role="SP-ID"))
        except IdentifierError as exc:
            raise ConfigurationError(str(exc)) from None
        for name in ("max_credential_lifetime", "handshake_timeout", "purge_interval"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        cert = (self.certificate, self.private_key, self.client_trust_anchors)
        if self.client_crl and not all(cert):
            raise ConfigurationError("client_crl needs certificate, private_key and client_trust_anchors")
        if any(cert) and not all(cert):
            raise ConfigurationError("certificate, private_key and client_trust_anchors go together: the MEF "
                                     "Handshake with certificates is mutual")

    @property
    def store_url(self) -> str:
        return self.store or default_store_url()

    def with_overrides(self, **values: Any) -> MEFConfig:
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


def load_config(path: Path | None) -> MEFConfig:
    """The settings in ``path`` (TOML), or the defaults when ``path`` is None."""
    return MEFConfig() if path is None else load_settings(path, MEFConfig)
