"""oneM2M certificates (TS-0003 §8.1.2, §10.1): a small name-constrained CA, the certificate flavours, CSRs, CRLs.

Pure: :mod:`cryptography` only (no pyOpenSSL, no sockets); the time is a parameter (``now``, default
``datetime.now(UTC)``). Bad options raise :class:`~m2msec.errors.ConfigurationError`, malformed identifiers
:class:`~m2msec.errors.IdentifierError`; messages never contain key material. Leaf certificates have an empty
subject and carry their identity in one critical subjectAltName entry (RFC 5280 §4.2.1.6), so no verifier applies
DNS name constraints to a subject CN that merely looks like a host name.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import CredentialID, CredIDType, validate_fqdn

__all__ = [
    "CertificateFlavour", "CertificateIdentity", "Issued", "create_ca", "create_crl", "decode_hardware_module_name",
    "encode_hardware_module_name", "identity_from_certificate", "issue", "load_issued", "make_csr", "sign_csr",
    "write_issued", "write_private_key",
]

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
    except ValueError as exc:  # duplicate or malformed extensions
        raise IdentifierError(f"extensions cannot be parsed: {exc}") from None


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


# --- HardwareModuleName DER (RFC 4108 §5) --------------------------------------------------------------------


def _der_error(problem: str) -> IdentifierError:
    return IdentifierError(f"malformed HardwareModuleName: {problem}")


def _check_oid(text: str, what: str) -> str:
    if not isinstance(text, str) or not _OID.fullmatch(text):
        raise IdentifierError(f"malformed {what} {_show(str(text))}: not a dotted OID (e.g. 1.3.6.1.4.1.99.1)")
    first, second = (int(a) for a in text.split(".")[:2])
    if first > 2 or (first < 2 and second >= 40):
        raise IdentifierError(f"malformed {what} {_show(text)}: first arc must be 0..2, second < 40 under 0 and 1")
    return text


def _tlv(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    raw = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _read_tlv(data: bytes, pos: int, tag: int, what: str) -> tuple[bytes, int]:
    if pos + 1 >= len(data) or data[pos] != tag:
        raise _der_error(f"expected {what}")
    length, pos = data[pos + 1], pos + 2
    if length >= 0x80:
        raw, count = data[pos:pos + (length & 0x7F)], length & 0x7F
        if not 1 <= count <= 4 or len(raw) != count:
            raise _der_error(f"{what}: unsupported or truncated length")
        length, pos = int.from_bytes(raw, "big"), pos + count
        if raw[0] == 0 or length < 0x80:
            raise _der_error(f"{what}: non-minimal length (not DER)")
    if pos + length > len(data):
        raise _der_error(f"{what}: truncated")
    return data[pos:pos + length], pos + length


def encode_hardware_module_name(hw_type: str, serial: bytes) -> bytes:
    """DER of ``HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }``.

    Args: hw_type: dotted OID; serial: the hwSerialNum octets.
    Returns: the DER encoding (the otherName value of id-on-hardwareModuleName).
    Raises: IdentifierError: *hw_type* is not a dotted OID.
    """
    arcs = [int(a) for a in _check_oid(hw_type, "hwType").split(".")]
    body = bytearray()
    for arc in (arcs[0] * 40 + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(0x30, _tlv(0x06, bytes(body)) + _tlv(0x04, bytes(serial)))


def decode_hardware_module_name(der: bytes) -> tuple[str, bytes]:
    """Decode a strict DER ``HardwareModuleName``.

    Args: der: the otherName value.
    Returns: (hwType as dotted OID, hwSerialNum octets).
    Raises: IdentifierError: not exactly one well-formed DER HardwareModuleName.
    """
    if not isinstance(der, bytes | bytearray):
        raise _der_error(f"expected bytes, got {type(der).__name__}")
    body, end = _read_tlv(bytes(der), 0, 0x30, "SEQUENCE")
    oid, pos = _read_tlv(body, 0, 0x06, "hwType OBJECT IDENTIFIER")
    serial, pos = _read_tlv(body, pos, 0x04, "hwSerialNum OCTET STRING")
    if end != len(der) or pos != len(body):
        raise _der_error("trailing bytes or extra elements")
    if not oid or oid[-1] & 0x80 or re.search(rb"(?:^|[\x00-\x7f])\x80", oid) or re.search(rb"[\x80-\xff]{19}", oid):
        raise _der_error("truncated, non-minimal (not DER) or oversized hwType arc")
    arcs, value = [], 0
    for byte in oid:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    try:
        return _check_oid(".".join(map(str, (first, arcs[0] - 40 * first, *arcs[1:]))), "hwType"), serial
    except IdentifierError:
        raise _der_error("hwType arc out of range") from None


# --- identities ---------------------------------------------------------------------------------------------


def _check_ae_id(text: str) -> str:
    parts = text[len(AE_ID_URI_PREFIX):].split("/") if text.startswith(AE_ID_URI_PREFIX) else []
    ok = (len(parts) == 3 and parts[2][:1] == "C") or (len(parts) == 2 and parts[1][:1] == "S")
    if not ok or not all(_AE_PART.fullmatch(p) for p in parts[1:]):
        raise IdentifierError(f"malformed Absolute AE-ID {_show(text)}: expected //<SP-ID>/<CSE-ID>/C<stem> or "
                              "//<SP-ID>/S<stem> (segments of A-Z a-z 0-9 . _ ~ -)")
    validate_fqdn(parts[0], role="SP-ID")
    return text


def _device_value(hw_type: str, serial: bytes) -> str:
    if not _SERIAL.fullmatch(serial):
        raise IdentifierError("malformed device identity: hwSerialNum must be ASCII A-Z a-z 0-9 . _ -")
    return f"{hw_type}.{serial.decode('ascii')}"


def _identity(flavour: CertificateFlavour, value: str) -> CertificateIdentity:
    kind = CREDENTIAL_ID_TYPES.get(flavour)
    return CertificateIdentity(flavour, value, None if kind is None else str(CredentialID(kind, value)))


def _identity_from_name(name: x509.GeneralName, dns_flavour: CertificateFlavour) -> CertificateIdentity:
    if isinstance(name, x509.OtherName) and name.type_id == HARDWARE_MODULE_NAME_OID:
        return _identity(CertificateFlavour.DEVICE, _device_value(*decode_hardware_module_name(name.value)))
    value = name.value if isinstance(name, x509.UniformResourceIdentifier | x509.DNSName) else ""
    if WILDCARD in value:
        raise IdentifierError(f"subjectAltName {_show(value)} holds a wildcard (TS-0003 §10.1.1.1)")
    if isinstance(name, x509.UniformResourceIdentifier):
        if value.startswith(NODE_ID_URI_PREFIX):
            return _identity(CertificateFlavour.NODE_ID, _check_oid(value[len(NODE_ID_URI_PREFIX):], "Node-ID"))
        if value.startswith(AE_ID_URI_PREFIX):
            return _identity(CertificateFlavour.AE_ID, _check_ae_id(value))
        raise IdentifierError(f"URI {_show(value)} is neither urn:oid:<Node-ID> nor a scheme-less //<Absolute AE-ID>")
    if isinstance(name, x509.DNSName):
        if dns_flavour is CertificateFlavour.FQDN:
            return _identity(dns_flavour, validate_fqdn(value))
        validate_fqdn(value, role="CSE-ID domain name")
        if "." not in value:
            raise IdentifierError(f"dNSName {_show(value)} is not <CSE-ID>.<SP domain>")
        return _identity(CertificateFlavour.CSE_ID, value.partition(".")[0])
    raise IdentifierError(f"subjectAltName entry {name!r} carries no oneM2M identity")


def _checked(name: x509.GeneralName, flavour: CertificateFlavour) -> x509.GeneralName:
    found = _identity_from_name(name, flavour if flavour in _DNS_FLAVOURS else CertificateFlavour.CSE_ID)
    if found.flavour is not flavour:
        raise IdentifierError(f"{_show(str(name.value))} is a {found.flavour.value} identity, not {flavour.value}")
    return name


def _identity_name(flavour: CertificateFlavour, identity: str, sp_domain: str | None) -> x509.GeneralName:
    if not isinstance(flavour, CertificateFlavour):
        raise ConfigurationError(f"unknown certificate flavour {flavour!r}")
    if (sp_domain is not None) != (flavour is CertificateFlavour.CSE_ID):
        raise ConfigurationError("the SP domain goes with, and only with, a cse-id certificate (<CSE-ID>.<SP domain>)")
    if not isinstance(identity, str) or (flavour is CertificateFlavour.CSE_ID and "." in identity):
        raise IdentifierError(f"malformed {flavour.value} identity {_show(str(identity))} (a CSE-ID is one DNS label)")
    hw_type, sep, serial = identity.partition("/")
    try:
        name: x509.GeneralName
        if flavour is CertificateFlavour.CSE_ID:  # the CSE-ID keeps its case
            name = x509.DNSName(CSE_ID_DNS_FORM.format(cse_id=identity, sp_domain=str(sp_domain).lower()))
        elif flavour is CertificateFlavour.DEVICE and sep:
            der = encode_hardware_module_name(hw_type, serial.encode("ascii", "replace"))
            name = x509.OtherName(HARDWARE_MODULE_NAME_OID, der)
        elif flavour is CertificateFlavour.DEVICE:
            raise IdentifierError(f"malformed device identity {_show(identity)}: expected <hwType OID>/<serial>")
        elif flavour is CertificateFlavour.NODE_ID:
            name = x509.UniformResourceIdentifier(NODE_ID_URI_PREFIX + identity)
        elif flavour is CertificateFlavour.FQDN:
            name = x509.DNSName(identity.lower())
        else:
            name = x509.UniformResourceIdentifier(identity)
    except IdentifierError:
        raise
    except ValueError:  # cryptography refuses non-ASCII names
        raise IdentifierError(f"malformed {flavour.value} identity {_show(identity)}: not ASCII") from None
    return _checked(name, flavour)


def identity_from_certificate(
    cert: x509.Certificate, *, dns_flavour: CertificateFlavour = CertificateFlavour.CSE_ID
) -> CertificateIdentity:
    """Read the oneM2M identity from a leaf certificate's subjectAltName (TS-0003 §8.2.2.2).

    otherName hardwareModuleName -> DEVICE; URI ``urn:oid:`` -> NODE_ID; URI ``//...`` -> AE_ID; dNSName ->
    *dns_flavour* (CSE_ID: the first label; FQDN: the name). Other SAN types (IP, e-mail, ...) are ignored.

    Args: cert: the certificate; dns_flavour: CSE_ID or FQDN, how to read a dNSName.
    Returns: the identity and its Credential-ID (device ``31-<hwType>.<serial>``, Node-ID ``34-<Node-ID>``).
    Raises: IdentifierError: not exactly one identity-bearing SAN entry, or a malformed one;
        ConfigurationError: *dns_flavour* is neither CSE_ID nor FQDN.
    """
    if dns_flavour not in _DNS_FLAVOURS:
        raise ConfigurationError(f"dns_flavour must be cse-id or fqdn, not {dns_flavour!r}")
    san = _ext(cert, x509.SubjectAlternativeName)
    names = [n for n in san or () if isinstance(n, x509.DNSName | x509.UniformResourceIdentifier)
             or (isinstance(n, x509.OtherName) and n.type_id == HARDWARE_MODULE_NAME_OID)]
    if len(names) != 1:
        raise IdentifierError(f"need exactly one identity in subjectAltName, found {len(names)}")
    return _identity_from_name(names[0], dns_flavour)


# --- name constraints ---------------------------------------------------------------------------------------


def _within(name: x509.GeneralName, base: x509.GeneralName) -> bool | None:
    """Whether *name* (or a subtree *name*) lies in subtree *base* (RFC 5280 §4.2.1.10); None: other name type."""
    if isinstance(name, x509.DNSName) and isinstance(base, x509.DNSName):
        n, b = name.value.lower(), base.value.lower()
        return not b or n == b or n.endswith(b if b.startswith(".") else "." + b)
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(base, x509.UniformResourceIdentifier):
        match = _URI_HOST.match(name.value)  # a URI's host, or a URI subtree (host or .domain) itself
        host, b = (match.group(1) if match else name.value).lower(), base.value.lower()
        return host.endswith(b) if b.startswith(".") else host == b
    return None


def _check_permitted(ca: x509.Certificate, name: x509.GeneralName, what: str) -> None:
    nc = _ext(ca, x509.NameConstraints)
    verdicts = [v for base in (nc and nc.permitted_subtrees) or () if (v := _within(name, base)) is not None]
    if (verdicts and not any(verdicts)) or any(_within(name, base) for base in (nc and nc.excluded_subtrees) or ()):
        raise ConfigurationError(f"{what} is outside the nameConstraints of CA {ca.subject.rfc4514_string()!r}")


# --- issuing ------------------------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    if now is not None and now.tzinfo is None:
        raise ConfigurationError("now must be timezone-aware (UTC)")
    return now or datetime.now(UTC)


def _p256(key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, PROFILE_CURVE):
        got = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise ConfigurationError(f"{what} is {got}; TS-0003 §10.1.1.1 requires EC secp256r1 (P-256)")
    return key


def _signer(ca: Issued) -> ec.EllipticCurvePrivateKey:
    bc, name = _ext(ca.certificate, x509.BasicConstraints), ca.certificate.subject.rfc4514_string()
    if bc is None or not bc.ca:
        raise ConfigurationError(f"{name!r} is not a CA certificate")
    if ca.private_key is None:
        raise ConfigurationError(f"CA {name!r}: no private key to sign with")
    return ca.private_key


def _builder(ca: x509.Certificate | None, subject: x509.Name, key: ec.EllipticCurvePublicKey, now: datetime,
             days: int) -> x509.CertificateBuilder:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigurationError(f"days must be a positive integer, got {days!r}")
    not_after = now + timedelta(days=days)
    if ca is not None:  # never outlive the issuer
        not_after = min(not_after, ca.not_valid_after_utc)
        if not_after <= now:
            raise ConfigurationError(f"CA {ca.subject.rfc4514_string()!r} has expired")
    ski = x509.SubjectKeyIdentifier.from_public_key(key)
    ca_ski = ski if ca is None else _ext(ca, x509.SubjectKeyIdentifier) or x509.SubjectKeyIdentifier.from_public_key(
        _p256(ca.public_key(), "the CA key"))
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject if ca else subject).public_key(key)
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(not_after)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )


def create_ca(common_name: str, *, permitted_dns: Sequence[str] = (), permitted_uri_hosts: Sequence[str] = (),
              issuer: Issued | None = None, path_length: int | None = None, days: int = 3650,
              now: datetime | None = None) -> Issued:
    """Create a root CA (self-signed) or, with *issuer*, an intermediate CA, with critical nameConstraints.

    DNS subtrees match the name and its subdomains; URI hosts match exactly, or every subdomain with a leading
    ``.`` (RFC 5280). An intermediate's subtrees must lie inside the issuer's. Device identities (otherName
    hardwareModuleName) cannot be constrained: cryptography encodes an otherName subtree, but RFC 4108 defines no
    matching for it and OpenSSL rejects such a CA ("unsupported name constraint type"). OpenSSL 3.0 also fails a
    scheme-less AE-ID URI or a ``urn:oid:`` Node-ID URI under any URI subtree ("unsupported or invalid name syntax"),
    so AE-ID certificates from a CA with *permitted_uri_hosts* only verify where the host part is matched.

    Args: common_name: subject CN (1..64 characters); permitted_dns: permitted DNS subtrees; permitted_uri_hosts:
        permitted URI hosts; issuer: signing CA (None: self-signed root); path_length: pathLenConstraint;
        days: validity (capped at the issuer's); now: start of validity.
    Returns: the CA certificate and its new P-256 key.
    Raises: ConfigurationError: no subtree, subtrees outside the issuer's, bad CN, days, path length or issuer;
        IdentifierError: a malformed subtree name.
    """
    now = _now(now)
    if not isinstance(common_name, str) or not 1 <= len(common_name) <= 64:
        raise ConfigurationError("the CA common name must be 1..64 characters")
    subtrees: list[x509.GeneralName] = [x509.DNSName(validate_fqdn(d, role="DNS subtree")) for d in permitted_dns]
    for host in permitted_uri_hosts:
        dot = "." if host.startswith(".") else ""
        subtrees.append(x509.UniformResourceIdentifier(dot + validate_fqdn(host[len(dot):], role="permitted URI host")))
    if not subtrees:
        raise ConfigurationError("a CA certificate shall include nameConstraints (TS-0003 §8.1.2.2): "
                                 "give at least one permitted DNS name or URI host")
    if path_length is not None and (isinstance(path_length, bool) or path_length < 0):
        raise ConfigurationError(f"path_length must be a non-negative integer or None, got {path_length!r}")
    key = ec.generate_private_key(PROFILE_CURVE())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer, ca = key, None
    if issuer is not None:
        signer, ca = _signer(issuer), issuer.certificate
        if getattr(_ext(ca, x509.BasicConstraints), "path_length", None) == 0:
            raise ConfigurationError(f"CA {ca.subject.rfc4514_string()!r} has pathLenConstraint 0")
        for sub in subtrees:
            _check_permitted(ca, sub, f"subtree {sub.value!r}")
    cert = (
        _builder(ca, subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.NameConstraints(subtrees, None), critical=CA_NAME_CONSTRAINTS_CRITICAL)
        .sign(signer, PROFILE_HASH())
    )
    return Issued(cert, key)


def _issue_name(ca: Issued, name: x509.GeneralName, public_key: ec.EllipticCurvePublicKey | None, days: int,
                now: datetime | None) -> Issued:
    signer = _signer(ca)
    _check_permitted(ca.certificate, name, f"{type(name).__name__} {_show(str(name.value))}")
    key = ec.generate_private_key(PROFILE_CURVE()) if public_key is None else None
    pub = key.public_key() if key else _p256(public_key, "the public key")
    cert = (
        _builder(ca.certificate, x509.Name([]), pub, _now(now), days)
        .add_extension(END_ENTITY_BASIC_CONSTRAINTS, critical=True)
        .add_extension(END_ENTITY_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectAlternativeName([name]), critical=True)  # empty subject: SAN critical
        .sign(signer, PROFILE_HASH())
    )
    return Issued(cert, key)


def issue(ca: Issued, flavour: CertificateFlavour, identity: str, *, sp_domain: str | None = None,
          public_key: ec.EllipticCurvePublicKey | None = None, days: int = 365, now: datetime | None = None) -> Issued:
    """Issue an end-entity certificate of *flavour* (TS-0003 §10.1.1.1 profile).

    Args: ca: issuing CA with its key; flavour: the flavour; identity: CSE-ID (with *sp_domain*) | Absolute AE-ID |
        Node-ID | ``<hwType>/<serial>`` (device) | FQDN; sp_domain: for CSE-ID only; public_key: certify this
        P-256 key (None: generate one); days: validity (capped at the CA's); now: start of validity.
    Returns: the certificate and its new key (None when *public_key* was given).
    Raises: IdentifierError: malformed identity; ConfigurationError: the CA's nameConstraints refuse the name,
        missing or extra *sp_domain*, non-P-256 key, bad days, CA without key.
    """
    return _issue_name(ca, _identity_name(flavour, identity, sp_domain), public_key, days, now)


def make_csr(flavour: CertificateFlavour, identity: str, *, sp_domain: str | None = None,
             key: ec.EllipticCurvePrivateKey | None = None
             ) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePrivateKey]:
    """A CSR carrying the identity in the flavour's subjectAltName form (TS-0003 §10.1.4).

    Args: as :func:`issue`; key: the P-256 key to use (None: generate one).
    Returns: (CSR, private key).
    Raises: IdentifierError: malformed identity; ConfigurationError: non-P-256 key, missing or extra *sp_domain*.
    """
    name = _identity_name(flavour, identity, sp_domain)
    key = ec.generate_private_key(PROFILE_CURVE()) if key is None else key
    _p256(key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key, "the CSR key")
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([name]), critical=True).sign(key, PROFILE_HASH()))
    return csr, key


def sign_csr(ca: Issued, csr: x509.CertificateSigningRequest, flavour: CertificateFlavour, *, days: int = 365,
             now: datetime | None = None) -> Issued:
    """Issue a certificate for a CSR (TS-0003 §10.1.4), copying its subjectAltName.

    Args: ca: issuing CA; csr: the request; flavour: expected flavour; days, now: as :func:`issue`.
    Returns: the certificate (private_key None).
    Raises: ConfigurationError: bad signature, non-P-256 key, SAN not exactly one entry of the flavour's form,
        name outside the CA's nameConstraints; IdentifierError: a malformed identity in the SAN.
    """
    if not isinstance(flavour, CertificateFlavour):
        raise ConfigurationError(f"unknown certificate flavour {flavour!r}")
    if not csr.is_signature_valid:
        raise ConfigurationError("the CSR signature does not verify")
    public_key = _p256(csr.public_key(), "the CSR key")
    san, expected = list(_ext(csr, x509.SubjectAlternativeName) or ()), SAN_TYPES[flavour]
    if len(san) != 1 or not isinstance(san[0], expected):
        got = ", ".join(type(n).__name__ for n in san) or "nothing"
        raise ConfigurationError(f"a {flavour.value} CSR needs exactly one {expected.__name__} in subjectAltName "
                                 f"(TS-0003 §10.1.4), got: {got}")
    return _issue_name(ca, _checked(san[0], flavour), public_key, days, now)


def create_crl(ca: Issued, revoked_serials: Iterable[int], *, now: datetime | None = None,
               next_update_days: int = 7) -> x509.CertificateRevocationList:
    """A CRL signed by *ca* (TS-0003 §8.1.2.2 revocation checking); its CRL number is the Unix time of *now*.

    Args: ca: the CA with its key; revoked_serials: serial numbers; now: thisUpdate; next_update_days: nextUpdate.
    Returns: the CRL.
    Raises: ConfigurationError: a serial not in 1..2**159-1, bad days, CA without key.
    """
    signer, now = _signer(ca), _now(now)
    if isinstance(next_update_days, bool) or not isinstance(next_update_days, int) or next_update_days < 1:
        raise ConfigurationError(f"next_update_days must be a positive integer, got {next_update_days!r}")
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject).last_update(now)
               .next_update(now + timedelta(days=next_update_days))
               .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False))
    for serial in sorted(set(revoked_serials)):
        if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial < 2**159:
            raise ConfigurationError(f"invalid certificate serial number {serial!r}")
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(signer, PROFILE_HASH())


# --- files --------------------------------------------------------------------------------------------------


def load_issued(cert_pem: bytes, key_pem: bytes | None) -> Issued:
    """Load a PEM certificate and, optionally, its unencrypted PEM P-256 private key.

    Returns: the pair. Raises: ConfigurationError: unparsable PEM, non-P-256 key, key not matching the certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigurationError("not a PEM certificate") from None
    if key_pem is None:
        return Issued(cert, None)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError("the private key is not an EC key; TS-0003 §10.1.1.1 requires P-256")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if _p256(key.public_key(), "the private key").public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigurationError("the private key does not belong to the certificate")
    return Issued(cert, key)


def _write(path: Path, data: bytes, mode: int, flags: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, mode)
    except FileExistsError:
        raise ConfigurationError(f"{path}: exists; refusing to overwrite a private key") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)


def write_private_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    """Write *key* as unencrypted PKCS#8 PEM to a new file, mode 0600 (O_EXCL: never overwrites).

    Returns: *path*. Raises: ConfigurationError: the file exists or cannot be written.
    """
    _write(path, _pkcs8(key), 0o600, os.O_EXCL)
    return path


def write_issued(issued: Issued, prefix: Path) -> tuple[Path, Path | None]:
    """Write ``PREFIX.crt`` (0644) and, when there is a key, ``PREFIX.key`` (0600, never overwritten).

    Returns: (certificate path, key path or None). Raises: ConfigurationError: the key file exists, I/O error.
    """
    key = write_private_key(issued.private_key, Path(f"{prefix}.key")) if issued.private_key else None
    _write(Path(f"{prefix}.crt"), issued.certificate_pem(), 0o644, os.O_TRUNC)
    return Path(f"{prefix}.crt"), key
