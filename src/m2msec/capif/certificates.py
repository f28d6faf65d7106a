"""Certificates the CCF issues at onboarding and registration (TS 33.122 §6.1; TS 29.222 API Invoker Management
``onboardingInformation.apiInvokerPublicKey`` -> ``apiInvokerCertificate``, API Provider Management
``APIProviderFunctionDetails.regInfo.apiProvPubKey`` -> ``apiProvCert``); pure: time injected.

The public-key fields carry a PKCS#10 request in PEM (what CAPIF clients send, opencapif-sdk included): its signature
proves the key is held. The invoker does not know its API invoker ID when it asks (the CCF assigns it), so the CCF
writes the identity itself (D119): subject CN = the assigned ID, OU = the role, and on each later mutually
authenticated call reads it back with :func:`capif_identity`, never from the URL alone.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from m2msec.errors import CAPIFError
from m2msec.pki.profile import VALIDITY_BACKDATE, Issued

__all__ = [
    "DEFAULT_CERTIFICATE_DAYS",
    "INVALID_CSR_CAUSE",
    "MAX_CSR_PEM",
    "MIN_RSA_BITS",
    "CAPIFRole",
    "capif_identity",
    "certificate_thumbprint",
    "issue_capif_certificate",
    "load_csr",
]

#: Largest public-key field read (a P-256 or RSA-4096 CSR in PEM is well under 4 KiB).
MAX_CSR_PEM: Final = 16384
#: Smallest RSA key accepted in a CSR (TS 33.310 / TS 33.210 profiles: 2048 bits and more).
MIN_RSA_BITS: Final = 2048
#: Validity of a CAPIF certificate when the CCF's config gives none.
DEFAULT_CERTIFICATE_DAYS: Final = 365
#: ProblemDetails cause of a refused public-key field.
INVALID_CSR_CAUSE: Final = "INVALID_CERTIFICATE_SIGNING_REQUEST"
_ACCEPTED_CURVES: Final = (ec.SECP256R1, ec.SECP384R1)


class CAPIFRole(enum.StrEnum):
    """docs/decisions.md D119: the role a CAPIF certificate is issued for, written as its subject OU."""

    INVOKER = "api-invoker"
    AEF = "aef"
    APF = "apf"
    AMF = "amf"


def _refuse(detail: str) -> CAPIFError:
    return CAPIFError(detail, status=400, cause=INVALID_CSR_CAUSE)


def load_csr(text: str) -> x509.CertificateSigningRequest:
    """The PKCS#10 request of a public-key field (PEM), its signature verified, its key P-256, P-384 or RSA >= 2048.

    Raises: CAPIFError (400): anything else."""
    if len(text) > MAX_CSR_PEM:
        raise _refuse(f"the public key field is longer than {MAX_CSR_PEM} characters")
    try:
        csr = x509.load_pem_x509_csr(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _refuse("the public key field is not a PEM certificate signing request (PKCS#10)") from None
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, NotImplementedError):  # an algorithm cryptography does not know
        raise _refuse("the certificate signing request uses an unsupported algorithm") from None
    if not valid:
        raise _refuse("the certificate signing request's signature does not verify")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ACCEPTED_CURVES):
            raise _refuse(f"the elliptic curve {key.curve.name} is not accepted (P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _refuse(f"an RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})")
    else:
        raise _refuse("the key type is not accepted (EC P-256/P-384 or RSA)")
    return csr


def issue_capif_certificate(ca: Issued, csr: x509.CertificateSigningRequest, role: CAPIFRole, identity: str, *,
                            now: datetime, days: int = DEFAULT_CERTIFICATE_DAYS) -> x509.Certificate:
    """A client certificate for ``identity`` in ``role`` over the CSR's key (:func:`load_csr` checked it), signed by
    the CCF's CA: CN = identity, OU = role (nothing else of the request is copied), clientAuth, not a CA, never past
    the CA's own expiry."""
    if ca.private_key is None:
        raise CAPIFError("the CCF has no CA key to sign with", status=500)
    if not identity or len(identity) > 64 or any(not c.isprintable() for c in identity):  # X.520 ub-common-name 64
        raise CAPIFError("the identity to certify must be 1..64 printable characters", status=500)
    if now.tzinfo is None:
        raise CAPIFError("now must be timezone-aware", status=500)
    not_after = min(now + timedelta(days=days), ca.certificate.not_valid_after_utc)
    if not_after <= now:
        raise CAPIFError("the CCF's CA certificate has expired", status=500)
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    usage_rsa = isinstance(key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                                 x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca.certificate.subject).public_key(key).serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY_BACKDATE).not_valid_after(not_after)  # D235
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=usage_rsa, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
                       critical=False)
    )
    return builder.sign(ca.private_key, hashes.SHA256())


def capif_identity(cert: x509.Certificate) -> tuple[CAPIFRole, str]:
    """The (role, identity) a CCF-issued certificate names (the caller has verified it chains to the CCF's CA).

    Raises: CAPIFError (401): not one OU of a known role and one CN."""
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(ous) != 1 or len(cns) != 1:
        raise CAPIFError("the client certificate is not a CAPIF certificate of this CCF", status=401)
    try:
        role = CAPIFRole(str(ous[0].value))
    except ValueError:
        raise CAPIFError("the client certificate names no CAPIF role", status=401) from None
    return role, str(cns[0].value)



def certificate_thumbprint(cert: x509.Certificate | str) -> str:
    """RFC 8705 §3.1 ``x5t#S256`` of a certificate: base64url (no padding) of the SHA-256 of its DER; given as a
    SHA-256 hex digest (a CCF record's ``certificate``), the same value from that digest. D175: what the CCF tells
    an AEF of an invoker's current certificate (``authenticationInfo`` of a PKI entry)."""
    digest = bytes.fromhex(cert) if isinstance(cert, str) else \
        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
