"""The CCF's certificate authority, kept in the key store (issue 18): created at the first start, its private key
sealed at rest like every key (a ``capif-ca`` :class:`~m2msec.store.Document`), shared by every CCF instance of one
store. It signs the CAPIF certificates (:mod:`m2msec.capif.certificates`) and the CCF's own TLS server certificate.

D120: the CA's nameConstraints permit only the CCF's domain (the profile of :func:`m2msec.pki.create_ca`, which
requires a subtree): it can certify the CCF's server name and CN-only client certificates, and no other host.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.errors import Conflict, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.pki import create_ca
from m2msec.pki.files import load_issued
from m2msec.pki.profile import Issued
from m2msec.store import Document, KeyStore

__all__ = ["CA_DAYS", "CA_KIND", "CA_RECORD", "is_ca_of", "load_or_create_ca"]

#: the store record of the CA
CA_KIND: Final = "capif-ca"
CA_RECORD: Final = "ca"
#: validity of a CA the CCF creates (its certificates never outlive it)
CA_DAYS: Final = 3650


def _document(ca: Issued) -> Document:
    assert ca.private_key is not None
    der = ca.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    return Document(CA_KIND, CA_RECORD, {"certificate": ca.certificate_pem().decode()}, SecretKey(der))


def _issued(doc: Document) -> Issued:
    cert = doc.body.get("certificate")
    if not isinstance(cert, str) or doc.key is None:
        raise StorageError("the CCF's CA record is incomplete")
    key = serialization.load_der_private_key(doc.key.reveal(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StorageError("the CCF's CA key is not an EC key")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return load_issued(cert.encode(), key_pem)


def load_or_create_ca(store: KeyStore, domain: str, *, now: datetime) -> Issued:
    """The CA of the store; created (CN ``<domain> CAPIF CA``, nameConstraints ``domain``, D120) when there is none.
    Several instances starting together create one: the store's primary key settles it and the losers read the
    winner's."""
    found = store.get_document(CA_KIND, CA_RECORD)
    if found is not None:
        return _issued(found)
    ca = create_ca(f"{domain} CAPIF CA"[:64], permitted_dns=[domain], days=CA_DAYS, now=now)
    try:
        store.put_document(_document(ca))
    except Conflict:  # another instance created it meanwhile
        winner = store.get_document(CA_KIND, CA_RECORD)
        if winner is None:
            raise StorageError("the CCF's CA record vanished while it was created") from None
        return _issued(winner)
    return ca


def is_ca_of(ca: Issued, cert: x509.Certificate) -> bool:
    """Whether ``cert`` was signed by ``ca`` (the signature only: validity and chains are the TLS engine's)."""
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
