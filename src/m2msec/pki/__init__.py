"""oneM2M certificates (TS-0003 §8.1.2, §10.1): a small name-constrained CA, the certificate flavours, CSRs, CRLs.

Pure: :mod:`cryptography` only (no pyOpenSSL, no sockets); the time is a parameter (``now``, default
``datetime.now(UTC)``). Bad options raise :class:`~m2msec.errors.ConfigurationError`, malformed identifiers
:class:`~m2msec.errors.IdentifierError`; messages never contain key material. Leaf certificates have an empty
subject and carry their identity in one critical subjectAltName entry (RFC 5280 §4.2.1.6), so no verifier applies
DNS name constraints to a subject CN that merely looks like a host name. CSE-ID certificates also carry the
CSE-ID marker (D41), and a CA issues AE-IDs and CSE-IDs only of SPs inside its permitted DNS subtrees (D40).

This package: :mod:`~m2msec.pki.profile` (flavours, decisions), :mod:`~m2msec.pki.hwname` (RFC 4108 DER),
:mod:`~m2msec.pki.identity` (reading identities, name constraints, SP binding), :mod:`~m2msec.pki.files`;
issuing lives here. Import everything from ``m2msec.pki``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.errors import ConfigurationError
from m2msec.identifiers import validate_fqdn
from m2msec.pki.files import load_issued, write_issued, write_private_key
from m2msec.pki.hwname import decode_hardware_module_name, encode_hardware_module_name
from m2msec.pki.identity import (
    CA_MUST_BIND_SP,
    _check_permitted,
    _checked,
    _identity_name,
    ca_binds_service_provider,
    check_ca_may_issue,
    check_service_provider,
    identity_from_certificate,
    identity_service_provider,
)
from m2msec.pki.profile import (
    AE_ID_URI_PREFIX,
    CA_KEY_USAGE,
    CA_NAME_CONSTRAINTS_CRITICAL,
    CREDENTIAL_ID_TYPES,
    CSE_ID_CERTIFICATE_POLICY,
    CSE_ID_DNS_FORM,
    END_ENTITY_BASIC_CONSTRAINTS,
    END_ENTITY_KEY_USAGE,
    HARDWARE_MODULE_NAME_OID,
    NODE_ID_URI_PREFIX,
    PROFILE_CURVE,
    PROFILE_HASH,
    SAN_TYPES,
    VALIDITY_BACKDATE,
    WILDCARD,
    CertificateFlavour,
    CertificateIdentity,
    Issued,
    _ext,
    _p256,
    _show,
)

__all__ = [
    "AE_ID_URI_PREFIX", "CA_KEY_USAGE", "CA_MUST_BIND_SP", "CA_NAME_CONSTRAINTS_CRITICAL", "CREDENTIAL_ID_TYPES",
    "CSE_ID_CERTIFICATE_POLICY", "CSE_ID_DNS_FORM", "END_ENTITY_BASIC_CONSTRAINTS", "END_ENTITY_KEY_USAGE",
    "HARDWARE_MODULE_NAME_OID", "NODE_ID_URI_PREFIX", "PROFILE_CURVE", "PROFILE_HASH", "SAN_TYPES",
    "VALIDITY_BACKDATE", "WILDCARD", "CertificateFlavour", "CertificateIdentity", "Issued",
    "ca_binds_service_provider", "check_service_provider",
    "create_ca", "create_crl", "decode_hardware_module_name", "encode_hardware_module_name",
    "identity_from_certificate", "identity_service_provider", "issue", "load_issued", "make_csr", "sign_csr",
    "write_issued", "write_private_key",
]

#: the certificatePolicies extension that marks a CSE-ID certificate (D41)
_CSE_ID_POLICIES = x509.CertificatePolicies([x509.PolicyInformation(CSE_ID_CERTIFICATE_POLICY, None)])


# --- issuing ------------------------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    if now is not None and now.tzinfo is None:
        raise ConfigurationError("now must be timezone-aware (UTC)")
    return now or datetime.now(UTC)


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
        .serial_number(x509.random_serial_number()).not_valid_before(now - VALIDITY_BACKDATE)  # D235
        .not_valid_after(not_after)
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
        days: validity (capped at the issuer's); now: the issuing instant (notBefore is
        :data:`VALIDITY_BACKDATE` earlier, D235).
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


def _issue_name(ca: Issued, name: x509.GeneralName, flavour: CertificateFlavour,
                public_key: ec.EllipticCurvePublicKey | None, days: int, now: datetime | None) -> Issued:
    signer = _signer(ca)
    _check_permitted(ca.certificate, name, f"{type(name).__name__} {_show(str(name.value))}")
    check_ca_may_issue(ca.certificate, name, flavour)
    key = ec.generate_private_key(PROFILE_CURVE()) if public_key is None else None
    pub = key.public_key() if key else _p256(public_key, "the public key")
    builder = (
        _builder(ca.certificate, x509.Name([]), pub, _now(now), days)
        .add_extension(END_ENTITY_BASIC_CONSTRAINTS, critical=True)
        .add_extension(END_ENTITY_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectAlternativeName([name]), critical=True)  # empty subject: SAN critical
    )
    if flavour is CertificateFlavour.CSE_ID:  # D41: marks the dNSName as <CSE-ID>.<SP domain>, not an FQDN
        builder = builder.add_extension(_CSE_ID_POLICIES, critical=False)
    return Issued(builder.sign(signer, PROFILE_HASH()), key)


def issue(ca: Issued, flavour: CertificateFlavour, identity: str, *, sp_domain: str | None = None,
          public_key: ec.EllipticCurvePublicKey | None = None, days: int = 365, now: datetime | None = None) -> Issued:
    """Issue an end-entity certificate of *flavour* (TS-0003 §10.1.1.1 profile).

    Args: ca: issuing CA with its key; flavour: the flavour; identity: CSE-ID (with *sp_domain*) | Absolute AE-ID |
        Node-ID | ``<hwType>/<serial>`` (device) | FQDN; sp_domain: for CSE-ID only; public_key: certify this
        P-256 key (None: generate one); days: validity (capped at the CA's); now: the issuing instant (notBefore is
        :data:`VALIDITY_BACKDATE` earlier, D235).
    Returns: the certificate and its new key (None when *public_key* was given).
    Raises: IdentifierError: malformed identity; ConfigurationError: the CA's nameConstraints refuse the name,
        missing or extra *sp_domain*, non-P-256 key, bad days, CA without key.
    """
    return _issue_name(ca, _identity_name(flavour, identity, sp_domain), flavour, public_key, days, now)


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
    return _issue_name(ca, _checked(san[0], flavour), flavour, public_key, days, now)


def create_crl(ca: Issued, revoked_serials: Iterable[int], *, now: datetime | None = None,
               next_update_days: int = 7) -> x509.CertificateRevocationList:
    """A CRL signed by *ca* (TS-0003 §8.1.2.2 revocation checking); its CRL number is the Unix time of *now*.

    Args: ca: the CA with its key; revoked_serials: serial numbers; now: the issuing instant (thisUpdate is
        :data:`VALIDITY_BACKDATE` earlier, D235); next_update_days: nextUpdate, counted from *now*.
    Returns: the CRL.
    Raises: ConfigurationError: a serial not in 1..2**159-1, bad days, CA without key.
    """
    signer, now = _signer(ca), _now(now)
    if isinstance(next_update_days, bool) or not isinstance(next_update_days, int) or next_update_days < 1:
        raise ConfigurationError(f"next_update_days must be a positive integer, got {next_update_days!r}")
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
               .last_update(now - VALIDITY_BACKDATE)  # D235
               .next_update(now + timedelta(days=next_update_days))
               .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False))
    for serial in sorted(set(revoked_serials)):
        if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial < 2**159:
            raise ConfigurationError(f"invalid certificate serial number {serial!r}")
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(signer, PROFILE_HASH())


