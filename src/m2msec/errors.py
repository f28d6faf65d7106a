"""The one exception hierarchy of m2msec.

Every error that m2msec raises on purpose derives from :class:`M2MSecError`. Errors carry their
rendering as class attributes (``exit_code`` for the CLI, ``rsc``/``http_status`` for oneM2M
responses), so each boundary maps them without string matching.

Messages never contain key material: the classes below are raised with identities, file names and
reasons only. Code that builds a message from a value that might be secret must not do so.

::

    M2MSecError
    ├── ConfigurationError              bad option, file or combination, found before serving
    │   └── CredentialsLoadError        a PSK table file or store could not be read or is invalid
    ├── IdentifierError (ValueError)    a malformed oneM2M identifier
    ├── StorageError
    │   ├── NotFound
    │   └── Conflict
    ├── TransportError                  no TCP connection to the peer
    ├── MAFError                        a MAF refused a procedure (RFC 9457 problem: status and type)
    ├── MEFError                        a MEF refused a procedure (RFC 9457 problem: status and type)
    ├── TLSError
    │   ├── HandshakeFailed             the peer could not be authenticated (or failed to authenticate us)
    │   ├── HandshakeTimeout
    │   └── TLSProtocolError            a TLS failure after the handshake, or misuse of a connection
    └── OneM2MError                     a request refused with a oneM2M response status code
        ├── BadRequest                  4000
        ├── OriginatorNotAuthenticated  4106
        ├── AppRuleValidationFailed     4126
        ├── ServiceSubscriptionNotEstablished  4128
        └── TargetNotReachable          5103
"""

from __future__ import annotations

__all__ = [
    "AppRuleValidationFailed",
    "BadRequest",
    "CAPIFError",
    "ConfigurationError",
    "Conflict",
    "CredentialsLoadError",
    "HandshakeFailed",
    "HandshakeTimeout",
    "IdentifierError",
    "M2MSecError",
    "MAFError",
    "MEFError",
    "NotFound",
    "OneM2MError",
    "OriginatorNotAuthenticated",
    "SecurityAssociationRequired",
    "ServiceSubscriptionNotEstablished",
    "StorageError",
    "TLSError",
    "TLSProtocolError",
    "TargetNotReachable",
    "TransportError",
]


class M2MSecError(Exception):
    """Base class of every error m2msec raises on purpose."""

    #: process exit status the CLI uses for this error
    exit_code: int = 1


class ConfigurationError(M2MSecError):
    """An option, a configuration file or a combination of them is invalid."""

    exit_code = 2


class CredentialsLoadError(ConfigurationError):
    """A PSK table (TOML file or SQLite store) cannot be loaded or holds an invalid entry."""


class IdentifierError(M2MSecError, ValueError):
    """A oneM2M identifier (KpsaID, KmID, Credential-ID, SUID, ...) is malformed."""

    exit_code = 2


class StorageError(M2MSecError):
    """The key store failed (I/O, corruption, wrong master key)."""


class NotFound(StorageError):
    """No entry with that key exists."""


class Conflict(StorageError):
    """An entry with that key exists already."""


class TransportError(M2MSecError):
    """The TCP connection to the peer could not be made or broke."""


class MAFError(M2MSecError):
    """A MAF refused a procedure (docs/maf.md): its HTTP ``status`` and the problem ``type`` name (the part after
    ``urn:m2msec:maf:``, e.g. ``not-registered``); or the MAF's answer was not what the contract says
    (``status`` 0 for a broken answer). The MAF's ``detail`` and the request body are never echoed."""

    def __init__(self, status: int, problem: str, message: str | None = None) -> None:
        super().__init__(message or f"the MAF refused the request: {status} {problem}")
        self.status = status
        self.problem = problem


class MEFError(M2MSecError):
    """A MEF refused a procedure (docs/mef.md): its HTTP ``status`` and the problem ``type`` name (the part after
    ``urn:m2msec:mef:``, e.g. ``unknown-keid``); ``status`` 0 when the MEF's answer broke the contract. The MEF's
    ``detail`` is never echoed; nothing in it is key material."""

    def __init__(self, status: int, problem: str, message: str | None = None) -> None:
        super().__init__(message or f"the MEF refused the request: {status} {problem}")
        self.status = status
        self.problem = problem


class CAPIFError(M2MSecError):
    """A CAPIF request refused (TS 29.222): rendered as TS 29.122 ``ProblemDetails`` with HTTP ``status`` and, when
    the API defines one, its ``cause``. ``detail`` is written for the client: never key material."""

    status: int = 400
    cause: str | None = None

    def __init__(self, detail: str, *, status: int | None = None, cause: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if cause is not None:
            self.cause = cause


class TLSError(M2MSecError):
    """Base class of TLS failures."""


class HandshakeFailed(TLSError):
    """The (D)TLS handshake failed.

    ``reason`` is a short, fixed description (e.g. ``"unknown psk identity"``) safe to log; ``alert``
    is the TLS alert sent or received when one could be identified.
    """

    def __init__(self, reason: str, *, alert: str | None = None) -> None:
        super().__init__(f"TLS handshake failed: {reason}")
        self.reason = reason
        self.alert = alert


class HandshakeTimeout(TLSError):
    """The handshake did not complete within the configured time."""


class TLSProtocolError(TLSError):
    """A TLS failure after the handshake, or an operation the connection state does not allow."""


class OneM2MError(M2MSecError):
    """A request refused with a oneM2M response status code (TS-0004 §6.6)."""

    rsc: int = 5000
    #: HTTP status for the HTTP binding (TS-0009 §6.4.3 mapping)
    http_status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(OneM2MError):
    rsc = 4000
    http_status = 400


class OriginatorNotAuthenticated(OneM2MError):
    """TS-0003 §7.2.1: ``From`` does not match the identity associated with the SA."""

    rsc = 4106
    http_status = 403


class SecurityAssociationRequired(OneM2MError):
    """TS-0004 §7.3.2.1: ``From`` names a CSE, but the request does not come through an SA with that CSE."""

    rsc = 4107
    http_status = 403


class AppRuleValidationFailed(OneM2MError):
    """TS-0001 §10.2.2.2: service subscription rules apply to the credential, none admits the App-ID and AE-ID."""

    rsc = 4126
    http_status = 403


class ServiceSubscriptionNotEstablished(OneM2MError):
    """TS-0001 §10.2.2.2: no service subscription rule applies to the credential."""

    rsc = 4128
    http_status = 403


class TargetNotReachable(OneM2MError):
    rsc = 5103
    http_status = 404
