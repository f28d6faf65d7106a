"""D235: what m2msec.pki signs is valid to a verifier whose clock reads a moment before the issuing instant.

OpenSSL checks dates against the coarse wall clock (time(2)), which after a second boundary still reads the previous
second for a millisecond or two while ``datetime.now`` has moved on; cryptography truncates the dates to the second.
A certificate or CRL dated exactly at issuance and verified within that window was "not yet valid" (X509 errors 9
and 11, a bad_certificate alert): the intermittent MEF and gateway certificate handshake failures under load. Here
the boundary instant is chosen rather than waited for: issued 0.5 ms after a whole second, verified by OpenSSL at
the second before (its verification time set, as the coarse clock would read it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from OpenSSL import crypto

from m2msec.pki import CertificateFlavour, Issued, create_ca, create_crl, issue, make_csr, sign_csr

SP = "m2m.myoperator.org"
#: 0.5 ms past a whole second: Python's clock has reached the second, time(2) may not have
ISSUED = datetime(2026, 12, 2, 21, 0, 0, 500, tzinfo=UTC)
#: what OpenSSL's coarse clock reads at that instant
COARSE = datetime(2026, 12, 2, 20, 59, 59, tzinfo=UTC)


def _verify(anchor: Issued, leaf: Issued, at: datetime, crl: x509.CertificateRevocationList | None = None) -> None:
    """OpenSSL's own path validation (as the engine's trust store does it) with its clock reading ``at``."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(anchor.certificate))
    if crl is not None:
        store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    store.set_time(at)
    crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf.certificate)).verify_certificate()


@pytest.mark.parametrize("how", ["issue", "sign_csr"])
def test_issued_this_instant_is_valid_to_a_clock_a_second_behind(how: str) -> None:
    ca = create_ca("provider root", permitted_dns=[SP], now=ISSUED)
    if how == "issue":
        leaf = issue(ca, CertificateFlavour.CSE_ID, "mn-cse-7", sp_domain=SP, now=ISSUED)
    else:
        csr, key = make_csr(CertificateFlavour.CSE_ID, "mn-cse-7", sp_domain=SP)
        leaf = Issued(sign_csr(ca, csr, CertificateFlavour.CSE_ID, now=ISSUED).certificate, key)
    _verify(ca, leaf, COARSE)  # before D235: "certificate is not yet valid" (the CA's as well as the leaf's)


def test_a_crl_issued_this_instant_is_valid_to_a_clock_a_second_behind() -> None:
    earlier = ISSUED - timedelta(hours=1)
    ca = create_ca("provider root", permitted_dns=[SP], now=earlier)
    leaf = issue(ca, CertificateFlavour.CSE_ID, "mn-cse-7", sp_domain=SP, now=earlier)
    _verify(ca, leaf, COARSE, create_crl(ca, [], now=ISSUED))  # before D235: "CRL is not yet valid"
    with pytest.raises(crypto.X509StoreContextError, match="revoked"):  # the CRL is read, not skipped
        _verify(ca, leaf, COARSE, create_crl(ca, [leaf.certificate.serial_number], now=ISSUED))


def test_dates_are_backdated_five_minutes_and_validity_counts_from_issuance() -> None:
    ca = create_ca("provider root", permitted_dns=[SP], now=ISSUED)
    leaf = issue(ca, CertificateFlavour.FQDN, f"mef.{SP}", now=ISSUED, days=30)
    crl = create_crl(ca, [], now=ISSUED, next_update_days=7)
    for cert in (ca.certificate, leaf.certificate):
        assert cert.not_valid_before_utc == datetime(2026, 12, 2, 20, 55, 0, tzinfo=UTC)
    assert leaf.certificate.not_valid_after_utc == datetime(2027, 1, 1, 21, 0, 0, tzinfo=UTC)
    assert crl.last_update_utc == datetime(2026, 12, 2, 20, 55, 0, tzinfo=UTC)
    assert crl.next_update_utc == datetime(2026, 12, 9, 21, 0, 0, tzinfo=UTC)


def test_still_not_valid_to_a_clock_earlier_than_the_backdate() -> None:
    ca = create_ca("provider root", permitted_dns=[SP], now=ISSUED)
    leaf = issue(ca, CertificateFlavour.FQDN, f"mef.{SP}", now=ISSUED)
    _verify(ca, leaf, ISSUED - timedelta(minutes=4, seconds=59))
    with pytest.raises(crypto.X509StoreContextError, match="not yet valid"):
        _verify(ca, leaf, ISSUED - timedelta(minutes=5, seconds=1))
