"""Hostile review of the first CAPIF building blocks (issue 18, attack18a): each test shows one finding, which failed
at commit 60ce468 and is fixed since (P0 collisions, unchecked Scope, unverifiable long tokens, unbounded token
lifetime). Pure, no I/O: time injected."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.capif.kdf import aefpsk, interface_information_of
from m2msec.capif.scope import AccessTokenError, Scope
from m2msec.capif.tokens import (
    DEFAULT_ACCESS_TOKEN_LIFETIME,
    TokenRefused,
    VerificationKeys,
    issue_access_token,
    verify_access_token,
)
from m2msec.errors import ConfigurationError
from m2msec.keys.secret import SecretKey

NOW = 1_800_000_000
ISSUER = "ccf.example.com"
MASTER = SecretKey(bytes(range(48)))
SESSION = bytes(32)


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_p0_separator_collision_gives_two_aefs_one_aefpsk() -> None:
    """Two different InterfaceDescriptions (a rogue AEF's fqdn carrying ':port', the victim's apiPrefix starting with
    ':') would write the same P0, so the CCF would derive the victim's AEFPSK for the rogue AEF's interface: both are
    refused now (an fqdn is a host name, an apiPrefix starts with '/' and holds no ':')."""
    for description in ({"fqdn": "aef.example.com", "port": 1, "apiPrefix": ":2"},
                        {"fqdn": "aef.example.com:1", "port": 2},
                        {"fqdn": "aef.example.com", "apiPrefix": "/a:b"}):
        with pytest.raises(ConfigurationError):
            interface_information_of(description)
    assert interface_information_of({"fqdn": "aef.example.com", "port": 1, "apiPrefix": "/2"}) != \
        interface_information_of({"fqdn": "aef.example.com", "port": 12})


def test_p0_nfkc_collision_fullwidth_fqdn() -> None:
    """A fullwidth fqdn or apiPrefix (a different string, a different registered interface) would normalise (NFKC,
    B.2.1.2) to the victim's P0: only ASCII host names (IDNA A-labels) and ASCII paths are accepted."""
    victim = interface_information_of({"fqdn": "aef.example.com", "apiPrefix": "/nef"})
    assert aefpsk(MASTER, SESSION, victim) is not None
    for description in ({"fqdn": "\uff41\uff45\uff46.example.com", "apiPrefix": "/nef"},
                        {"fqdn": "aef.example.com", "apiPrefix": "\uff0fnef"},
                        {"fqdn": "aef.example.com", "apiPrefix": "/n\u00e9f"}):
        with pytest.raises(ConfigurationError):
            interface_information_of(description)


def test_scope_built_unvalidated_widens_the_token() -> None:
    """A ``Scope`` built from names (e.g. a published apiName the CCF copies) holding ';aef:' would become a grant
    for another AEF once the AEF re-parses the token: a Scope checks its names as parse_scope does."""
    for grants in ((("aef-rogue", ("api1;aef-victim:billing",)),), (("aef", ()),), (("a", ("x",)), ("a", ("y",))),
                   ()):
        with pytest.raises(AccessTokenError):
            Scope(grants)  # type: ignore[arg-type]


def test_issued_token_always_verifiable(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """A scope the CCF accepts (< MAX_SCOPE_LENGTH) yields a token longer than MAX_TOKEN_LENGTH: issued (200 to the
    invoker), then refused 'too long' by every AEF. The issuer should refuse it (invalid_scope) instead."""
    scope = ";".join(f"aef{i:03d}:api" for i in range(300))  # 3000 characters
    try:
        rsp = issue_access_token(signing_key, issuer=ISSUER, client_id="inv1", scope=scope, now=NOW, jti="j1")
    except AccessTokenError:  # refusing at issue time is the fix
        return
    verify_access_token(rsp["access_token"], VerificationKeys([signing_key]), issuer=ISSUER, aef_id="aef000",
                        api_name="api", now=NOW)


def test_access_token_lifetime_is_bounded(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """Issue 18 bounds an access token's life (<= 10 min, DEFAULT_ACCESS_TOKEN_LIFETIME); a careless CCF config
    (lifetime in ms, a year...) is issued as is: an unrevocable bearer token valid for a year."""
    with pytest.raises(ValueError):
        issue_access_token(signing_key, issuer=ISSUER, client_id="inv1", scope="aef1:api", now=NOW, jti="j1",
                           lifetime=DEFAULT_ACCESS_TOKEN_LIFETIME * 1000 * 52)


def test_aef_refuses_a_token_valid_for_centuries(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """The AEF side of finding 4: ``verify_access_token`` takes any ``exp`` (here 10**30) and needs no ``iat``, so
    nothing downstream bounds what a misconfigured CCF signed."""
    from m2msec.capif.tokens import ACCESS_TOKEN_TYPE, _sign  # what a misconfigured (or another) CCF signs

    for claims in ({"iss": ISSUER, "iat": NOW, "exp": 10**30, "client_id": "inv1", "scope": "3gpp#aef1:api"},
                   {"iss": ISSUER, "exp": NOW + 60, "client_id": "inv1", "scope": "3gpp#aef1:api"}):  # no iat
        with pytest.raises(TokenRefused):
            verify_access_token(_sign(signing_key, ACCESS_TOKEN_TYPE, claims), VerificationKeys([signing_key]),
                                issuer=ISSUER, aef_id="aef1", api_name="api", now=NOW)
