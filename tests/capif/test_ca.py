"""The CCF's CA in the key store (D120), on SQLite and PostgreSQL: created once, its key sealed, the same CA read back
by a second instance, and what it issues verified by ``openssl verify``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.capif.ca import CA_KIND, CA_RECORD, is_ca_of, load_or_create_ca
from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate, load_csr
from m2msec.keys.secret import SecretKey
from m2msec.store import KeyStore, open_store

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'ccf.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def master_key() -> SecretKey:
    return SecretKey.generate(32)


@pytest.fixture
def store(store_url: str, master_key: SecretKey) -> Iterator[KeyStore]:
    with open_store(store_url, master_key) as s:
        yield s


def test_created_once_and_shared(store: KeyStore, store_url: str, master_key: SecretKey, tmp_path: Path) -> None:
    ca = load_or_create_ca(store, "ccf.example.com", now=NOW)
    with open_store(store_url, master_key) as second:  # another CCF instance on the same store
        again = load_or_create_ca(second, "ccf.example.com", now=NOW)
    assert again.certificate == ca.certificate and again.private_key is not None
    assert again.private_key.private_numbers() == ca.private_key.private_numbers()  # type: ignore[union-attr]
    rows, _ = store._exec("SELECT meta, sealed FROM sealed_record WHERE kind = ? AND id = ?", (CA_KIND, CA_RECORD))
    der = ca.private_key.private_bytes(serialization.Encoding.DER,  # type: ignore[union-attr]
                                       serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert der not in bytes(rows[0][1]) and "PRIVATE KEY" not in rows[0][0]  # sealed at rest
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    cert = issue_capif_certificate(again, load_csr(pem), CAPIFRole.INVOKER, "INV1", now=NOW)
    assert is_ca_of(ca, cert)
    with open_store(f"sqlite://{tmp_path / 'other.db'}", SecretKey.generate(32)) as elsewhere:
        assert not is_ca_of(load_or_create_ca(elsewhere, "ccf.example.com", now=NOW), cert)
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(["openssl", "verify", "-attime", str(int(NOW.timestamp()) + 3600), "-CAfile",
                             str(tmp_path / "ca.pem"), str(tmp_path / "c.pem")], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
