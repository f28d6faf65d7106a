"""An older CRL never replaces a newer one in force (docs/decisions.md D42): per issuer, a lower cRLNumber (or,
without cRLNumbers, an older thisUpdate) keeps the CRLs in force with an ERROR naming the file and the issuer."""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from m2msec.crl import CRLFile, superseded_issuers
from m2msec.pki import Issued, create_ca, create_crl

SP = "m2m.provider.com"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("rollback root", permitted_dns=[SP])


@pytest.fixture(scope="module")
def other_ca() -> Issued:
    return create_ca("other root", permitted_dns=[SP])


def pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def unnumbered(ca: Issued, revoked: list[int], this_update: datetime.datetime) -> x509.CertificateRevocationList:
    """A CRL without the cRLNumber extension (RFC 5280 makes it mandatory, not every CA has it)."""
    assert ca.private_key is not None
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
               .last_update(this_update).next_update(this_update + datetime.timedelta(days=7)))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build())
    return builder.sign(ca.private_key, hashes.SHA256())


def install(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)


def test_a_lower_crl_number_is_refused_with_an_error_naming_file_and_issuer(
        ca: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(pem(create_crl(ca, [7], now=NOW)))
    crls = CRLFile(path, trusted=[ca.certificate])
    install(path, pem(create_crl(ca, [], now=NOW - datetime.timedelta(hours=1))))
    with caplog.at_level(logging.ERROR, logger="m2msec.crl"):
        crls.poll()
        crls.poll()  # the same refused version is not retried (nor logged) every interval
    assert crls.generation == 0 and 7 in crls.crls.index[ca.certificate.subject][0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "older CRL" in errors[0] \
        and "CN=rollback root" in errors[0], errors
    install(path, pem(create_crl(ca, [7, 8], now=NOW + datetime.timedelta(seconds=1))))  # a newer one is taken
    crls.poll()
    assert crls.generation == 1 and 8 in crls.crls.index[ca.certificate.subject][0]


def test_the_same_crl_written_again_is_accepted(ca: Issued, tmp_path: Path) -> None:
    data = pem(create_crl(ca, [7], now=NOW))
    path = tmp_path / "ca.crl"
    path.write_bytes(data)
    crls = CRLFile(path, trusted=[ca.certificate])
    install(path, data)
    crls.poll()
    assert crls.generation == 1


def test_without_crl_numbers_an_older_this_update_is_refused(ca: Issued, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(pem(unnumbered(ca, [7], NOW)))
    crls = CRLFile(path, trusted=[ca.certificate])
    install(path, pem(unnumbered(ca, [], NOW - datetime.timedelta(minutes=5))))
    crls.poll()
    assert crls.generation == 0 and 7 in crls.crls.index[ca.certificate.subject][0]
    install(path, pem(unnumbered(ca, [], NOW + datetime.timedelta(minutes=5))))
    crls.poll()
    assert crls.generation == 1


def test_rollback_is_judged_per_issuer(ca: Issued, other_ca: Issued) -> None:
    in_force = [create_crl(ca, [], now=NOW), create_crl(other_ca, [], now=NOW)]
    newer_one = [create_crl(ca, [], now=NOW + datetime.timedelta(seconds=5)), in_force[1]]
    assert superseded_issuers(in_force, newer_one) == []
    older_other = [in_force[0], create_crl(other_ca, [], now=NOW - datetime.timedelta(seconds=5))]
    assert superseded_issuers(in_force, older_other) == [other_ca.certificate.subject.rfc4514_string()]
    new_issuer_only = [create_crl(other_ca, [], now=NOW), create_crl(ca, [], now=NOW)]
    assert superseded_issuers(in_force[:1], new_issuer_only) == []


def test_a_crl_signed_by_another_key_in_the_cas_name_is_refused_at_start_and_at_reload(
        ca: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """D50: the CRL's signature is checked against the client CA of its issuer name, before D42 counts it."""
    from m2msec.errors import ConfigurationError

    impostor = create_ca("rollback root", permitted_dns=[SP])  # the same name, another key
    path = tmp_path / "ca.crl"
    path.write_bytes(pem(create_crl(impostor, [], now=NOW)))
    with pytest.raises(ConfigurationError, match=r"not signed by any client CA certificate.*CN=rollback root"):
        CRLFile(path, trusted=[ca.certificate])
    path.write_bytes(pem(create_crl(ca, [7], now=NOW)))
    crls = CRLFile(path, trusted=[ca.certificate])
    install(path, pem(create_crl(impostor, [], now=NOW + datetime.timedelta(hours=1))))
    with caplog.at_level(logging.ERROR, logger="m2msec.crl"):
        crls.poll()
    assert crls.generation == 0 and 7 in crls.crls.index[ca.certificate.subject][0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not signed by any client CA certificate" in errors[0] and str(path) in errors[0]


def test_a_file_that_drops_an_issuer_keeps_its_last_crl_in_force_with_a_warning(
        ca: Issued, other_ca: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """D51: the issuer missing from the reloaded file keeps its CRL (and so cannot come back older later)."""
    path = tmp_path / "crls.pem"
    path.write_bytes(pem(create_crl(ca, [7], now=NOW)) + pem(create_crl(other_ca, [], now=NOW)))
    crls = CRLFile(path, trusted=[ca.certificate, other_ca.certificate])
    install(path, pem(create_crl(other_ca, [9], now=NOW + datetime.timedelta(seconds=1))))
    with caplog.at_level(logging.WARNING, logger="m2msec.crl"):
        crls.poll()
    assert crls.generation == 1
    assert 7 in crls.crls.index[ca.certificate.subject][0] and 9 in crls.crls.index[other_ca.certificate.subject][0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no longer holds a CRL for issuer(s) 'CN=rollback root'" in warnings[0], warnings
