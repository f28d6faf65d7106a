"""What the MAF's and the MEF's settings (``m2msec maf|mef serve --config FILE``) share: the service FQDN and SP-ID
normalised, positive timings, the certificate settings that go together, the default store beside ``m2msec keys``'s,
``with_overrides``. Each service's own settings stay in :mod:`m2msec.maf.config` / :mod:`m2msec.mef.config`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Self

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import validate_fqdn

__all__ = ["ServiceConfig", "default_store_url"]


def default_store_url(env: str, filename: str) -> str:
    """``$<env>``, else an SQLite file ``filename`` beside ``m2msec keys``'s default store."""
    value = os.environ.get(env)
    if value:
        return value
    from m2msec.cli.common import default_db

    return "sqlite://" + str(default_db().with_name(filename))


class ServiceConfig:
    """Mixin of a frozen dataclass with the fields annotated below and its FQDN field; the class variables name
    the service."""

    #: "MAF" or "MEF": in error texts and the FQDN's role
    SERVICE: ClassVar[str]
    #: the field holding the service's FQDN (``maf_fqdn``, ``mef_fqdn``)
    FQDN_FIELD: ClassVar[str]
    #: the environment variable and the SQLite file name of :func:`default_store_url`
    STORE_ENV: ClassVar[str]
    STORE_FILE: ClassVar[str]

    sp_id: str
    store: str
    master_key_file: str
    profiles: str
    certificate: str
    private_key: str
    client_trust_anchors: str
    client_crl: str

    def _normalise_names(self) -> None:
        """The FQDN (no trailing dot) and the SP-ID (no leading ``//``) validated. Raises ConfigurationError."""
        fqdn = getattr(self, self.FQDN_FIELD)
        try:
            object.__setattr__(self, self.FQDN_FIELD,
                               validate_fqdn(fqdn.rstrip("."), role=f"{self.SERVICE}-FQDN"))
            object.__setattr__(self, "sp_id", validate_fqdn(self.sp_id.removeprefix("//"), role="SP-ID"))
        except IdentifierError as exc:
            raise ConfigurationError(str(exc)) from None

    def _check_common(self, seconds: tuple[str, ...]) -> None:
        """The ``seconds`` fields positive; certificate, private key and client CAs all or none (a CRL needs them).
        Raises ConfigurationError."""
        for name in seconds:
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        cert = (self.certificate, self.private_key, self.client_trust_anchors)
        if self.client_crl and not all(cert):
            raise ConfigurationError("client_crl needs certificate, private_key and client_trust_anchors")
        if any(cert) and not all(cert):
            raise ConfigurationError(f"certificate, private_key and client_trust_anchors go together: the "
                                     f"{self.SERVICE} Handshake with certificates is mutual")

    @property
    def store_url(self) -> str:
        return self.store or default_store_url(self.STORE_ENV, self.STORE_FILE)

    def with_overrides(self, **values: Any) -> Self:
        """A copy with every value that is not None replaced."""
        changes = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
