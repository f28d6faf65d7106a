"""Reading and checking the oneM2M identity of a certificate (TS-0003 §8.2.2.2), and name constraints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cryptography import x509

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import CredentialID, validate_fqdn
from m2msec.pki.hwname import _check_oid, decode_hardware_module_name, encode_hardware_module_name
from m2msec.pki.profile import (
    _AE_PART,
    _DNS_FLAVOURS,
    _SERIAL,
    _URI_HOST,
    AE_ID_URI_PREFIX,
    CREDENTIAL_ID_TYPES,
    CSE_ID_CERTIFICATE_POLICY,
    CSE_ID_DNS_FORM,
    HARDWARE_MODULE_NAME_OID,
    NODE_ID_URI_PREFIX,
    WILDCARD,
    CertificateFlavour,
    CertificateIdentity,
    _ext,
    _show,
)

#: docs/decisions.md D40: an AE-ID or CSE-ID identity names its service provider (the SP-ID host of the Absolute
#: AE-ID, the SP domain of ``<CSE-ID>.<SP domain>``), which no verifier checks against DNS nameConstraints. A CA
#: binds the SPs inside its permitted DNS subtrees (and URI hosts); the SP must lie inside those of every CA of the
#: verified chain that has any, and (True) of at least one: a chain of CAs without such subtrees certifies no SP.
CA_MUST_BIND_SP: Final = True

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


def _cse_id_marked(cert: x509.Certificate) -> bool:
    policies = _ext(cert, x509.CertificatePolicies)
    return any(p.policy_identifier == CSE_ID_CERTIFICATE_POLICY for p in policies or ())


def identity_from_certificate(
    cert: x509.Certificate, *, dns_flavour: CertificateFlavour = CertificateFlavour.CSE_ID
) -> CertificateIdentity:
    """Read the oneM2M identity from a leaf certificate's subjectAltName (TS-0003 §8.2.2.2).

    otherName hardwareModuleName -> DEVICE; URI ``urn:oid:`` -> NODE_ID; URI ``//...`` -> AE_ID; dNSName -> CSE_ID
    (the first label) when the certificate carries :data:`CSE_ID_CERTIFICATE_POLICY` (D41) and *dns_flavour* is
    CSE_ID, else FQDN (the name). Other SAN types (IP, e-mail, ...) are ignored.

    Args: cert: the certificate; dns_flavour: FQDN reads even a marked dNSName as an FQDN.
    Returns: the identity and its Credential-ID (device ``31-<hwType>.<serial>``, Node-ID ``34-<Node-ID>``).
    Raises: IdentifierError: not exactly one identity-bearing SAN entry, a malformed one, or the CSE-ID marker on
        a certificate whose identity is not a dNSName; ConfigurationError: *dns_flavour* is neither CSE_ID nor FQDN.
    """
    if dns_flavour not in _DNS_FLAVOURS:
        raise ConfigurationError(f"dns_flavour must be cse-id or fqdn, not {dns_flavour!r}")
    san = _ext(cert, x509.SubjectAlternativeName)
    names = [n for n in san or () if isinstance(n, x509.DNSName | x509.UniformResourceIdentifier)
             or (isinstance(n, x509.OtherName) and n.type_id == HARDWARE_MODULE_NAME_OID)]
    if len(names) != 1:
        raise IdentifierError(f"need exactly one identity in subjectAltName, found {len(names)}")
    marked = _cse_id_marked(cert)
    if marked and not isinstance(names[0], x509.DNSName):
        raise IdentifierError("the CSE-ID certificate policy is on a certificate whose identity is not a dNSName")
    return _identity_from_name(names[0], dns_flavour if marked else CertificateFlavour.FQDN)


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




# --- service providers (D40) ---------------------------------------------------------------------------------


def _name_sp(name: x509.GeneralName) -> str | None:
    if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(AE_ID_URI_PREFIX):
        return name.value[len(AE_ID_URI_PREFIX):].partition("/")[0].lower()
    if isinstance(name, x509.DNSName):
        return name.value.partition(".")[2].lower()
    return None


def identity_service_provider(cert: x509.Certificate, identity: CertificateIdentity) -> str | None:
    """The SP domain an AE-ID or CSE-ID *identity* (read from *cert*) belongs to, lower case; None for others.

    AE-ID: the SP-ID of ``//<SP-ID>/...``; CSE-ID: the ``<SP domain>`` of ``<CSE-ID>.<SP domain>`` (D11).
    """
    if identity.flavour not in (CertificateFlavour.AE_ID, CertificateFlavour.CSE_ID):
        return None
    want = x509.UniformResourceIdentifier if identity.flavour is CertificateFlavour.AE_ID else x509.DNSName
    names = [n for n in _ext(cert, x509.SubjectAlternativeName) or () if isinstance(n, want)]
    sp = _name_sp(names[0]) if len(names) == 1 else None
    if not sp:
        raise IdentifierError(f"the {identity.flavour.value} certificate names no service provider")
    return sp


def ca_binds_service_provider(ca: x509.Certificate, sp: str) -> bool | None:
    """Whether CA *ca* may certify AE-IDs and CSE-IDs of SP domain *sp* (D40).

    Returns: False when its nameConstraints exclude *sp*, or have permitted DNS subtrees (or URI hosts) of which
    none holds *sp*; True when they hold it; None when the CA has no permitted DNS subtree or URI host (binds no SP).
    """
    nc = _ext(ca, x509.NameConstraints)
    if nc is None:
        return None
    names = (x509.DNSName(sp), x509.UniformResourceIdentifier(AE_ID_URI_PREFIX + sp))
    if any(_within(n, base) for n in names for base in nc.excluded_subtrees or ()):
        return False
    bound: bool | None = None
    for name in names:
        verdicts = [v for base in nc.permitted_subtrees or () if (v := _within(name, base)) is not None]
        if verdicts and not any(verdicts):
            return False
        bound = bound or (True if verdicts else None)
    return bound


def check_service_provider(chain: Sequence[x509.Certificate], sp: str) -> None:
    """D40: the CAs of a verified *chain* (leaf first, as OpenSSL built it) must all permit SP domain *sp*.

    Raises: IdentifierError: a CA of the chain does not permit *sp*, or (:data:`CA_MUST_BIND_SP`) none binds it.
    """
    verdicts = [(ca, v) for ca in chain[1:] if (v := ca_binds_service_provider(ca, sp)) is not None]
    for ca, verdict in verdicts:
        if not verdict:
            raise IdentifierError(f"SP {_show(sp)} is outside the nameConstraints of CA "
                                  f"{_show(ca.subject.rfc4514_string())}")
    if not verdicts and CA_MUST_BIND_SP:
        raise IdentifierError(f"no CA of the chain binds SP {_show(sp)} (no permitted DNS subtree holds it)")


def check_ca_may_issue(ca: x509.Certificate, name: x509.GeneralName, flavour: CertificateFlavour) -> None:
    """D40 at issuing time: refuse an AE-ID or CSE-ID whose SP lies outside the CA's permitted DNS subtrees.

    Raises: ConfigurationError: the CA does not (or, CA_MUST_BIND_SP, cannot) vouch for the identity's SP.
    """
    sp = _name_sp(name) if flavour in (CertificateFlavour.AE_ID, CertificateFlavour.CSE_ID) else None
    if not sp:
        return
    verdict, who = ca_binds_service_provider(ca, sp), _show(ca.subject.rfc4514_string())
    if verdict is False or (verdict is None and CA_MUST_BIND_SP):
        raise ConfigurationError(f"SP {_show(sp)} of this {flavour.value} identity is outside the nameConstraints "
                                 f"of CA {who} (no permitted DNS subtree holds it)")
