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


_DEEP = b"[" * 5000  # deeper than CPython's json recursion limit: json.loads raises RecursionError, no ValueError


def test_deeply_nested_json_from_the_ccf_is_a_link_error() -> None:
    """Found by hand after the fuzz runs (the fuzzers stay under ~1,000 '[' in a row): ccf_link._json let
    RecursionError through, out of CCFLink.jwks and CCFLink.trusted_invoker."""
    from m2msec.capif.aef.ccf_link import CCFLinkError, _json
    from m2msec.capif.client import Answer

    with pytest.raises(CCFLinkError, match="not JSON"):
        _json(Answer(200, {}, _DEEP))


def test_deeply_nested_json_from_the_maf_is_a_maf_error() -> None:
    """The same in the MAF client's reading of the MAF's answers (decode_json, problem_from)."""
    from m2msec.errors import MAFError
    from m2msec.maf.client_wire import decode_json, problem_from

    with pytest.raises(MAFError):
        decode_json(_DEEP)
    assert problem_from(400, _DEEP).problem == "http-400"


def test_deeply_nested_event_notification_is_refused() -> None:
    """The same in the AEF's CAPIF event receiver: 400, counted as refused."""
    from m2msec.capif.aef.events import AEFEventsReceiver

    receiver = AEFEventsReceiver("aef1", lambda _: None, ccf_address=("127.0.0.1", 1), ccf_host="ccf", ca_pem=b"",
                                 certificate_pem=b"", private_key_pem=b"")
    assert receiver.handle("POST", receiver.path, _DEEP) == 400
    assert receiver.refused == 1


async def test_deeply_nested_security_api_request_is_a_400() -> None:
    """The same in the AEF Security API (a request of anyone who reaches the AEF): 400 MANDATORY_IE_INCORRECT, not a
    RecursionError. The body is refused before the front is used, so none is given."""
    from m2msec.capif.aef.security_api import SECURITY_API_PREFIX, SecurityAPI
    from m2msec.errors import CAPIFError

    api = SecurityAPI(None, ccf_host="ccf")  # type: ignore[arg-type]
    scope = {"path": SECURITY_API_PREFIX + "check-authentication", "method": "POST"}
    with pytest.raises(CAPIFError) as caught:
        await api(scope, _DEEP)  # type: ignore[arg-type]
    assert caught.value.status == 400


def test_deeply_nested_token_header_or_claims_are_refused() -> None:
    """Found by the capif-claims target once its dictionary had deep nesting: a deeply nested claim set raised
    RecursionError out of verify_access_token; a deeply nested header does so without any key."""
    from joserfc import jws
    from joserfc.jwk import ECKey

    from m2msec.capif.tokens import ACCESS_TOKEN_TYPE, TokenRefused, verify_access_token

    key = ec.derive_private_key(7, ec.SECP256R1())
    keys = VerificationKeys([key.public_key()])
    jwk = ECKey.import_key(key)
    header = {"alg": "ES256", "typ": ACCESS_TOKEN_TYPE, "kid": str(jwk.thumbprint())}
    signed = jws.serialize_compact(header, b"[" * 2000, jwk)
    unsigned = base64.urlsafe_b64encode(b"[" * 2000).rstrip(b"=").decode() + ".e30.AAAA"
    for token in (signed, unsigned):
        with pytest.raises(TokenRefused, match="malformed"):
            verify_access_token(token, keys, issuer="ccf", aef_id="aef1", api_name="api1", now=1_800_000_000)


def test_deeply_nested_answers_to_the_invoker_are_refusals() -> None:
    """Found by the same grep for json.loads after the fuzz runs: the invoker's readers of CCF and AEF answers."""
    from m2msec.capif.client import Answer
    from m2msec.capif.invoker_call import AEFAnswer
    from m2msec.capif.invoker_folder import json_of, refusal
    from m2msec.errors import CAPIFError

    with pytest.raises(CAPIFError, match="not JSON"):
        json_of("onboarding", Answer(200, {}, _DEEP))
    assert str(refusal("onboarding", Answer(403, {}, _DEEP))) == "onboarding refused by the CCF: HTTP 403"
    assert AEFAnswer(400, {}, _DEEP).problem().startswith("HTTP 400")
