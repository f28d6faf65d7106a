"""Hostile review of the first CAPIF building blocks (issue 18, attack18a): each test shows one finding and fails on
main (strict xfail); the report of the review gives severity and proposed fix. Pure, no I/O: time injected."""

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
from m2msec.keys.secret import SecretKey

NOW = 1_800_000_000
ISSUER = "ccf.example.com"
MASTER = SecretKey(bytes(range(48)))
SESSION = bytes(32)


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.xfail(strict=True, reason="attack18a finding 1")
def test_p0_separator_collision_gives_two_aefs_one_aefpsk() -> None:
    """Two different InterfaceDescriptions (a rogue AEF's fqdn carrying ':port', the victim's apiPrefix starting with
    ':') write the same P0, so the CCF would derive the victim's AEFPSK for the rogue AEF's interface."""
    victim = {"fqdn": "aef.example.com", "port": 1, "apiPrefix": ":2"}
    rogue = {"fqdn": "aef.example.com:1", "port": 2}
    assert victim != rogue
    p_victim, p_rogue = interface_information_of(victim), interface_information_of(rogue)
    assert aefpsk(MASTER, SESSION, p_victim) != aefpsk(MASTER, SESSION, p_rogue)


@pytest.mark.xfail(strict=True, reason="attack18a finding 1")
def test_p0_nfkc_collision_fullwidth_fqdn() -> None:
    """A fullwidth fqdn (a different string, a different registered interface) normalises (NFKC, B.2.1.2) to the
    victim's: same AEFPSK. Hosts should be ASCII (IDNA A-labels) and refused otherwise."""
    victim = interface_information_of({"fqdn": "aef.example.com", "apiPrefix": "/nef"})
    rogue = interface_information_of({"fqdn": "\uff41\uff45\uff46.example.com", "apiPrefix": "\uff0fnef"})
    assert victim != rogue
    assert aefpsk(MASTER, SESSION, victim) != aefpsk(MASTER, SESSION, rogue)


@pytest.mark.xfail(strict=True, reason="attack18a finding 2")
def test_scope_built_unvalidated_widens_the_token(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """``Scope`` validates nothing and ``issue_access_token`` serialises it as is: an API name with ';' (e.g. a
    published apiName the CCF copies into a Scope) becomes a grant for another AEF once the AEF re-parses it."""
    sneaky = Scope((("aef-rogue", ("api1;aef-victim:billing",)),))
    rsp = issue_access_token(signing_key, issuer=ISSUER, client_id="inv1", scope=sneaky, now=NOW, jti="j1")
    keys = VerificationKeys([signing_key])
    with pytest.raises(TokenRefused):
        verify_access_token(rsp["access_token"], keys, issuer=ISSUER, aef_id="aef-victim", api_name="billing",
                            now=NOW)


@pytest.mark.xfail(strict=True, reason="attack18a finding 3")
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


@pytest.mark.xfail(strict=True, reason="attack18a finding 4")
def test_access_token_lifetime_is_bounded(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """Issue 18 bounds an access token's life (<= 10 min, DEFAULT_ACCESS_TOKEN_LIFETIME); a careless CCF config
    (lifetime in ms, a year...) is issued as is: an unrevocable bearer token valid for a year."""
    with pytest.raises(ValueError):
        issue_access_token(signing_key, issuer=ISSUER, client_id="inv1", scope="aef1:api", now=NOW, jti="j1",
                           lifetime=DEFAULT_ACCESS_TOKEN_LIFETIME * 1000 * 52)


@pytest.mark.xfail(strict=True, reason="attack18a finding 4")
def test_aef_refuses_a_token_valid_for_centuries(signing_key: ec.EllipticCurvePrivateKey) -> None:
    """The AEF side of finding 4: ``verify_access_token`` takes any ``exp`` (here 10**30) and needs no ``iat``, so
    nothing downstream bounds what a misconfigured CCF signed."""
    rsp = issue_access_token(signing_key, issuer=ISSUER, client_id="inv1", scope="aef1:api", now=NOW, jti="j1",
                             lifetime=10**30)
    with pytest.raises(TokenRefused):
        verify_access_token(rsp["access_token"], VerificationKeys([signing_key]), issuer=ISSUER, aef_id="aef1",
                            api_name="api", now=NOW)
