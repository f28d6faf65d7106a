"""D40 (a CA vouches only for the service providers inside its permitted DNS subtrees) and D41 (CSE-ID
certificates are marked, so an FQDN certificate is never read as ``<CSE-ID>.<SP domain>``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.pki import (
    CSE_ID_CERTIFICATE_POLICY,
    CertificateFlavour,
    CertificateIdentity,
    Issued,
    ca_binds_service_provider,
    check_service_provider,
    create_ca,
    identity_from_certificate,
    identity_service_provider,
    issue,
    make_csr,
    sign_csr,
)

F = CertificateFlavour
SP = "m2m.provider.com"
FOREIGN = "foreign-sp.example"


def _ca(name: str, constraints: x509.NameConstraints | None) -> Issued:
    """A self-signed CA made without m2msec.pki, so that it may lack nameConstraints or hold excluded subtrees."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return Issued(builder.sign(key, hashes.SHA256()), key)


# --- D41: CSE-ID certificates are marked -------------------------------------------------------------------


def test_issued_cse_id_certificates_carry_the_marker_and_fqdn_ones_do_not() -> None:
    ca = create_ca("root", permitted_dns=[SP])
    cse = issue(ca, F.CSE_ID, "in-cse", sp_domain=SP).certificate
    policies = cse.extensions.get_extension_for_class(x509.CertificatePolicies)
    assert not policies.critical and [p.policy_identifier for p in policies.value] == [CSE_ID_CERTIFICATE_POLICY]
    assert identity_from_certificate(cse) == CertificateIdentity(F.CSE_ID, "in-cse", None)
    fqdn = issue(ca, F.FQDN, f"mef.{SP}").certificate
    with pytest.raises(x509.ExtensionNotFound):
        fqdn.extensions.get_extension_for_class(x509.CertificatePolicies)


def test_fqdn_certificate_is_not_read_as_a_cse_id() -> None:
    """Before D41 the default reading of any dNSName was <CSE-ID>.<SP domain>: mef.m2m.provider.com was CSE 'mef'."""
    ca = create_ca("root", permitted_dns=[SP])
    for leaf in (issue(ca, F.FQDN, f"mef.{SP}"), sign_csr(ca, make_csr(F.FQDN, f"mef.{SP}")[0], F.FQDN)):
        assert identity_from_certificate(leaf.certificate) == CertificateIdentity(F.FQDN, f"mef.{SP}", None)
    # a CSE-ID CSR signed as cse-id is marked by the CA (the requester cannot choose the marker)
    csr, _ = make_csr(F.CSE_ID, "mn-cse", sp_domain=SP)
    assert identity_from_certificate(sign_csr(ca, csr, F.CSE_ID).certificate).flavour is F.CSE_ID
    # the marker read as FQDN on request (m2msec pki show --fqdn)
    marked = issue(ca, F.CSE_ID, "in-cse", sp_domain=SP).certificate
    assert identity_from_certificate(marked, dns_flavour=F.FQDN).value == f"in-cse.{SP}"


def test_cse_id_marker_on_another_identity_is_refused() -> None:
    ca = create_ca("root", permitted_dns=[SP])
    assert ca.private_key is not None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
            .public_key(key.public_key()).serial_number(7).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"//{SP}/in-cse/CAdmin")]),
                           critical=True)
            .add_extension(x509.CertificatePolicies([x509.PolicyInformation(CSE_ID_CERTIFICATE_POLICY, None)]),
                           critical=False)
            .sign(ca.private_key, hashes.SHA256()))
    with pytest.raises(IdentifierError, match="CSE-ID certificate policy is on a certificate whose identity is not"):
        identity_from_certificate(cert)


# --- D40: issuing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "identity", "sp_domain"),
    [
        (F.AE_ID, f"//{SP}/in-cse/CAdmin", None),
        (F.AE_ID, f"//{SP}/Sadmin", None),
        (F.CSE_ID, "in-cse", SP),
    ],
    ids=["ae-id-c", "ae-id-s", "cse-id"],
)
def test_issue_refuses_an_identity_of_another_sp(flavour: CertificateFlavour, identity: str,
                                                 sp_domain: str | None) -> None:
    foreign = create_ca("foreign root", permitted_dns=[FOREIGN])
    # a cse-id's dNSName itself is already outside the DNS subtrees; an AE-ID's URI is not constrained by them
    what = "DNSName 'in-cse.m2m.provider.com'" if flavour is F.CSE_ID else f"SP '{SP}' of this ae-id identity"
    with pytest.raises(ConfigurationError, match=f"{what} is outside the nameConstraints of CA 'CN=foreign root'"):
        issue(foreign, flavour, identity, sp_domain=sp_domain)
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        sign_csr(foreign, make_csr(flavour, identity, sp_domain=sp_domain)[0], flavour)
    # the CA bound to the SP (or a parent domain of it) issues it
    assert issue(create_ca("own", permitted_dns=["provider.com"]), flavour, identity, sp_domain=sp_domain)


def test_issue_binds_the_sp_not_just_the_name() -> None:
    """A CA constrained to one host (an FQDN-certificate CA) cannot certify CSEs of that host's parent SP."""
    host_ca = create_ca("mef ca", permitted_dns=[f"in-cse.{SP}"])
    assert issue(host_ca, F.FQDN, f"in-cse.{SP}")
    with pytest.raises(ConfigurationError, match=f"SP '{SP}' of this cse-id identity is outside"):
        issue(host_ca, F.CSE_ID, "in-cse", sp_domain=SP)


def test_issue_refuses_when_the_ca_binds_no_sp() -> None:
    """CA_MUST_BIND_SP: a CA without permitted DNS subtrees (or URI hosts) vouches for no SP."""
    for ca in (_ca("unconstrained", None),
               _ca("only excluded", x509.NameConstraints(None, [x509.DNSName(FOREIGN)]))):
        with pytest.raises(ConfigurationError, match=f"SP '{SP}' of this ae-id identity is outside"):
            issue(ca, F.AE_ID, f"//{SP}/in-cse/Cx")
        assert issue(ca, F.NODE_ID, "1.3.6.1.4.1.99999.7.1")  # identities without an SP are not concerned


def test_uri_host_constraints_bind_the_sp_too() -> None:
    ca = create_ca("uri", permitted_uri_hosts=[SP])
    assert issue(ca, F.AE_ID, f"//{SP}/in-cse/Cx")
    assert ca_binds_service_provider(ca.certificate, f"x.{SP}") is False


# --- D40: the verified chain at association time -----------------------------------------------------------


def test_identity_service_provider() -> None:
    ca = create_ca("root", permitted_dns=[SP])
    for leaf, sp in ((issue(ca, F.AE_ID, f"//{SP.upper()}/in-cse/Cx"), SP), (issue(ca, F.AE_ID, f"//{SP}/Sx"), SP),
                     (issue(ca, F.CSE_ID, "In-Cse", sp_domain=SP), SP), (issue(ca, F.FQDN, f"mef.{SP}"), None)):
        cert = leaf.certificate
        assert identity_service_provider(cert, identity_from_certificate(cert)) == sp


def test_check_service_provider_walks_every_ca_of_the_chain() -> None:
    root = create_ca("root", permitted_dns=["provider.com", FOREIGN])
    inter = create_ca("inter", permitted_dns=[SP], issuer=root)
    leaf = issue(inter, F.AE_ID, f"//{SP}/in-cse/Cx").certificate
    check_service_provider([leaf, inter.certificate, root.certificate], SP)
    check_service_provider([leaf, inter.certificate, _ca("free root", None).certificate], SP)
    with pytest.raises(IdentifierError, match=f"SP '{FOREIGN}' is outside the nameConstraints of CA 'CN=inter'"):
        check_service_provider([leaf, inter.certificate, root.certificate], FOREIGN)
    excluding = _ca("excl", x509.NameConstraints([x509.DNSName("provider.com")], [x509.DNSName(SP)])).certificate
    assert ca_binds_service_provider(excluding, SP) is False
    with pytest.raises(IdentifierError, match="outside the nameConstraints of CA 'CN=excl'"):
        check_service_provider([leaf, inter.certificate, excluding], SP)
    with pytest.raises(IdentifierError, match=f"no CA of the chain binds SP '{SP}'"):
        check_service_provider([leaf, _ca("free", None).certificate], SP)
    with pytest.raises(IdentifierError, match="no CA of the chain binds"):
        check_service_provider([], SP)  # no verified chain: fail closed
