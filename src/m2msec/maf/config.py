"""``m2msec maf serve --config FILE``: the MAF's settings, every one with a default (docs/maf.md "Running").

With no file the MAF runs on embedded defaults: loopback, an SQLite store beside ``m2msec keys``'s, PSK
clients only. A file (TOML) sets any of :class:`MAFConfig`'s fields by the same name; unknown keys, wrong types
and unreadable files are :class:`~m2msec.errors.ConfigurationError` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from m2msec import service_config
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import validate_fqdn
from m2msec.maf.procedures import DEFAULT_MAX_KEY_LIFETIME, DEFAULT_MAX_REGISTRATION_LIFETIME
from m2msec.mef.client import DEFAULT_MEF_TIMEOUT
from m2msec.service_config import ServiceConfig
from m2msec.tomlfile import load_settings

__all__ = ["DEFAULT_LISTEN", "DEFAULT_MAF_FQDN", "DEFAULT_SP_ID", "MAFConfig", "default_store_url", "load_config"]

#: where ``m2msec maf serve`` listens without a configuration: loopback only
DEFAULT_LISTEN = "127.0.0.1:8444"
#: the MAF-FQDN (the ``@`` part of every KmID and MAF Key Identifier it issues) without a configuration
DEFAULT_MAF_FQDN = "maf.m2msec.localhost"
#: the SP-ID SP-relative AE-IDs / CSE-IDs are completed with, without a configuration
DEFAULT_SP_ID = "m2msec.localhost"


def default_store_url() -> str:
    """``$M2MSEC_MAF_STORE``, else an SQLite file ``maf.db`` beside ``m2msec keys``'s default store."""
    return service_config.default_store_url(MAFConfig.STORE_ENV, MAFConfig.STORE_FILE)


@dataclass(frozen=True)
class MAFConfig(ServiceConfig):
    SERVICE: ClassVar[str] = "MAF"
    FQDN_FIELD: ClassVar[str] = "maf_fqdn"
    STORE_ENV: ClassVar[str] = "M2MSEC_MAF_STORE"
    STORE_FILE: ClassVar[str] = "maf.db"

    listen: str = DEFAULT_LISTEN
    maf_fqdn: str = DEFAULT_MAF_FQDN
    sp_id: str = DEFAULT_SP_ID
    #: ``sqlite:///path`` or ``postgresql://user@host/db`` (docs/store.md); "" = :func:`default_store_url`
    store: str = ""
    #: the store's master key file; else ``M2MSEC_MASTER_KEY``, else (SQLite only) ``<db>.key``
    master_key_file: str = ""
    #: the MAF's FQDN certificate chain and key (PEM), and the CAs of client certificates: all three or none
    certificate: str = ""
    private_key: str = ""
    client_trust_anchors: str = ""
    #: CRLs of the client CAs (PEM or DER): a revoked client certificate fails the MAF Handshake (read at start)
    client_crl: str = ""
    #: cipher profiles of PSK MAF Handshakes (``m2msec gateway --profiles`` names)
    profiles: str = "onem2m,ecdhe-psk,tls13"
    admin_fqdn: str = ""
    max_key_lifetime: float = DEFAULT_MAX_KEY_LIFETIME
    max_registration_lifetime: float = DEFAULT_MAX_REGISTRATION_LIFETIME
    handshake_timeout: float = 10.0
    #: seconds between purges of expired keys and registrations
    purge_interval: float = 60.0
    #: the MEF whose Enrolees may register with (KeID, Km) (docs/maf.md "Enrolees of a MEF"): ``HOST:PORT`` and
    #: its MEF-FQDN; the MAF authenticates as an Enrolment Target with ``mef_psk_file`` (hex, identity
    #: ``mef_psk_identity``, default the MAF-FQDN) or with its certificate, checking the MEF's against
    #: ``mef_trust_anchors``
    mef: str = ""
    mef_fqdn: str = ""
    mef_psk_identity: str = ""
    mef_psk_file: str = ""
    mef_trust_anchors: str = ""
    mef_timeout: float = DEFAULT_MEF_TIMEOUT

    def __post_init__(self) -> None:
        self._normalise_names()
        self._check_mef()
        self._check_common(("max_key_lifetime", "max_registration_lifetime", "handshake_timeout",
                            "purge_interval", "mef_timeout"))

    def _check_mef(self) -> None:
        if not self.mef:
            if self.mef_fqdn or self.mef_psk_file or self.mef_psk_identity or self.mef_trust_anchors:
                raise ConfigurationError("the mef_* settings need mef (the MEF's HOST:PORT)")
            return
        try:
            object.__setattr__(self, "mef_fqdn", validate_fqdn(self.mef_fqdn.rstrip("."), role="MEF-FQDN"))
        except IdentifierError as exc:
            raise ConfigurationError(f"mef_fqdn: {exc}") from None
        if self.mef_fqdn == self.maf_fqdn:
            raise ConfigurationError("mef_fqdn is the MAF-FQDN: KeIDs and KmIDs could not be told apart (D189)")
        if bool(self.mef_psk_file) == bool(self.mef_trust_anchors):
            raise ConfigurationError("the MAF authenticates to its MEF with mef_psk_file, or with its certificate "
                                     "and mef_trust_anchors: exactly one")
        if self.mef_trust_anchors and not self.certificate:
            raise ConfigurationError("mef_trust_anchors needs the MAF's certificate and private_key")


def load_config(path: Path | None) -> MAFConfig:
    """The settings in ``path`` (TOML), or the defaults when ``path`` is None."""
    return MAFConfig() if path is None else load_settings(path, MAFConfig)
