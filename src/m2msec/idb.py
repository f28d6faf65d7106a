"""IdB, the identity Entity A associates a security association with (TS-0003 §8.2.2), and its check.

Association Configuration gives Entity A the identity of Entity B (IdB). With certificates, any server
whose chain the trust anchors accept would otherwise be taken as Entity B, another AE's or another CSE's
certificate included; so Entity A (:func:`m2msec.saef.establish_sa` over TLS,
:func:`m2msec.transport.dtls.create_dtls_endpoint` over DTLS) needs an IdB and refuses to start without
one, before any packet is sent (docs/decisions.md D23). The explicit opt-out is :data:`ANY_ENTITY`; it
logs a warning.

With a PSK the key is the check: Kpsa is provisioned for one (KpsaID, IdB) pair, so the handshake itself
proves B holds it, and IdB is what the SA is associated with (``SessionInfo.entity``); it is required all
the same, so that both SAEFs behave alike.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

from cryptography import x509

from m2msec.errors import ConfigurationError, HandshakeFailed, IdentifierError
from m2msec.tls.engine import SessionInfo

__all__ = ["ANY_ENTITY", "AnyEntity", "certificate_sp_domain", "check_peer_entity", "require_idb"]

log = logging.getLogger("m2msec.idb")


class AnyEntity(enum.Enum):
    """The type of :data:`ANY_ENTITY` (an enum, so it is one value and cannot be mistaken for an identity)."""

    INSECURE_ANY_ENTITY = "insecure-any-entity"


#: docs/decisions.md D23: Entity A without an IdB is refused before any packet is sent (TLS and DTLS,
#: certificates and PSK alike). Pass this as ``peer_entity`` to accept any Entity B the credentials
#: authenticate instead. Insecure: with certificates, any entity the trust anchors certify (another AE,
#: another CSE) is accepted as B.
ANY_ENTITY: Final = AnyEntity.INSECURE_ANY_ENTITY


def require_idb(peer_entity: str | AnyEntity | None) -> str | None:
    """Check, before connecting, that Entity A has an IdB. Returns it, or None for :data:`ANY_ENTITY`.

    Raises: ConfigurationError: no IdB (``None`` or empty).
    """
    if peer_entity is ANY_ENTITY:
        log.warning("IdB check disabled (ANY_ENTITY): any server the credentials authenticate is taken as Entity B")
        return None
    if isinstance(peer_entity, str) and peer_entity.strip("/"):
        return peer_entity
    raise ConfigurationError("no IdB: give the CSE-ID of Entity B (peer_entity, --entity-id), or ANY_ENTITY "
                             "(--insecure-any-entity) to accept any server")


def certificate_sp_domain(cert: x509.Certificate) -> str:
    """The ``<SP domain>`` of a CSE-ID certificate's dNSName ``<CSE-ID>.<SP domain>`` (m2msec.pki D11), lower case."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        raise IdentifierError("certificate has no readable subjectAltName") from None
    names = san.get_values_for_type(x509.DNSName)
    if len(names) != 1:
        raise IdentifierError(f"need exactly one dNSName, found {len(names)}")
    return names[0].partition(".")[2].lower()


def check_peer_entity(session: SessionInfo, peer_entity: str | AnyEntity | None) -> None:
    """TS-0003 §8.2.2.2: after the handshake, Entity A authenticates B *as IdB*.

    A certificate-authenticated B must present a CSE-ID certificate for IdB (``cse``, ``/cse`` or, to pin the
    service provider too, ``//sp-domain/cse``). A PSK-authenticated B proved it holds the Kpsa provisioned for
    IdB: nothing more to check. :data:`ANY_ENTITY` skips the check.

    Raises: HandshakeFailed: B is not IdB; ConfigurationError: no IdB at all.
    """
    if peer_entity is ANY_ENTITY:
        return
    idb = require_idb(peer_entity)
    if idb is None or session.psk_identity is not None or session.peer_certificate is None:
        return
    from m2msec.pki import CertificateFlavour, identity_from_certificate

    try:
        ident = identity_from_certificate(session.peer_certificate)
        sp = certificate_sp_domain(session.peer_certificate) if ident.flavour is CertificateFlavour.CSE_ID else ""
    except IdentifierError as exc:
        raise HandshakeFailed(f"the server certificate names no CSE-ID ({exc})") from None
    if ident.flavour is not CertificateFlavour.CSE_ID:
        raise HandshakeFailed(f"the server certificate is a {ident.flavour.value} certificate for "
                              f"{ident.value[:80]!r}, not IdB {idb[:80]!r}")
    want_sp, _, want_cse = idb[2:].rpartition("/") if idb.startswith("//") else ("", "", idb.lstrip("/"))
    if ident.value != want_cse or (want_sp and want_sp.lower() != sp):
        raise HandshakeFailed(f"the server certificate is for {ident.value!r} of SP {sp!r}, not IdB {idb[:80]!r}")
