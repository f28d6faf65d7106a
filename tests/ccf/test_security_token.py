"""The token endpoint over real TLS (client authenticated by its CAPIF-1e certificate; scope covered by the security
context with OAUTH selected), every AccessTokenErr, and the JWK Set an AEF verifies the token with."""

from __future__ import annotations

from typing import Any

from m2msec.capif.tokens import VerificationKeys, verify_access_token

from .ccf_env import Identity, World, onboard, world
from .test_security import IFACE_ONE, IFACE_TWO, SECURITY, make_aef, profile, publish, security

__all__ = ["world"]

JWKS = "/capif-security/v1/jwks"


def token_path(security_id: str) -> str:
    return f"/capif-security/v1/securities/{security_id}/token"


async def post_token(world: World, who: Identity | None, form: dict[str, str], security_id: str | None = None
                     ) -> tuple[int, dict[str, Any], dict[str, str]]:
    sid = security_id or (who.identity if who is not None else "INVnobody")
    async with await world.connect(who) as conn:
        answer = await conn.request("POST", token_path(sid), form=form)
    return answer.status, answer.json(), answer.headers


async def oauth_world(world: World) -> tuple[Identity, Identity, Identity]:
    """An invoker whose context selects OAUTH at AEF ``oauth`` (api-x, api-y) and PSK at AEF ``psk`` (api-z)."""
    oauth, psk = make_aef(world), make_aef(world)
    publish(world, "svc-x", "api-x", profile(oauth.identity, ["OAUTH"], IFACE_ONE))
    publish(world, "svc-y", "api-y", profile(oauth.identity, ["OAUTH"], IFACE_ONE))
    publish(world, "svc-z", "api-z", profile(psk.identity, ["PSK", "OAUTH"], IFACE_TWO))
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(
        {"aefId": oauth.identity, "prefSecurityMethods": ["OAUTH"]},
        {"aefId": psk.identity, "prefSecurityMethods": ["PSK", "OAUTH"]}))
    assert put.status == 201, put.body
    assert [e["selSecurityMethod"] for e in put.json()["securityInfo"]] == ["OAUTH", "PSK"]
    return inv, oauth, psk


async def test_token_verifies_with_the_published_keys(world: World) -> None:
    inv, oauth, _ = await oauth_world(world)
    status, body, headers = await post_token(world, inv, {"grant_type": "client_credentials",
                                                          "client_id": inv.identity,
                                                          "scope": f"3gpp#{oauth.identity}:api-y"})
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert body["scope"] == f"3gpp#{oauth.identity}:api-y"
    jwks = await world.call(None, "GET", JWKS)  # public: no client certificate needed
    assert jwks.status == 200 and jwks.header("content-type") == "application/jwk-set+json"
    assert all("d" not in k for k in jwks.json()["keys"])
    keys = VerificationKeys.from_jwks(jwks.json())
    now = int(world.ccf.ccf.clock())
    claims = verify_access_token(body["access_token"], keys, issuer="ccf.test.example", aef_id=oauth.identity,
                                 api_name="api-y", now=now)
    assert claims.client_id == inv.identity
    assert not claims.scope.covers(oauth.identity, "api-x")
    assert claims.expires_at - now in range(595, 601)


async def test_scope_without_prefix_and_without_scope(world: World) -> None:
    inv, oauth, _ = await oauth_world(world)
    base = {"grant_type": "client_credentials", "client_id": inv.identity}
    status, body, _ = await post_token(world, inv, dict(base, scope=f"{oauth.identity}:api-x,api-y"))
    assert status == 200 and body["scope"] == f"3gpp#{oauth.identity}:api-x,api-y"
    status, body, _ = await post_token(world, inv, base)  # every API of every OAUTH entry
    assert status == 200 and body["scope"] == f"3gpp#{oauth.identity}:api-x,api-y"


async def test_every_refusal(world: World) -> None:
    inv, oauth, psk = await oauth_world(world)
    other = await onboard(world)
    good = {"grant_type": "client_credentials", "client_id": inv.identity, "scope": f"{oauth.identity}:api-x"}
    cases: list[tuple[Identity | None, dict[str, str], str | None, int, str | None]] = [
        (None, good, inv.identity, 401, "invalid_client"),  # no certificate
        (oauth, good, inv.identity, 401, "invalid_client"),  # an AEF's certificate
        (other, good, other.identity, 401, "invalid_client"),  # client_id of another invoker
        (other, good, inv.identity, 403, None),  # another invoker's securityId: ProblemDetails
        (inv, {k: v for k, v in good.items() if k != "grant_type"}, None, 400, "invalid_request"),
        (inv, dict(good, grant_type="password"), None, 400, "unsupported_grant_type"),
        (inv, {k: v for k, v in good.items() if k != "client_id"}, None, 400, "invalid_request"),
        (inv, dict(good, resOwnerId="someone"), None, 400, "invalid_request"),
        (inv, dict(good, scope="3gpp#"), None, 400, "invalid_scope"),
        (inv, dict(good, scope="a b"), None, 400, "invalid_scope"),
        (inv, dict(good, scope=f"{oauth.identity}:api-nope"), None, 400, "invalid_scope"),
        (inv, dict(good, scope="AEFnobody:api-x"), None, 400, "invalid_scope"),
        (inv, dict(good, scope=f"{psk.identity}:api-z"), None, 400, "unauthorized_client"),  # PSK selected there
        (inv, dict(good, scope=f"{oauth.identity}:api-x;{psk.identity}:api-z"), None, 400, "unauthorized_client"),
        (other, dict(good, client_id=other.identity), None, 400, "unauthorized_client"),  # no context at all
    ]
    for who, form, sid, status, error in cases:
        got_status, body, headers = await post_token(world, who, form, sid)
        assert got_status == status, (form, sid, body)
        if error is None:
            assert "error" not in body and body["status"] == 403
        else:
            assert body["error"] == error, (form, body)
            assert "access_token" not in body and headers["cache-control"] == "no-store"


async def test_a_revoked_context_gets_no_token(world: World) -> None:
    inv, oauth, _ = await oauth_world(world)
    form = {"grant_type": "client_credentials", "client_id": inv.identity, "scope": f"{oauth.identity}:api-x"}
    assert (await post_token(world, inv, form))[0] == 200
    notice = {"apiInvokerId": inv.identity, "apiIds": ["svc-x", "svc-y"], "cause": "UNEXPECTED_REASON"}
    assert (await world.call(oauth, "POST", f"{SECURITY}/{inv.identity}/delete", notice)).status == 204
    status, body, _ = await post_token(world, inv, form)
    assert status == 400 and body["error"] == "unauthorized_client"


async def test_token_request_must_be_a_form(world: World) -> None:
    inv, _, _ = await oauth_world(world)
    answer = await world.call(inv, "POST", token_path(inv.identity),
                              {"grant_type": "client_credentials", "client_id": inv.identity})
    assert answer.status == 415


async def test_an_unreadable_form_is_an_access_token_error(world: World) -> None:
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        for raw in (b"grant_type=a&grant_type=b", b"\xff\xfe", b"a=1&&b"):
            answer = await conn.request("POST", token_path(inv.identity), raw=raw,
                                        content_type="application/x-www-form-urlencoded")
            assert answer.status == 400, answer.body
            assert answer.json()["error"] == "invalid_request"


async def _generation_seen_by(world: World, aef: Identity, inv: Identity) -> str:
    got = await world.call(aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert got.status == 200, got.body
    oauth = [e for e in got.json()["securityInfo"] if e["selSecurityMethod"] == "OAUTH"]
    return str(oauth[0]["authenticationInfo"])


async def _token_generation(world: World, inv: Identity, aef: Identity) -> str | None:
    status, body, _ = await post_token(world, inv, {"grant_type": "client_credentials", "client_id": inv.identity,
                                                    "scope": f"3gpp#{aef.identity}:api-x"})
    assert status == 200, body
    keys = VerificationKeys.from_jwks((await world.call(None, "GET", JWKS)).json())
    claims = verify_access_token(body["access_token"], keys, issuer="ccf.test.example", aef_id=aef.identity,
                                 api_name="api-x", now=int(world.ccf.ccf.clock()))
    return claims.context


async def test_tokens_carry_the_context_generation_the_aef_is_given(world: World) -> None:
    """D176: the token's ``capif_ctx`` is what the AEF reads as the OAUTH entry's authenticationInfo; /update keeps
    it (tokens stay valid), a new PUT replaces it (tokens of the old context stop matching)."""
    inv, oauth, psk = await oauth_world(world)
    first = await _generation_seen_by(world, oauth, inv)
    assert len(first) >= 16 and await _token_generation(world, inv, oauth) == first
    updated = await world.call(inv, "POST", f"{SECURITY}/{inv.identity}/update", security(
        {"aefId": psk.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert updated.status == 200, updated.body
    assert await _generation_seen_by(world, oauth, inv) == first
    again = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(
        {"aefId": oauth.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert again.status == 201, again.body
    second = await _generation_seen_by(world, oauth, inv)
    assert second != first and await _token_generation(world, inv, oauth) == second
