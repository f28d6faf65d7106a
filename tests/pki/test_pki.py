"""m2msec.pki: every flavour issued from name-constrained CAs and verified by the openssl CLI itself."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID
from hypothesis import given
from hypothesis import strategies as st

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import CredentialID, CredIDType
from m2msec.pki import (
    CSE_ID_CERTIFICATE_POLICY,
    HARDWARE_MODULE_NAME_OID,
    CertificateFlavour,
    CertificateIdentity,
    Issued,
    create_ca,
    create_crl,
    decode_hardware_module_name,
    encode_hardware_module_name,
    identity_from_certificate,
    issue,
    load_issued,
    make_csr,
    sign_csr,
    write_issued,
)

F = CertificateFlavour
SP = "m2m.myoperator.org"
HW_TYPE = "1.3.6.1.4.1.99999.1"
# (flavour, identity given to issue, sp_domain, expected identity read back)
CASES = [
    (F.CSE_ID, "MN-CSEID", SP, CertificateIdentity(F.CSE_ID, "MN-CSEID", None)),
    (F.AE_ID, f"//{SP}/CSE3219/C9886", None, CertificateIdentity(F.AE_ID, f"//{SP}/CSE3219/C9886", None)),
    (F.AE_ID, f"//{SP}/S-light.1", None, CertificateIdentity(F.AE_ID, f"//{SP}/S-light.1", None)),
    (F.NODE_ID, "1.3.6.1.4.1.99999.7.42", None,
     CertificateIdentity(F.NODE_ID, "1.3.6.1.4.1.99999.7.42", "34-1.3.6.1.4.1.99999.7.42")),
    (F.DEVICE, f"{HW_TYPE}/SN-0001_a.b", None,
     CertificateIdentity(F.DEVICE, f"{HW_TYPE}.SN-0001_a.b", f"31-{HW_TYPE}.SN-0001_a.b")),
    (F.FQDN, "mef.m2m.myoperator.org", None, CertificateIdentity(F.FQDN, "mef.m2m.myoperator.org", None)),
]
IDS = ["cse-id", "ae-id-c", "ae-id-s", "node-id", "device", "fqdn"]

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not on PATH")


def dns_flavour(flavour: CertificateFlavour) -> CertificateFlavour:
    return F.FQDN if flavour is F.FQDN else F.CSE_ID


@pytest.fixture(scope="module")
def root() -> Issued:
    return create_ca("m2msec test root", permitted_dns=["myoperator.org"])


@pytest.fixture(scope="module")
def inter(root: Issued) -> Issued:
    return create_ca("m2msec test intermediate", permitted_dns=[SP], issuer=root, path_length=0)


def pem(tmp_path: Path, name: str, obj: x509.Certificate | x509.CertificateRevocationList) -> str:
    path = tmp_path / name
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return str(path)


def openssl_verify(tmp_path: Path, root: Issued, leaf: x509.Certificate, *, inter: Issued | None = None,
                   crl: x509.CertificateRevocationList | None = None) -> tuple[int, str]:
    cmd = ["openssl", "verify", "-x509_strict", "-CAfile", pem(tmp_path, "root.pem", root.certificate)]
    if inter is not None:
        cmd += ["-untrusted", pem(tmp_path, "inter.pem", inter.certificate)]
    if crl is not None:
        cmd += ["-crl_check", "-CRLfile", pem(tmp_path, "crl.pem", crl)]
    proc = subprocess.run([*cmd, pem(tmp_path, "leaf.pem", leaf)], capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


# --- every flavour: round trip, openssl, profile --------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("via_intermediate", [False, True], ids=["root", "intermediate"])
@pytest.mark.parametrize(("flavour", "identity", "sp_domain", "expected"), CASES, ids=IDS)
def test_issue_round_trip_verified_by_openssl(
    tmp_path: Path, root: Issued, inter: Issued, via_intermediate: bool,
    flavour: CertificateFlavour, identity: str, sp_domain: str | None, expected: CertificateIdentity,
) -> None:
    ca = inter if via_intermediate else root
    leaf = issue(ca, flavour, identity, sp_domain=sp_domain)
    assert identity_from_certificate(leaf.certificate, dns_flavour=dns_flavour(flavour)) == expected
    rc, out = openssl_verify(tmp_path, root, leaf.certificate, inter=inter if via_intermediate else None)
    assert rc == 0, out
    assert "leaf.pem: OK" in out


@pytest.mark.parametrize(("flavour", "identity", "sp_domain", "expected"), CASES, ids=IDS)
def test_end_entity_profile(inter: Issued, flavour: CertificateFlavour, identity: str, sp_domain: str | None,
                            expected: CertificateIdentity) -> None:
    leaf = issue(inter, flavour, identity, sp_domain=sp_domain)
    cert = leaf.certificate
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert leaf.private_key is not None and isinstance(leaf.private_key.curve, ec.SECP256R1)
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    ku = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca is False
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert san.critical and len(san.value) == 1 and len(cert.subject) == 0
    assert cert.issuer == inter.certificate.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=365, minutes=5)  # D235 backdate


def test_ca_profile(root: Issued, inter: Issued) -> None:
    for ca, path_length in ((root, None), (inter, 0)):
        cert = ca.certificate
        assert ca.private_key is not None and isinstance(ca.private_key.curve, ec.SECP256R1)
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_length
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
        assert nc.critical and nc.value.excluded_subtrees is None
    assert root.certificate.extensions.get_extension_for_class(x509.NameConstraints).value.permitted_subtrees == [
        x509.DNSName("myoperator.org")]


def test_credential_ids_parse() -> None:
    for expected in (c[3] for c in CASES):
        if expected.flavour in (F.DEVICE, F.NODE_ID):
            assert expected.credential_id is not None
            cred = CredentialID.parse(expected.credential_id)
            device = expected.flavour is F.DEVICE
            kind = CredIDType.DEVICE_CERTIFICATE_TLS if device else CredIDType.NODE_ID_CERTIFICATE_TLS
            assert cred.type is kind and cred.value == expected.value and str(cred) == expected.credential_id
        else:
            assert expected.credential_id is None


def test_device_san_is_rfc4108_hardware_module_name(inter: Issued) -> None:
    leaf = issue(inter, F.DEVICE, f"{HW_TYPE}/SN1")
    (name,) = leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert isinstance(name, x509.OtherName) and name.type_id == HARDWARE_MODULE_NAME_OID
    assert name.type_id.dotted_string == "1.3.6.1.5.5.7.8.4"
    assert decode_hardware_module_name(name.value) == (HW_TYPE, b"SN1")


# --- revocation, expiry, name constraints -------------------------------------------------------------------


@needs_openssl
def test_revoked_certificate_fails_crl_check(tmp_path: Path, root: Issued, inter: Issued) -> None:
    revoked = issue(inter, F.CSE_ID, "MN-CSE2", sp_domain=SP)
    good = issue(inter, F.CSE_ID, "MN-CSE3", sp_domain=SP)
    crl = create_crl(inter, [revoked.certificate.serial_number, 12345])
    assert crl.is_signature_valid(inter.certificate.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(revoked.certificate.serial_number) is not None
    assert crl.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    rc, out = openssl_verify(tmp_path, root, revoked.certificate, inter=inter, crl=crl)
    assert rc != 0 and "certificate revoked" in out
    rc, out = openssl_verify(tmp_path, root, good.certificate, inter=inter, crl=crl)
    assert rc == 0, out


@needs_openssl
def test_expired_certificate(tmp_path: Path, root: Issued) -> None:
    leaf = issue(root, F.NODE_ID, "1.3.6.1.4.1.99999.7.1", days=1, now=datetime.now(UTC) - timedelta(days=10))
    rc, out = openssl_verify(tmp_path, root, leaf.certificate)
    assert rc != 0 and "certificate has expired" in out


@needs_openssl
def test_name_constraint_violation(tmp_path: Path, root: Issued, inter: Issued) -> None:
    outside = "MN-CSE1.other.example.com"
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        issue(inter, F.CSE_ID, "MN-CSE1", sp_domain="other.example.com")
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        issue(inter, F.FQDN, "myoperator.org")  # the root permits it, the intermediate does not
    assert inter.private_key is not None
    key = ec.generate_private_key(ec.SECP256R1())
    rogue = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(inter.certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC)).not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(outside)]), critical=True)
        .sign(inter.private_key, hashes.SHA256())
    )
    rc, out = openssl_verify(tmp_path, root, rogue, inter=inter)
    assert rc != 0 and "permitted subtree violation" in out


def test_intermediate_subtrees_must_lie_inside_the_issuer(root: Issued, inter: Issued) -> None:
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        create_ca("rogue", permitted_dns=["example.com"], issuer=root)
    with pytest.raises(ConfigurationError, match="pathLenConstraint 0"):
        create_ca("too deep", permitted_dns=[SP], issuer=inter)
    uri_root = create_ca("uri root", permitted_uri_hosts=[".prov.com"])
    assert create_ca("ok", permitted_uri_hosts=["m2m.prov.com"], issuer=uri_root).certificate
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        create_ca("rogue", permitted_uri_hosts=["prov.com"], issuer=uri_root)


@needs_openssl
def test_uri_name_constraints_and_openssl(tmp_path: Path) -> None:
    """Finding: OpenSSL 3 cannot match scheme-less (or urn:) URIs against URI name constraints."""
    ca = create_ca("uri ca", permitted_uri_hosts=["m2m.prov.com"])
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        issue(ca, F.AE_ID, "//other.prov.com/CSE1/C1")
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        issue(ca, F.NODE_ID, "1.3.6.1.4.1.99999.7.1")  # urn:oid: has no host to satisfy a URI subtree
    leaf = issue(ca, F.AE_ID, "//m2m.prov.com/CSE1/C1")  # the host part satisfies the CA (TS-0003 §8.1.2.1)
    rc, out = openssl_verify(tmp_path, ca, leaf.certificate)
    assert rc != 0 and "unsupported or invalid name syntax" in out
    # unconstrained name types pass: a DNS-only CA lets OpenSSL verify AE-ID and device certificates
    dns_ca = create_ca("dns ca", permitted_dns=[SP])
    for flavour, identity in ((F.AE_ID, f"//{SP}/CSE1/C1"), (F.DEVICE, f"{HW_TYPE}/X1")):
        rc, out = openssl_verify(tmp_path, dns_ca, issue(dns_ca, flavour, identity).certificate)
        assert rc == 0, out


# --- identities ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "identity", "sp_domain", "error"),
    [
        (F.CSE_ID, "MN-CSE1", None, ConfigurationError),  # needs the SP domain
        (F.AE_ID, "//m2m.prov.com/CSE1/C1", SP, ConfigurationError),  # SP domain only with cse-id
        (F.CSE_ID, "MN.CSE1", SP, IdentifierError),
        (F.CSE_ID, "MN_CSE1", SP, IdentifierError),
        (F.CSE_ID, "*", SP, IdentifierError),
        (F.CSE_ID, "MN-CSE1", "*.myoperator.org", IdentifierError),
        (F.FQDN, "*.m2m.myoperator.org", None, IdentifierError),
        (F.FQDN, "mef..myoperator.org", None, IdentifierError),
        (F.AE_ID, "http://m2m.prov.com/CSE1/C1", None, IdentifierError),
        (F.AE_ID, "//m2m.prov.com/CSE1/S1", None, IdentifierError),
        (F.AE_ID, "//m2m.prov.com/C1", None, IdentifierError),
        (F.AE_ID, "//m2m.prov.com/CSE1/C*", None, IdentifierError),
        (F.AE_ID, "//m2m_prov/CSE1/C1", None, IdentifierError),
        (F.NODE_ID, "3.1.2", None, IdentifierError),
        (F.NODE_ID, "1.40", None, IdentifierError),
        (F.NODE_ID, "1.3.06", None, IdentifierError),
        (F.NODE_ID, "node-1", None, IdentifierError),
        (F.DEVICE, f"{HW_TYPE}.SN1", None, IdentifierError),
        (F.DEVICE, f"{HW_TYPE}/SN 1", None, IdentifierError),
        (F.DEVICE, f"{HW_TYPE}/", None, IdentifierError),
        (F.DEVICE, f"{HW_TYPE}/SN/1", None, IdentifierError),
        (F.DEVICE, "1.3.6.1.x/SN1", None, IdentifierError),
        (F.DEVICE, f"{HW_TYPE}/Séri", None, IdentifierError),
    ],
)
def test_bad_identities_are_refused(inter: Issued, flavour: CertificateFlavour, identity: str,
                                    sp_domain: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        issue(inter, flavour, identity, sp_domain=sp_domain)
    with pytest.raises(error):
        make_csr(flavour, identity, sp_domain=sp_domain)


def _cert_with(san: list[x509.GeneralName] | None, ca: Issued, *, marked: bool = False) -> x509.Certificate:
    assert ca.private_key is not None
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
        .public_key(key.public_key()).serial_number(1).not_valid_before(datetime.now(UTC))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=True)
    if marked:  # D41: the CSE-ID certificate marker
        policy = x509.PolicyInformation(CSE_ID_CERTIFICATE_POLICY, None)
        builder = builder.add_extension(x509.CertificatePolicies([policy]), critical=False)
    return builder.sign(ca.private_key, hashes.SHA256())


@pytest.mark.parametrize(
    ("san", "match"),
    [
        (None, "exactly one identity"),
        ([x509.DNSName("a.m2m.myoperator.org"), x509.UniformResourceIdentifier("urn:oid:1.2.3")], "exactly one"),
        ([x509.RFC822Name("ops@myoperator.org")], "exactly one identity"),
        ([x509.UniformResourceIdentifier("https://m2m.prov.com/CSE1/C1")], "neither urn:oid"),
        ([x509.UniformResourceIdentifier("urn:oid:1.2.x")], "Node-ID"),
        ([x509.DNSName("*.m2m.myoperator.org")], "wildcard"),
        ([x509.DNSName("localhost")], "<CSE-ID>.<SP domain>"),
        ([x509.OtherName(HARDWARE_MODULE_NAME_OID, b"\x30\x03\x06\x01\x2a")], "HardwareModuleName"),
        ([x509.OtherName(HARDWARE_MODULE_NAME_OID, encode_hardware_module_name("1.2.3", b"\x00\xff"))], "ASCII"),
    ],
)
def test_identity_from_certificate_refuses(root: Issued, san: list[x509.GeneralName] | None, match: str) -> None:
    with pytest.raises(IdentifierError, match=match):
        identity_from_certificate(_cert_with(san, root, marked=any(isinstance(n, x509.DNSName) for n in san or ())))


def test_identity_from_certificate_ignores_other_san_types(root: Issued) -> None:
    san: list[x509.GeneralName] = [x509.RFC822Name("ops@myoperator.org"), x509.DNSName("MN-CSE9.m2m.myoperator.org")]
    cert = _cert_with(san, root, marked=True)
    assert identity_from_certificate(cert) == CertificateIdentity(F.CSE_ID, "MN-CSE9", None)
    assert identity_from_certificate(cert, dns_flavour=F.FQDN).value == "mn-cse9.m2m.myoperator.org"
    with pytest.raises(ConfigurationError):
        identity_from_certificate(cert, dns_flavour=F.AE_ID)


# --- HardwareModuleName DER -----------------------------------------------------------------------------------

arcs = st.integers(min_value=0, max_value=2**128)
oids = st.one_of(
    st.tuples(st.integers(0, 1), st.integers(0, 39), st.lists(arcs, max_size=6)),
    st.tuples(st.just(2), arcs, st.lists(arcs, max_size=6)),
).map(lambda t: ".".join(str(a) for a in (t[0], t[1], *t[2])))


@given(oids, st.binary(max_size=300))
def test_der_round_trip(hw_type: str, serial: bytes) -> None:
    der = encode_hardware_module_name(hw_type, serial)
    assert decode_hardware_module_name(der) == (hw_type, serial)
    # cryptography embeds and re-reads it unchanged as an otherName value
    assert x509.OtherName(HARDWARE_MODULE_NAME_OID, der).value == der


@given(st.binary(max_size=64))
def test_der_garbage_raises_identifier_error_only(data: bytes) -> None:
    try:
        hw_type, serial = decode_hardware_module_name(data)
    except IdentifierError:
        return
    assert encode_hardware_module_name(hw_type, serial) == data  # what decodes is canonical DER


@given(oids, st.binary(max_size=200), st.data())
def test_der_mutations_raise_identifier_error_only(hw_type: str, serial: bytes, data: st.DataObject) -> None:
    der = bytearray(encode_hardware_module_name(hw_type, serial))
    index = data.draw(st.integers(0, len(der) - 1))
    der[index] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_hardware_module_name(bytes(der))
    except IdentifierError:
        return
    assert encode_hardware_module_name(*decoded) == bytes(der)


@pytest.mark.parametrize(
    ("der", "match"),
    [
        (b"", "expected SEQUENCE"),
        (b"\x31\x00", "expected SEQUENCE"),
        (b"\x30\x81\x05\x06\x01\x2a\x04\x00", "non-minimal length"),
        (b"\x30\x80\x06\x01\x2a\x04\x00\x00\x00", "length"),
        (b"\x30\x05\x06\x01\x2a\x04\x00\x00", "trailing"),
        (b"\x30\x07\x06\x01\x2a\x04\x00\x05\x00", "extra"),
        (b"\x30\x05\x06\x01\x2a\x04\x05", "truncated"),
        (b"\x30\x04\x06\x00\x04\x00", "hwType"),
        (b"\x30\x06\x06\x02\x80\x01\x04\x00", "non-minimal"),
        (b"\x30\x05\x06\x01\xaa\x04\x00", "truncated"),
        (b"\x30\x05\x04\x00\x06\x01\x2a", "expected hwType"),
    ],
)
def test_der_malformed_examples(der: bytes, match: str) -> None:
    with pytest.raises(IdentifierError, match=match):
        decode_hardware_module_name(der)


def test_der_known_encoding() -> None:
    # 1.3.6.1.4.1.99999.1 -> 2b 06 01 04 01 86 8d 1f 01 (99999 = 0x1869f -> 86 8d 1f)
    assert encode_hardware_module_name(HW_TYPE, b"AB") == bytes.fromhex("300f06092b06010401868d1f0104024142")


# --- CSRs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flavour", "identity", "sp_domain", "expected"), CASES, ids=IDS)
def test_csr_round_trip(inter: Issued, flavour: CertificateFlavour, identity: str, sp_domain: str | None,
                        expected: CertificateIdentity) -> None:
    csr, key = make_csr(flavour, identity, sp_domain=sp_domain)
    leaf = sign_csr(inter, csr, flavour)
    assert leaf.private_key is None
    assert identity_from_certificate(leaf.certificate, dns_flavour=dns_flavour(flavour)) == expected
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf.certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_csr_refusals(inter: Issued) -> None:
    csr, _ = make_csr(F.CSE_ID, "MN-CSE1", sp_domain=SP)
    with pytest.raises(ConfigurationError, match="exactly one UniformResourceIdentifier"):
        sign_csr(inter, csr, F.AE_ID)
    node_csr, _ = make_csr(F.NODE_ID, "1.2.3.4")
    with pytest.raises(IdentifierError, match="is a node-id identity, not ae-id"):
        sign_csr(inter, node_csr, F.AE_ID)
    p384 = ec.generate_private_key(ec.SECP384R1())
    bad = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("MN-CSE1." + SP)]), critical=True)
           .sign(p384, hashes.SHA384()))
    with pytest.raises(ConfigurationError, match="secp384r1"):
        sign_csr(inter, bad, F.CSE_ID)
    with pytest.raises(ConfigurationError, match="secp384r1"):
        make_csr(F.CSE_ID, "MN-CSE1", sp_domain=SP, key=p384)
    two = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("a." + SP), x509.DNSName("b." + SP)]),
                          critical=False).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    with pytest.raises(ConfigurationError, match="exactly one DNSName"):
        sign_csr(inter, two, F.CSE_ID)
    outside, _ = make_csr(F.FQDN, "mef.example.com")
    with pytest.raises(ConfigurationError, match="outside the nameConstraints"):
        sign_csr(inter, outside, F.FQDN)


# --- keys, files, repr, options -------------------------------------------------------------------------------


def test_write_load_and_never_overwrite_keys(tmp_path: Path, inter: Issued) -> None:
    leaf = issue(inter, F.FQDN, "maf.m2m.myoperator.org")
    crt, key = write_issued(leaf, tmp_path / "maf")
    assert key is not None
    assert crt.stat().st_mode & 0o777 == 0o644 and key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        write_issued(issue(inter, F.FQDN, "maf.m2m.myoperator.org"), tmp_path / "maf")
    assert key.read_bytes() == before
    loaded = load_issued(crt.read_bytes(), key.read_bytes())
    assert loaded.certificate == leaf.certificate and loaded.private_key_pem() == leaf.private_key_pem()
    with pytest.raises(ConfigurationError, match="does not belong"):
        load_issued(crt.read_bytes(), inter.private_key_pem())
    with pytest.raises(ConfigurationError, match="not a PEM certificate"):
        load_issued(b"garbage", None)
    csr, _ = make_csr(F.NODE_ID, "1.2.3")
    no_key = sign_csr(inter, csr, F.NODE_ID)
    assert write_issued(no_key, tmp_path / "node") == (tmp_path / "node.crt", None)
    with pytest.raises(ConfigurationError, match="no private key"):
        no_key.private_key_pem()


def test_repr_hides_the_private_key(inter: Issued) -> None:
    leaf = issue(inter, F.CSE_ID, "MN-CSE1", sp_domain=SP)
    assert leaf.private_key is not None
    text = repr(leaf) + str(leaf)
    secret = leaf.private_key.private_numbers().private_value
    body = b"".join(leaf.private_key_pem().splitlines()[1:-1]).decode()
    assert "<hidden>" in text and str(secret) not in text and hex(secret)[2:] not in text and body[:24] not in text


def test_given_public_key_and_options(root: Issued) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue(root, F.NODE_ID, "1.2.3", public_key=key.public_key())
    assert leaf.private_key is None and leaf.certificate.public_key() == key.public_key()
    with pytest.raises(ConfigurationError, match="secp384r1"):
        issue(root, F.NODE_ID, "1.2.3", public_key=ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ConfigurationError, match="days"):
        issue(root, F.NODE_ID, "1.2.3", days=0)
    with pytest.raises(ConfigurationError, match="timezone"):
        issue(root, F.NODE_ID, "1.2.3", now=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="nameConstraints"):
        create_ca("no constraints")
    with pytest.raises(ConfigurationError, match="not a CA"):
        issue(Issued(issue(root, F.NODE_ID, "1.2.3").certificate, root.private_key), F.NODE_ID, "1.2.3")
    with pytest.raises(ConfigurationError, match="no private key"):
        issue(Issued(root.certificate, None), F.NODE_ID, "1.2.3")
    with pytest.raises(ConfigurationError, match="serial"):
        create_crl(root, [0])
    short = create_ca("short", permitted_dns=[SP], days=2)
    assert issue(short, F.NODE_ID, "1.2.3").certificate.not_valid_after_utc == short.certificate.not_valid_after_utc
