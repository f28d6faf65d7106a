"""Certificates the CCF issues at onboarding (TS 33.122 §6.1, D119): requests made by a third party (``openssl
req``), the issued certificate verified by ``openssl verify``, every bad request refused with a 400 ProblemDetails."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from m2msec.capif.certificates import (
    INVALID_CSR_CAUSE,
    MAX_CSR_PEM,
    CAPIFRole,
    capif_identity,
    issue_capif_certificate,
    load_csr,
)
from m2msec.errors import CAPIFError
from m2msec.pki import create_ca

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def openssl_csr(tmp_path: Path, newkey: str, subject: str = "/CN=whatever-the-invoker-asks") -> str:
    subprocess.run(["openssl", "req", "-new", "-newkey", newkey, "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "r.pem"), "-subj", subject], check=True, capture_output=True, timeout=60)
    return (tmp_path / "r.pem").read_text()


@pytest.mark.parametrize("newkey", ["ec:/dev/null", "rsa:2048"])
def test_a_third_party_request_is_certified_for_the_assigned_id(tmp_path: Path, newkey: str) -> None:
    if newkey.startswith("ec"):  # openssl wants a parameter file for -newkey ec
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-out", str(tmp_path / "p.pem")], check=True,
                       capture_output=True, timeout=60)
        newkey = f"ec:{tmp_path / 'p.pem'}"
    ca = create_ca("CCF test CA", permitted_dns=["capif.m2msec.localhost"], now=NOW - timedelta(days=1))
    csr = load_csr(openssl_csr(tmp_path, newkey))
    cert = issue_capif_certificate(ca, csr, CAPIFRole.INVOKER, "INV7f3a", now=NOW)
    assert capif_identity(cert) == (CAPIFRole.INVOKER, "INV7f3a")  # not the CN the request asked for
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(["openssl", "verify", "-attime", str(int((NOW + timedelta(hours=1)).timestamp())),
                             "-purpose", "sslclient", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "c.pem")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(("text", "reason"), [
    ("not a request", "not a PEM"),
    ("x" * (MAX_CSR_PEM + 1), "longer than"),
    (_csr(rsa.generate_private_key(65537, 1024)), "too short"),
    (_csr(ec.generate_private_key(ec.SECP256K1())), "not accepted"),
    (_csr(ed25519.Ed25519PrivateKey.generate()), "not accepted"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
])
def test_bad_requests_are_400_problems(text: str, reason: str) -> None:
    with pytest.raises(CAPIFError, match=reason) as err:
        load_csr(text)
    assert err.value.status == 400 and err.value.cause == INVALID_CSR_CAUSE


def test_a_request_whose_signature_does_not_verify_is_refused() -> None:
    good = x509.load_pem_x509_csr(_csr(ec.generate_private_key(ec.SECP256R1())).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CAPIFError, match="signature does not verify"):
        load_csr(tampered)


def test_roles_are_kept_apart() -> None:
    ca = create_ca("CCF test CA", permitted_dns=["capif.m2msec.localhost"], now=NOW - timedelta(days=1))
    csr = load_csr(_csr(ec.generate_private_key(ec.SECP256R1())))
    aef = issue_capif_certificate(ca, csr, CAPIFRole.AEF, "AEF01", now=NOW)
    assert capif_identity(aef) == (CAPIFRole.AEF, "AEF01")
    other = x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    key = ec.generate_private_key(ec.SECP256R1())
    foreign = (other.issuer_name(x509.Name([])).public_key(key.public_key()).serial_number(1)
               .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1)).sign(key, hashes.SHA256()))
    with pytest.raises(CAPIFError) as err:
        capif_identity(foreign)
    assert err.value.status == 401


def test_never_past_the_ca_and_bad_identities() -> None:
    ca = create_ca("CCF test CA", permitted_dns=["capif.m2msec.localhost"], days=10, now=NOW)
    csr = load_csr(_csr(ec.generate_private_key(ec.SECP256R1())))
    cert = issue_capif_certificate(ca, csr, CAPIFRole.INVOKER, "INV1", now=NOW, days=365)
    assert cert.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    for bad in ("", "x" * 65, "a\nb"):
        with pytest.raises(CAPIFError):
            issue_capif_certificate(ca, csr, CAPIFRole.INVOKER, bad, now=NOW)
