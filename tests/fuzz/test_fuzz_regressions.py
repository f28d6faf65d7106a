"""Regression tests for what scripts/fuzz_parsers.py found (issue 21 part 2, docs/security.md section 2).

Each input is a valid object of the package's own making with the bytes the fuzzer changed put back by hand."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec import pki
from m2msec.capif.aef.ccf_link import parse_trusted_invoker
from m2msec.capif.tokens import VerificationKeys
from m2msec.crl import CRLSet, load_crls
from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.pki import identity_from_certificate
from m2msec.pki.files import load_issued
from m2msec.pki.profile import CertificateFlavour


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("regression CA", permitted_uri_hosts=["sp.example"])


def _replace_once(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) == 1, old
    return der.replace(old, new)


def test_jwks_with_an_unknown_curve_is_a_value_error() -> None:
    """Found: joserfc raised KeyError('P-#56') for an unknown "crv"; the AEF's CCF link turns only ValueError into
    CCFLinkError, so the KeyError escaped from CCFLink.jwks."""
    good = VerificationKeys([ec.derive_private_key(7, ec.SECP256R1()).public_key()]).jwks()
    entry = dict(good["keys"][0], crv="P-#56")
    with pytest.raises(ValueError, match="invalid EC key") as caught:
        VerificationKeys.from_jwks({"keys": [entry]})
    assert type(caught.value) is ValueError


def test_crl_with_an_invalid_version_is_a_configuration_error(ca: pki.Issued) -> None:
    """Found: cryptography's InvalidVersion (not a ValueError) escaped from load_crls (DER and PEM)."""
    der = pki.create_crl(ca, [5]).public_bytes(serialization.Encoding.DER)
    bad = _replace_once(der, b"\x02\x01\x01\x30", b"\x02\x01\x68\x30")  # TBSCertList version v2 -> 104
    with pytest.raises(ConfigurationError, match="not a valid CRL"):
        load_crls(bad)
    pem = b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(bad) + b"-----END X509 CRL-----\n"
    with pytest.raises(ConfigurationError, match="not a valid CRL"):
        load_crls(pem)


def test_crl_with_a_malformed_issuer_is_refused_at_load(ca: pki.Issued) -> None:
    """Found: a CRL whose issuer Name does not parse loaded fine (cryptography parses lazily) and raised ValueError
    later, in CRLSet.status, i.e. during a handshake."""
    der = pki.create_crl(ca, [5]).public_bytes(serialization.Encoding.DER)
    bad = _replace_once(der, b"\x0c\x0dregression CA", b"\x0c\x0dregression C\x81")  # a UTF8String, not UTF-8
    with pytest.raises(ConfigurationError, match="not a valid CRL"):
        load_crls(bad)
    leaf = pki.issue(ca, CertificateFlavour.AE_ID, "//sp.example/in-cse/Cx")
    assert CRLSet(load_crls(der)).status(leaf.certificate, time.time()) is None  # the unmodified CRL still works


def test_certificate_with_an_invalid_version_is_a_configuration_error(ca: pki.Issued) -> None:
    """Found: load_issued (m2msec pki, the gateway's --cert) let InvalidVersion through."""
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    bad = _replace_once(der, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x0e")  # [0] version v3 -> 14
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bad) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigurationError, match="not a PEM certificate"):
        load_issued(pem, None)


def test_certificate_with_a_duplicate_extension_has_no_identity(ca: pki.Issued) -> None:
    """Found: DuplicateExtension (not a ValueError) escaped from identity_from_certificate."""
    leaf = pki.issue(ca, CertificateFlavour.AE_ID, "//sp.example/in-cse/Cx")
    der = leaf.certificate.public_bytes(serialization.Encoding.DER)
    bad = _replace_once(der, b"\x06\x03\x55\x1d\x13", b"\x06\x03\x55\x1d\x0f")  # basicConstraints -> 2nd keyUsage
    cert = x509.load_der_x509_certificate(bad)
    with pytest.raises(IdentifierError, match="extensions cannot be parsed"):
        identity_from_certificate(cert)
    assert identity_from_certificate(leaf.certificate).value == "//sp.example/in-cse/Cx"


def test_security_info_of_another_shape_is_a_link_error() -> None:
    """Found while writing the fuzz target aef-security-info: an ``interfaceDetails`` that is not an object raised
    AttributeError in kdf.interface_information_of, which parse_trusted_invoker did not turn into CCFLinkError."""
    from m2msec.capif.aef.ccf_link import CCFLinkError

    for body in (None, [], "x", {"securityInfo": [{"selSecurityMethod": "PSK", "interfaceDetails": 1}]}):
        with pytest.raises(CCFLinkError):
            parse_trusted_invoker("inv1", body)
