"""The CCF's state and the caller of a request (docs/ccf.md).

Who calls is known from the TLS session of the request's connection only (TS 33.122 §6.2, §6.3): a client certificate
issued by this CCF's CA names the role (OU) and the identity (CN) (D119), and the identity's record must still hold
that very certificate (:meth:`CCF.authenticate`): an offboarded invoker, a deregistered function, or a certificate
replaced by an update is refused although its chain still verifies. Requests without a client certificate reach only
the two onboarding operations, which take an onboarding credential instead.

Store records (kinds of :class:`~m2msec.store.Document`; bodies are JSON objects, keys sealed):

==================== ================================ ==========================================================
kind                 record id                        body
==================== ================================ ==========================================================
capif-invoker        apiInvokerId                     ``{"enrolment": APIInvokerEnrolmentDetails as last sent,
                                                      "certificate": <sha256 hex of the current certificate>,
                                                      "jti": <onboarding credential jti>}``
capif-provider       apiProvDomId                     ``{"enrolment": APIProviderEnrolmentDetails as last sent}``
capif-provider       ``func:`` + apiProvFuncId        ``{"domain": apiProvDomId, "role": "AEF"|"APF"|"AMF",
                                                      "certificate": <sha256 hex>}``
capif-provider       ``interface:`` + sha256 hex of   ``{"aef": aefId}``: the AEF holding that interface (D125,
                     the interface's P0               :mod:`.publish`)
capif-service        serviceApiId                     ``{"apf": apfId, "description": ServiceAPIDescription}``
capif-security       apiInvokerId                     ``{"context": ServiceSecurity as last sent}``
capif-aefpsk         see :mod:`.security`             key = AEFPSK
capif-subscription   subscriptionId                   ``{"subscriber": id, "subscription": EventSubscription}``
capif-revoked        ``jti:`` + onboarding jti        ``{"reason": "revoked"|"used", "at": <unix time>}``
capif-ca             ``ca``, ``token-key``            the CA; the JWT signing key (sealed)
==================== ================================ ==========================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.asgi import TLSExtension
from m2msec.capif.ca import CA_KIND
from m2msec.capif.certificates import DEFAULT_CERTIFICATE_DAYS, CAPIFRole, capif_identity
from m2msec.capif.tokens import DEFAULT_ACCESS_TOKEN_LIFETIME, VerificationKeys
from m2msec.errors import CAPIFError, Conflict, NotFound
from m2msec.keys.secret import SecretKey
from m2msec.pki.profile import Issued
from m2msec.store import AsyncKeyStore, Document, KeyStore

__all__ = [
    "CCF",
    "TOKEN_KEY_RECORD",
    "CCFPolicy",
    "Caller",
    "ConcurrentChange",
    "EventSink",
    "certificate_digest",
    "delete_quietly",
    "load_or_create_token_key",
]

#: the ``capif-ca`` record of the ES256 key that signs onboarding credentials and access tokens
TOKEN_KEY_RECORD: Final = "token-key"


def certificate_digest(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: what an identity's record keeps of its current certificate."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


async def delete_quietly(ccf: CCF, kind: str, record_id: str) -> None:
    """Delete a record another request may have deleted first."""
    try:
        await ccf.store.delete_document(kind, record_id)
    except NotFound:
        pass


def load_or_create_token_key(store: KeyStore) -> ec.EllipticCurvePrivateKey:
    """The CCF's JWT signing key (P-256), created at the first start and sealed in the store like the CA's key."""
    for _ in range(2):
        doc = store.get_document(CA_KIND, TOKEN_KEY_RECORD)
        if doc is not None and doc.key is not None:
            key = serialization.load_der_private_key(doc.key.reveal(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
                raise CAPIFError("the stored token signing key is not a P-256 key", status=500)
            return key
        new = ec.generate_private_key(ec.SECP256R1())
        der = new.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            store.put_document(Document(CA_KIND, TOKEN_KEY_RECORD, {"alg": "ES256"}, SecretKey(der)))
        except Conflict:
            continue  # another instance created it first: use theirs
        return new
    raise CAPIFError("the token signing key could not be created", status=500)


@dataclass(frozen=True)
class CCFPolicy:
    """What an operator sets (``m2msec ccf serve --config``; docs/ccf.md)."""

    #: the CCF's host name: its TLS server certificate's name, the ``iss`` of its JWTs, its CA's name constraint
    ccf_host: str
    #: ``https://host:port``: the apiRoot of the Location headers and of the AEFs' view of the CCF
    api_root: str
    access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME
    certificate_days: int = DEFAULT_CERTIFICATE_DAYS
    #: the ``aud`` onboarding credentials must carry (None: they carry none)
    onboarding_audience: str | None = None

    @property
    def issuer(self) -> str:
        return self.ccf_host


class ConcurrentChange(CAPIFError):
    """D152: the records this request was based on changed while it was served (a concurrent update, offboarding,
    re-key, revocation, withdrawal); nothing it would have written stays. Answered 503 with ``Retry-After``: the
    official files list no 409 with a body for these operations, and the client's right move is to read again and
    retry (or, if it lost its authorization meanwhile, to be refused then)."""

    status = 503
    cause = "CONCURRENT_MODIFICATION"


class EventSink(Protocol):
    """Where the CCF's API modules report CAPIF events (:mod:`.events` delivers them to subscribers)."""

    async def emit(self, event: str, detail: dict[str, Any]) -> None: ...


class _NoEvents:
    async def emit(self, event: str, detail: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the role and identity its client certificate names (both None without one), and the TLS
    connection it came over (for AEFPSK: the master secret and session ID of *this* session)."""

    role: CAPIFRole | None
    identity: str | None
    certificate: x509.Certificate | None = field(repr=False)
    tls: TLSExtension = field(repr=False)

    @classmethod
    def of(cls, tls: TLSExtension) -> Caller:
        cert = tls.session.peer_certificate
        if cert is None:
            return cls(None, None, None, tls)
        role, identity = capif_identity(cert)
        return cls(role, identity, cert, tls)


def _new_id() -> str:
    return secrets.token_hex(16)


@dataclass
class CCF:
    """The state every API module works on. ``clock`` (Unix seconds) and ``new_id`` (random identifiers) are
    injected so tests decide time and identifiers."""

    store: AsyncKeyStore
    policy: CCFPolicy
    ca: Issued
    token_key: ec.EllipticCurvePrivateKey = field(repr=False)
    clock: Callable[[], float] = time.time
    new_id: Callable[[], str] = _new_id
    events: EventSink = field(default_factory=_NoEvents)
    verification_keys: VerificationKeys = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.verification_keys = VerificationKeys([self.token_key])

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def with_events(self, events: EventSink) -> CCF:
        return dataclasses.replace(self, events=events)

    async def authenticate(self, caller: Caller, *roles: CAPIFRole) -> Document:
        """The record of the caller, who must present a client certificate of one of ``roles`` that its record
        still holds. Raises CAPIFError: 401 without a certificate, 403 for another role or a stale certificate."""
        if caller.certificate is None or caller.role is None or caller.identity is None:
            raise CAPIFError("this operation needs the client certificate the CCF issued", status=401)
        if caller.role not in roles:
            raise CAPIFError(f"a {caller.role.value} certificate does not allow this operation", status=403)
        if caller.role is CAPIFRole.INVOKER:
            doc = await self.store.get_document("capif-invoker", caller.identity)
        else:
            doc = await self.store.get_document("capif-provider", "func:" + caller.identity)
        if doc is None or not secrets.compare_digest(str(doc.body.get("certificate", "")),
                                                     certificate_digest(caller.certificate)):
            raise CAPIFError("the client certificate is no longer valid at this CCF", status=403)
        return doc


