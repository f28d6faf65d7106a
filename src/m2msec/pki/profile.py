"""oneM2M certificate profile (TS-0003 §8.1.2, §10.1.1.1): the flavours, the decisions on where each carries its
identity, and the :class:`CertificateIdentity` / :class:`Issued` values. Pure (:mod:`cryptography` only)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import CredIDType

E = TypeVar("E", bound=x509.ExtensionType)


class CertificateFlavour(enum.Enum):
    """The certificate flavours of TS-0003 §8.1.2.1 (raw public keys aside) and the FQDN certificate of §10.1.3."""

    CSE_ID = "cse-id"
    AE_ID = "ae-id"
    NODE_ID = "node-id"
    DEVICE = "device"
    FQDN = "fqdn"


# --- decisions ----------------------------------------------------------------------------------------------

#: TS-0003 §10.1.1.1: subject and CA keys are id-ecPublicKey on secp256r1 (P-256).
PROFILE_CURVE: Final = ec.SECP256R1
#: TS-0003 §10.1.1.1: certificates (and the CRLs and CSRs made here) are signed with ecdsa-with-SHA256.
PROFILE_HASH: Final = hashes.SHA256
#: TS-0003 §10.1.1.1: keyUsage present, critical, with digitalSignature in end-entity certificates.
END_ENTITY_KEY_USAGE: Final = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
#: TS-0003 §10.1.1.1 / RFC 5280 §4.2.1.3: keyUsage of CA certificates, critical: keyCertSign and cRLSign.
CA_KEY_USAGE: Final = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
#: TS-0003 §10.1.1.1 / RFC 5280 §4.2.1.9: basicConstraints critical, cA=false in end-entity certificates.
END_ENTITY_BASIC_CONSTRAINTS: Final = x509.BasicConstraints(ca=False, path_length=None)
#: TS-0003 §10.1.1.1: no wildcards in AE-ID, CSE-ID, Node-ID or FQDN certificates; refused in every identity here.
WILDCARD: Final = "*"
#: TS-0003 §8.1.2.1: a CSE-ID certificate holds the "public domain name representation of the CSE-ID" as dNSName,
#: ``<CSE-ID>.<SP domain>`` (TS-0001 §6.5.1.1 example ``MN-CSEID.IN-CSEID.m2m.myoperator.org``): CSE-ID = first label.
CSE_ID_DNS_FORM: Final = "{cse_id}.{sp_domain}"
#: docs/decisions.md D41 (amends D11): a dNSName alone cannot tell a CSE-ID certificate from an FQDN certificate
#: (TS-0003 §10.1.3, e.g. ``mef.<SP domain>``), so the CA marks CSE-ID certificates with this certificatePolicies
#: OID (non-critical; a UUID OID under 2.25, ITU-T X.667, as no oneM2M OID exists). A dNSName certificate without
#: it is an FQDN certificate and carries no oneM2M identity; the marker on any other SAN form is refused.
CSE_ID_CERTIFICATE_POLICY: Final = x509.ObjectIdentifier("2.25.179398853518893606987545561751213635263")
#: TS-0003 §10.1.1: an AE-ID certificate holds the Absolute AE-ID as SAN URI. The scheme is unspecified (notes §2
#: gap 9); the scheme-less oneM2M form ``//<SP-ID>/<CSE-ID>/C...`` or ``//<SP-ID>/S...`` is used, as OpenMTC does.
AE_ID_URI_PREFIX: Final = "//"
#: TS-0001 M2M-Node-ID (recommended in OID form) as SAN URI ``urn:oid:<Node-ID>`` (RFC 3061).
NODE_ID_URI_PREFIX: Final = "urn:oid:"
#: TS-0003 §8.1.2.1 device certificate: the globally unique hardware instance identifier as SAN otherName. The
#: M2M-Device-ID OID of TS-0001 Annex H could not be verified from available sources, so the IETF hardware module
#: name is used: id-on-hardwareModuleName (RFC 4108 §5), value SEQUENCE { hwType OID, hwSerialNum OCTET STRING }.
HARDWARE_MODULE_NAME_OID: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")
#: TS-0003 §8.1.2.1 and §10.1.4 (CSR): the subjectAltName type of each flavour; FQDN certificates (MAF/MEF,
#: §10.1.3) hold the FQDN as dNSName.
SAN_TYPES: Final[Mapping[CertificateFlavour, type[x509.GeneralName]]] = {
    CertificateFlavour.CSE_ID: x509.DNSName, CertificateFlavour.AE_ID: x509.UniformResourceIdentifier,
    CertificateFlavour.NODE_ID: x509.UniformResourceIdentifier, CertificateFlavour.DEVICE: x509.OtherName,
    CertificateFlavour.FQDN: x509.DNSName,
}
#: TS-0003 §10.4 / §12.3.2.1: Credential-ID types (device 31, Node-ID 34). CSE-ID, AE-ID and FQDN certificates have
#: none: Entity B associates the security context with the identity in the certificate (TS-0003 §8.2.2.2).
CREDENTIAL_ID_TYPES: Final[Mapping[CertificateFlavour, CredIDType]] = {
    CertificateFlavour.DEVICE: CredIDType.DEVICE_CERTIFICATE_TLS,
    CertificateFlavour.NODE_ID: CredIDType.NODE_ID_CERTIFICATE_TLS,
}
#: TS-0003 §8.1.2.2: CA certificates "shall include the name constraint extensions"; RFC 5280 §4.2.1.10: critical.
CA_NAME_CONSTRAINTS_CRITICAL: Final = True
#: docs/decisions.md D235: RFC 5280 §4.1.2.5 / §5.1.2.4 leave notBefore and thisUpdate to the issuer, and TS-0003
#: §10.1.1.1 is silent. A certificate or CRL dated exactly at issuance is "not yet valid" to any verifier whose
#: clock reads a moment earlier, including OpenSSL on the same host: it reads the coarse wall clock (time(2)), up
#: to a few milliseconds behind ``datetime.now``, and cryptography truncates the date to the second. So notBefore
#: and thisUpdate are backdated by this much (as the CCF's CAPIF certificates are); notAfter, nextUpdate and the
#: cRLNumber still count from the issuing instant.
VALIDITY_BACKDATE: Final = timedelta(minutes=5)

_DNS_FLAVOURS = (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN)
_OID = re.compile(r"(0|[1-9][0-9]{0,38})(\.(0|[1-9][0-9]{0,38}))+")  # arcs < 10**39: covers 2.25.<UUID>
_AE_PART = re.compile(r"[A-Za-z0-9._~-]+")
_SERIAL = re.compile(rb"[A-Za-z0-9._-]+")
_URI_HOST = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//([^/?#:@]*)")


def _show(text: str) -> str:
    return repr(text[:80]) + ("..." if len(text) > 80 else "")


def _ext(cert: x509.Certificate | x509.CertificateSigningRequest, cls: type[E]) -> E | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    # duplicate (cryptography's DuplicateExtension is no ValueError: found by scripts/fuzz_parsers.py) or malformed
    except (ValueError, x509.DuplicateExtension) as exc:
        raise IdentifierError(f"extensions cannot be parsed: {exc}") from None


def _p256(key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, PROFILE_CURVE):
        got = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise ConfigurationError(f"{what} is {got}; TS-0003 §10.1.1.1 requires EC secp256r1 (P-256)")
    return key


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


@dataclass(frozen=True)
class CertificateIdentity:
    """The oneM2M identity a certificate carries and, for device and Node-ID certificates, its Credential-ID."""

    flavour: CertificateFlavour
    value: str  # CSE-ID | Absolute AE-ID | Node-ID | "<hwType>.<serial>" | FQDN
    credential_id: str | None


@dataclass(frozen=True, repr=False)
class Issued:
    """A certificate and, when generated here, its private key (``repr`` never shows the key)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | None

    def __repr__(self) -> str:
        cert, key = self.certificate, "<hidden>" if self.private_key is not None else "None"
        name = cert.subject.rfc4514_string()
        return f"Issued(certificate=<{name!r} serial {cert.serial_number:#x}>, private_key={key})"

    def certificate_pem(self) -> bytes:
        """Returns: the certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        """Returns: the private key as unencrypted PKCS#8 PEM. Raises: ConfigurationError: there is none."""
        if self.private_key is None:
            raise ConfigurationError("no private key: the certificate was issued for a CSR or a given public key")
        return _pkcs8(self.private_key)


