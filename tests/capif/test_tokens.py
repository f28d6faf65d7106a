"""m2msec.capif.tokens: onboarding credentials and access tokens (ES256 JWTs), and every refusal.

Forged tokens are built here by hand (base64url JSON, signed with ``cryptography`` directly), and the signatures the
module makes are checked by an independent verifier written here (ECDSA P-256 over ``header.payload``, the raw
r||s turned into DER), not by the library under test. Time is injected: no sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from m2msec.capif.scope import AccessTokenError
from m2msec.capif.tokens import (
    ACCESS_TOKEN_TYPE,
    DEFAULT_ACCESS_TOKEN_LIFETIME,
    MAX_ACCESS_TOKEN_LEEWAY,
    MAX_TOKEN_LENGTH,
    ONBOARDING_LEEWAY,
    ONBOARDING_TOKEN_TYPE,
    TokenRefused,
    VerificationKeys,
    issue_access_token,
    issue_onboarding_credential,
    key_id,
    verify_access_token,
    verify_onboarding_credential,
)
from m2msec.errors import CAPIFError

NOW = 1_800_000_000
CCF = "https://ccf.example.com"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
KEYS = VerificationKeys([KEY.public_key()])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def independent_verify(token: str, public: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """RFC 7515 §5.2 / RFC 7518 §3.4 by hand: the signature is r||s (32 octets each) over ASCII(header.payload)."""
    header_b64, payload_b64, sig_b64 = token.split(".")
    raw = unb64(sig_b64)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{header_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    header = json.loads(unb64(header_b64))
    assert header["alg"] == "ES256"
    claims: dict[str, Any] = json.loads(unb64(payload_b64))
    return claims


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def es256(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return sign


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def onboarding_claims(**over: Any) -> dict[str, Any]:
    claims = {"iss": CCF, "sub": "invoker-1", "iat": NOW, "nbf": NOW, "exp": NOW + 3600, "jti": "j1"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def onboarding_header(**over: Any) -> dict[str, Any]:
    header = {"alg": "ES256", "typ": ONBOARDING_TOKEN_TYPE, "kid": key_id(KEY)}
    header.update(over)
    return {k: v for k, v in header.items() if v is not None}


def never(_jti: str) -> bool:
    return False


def verify_onb(token: object, *, now: int = NOW + 10, keys: VerificationKeys = KEYS,
               revoked: Callable[[str], bool] = never, **kw: Any) -> Any:
    return verify_onboarding_credential(token, keys, issuer=CCF, now=now, revoked=revoked, **kw)


def refused_onb(token: object, reason: str, **kw: Any) -> TokenRefused:
    with pytest.raises(TokenRefused) as info:
        verify_onb(token, **kw)
    assert info.value.status == 401 and info.value.cause == "INVALID_ONBOARDING_CREDENTIAL"
    assert info.value.reason == reason, info.value.reason
    assert isinstance(token, str) and (len(token) < 4 or token not in str(info.value) + repr(info.value))
    return info.value


# ------------------------------------------------------------------------------------------------------- onboarding

def test_onboarding_round_trip_and_independent_signature_check() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF, subject="invoker-1", lifetime=3600, now=NOW, jti="j1")
    cred = verify_onb(token)
    assert (cred.issuer, cred.subject, cred.jti, cred.issued_at, cred.expires_at, cred.audience) == (
        CCF, "invoker-1", "j1", NOW, NOW + 3600, None)
    claims = independent_verify(token, KEY.public_key())
    assert claims == {"iss": CCF, "sub": "invoker-1", "iat": NOW, "nbf": NOW, "exp": NOW + 3600, "jti": "j1"}
    header = json.loads(unb64(token.split(".")[0]))
    assert header == {"alg": "ES256", "typ": ONBOARDING_TOKEN_TYPE, "kid": key_id(KEY)}
    with pytest.raises(InvalidSignature):
        independent_verify(token, OTHER.public_key())


def test_onboarding_our_forger_is_accepted_so_refusals_below_are_meaningful() -> None:
    assert verify_onb(forge(onboarding_header(), onboarding_claims(), es256(KEY))).subject == "invoker-1"


def test_onboarding_audience() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="j", audience="ccf1")
    assert verify_onb(token, audience="ccf1").audience == "ccf1"
    refused_onb(token, "invalid claim (aud)", audience="ccf2")
    refused_onb(token, "invalid claim (aud)")  # RFC 7519 §4.1.3: an aud the verifier is not in
    plain = issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="j")
    refused_onb(plain, "missing claim (aud)", audience="ccf1")


def test_onboarding_expiry_with_leeway() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="j")
    verify_onb(token, now=NOW + 59)
    verify_onb(token, now=NOW + 60 + ONBOARDING_LEEWAY - 1)  # past exp, within the leeway
    refused_onb(token, "expired", now=NOW + 60 + ONBOARDING_LEEWAY)
    refused_onb(token, "expired", now=NOW + 10**6)


def test_onboarding_not_yet_valid() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=600, now=NOW, jti="j")
    verify_onb(token, now=NOW - ONBOARDING_LEEWAY)
    refused_onb(token, "not yet valid", now=NOW - ONBOARDING_LEEWAY - 1)
    iat_future = forge(onboarding_header(), onboarding_claims(iat=NOW + 1000, nbf=None), es256(KEY))
    refused_onb(iat_future, "not yet valid")


@pytest.mark.parametrize("claim", ["exp", "jti", "sub", "iss", "iat"])
def test_onboarding_required_claims(claim: str) -> None:
    refused_onb(forge(onboarding_header(), onboarding_claims(**{claim: None}), es256(KEY)), f"missing claim ({claim})")


@pytest.mark.parametrize(("claim", "value"), [("exp", "tomorrow"), ("exp", True), ("nbf", "x"), ("jti", 5),
                                              ("iss", ["x"])])
def test_onboarding_claim_types(claim: str, value: object) -> None:
    refused_onb(forge(onboarding_header(), onboarding_claims(**{claim: value}), es256(KEY)), f"invalid claim ({claim})")


def test_onboarding_wrong_issuer() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF + "/", subject="s", lifetime=60, now=NOW, jti="j")
    refused_onb(token, "invalid claim (iss)")


def test_onboarding_revoked_jti() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="gone")
    seen: list[str] = []

    def revoked(jti: str) -> bool:
        seen.append(jti)
        return jti == "gone"
    refused_onb(token, "revoked", revoked=revoked)
    assert seen == ["gone"]
    other = issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="kept")
    assert verify_onb(other, revoked=revoked).jti == "kept"


def test_onboarding_key_rotation_by_kid() -> None:
    both = VerificationKeys([KEY.public_key(), OTHER])  # a private key contributes its public half
    assert set(both.kids()) == {key_id(KEY), key_id(OTHER)}
    for key in (KEY, OTHER):
        token = issue_onboarding_credential(key, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="j")
        assert verify_onb(token, keys=both).subject == "s"
    refused_onb(issue_onboarding_credential(OTHER, issuer=CCF, subject="s", lifetime=60, now=NOW, jti="j"),
                "unknown key")


def test_onboarding_wrong_or_absent_kid() -> None:
    refused_onb(forge(onboarding_header(kid=None), onboarding_claims(), es256(KEY)), "unknown key")
    refused_onb(forge(onboarding_header(kid="nope"), onboarding_claims(), es256(KEY)), "unknown key")
    refused_onb(forge(onboarding_header(kid=7), onboarding_claims(), es256(KEY)), "unknown key")
    # the kid of a known key on a token signed by another key: the signature decides
    refused_onb(forge(onboarding_header(), onboarding_claims(), es256(OTHER)), "bad signature")


def test_onboarding_algorithm_is_pinned() -> None:
    refused_onb(forge(onboarding_header(alg="none"), onboarding_claims(), None), "algorithm not allowed")
    refused_onb(forge(onboarding_header(alg=None), onboarding_claims(), None), "malformed")  # RFC 7515: alg is required
    # HS256 keyed with the verifier's public key (the classic key confusion)
    public_pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (public_pem, b64(json.dumps(KEYS.jwks()["keys"][0]).encode()).encode()):
        hs = forge(onboarding_header(alg="HS256"), onboarding_claims(), hs256(secret))
        refused_onb(hs, "algorithm not allowed")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs = forge(onboarding_header(alg="RS256"), onboarding_claims(),
               lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    refused_onb(rs, "algorithm not allowed")
    refused_onb(forge(onboarding_header(alg="ES384"), onboarding_claims(), es256(KEY)), "algorithm not allowed")


def test_onboarding_header_and_type_pinned() -> None:
    refused_onb(forge(onboarding_header(typ="JWT"), onboarding_claims(), es256(KEY)), "wrong token type")
    refused_onb(forge(onboarding_header(typ=None), onboarding_claims(), es256(KEY)), "wrong token type")
    for extra in ({"crit": ["exp"]}, {"jku": "https://evil.example/jwks"}, {"b64": False, "crit": ["b64"]},
                  {"jwk": KEYS.jwks()["keys"][0]}):
        refused_onb(forge({**onboarding_header(), **extra}, onboarding_claims(), es256(KEY)),
                    "unexpected header parameter")
    refused_onb(forge({**onboarding_header(), "b64": False}, onboarding_claims(), es256(KEY)), "malformed")
    # an access token (same CCF key) never passes as an onboarding credential
    rsp = issue_access_token(KEY, issuer=CCF, client_id="inv", scope="aef1:api1", now=NOW, jti="a")
    refused_onb(rsp["access_token"], "wrong token type")


def test_onboarding_tampered_payload() -> None:
    token = issue_onboarding_credential(KEY, issuer=CCF, subject="invoker-1", lifetime=60, now=NOW, jti="j")
    header, _, sig = token.split(".")
    evil = b64(json.dumps(onboarding_claims(sub="invoker-2", exp=NOW + 60)).encode())
    refused_onb(f"{header}.{evil}.{sig}", "bad signature")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    refused_onb(f"{header}.{token.split('.')[1]}.{flipped}", "bad signature")


def test_onboarding_oversized_and_malformed() -> None:
    big = forge(onboarding_header(), onboarding_claims(pad="x" * MAX_TOKEN_LENGTH), es256(KEY))
    refused_onb(big, "too long")
    refused_onb("", "no token")
    refused_onb("a.b", "not a JWS compact serialization")
    refused_onb("é.b.c", "not a JWS compact serialization")
    refused_onb("!!!.###.$$$", "malformed")
    refused_onb(f"{b64(b'[1]')}.{b64(b'{}')}.", "malformed")
    with pytest.raises(TokenRefused, match="no token"):
        verify_onb(None)
    # a payload that is JSON but not an object, validly signed
    sign = es256(KEY)
    head = b64(json.dumps(onboarding_header()).encode())
    body = b64(b"[1, 2]")
    refused_onb(f"{head}.{body}.{b64(sign(f'{head}.{body}'.encode()))}", "malformed")


def test_onboarding_refusal_is_a_capif_error_without_material() -> None:
    err = refused_onb(forge(onboarding_header(), onboarding_claims(), es256(OTHER)), "bad signature")
    assert isinstance(err, CAPIFError)
    assert err.detail == "onboarding credential refused: bad signature"


def test_issue_refuses_bad_keys_and_arguments() -> None:
    with pytest.raises(ValueError):
        issue_onboarding_credential(ec.generate_private_key(ec.SECP384R1()), issuer=CCF, subject="s", lifetime=60,
                                    now=NOW, jti="j")
    with pytest.raises(ValueError):
        issue_onboarding_credential(KEY, issuer=CCF, subject="s", lifetime=0, now=NOW, jti="j")
    with pytest.raises(ValueError):
        issue_onboarding_credential(KEY, issuer=CCF, subject="", lifetime=60, now=NOW, jti="j")
    with pytest.raises(ValueError):
        VerificationKeys([ec.generate_private_key(ec.SECP384R1()).public_key()])


# ----------------------------------------------------------------------------------------------------- access token

def access_claims(**over: Any) -> dict[str, Any]:
    claims = {"iss": CCF, "iat": NOW, "exp": NOW + 600, "client_id": "inv-1", "scope": "3gpp#aef1:api1,api2",
              "jti": "t1"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def access_header(**over: Any) -> dict[str, Any]:
    header = {"alg": "ES256", "typ": ACCESS_TOKEN_TYPE, "kid": key_id(KEY)}
    header.update(over)
    return {k: v for k, v in header.items() if v is not None}


def verify_at(token: object, *, aef_id: str = "aef1", api_name: str = "api1", now: int = NOW + 10,
              keys: VerificationKeys = KEYS, **kw: Any) -> Any:
    return verify_access_token(token, keys, issuer=CCF, aef_id=aef_id, api_name=api_name, now=now, **kw)


def refused_at(token: str, reason: str, *, status: int = 401, **kw: Any) -> TokenRefused:
    with pytest.raises(TokenRefused) as info:
        verify_at(token, **kw)
    err = info.value
    assert (err.reason, err.status) == (reason, status), (err.reason, err.status)
    assert err.cause == ("INSUFFICIENT_SCOPE" if status == 403 else "INVALID_TOKEN")
    assert err.bearer_error == ("insufficient_scope" if status == 403 else "invalid_token")
    assert token not in str(err) + repr(err)
    return err


def test_access_token_response_and_round_trip() -> None:
    rsp = issue_access_token(KEY, issuer=CCF, client_id="inv-1", scope="aef1:api1,api2;aef2:api3", now=NOW,
                             jti="t1")
    assert set(rsp) == {"access_token", "token_type", "expires_in", "scope"}
    assert (rsp["token_type"], rsp["expires_in"], rsp["scope"]) == (
        "Bearer", DEFAULT_ACCESS_TOKEN_LIFETIME, "3gpp#aef1:api1,api2;aef2:api3")
    assert DEFAULT_ACCESS_TOKEN_LIFETIME <= 600
    claims = independent_verify(rsp["access_token"], KEY.public_key())
    assert claims == {"iss": CCF, "iat": NOW, "exp": NOW + DEFAULT_ACCESS_TOKEN_LIFETIME, "client_id": "inv-1",
                      "scope": "3gpp#aef1:api1,api2;aef2:api3", "jti": "t1"}
    assert "aud" not in claims  # D118: the scope names the AEFs
    for aef, api in (("aef1", "api1"), ("aef1", "api2"), ("aef2", "api3")):
        got = verify_at(rsp["access_token"], aef_id=aef, api_name=api)
        assert (got.client_id, got.issuer, got.jti, got.expires_at) == ("inv-1", CCF, "t1", NOW + 600)
        assert got.scope.covers(aef, api)


def test_access_token_accepts_scope_object_and_lifetime() -> None:
    from m2msec.capif.scope import parse_scope
    rsp = issue_access_token(KEY, issuer=CCF, client_id="c", scope=parse_scope("aef1:api1"), now=NOW, jti="t",
                             lifetime=60)
    assert rsp["expires_in"] == 60 and rsp["scope"] == "3gpp#aef1:api1"
    assert verify_at(rsp["access_token"]).expires_at == NOW + 60


def test_access_token_issue_errors_are_access_token_errors() -> None:
    with pytest.raises(AccessTokenError) as info:
        issue_access_token(KEY, issuer=CCF, client_id="c", scope="aef1", now=NOW, jti="t")
    assert (info.value.error, info.value.status) == ("invalid_scope", 400)
    assert info.value.body() == {"error": "invalid_scope", "error_description": info.value.detail}
    with pytest.raises(AccessTokenError) as info:
        issue_access_token(KEY, issuer=CCF, client_id="", scope="aef1:a", now=NOW, jti="t")
    assert info.value.error == "invalid_request"
    assert AccessTokenError("invalid_client", "unknown invoker").status == 401
    with pytest.raises(ValueError):
        AccessTokenError("server_error", "x")


def test_access_token_expiry_and_leeway() -> None:
    token = issue_access_token(KEY, issuer=CCF, client_id="c", scope="aef1:api1", now=NOW, jti="t",
                               lifetime=60)["access_token"]
    verify_at(token, now=NOW + 59, leeway=0)
    refused_at(token, "expired", now=NOW + 60, leeway=0)
    verify_at(token, now=NOW + 60 + MAX_ACCESS_TOKEN_LEEWAY - 1)  # default leeway = the maximum, 30 s
    refused_at(token, "expired", now=NOW + 60 + MAX_ACCESS_TOKEN_LEEWAY)
    verify_at(token, now=NOW + 64, leeway=5)
    refused_at(token, "expired", now=NOW + 65, leeway=5)
    for bad in (-1, MAX_ACCESS_TOKEN_LEEWAY + 1, 600):
        with pytest.raises(ValueError):
            verify_at(token, leeway=bad)


def test_access_token_not_yet_valid() -> None:
    token = issue_access_token(KEY, issuer=CCF, client_id="c", scope="aef1:api1", now=NOW, jti="t")["access_token"]
    verify_at(token, now=NOW - 30)
    refused_at(token, "not yet valid", now=NOW - 31)
    refused_at(forge(access_header(), access_claims(nbf=NOW + 100), es256(KEY)), "not yet valid")


def test_access_token_scope_must_cover_aef_and_api() -> None:
    token = issue_access_token(KEY, issuer=CCF, client_id="c", scope="aef1:api1;aef2:api2", now=NOW,
                               jti="t")["access_token"]
    refused_at(token, "scope does not cover this AEF and API", status=403, aef_id="aef3")
    refused_at(token, "scope does not cover this AEF and API", status=403, aef_id="aef1", api_name="api2")
    refused_at(token, "scope does not cover this AEF and API", status=403, aef_id="aef2", api_name="api1")
    refused_at(token, "scope does not cover this AEF and API", status=403, aef_id="aef", api_name="api1")


@pytest.mark.parametrize("claim", ["exp", "iss", "client_id", "scope"])
def test_access_token_required_claims(claim: str) -> None:
    refused_at(forge(access_header(), access_claims(**{claim: None}), es256(KEY)), f"missing claim ({claim})")


def test_access_token_bad_claims() -> None:
    refused_at(forge(access_header(), access_claims(client_id=5), es256(KEY)), "invalid claim (type)")
    refused_at(forge(access_header(), access_claims(client_id=""), es256(KEY)), "invalid claim (client_id)")
    refused_at(forge(access_header(), access_claims(scope="aef1"), es256(KEY)), "invalid claim (scope)")
    refused_at(forge(access_header(), access_claims(aud="aef1"), es256(KEY)), "invalid claim (aud)")
    refused_at(forge(access_header(), access_claims(iss="https://other"), es256(KEY)), "invalid claim (iss)")
    assert verify_at(forge(access_header(), access_claims(scope="aef1:api1"), es256(KEY))).client_id == "inv-1"


def test_access_token_signature_key_alg_and_type() -> None:
    refused_at(forge(access_header(), access_claims(), es256(OTHER)), "bad signature")
    refused_at(issue_access_token(OTHER, issuer=CCF, client_id="c", scope="aef1:api1", now=NOW,
                                  jti="t")["access_token"], "unknown key")
    refused_at(forge(access_header(kid=None), access_claims(), es256(KEY)), "unknown key")
    refused_at(forge(access_header(alg="none"), access_claims(), None), "algorithm not allowed")
    public_pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    refused_at(forge(access_header(alg="HS256"), access_claims(),
                     hs256(public_pem)), "algorithm not allowed")
    refused_at(forge(access_header(typ="JWT"), access_claims(), es256(KEY)), "wrong token type")
    onboarding = issue_onboarding_credential(KEY, issuer=CCF, subject="inv-1", lifetime=60, now=NOW, jti="o")
    refused_at(onboarding, "wrong token type")
    token = issue_access_token(KEY, issuer=CCF, client_id="inv-1", scope="aef9:api1", now=NOW,
                               jti="t")["access_token"]
    header, _, sig = token.split(".")
    widened = b64(json.dumps(access_claims(scope="3gpp#aef1:api1")).encode())
    refused_at(f"{header}.{widened}.{sig}", "bad signature")
    refused_at("x" * (MAX_TOKEN_LENGTH + 1), "too long")


# ------------------------------------------------------------------------------------------------------------- JWKS

def test_jwks_export_and_import() -> None:
    keys = VerificationKeys([KEY.public_key(), OTHER.public_key()])
    doc = keys.jwks()
    assert [entry["kid"] for entry in doc["keys"]] == [key_id(KEY), key_id(OTHER)]
    for entry, key in zip(doc["keys"], (KEY, OTHER), strict=True):
        assert set(entry) == {"kty", "crv", "x", "y", "kid", "use", "alg"}  # no "d"
        assert (entry["kty"], entry["crv"], entry["alg"], entry["use"]) == ("EC", "P-256", "ES256", "sig")
        numbers = key.public_key().public_numbers()
        assert unb64(entry["x"]) == numbers.x.to_bytes(32, "big") and unb64(entry["y"]) == numbers.y.to_bytes(32, "big")
        # RFC 7638 §3: SHA-256 of the required members in lexicographic order, no whitespace
        canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": entry["x"], "y": entry["y"]},
                               separators=(",", ":"), sort_keys=True)
        assert entry["kid"] == b64(hashlib.sha256(canonical.encode()).digest())
    imported = VerificationKeys.from_jwks(json.loads(json.dumps(doc)))
    assert imported.kids() == keys.kids()
    token = issue_access_token(OTHER, issuer=CCF, client_id="c", scope="aef1:api1", now=NOW, jti="t")["access_token"]
    assert verify_at(token, keys=imported).client_id == "c"
    assert repr(keys) == f"VerificationKeys(kids={[key_id(KEY), key_id(OTHER)]!r})"
    assert doc["keys"][0]["x"] not in repr(keys)


def test_jwks_import_refuses_private_or_foreign_keys() -> None:
    entry = KEYS.jwks()["keys"][0]
    private = {**entry, "d": b64(KEY.private_numbers().private_value.to_bytes(32, "big"))}
    for bad in ({}, {"keys": "x"}, {"keys": [private]}, {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]},
                {"keys": [{**entry, "x": entry["y"]}]}, {"keys": [{**entry, "crv": "P-384"}]}, {"keys": [5]}):
        with pytest.raises(ValueError):
            VerificationKeys.from_jwks(bad)


# ------------------------------------------------------------------------------------------------------------- docs

def test_docs_example_runs_and_decisions_cite_the_constants() -> None:
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "capif-tokens.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S)
    assert example is not None
    exec(compile(example.group(1), "capif-tokens.md", "exec"), {})  # our own doc
    rows = {line.split("|")[1].strip(): line for line in (root / "docs" / "decisions.md").read_text().splitlines()
            if line.startswith("| D11")}
    tokens = importlib.import_module("m2msec.capif.tokens")
    for number, constant, value in (("D117", "ONBOARDING_LEEWAY", 30), ("D118", "DEFAULT_ACCESS_TOKEN_LIFETIME", 600)):
        assert f"`m2msec.capif.tokens.{constant}` |" in rows[number]
        assert getattr(tokens, constant) == value and f"({value} s" in rows[number]
    assert "`MAX_TOKEN_LENGTH` (4096)" in rows["D117"] and MAX_TOKEN_LENGTH == 4096
    assert "`MAX_ACCESS_TOKEN_LEEWAY` (30 s" in rows["D118"] and MAX_ACCESS_TOKEN_LEEWAY == 30
