"""``m2msec mef serve --config FILE``: the MEF's settings, every one with a default (docs/mef.md "Running").

Without a file the MEF runs on embedded defaults: loopback port 8446 (the gateway uses 8443, the MAF 8444, the
CCF 8445), an SQLite store ``mef.db`` beside ``m2msec keys``'s, PSK MEF Handshakes only. A file (TOML) sets any
of :class:`MEFConfig`'s fields by the same name; unknown keys and wrong types are ConfigurationError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from m2msec import service_config
from m2msec.service_config import ServiceConfig
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
    return service_config.default_store_url(MEFConfig.STORE_ENV, MEFConfig.STORE_FILE)


@dataclass(frozen=True)
class MEFConfig(ServiceConfig):
    SERVICE: ClassVar[str] = "MEF"
    FQDN_FIELD: ClassVar[str] = "mef_fqdn"
    STORE_ENV: ClassVar[str] = "M2MSEC_MEF_STORE"
    STORE_FILE: ClassVar[str] = "mef.db"

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
        self._normalise_names()
        self._check_common(("max_credential_lifetime", "handshake_timeout", "purge_interval"))


def load_config(path: Path | None) -> MEFConfig:
    """The settings in ``path`` (TOML), or the defaults when ``path`` is None."""
    return MEFConfig() if path is None else load_settings(path, MEFConfig)
