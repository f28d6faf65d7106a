"""The fuzz targets of the CAPIF, MAF and MEF parsers (see fuzz_targets.py, which lists them all)."""

from __future__ import annotations

import functools
import json
from typing import Any

import h11
import pydantic
from fuzz_targets_base import ALLOWED, LibraryRefusal, Target, text_of

__all__ = ["SERVICE_TARGETS"]


# --- CAPIF ---------------------------------------------------------------------------------------------------------

_SCOPE_SEEDS = [b"3gpp#aef1:api1,api2;aef2:api3", b"aef-1:api_1", b"3gpp#a:b"]


def _scope_run(data: bytes) -> None:
    from m2msec.capif.scope import parse_scope

    scope = parse_scope(text_of(data))
    scope.covers("aef1", "api1")
    scope.aef_ids()


@functools.cache
def _capif_keys() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from m2msec.capif.tokens import VerificationKeys

    key = ec.derive_private_key(21, ec.SECP256R1())
    return key, VerificationKeys([key.public_key()])


def _token_seeds() -> list[bytes]:
    from m2msec.capif.tokens import issue_access_token

    key, _ = _capif_keys()
    tok = issue_access_token(key, issuer="ccf", client_id="inv1", scope="3gpp#aef1:api1", now=1_800_000_000,
                             jti="j1")["access_token"]
    return [tok.encode("ascii")]


def _token_run(data: bytes) -> None:
    """The AEF's bearer-token check on a (mutated) compact JWS."""
    from m2msec.capif.tokens import verify_access_token

    _, keys = _capif_keys()
    verify_access_token(data, keys, issuer="ccf", aef_id="aef1", api_name="api1", now=1_800_000_100)


def _claims_seeds() -> list[bytes]:
    return [json.dumps({"iss": "ccf", "iat": 1_800_000_000, "exp": 1_800_003_600, "client_id": "inv1",
                        "scope": "3gpp#aef1:api1", "jti": "j1", "ctx": "1"}).encode()]


def _claims_run(data: bytes) -> None:
    """A validly signed access token whose claims are the (mutated) JSON: the claim checks behind the signature."""
    from joserfc import jws
    from joserfc.jwk import ECKey

    from m2msec.capif.tokens import ACCESS_TOKEN_TYPE, verify_access_token

    key, keys = _capif_keys()
    jwk = ECKey.import_key(key)
    token = jws.serialize_compact({"alg": "ES256", "typ": ACCESS_TOKEN_TYPE, "kid": str(jwk.thumbprint())}, data, jwk)
    verify_access_token(token, keys, issuer="ccf", aef_id="aef1", api_name="api1", now=1_800_000_100)


def _ccf_answer(data: bytes) -> Any:
    from m2msec.capif.aef.ccf_link import _json
    from m2msec.capif.client import Answer

    return _json(Answer(200, {}, data))


def _jwks_run(data: bytes) -> None:
    """The AEF reading the CCF's JWK Set (ccf_link.CCFLink.jwks: ValueError and AttributeError become CCFLinkError)."""
    from m2msec.capif.tokens import VerificationKeys

    VerificationKeys.from_jwks(_ccf_answer(data))


def _security_info_run(data: bytes) -> None:
    """The AEF reading the CCF's ServiceSecurity answer (ccf_link.parse_trusted_invoker)."""
    from m2msec.capif.aef.ccf_link import parse_trusted_invoker

    parse_trusted_invoker("inv1", _ccf_answer(data))


_SECURITY_INFO_SEEDS = [
    b'{"securityInfo":[{"selSecurityMethod":"PSK","aefId":"aef1","authenticationInfo":"' + b"ab" * 32 + b'",'
    b'"authorizationInfo":"3gpp#aef1:api1"},{"selSecurityMethod":"OAUTH","apiId":"x","authenticationInfo":"1"},'
    b'{"selSecurityMethod":"PKI","interfaceDetails":{"ipv4Addr":"127.0.0.1","port":8443,"securityMethods":["PKI"]},'
    b'"authenticationInfo":"' + b"A" * 43 + b'"}]}',
]


def _jwks_seeds() -> list[bytes]:
    _, keys = _capif_keys()
    return [json.dumps(keys.jwks()).encode()]


_AEF_SEEDS = [b"GET /api1/resource?x=1 HTTP/1.1\r\nHost: aef\r\nAuthorization: Bearer t\r\n\r\n",
              b"GET /API1/a;b/../c HTTP/1.1\r\nHost: aef\r\n\r\n", b"GET http://aef/api2/x HTTP/1.1\r\nHost: a\r\n\r\n",
              b"GET /api1%2fadmin HTTP/1.1\r\nHost: aef\r\n\r\n"]


def _aef_path_run(data: bytes) -> None:
    """The AEF front's target handling: h11, the ASGI scope (asgi.scope.build_scope), the path checks (D174, D183)."""
    from m2msec.asgi.scope import build_scope
    from m2msec.capif.aef.app import _ambiguous_path, _longest
    from m2msec.capif.aef.authorize import ServedAPI

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        raise LibraryRefusal from None
    if not isinstance(event, h11.Request):
        raise LibraryRefusal
    scope = build_scope(event, client=None, server=None, extension=None)  # type: ignore[arg-type]
    path = scope["path"]
    apis = [ServedAPI("api1", "/api1", "if1"), ServedAPI("api2", "/api2/", "if1"), ServedAPI("root", "", "if2")]
    if not _ambiguous_path(path, scope["raw_path"]):
        _longest(apis, path)
        _longest(apis, path.lower(), folded=True)


# --- MAF / MEF wire models -----------------------------------------------------------------------------------------

_MAF_SEEDS = [
    b'{"mafFQDN":"maf.example.com","expirationTime":"20261202T120000","labels":["a"],"adminFQDN":"adm.example.com"}',
    b'{"mafFQDN":"maf.example.com","expirationTime":"20261202T120000","adminFQDN":"a.example","SUID":22,'
    b'"targetIDs":["//sp.example/in-cse","/in-cse/Cx","in-cse"],'
    b'"keyValue":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}',
    b'{"mafFQDN":"maf.example.com","targetIDs":["x"]}',
]
_MEF_SEEDS = [b'{"certificateEnrolment":true,"mafEnrolment":false}',
              b'{"keID":"k@mef.example","lifetime":"20261202T120000","enroleeID":"e","instructions":[{"instructionType":'
              b'"mafEnrolment","suids":[22],"credentialType":"symmetric","mafFQDN":"maf.example.com"}]}',
              b'{"status":true,"credential":"AAAA","enroleeID":"e","lifetime":"20261202T120000"}']
# deep nesting: CPython's json raises RecursionError past ~1,000 levels (no ValueError)
_JSON_DICT = [b"[" * 2000, b'{"a":' * 1200, b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"1e400",
              b"-0", b"\\u0000", b"\\ud800",
              b"18446744073709551616", b'"SUID"', b'"labels"', b'"targetIDs"', b'"keyValue"', b'"expirationTime"',
              b"99999999T999999", b"00000000T000000"]


def _maf_run(data: bytes) -> None:
    from m2msec.maf import wire

    for model in (wire.ClientRegistrationRequest, wire.RegistrationUpdateRequest, wire.KeyRegistrationRequest,
                  wire.KeyUpdateRequest, wire.ClientRegistrationResponse, wire.KeyRegistrationResponse,
                  wire.KeyRetrievalResponse, wire.ClientConfigResponse, wire.Problem):
        try:
            doc = model.model_validate_json(data)
        except pydantic.ValidationError:
            continue
        for name in ("expirationTime",):
            value = getattr(doc, name, None)
            if isinstance(value, str):
                wire.parse_timestamp(value)
        for target_id in getattr(doc, "targetIDs", None) or []:
            wire.absolute_id(target_id, "sp.example", "targetID")
        key_value = getattr(doc, "keyValue", None)
        if isinstance(key_value, str):
            wire.decode_key_value(key_value)


def _mef_run(data: bytes) -> None:
    from m2msec.mef import wire

    for model in (wire.EnrolmentRequest, wire.Instruction, wire.EnrolmentResponse, wire.FetchResponse):
        try:
            model.model_validate_json(data)
        except pydantic.ValidationError:
            continue


SERVICE_TARGETS: list[Target] = [
    Target("capif-scope", "CAPIF scope (capif.scope.parse_scope)", _scope_run, _SCOPE_SEEDS,
           dictionary=[b"3gpp#", b";", b",", b":"], max_len=2048),
    Target("capif-token", "AEF bearer token (capif.tokens.verify_access_token)", _token_run, _token_seeds(),
           dictionary=[b".", b"=", b"eyJ"], max_len=8192),
    Target("capif-claims", "signed access token with fuzzed claims", _claims_run, _claims_seeds(),
           dictionary=[*_JSON_DICT, b'"iss"', b'"exp"', b'"nbf"', b'"iat"', b'"scope"', b'"client_id"']),
    Target("capif-jwks", "CCF JWK Set (VerificationKeys.from_jwks, documented ValueError)", _jwks_run, _jwks_seeds(),
           allowed=(*ALLOWED, ValueError, AttributeError),
           dictionary=[*_JSON_DICT, b'"kty"', b'"EC"', b'"crv"', b'"P-256"']),
    Target("aef-security-info", "CCF ServiceSecurity answer (capif.aef.ccf_link.parse_trusted_invoker)",
           _security_info_run, _SECURITY_INFO_SEEDS,
           dictionary=[*_JSON_DICT, b'"selSecurityMethod"', b'"PSK"', b'"PKI"', b'"OAUTH"', b'"interfaceDetails"',
                       b'"authorizationInfo"', b'"authenticationInfo"', b'"aefId"', b'"apiId"']),
    Target("aef-path", "AEF request target: h11, asgi.scope, path checks", _aef_path_run, _AEF_SEEDS,
           dictionary=[b"%2f", b"%2e", b"..", b";", b"//", b"\\", b"%", b"%00", b"?", b"#"]),
    Target("maf-wire", "MAF wire models + timestamp/targetID/keyValue parsers", _maf_run, _MAF_SEEDS,
           dictionary=_JSON_DICT),
    Target("mef-wire", "MEF wire models", _mef_run, _MEF_SEEDS, dictionary=_JSON_DICT),
]
