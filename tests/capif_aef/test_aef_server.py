"""The AEF front (issue 19): the three CAPIF-2e methods over real sockets — a real CCF (``world``), the AEF front
served by m2msec.asgi on one TLS port, a real backend HTTP service, invokers with our engine's client."""

from __future__ import annotations

import time

import pytest

from ccf.ccf_env import World, onboard, security, world
from m2msec.capif.aef.app import CCFSource
from m2msec.capif.aef.ccf_link import TrustedInvoker
from m2msec.capif.tokens import VerificationKeys
from m2msec.tls.profiles import DHE_PSK, ECDHE_PSK, PSK

from .aef_env import SECURITY
from .aef_server_env import (
    REFUSED,
    access_token,
    call,
    invoker_with,
    pki_context,
    psk_context,
    psk_invoker,
    running_front,
    server_only_context,
)

__all__ = ["world"]

WRONG_METHOD = "SECURITY_METHOD_NOT_SELECTED"


async def test_psk_reaches_the_backend_with_the_invoker_id(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        for profile in (PSK.name, DHE_PSK.name, ECDHE_PSK.name):
            reply = await call(aef.port, psk_context(inv.id, inv.key, profile), "/api/items?x=1")
            assert reply.status == 200, reply.body
            assert reply.json() == {"invoker": inv.id, "path": "/api/items?x=1"}
            assert reply.headers["x-backend"] == "yes"
        seen = aef.backend.seen[-1]
        assert seen.header("x-capif-invoker-id") == inv.id and seen.header("x-capif-security-method") == "PSK"
        assert aef.running.app.forwarded == 3


async def test_pki_reaches_the_backend(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "PKI")
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem), method="POST", body=b'{"a": 1}',
                           headers=(("content-type", "application/json"),))
        assert reply.status == 200, reply.body
        assert reply.json()["invoker"] == who.identity
        seen = aef.backend.seen[-1]
        assert seen.method == "POST" and seen.body == b'{"a": 1}' and seen.header("x-capif-security-method") == "PKI"


async def test_oauth_reaches_the_backend_and_the_token_is_not_forwarded(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        reply = await call(aef.port, server_only_context(aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))
        assert reply.status == 200, reply.body
        assert reply.json()["invoker"] == who.identity
        seen = aef.backend.seen[-1]
        assert seen.header("authorization") is None and seen.header("x-capif-security-method") == "OAUTH"


async def test_a_client_supplied_invoker_id_header_is_not_forwarded(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        reply = await call(aef.port, psk_context(inv.id, inv.key),
                           headers=(("X-CAPIF-Invoker-Id", "INVsomeoneelse"), ("x-capif-security-method", "PKI")))
        assert reply.status == 200
        seen = aef.backend.seen[-1]
        assert [v for k, v in seen.headers if k == "x-capif-invoker-id"] == [inv.id]
        assert [v for k, v in seen.headers if k == "x-capif-security-method"] == ["PSK"]


async def test_a_wrong_method_is_refused_with_the_failure_indication(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")  # selected OAUTH, comes with its certificate
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem))
        assert reply.status == 403
        problem = reply.json()
        assert problem["cause"] == WRONG_METHOD and "OAUTH" in problem["detail"]
        assert reply.headers["content-type"] == "application/problem+json"
        assert aef.backend.seen == []


async def test_an_unknown_invoker_gets_no_handshake(world: World) -> None:
    async with running_front(world) as aef:
        with pytest.raises(REFUSED):
            await call(aef.port, psk_context("INVnobody", bytes(32)))
        inv = await psk_invoker(world, aef.iface, aef.p0)
        with pytest.raises(REFUSED):  # a key one bit off
            await call(aef.port, psk_context(inv.id, bytes([inv.key[0] ^ 1]) + inv.key[1:]))
        assert aef.backend.seen == []


async def test_an_invoker_without_a_context_is_refused(world: World) -> None:
    async with running_front(world) as aef:
        who = await onboard(world)  # onboarded, never asked for a security method
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem))
        assert reply.status == 403 and reply.json()["cause"] == "API_INVOKER_NOT_AUTHORIZED"
        assert aef.backend.seen == []


async def test_no_credential_and_bad_tokens_are_refused(world: World) -> None:
    async with running_front(world) as aef:
        context = server_only_context(aef.server_ca_pem)
        reply = await call(aef.port, context)
        assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        reply = await call(aef.port, context, headers=(("authorization", "Bearer not.a.token"),))
        assert reply.status == 401 and reply.json()["cause"] == "INVALID_TOKEN"
        assert "not.a.token" not in reply.body.decode()
        assert aef.backend.seen == []


async def test_a_token_for_another_aef_is_refused(world: World) -> None:
    async with running_front(world) as aef, running_front(world) as other:
        who = await invoker_with(world, other.iface, "OAUTH")
        token = await access_token(world, who)
        assert (await call(other.port, server_only_context(other.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))).status == 200
        reply = await call(aef.port, server_only_context(aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))
        assert reply.status == 403 and reply.json()["cause"] == "INSUFFICIENT_SCOPE"
        assert aef.backend.seen == []


async def test_an_expired_token_is_refused(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        aef.running.app.clock = lambda: time.time() + 24 * 3600  # a day later
        reply = await call(aef.port, server_only_context(aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))
        assert reply.status == 401 and reply.json()["cause"] == "INVALID_TOKEN"
        assert aef.backend.seen == []


async def test_after_renegotiation_the_new_method_is_served_at_once(world: World) -> None:
    """D166/D167: the invoker selected OAUTH and called; it renegotiates to PKI (trustedInvokers /update); its token
    is then refused with the failure indication (after asking the CCF again) and its certificate accepted at once."""
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        bearer = (("authorization", f"Bearer {token}"),)
        assert (await call(aef.port, server_only_context(aef.server_ca_pem), headers=bearer)).status == 200
        answer = await world.call(who, "POST", f"{SECURITY}/{who.identity}/update",
                                  security({"interfaceDetails": aef.iface, "prefSecurityMethods": ["PKI"]}))
        assert answer.status == 200, answer.body
        assert answer.json()["securityInfo"][0]["selSecurityMethod"] == "PKI"
        aef.running.app.clock = lambda: time.time() + 2  # the cached context is older than TRUST_REFETCH_AFTER
        assert (await call(aef.port, pki_context(who, aef.server_ca_pem))).status == 200  # the cache said OAUTH
        reply = await call(aef.port, server_only_context(aef.server_ca_pem), headers=bearer)
        assert reply.status == 403 and reply.json()["cause"] == WRONG_METHOD and "PKI" in reply.json()["detail"]
        assert len(aef.backend.seen) == 2


async def test_an_aef_certificate_is_no_invoker_credential(world: World) -> None:
    async with running_front(world) as aef:
        reply = await call(aef.port, pki_context(aef.provider.aef, aef.server_ca_pem))
        assert reply.status == 403 and aef.backend.seen == []


async def test_a_path_of_no_api_is_not_found(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "PKI")
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem), "/other/items")
        assert reply.status == 404 and aef.backend.seen == []
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem), "/apiary")
        assert reply.status == 404


async def test_a_backend_down_is_a_clean_502(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "PKI")
        await aef.backend.stop()
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem))
        assert reply.status == 502 and reply.json()["title"] == "Bad Gateway"
        assert "Traceback" not in reply.body.decode()


async def test_the_ccf_unreachable_is_a_clean_503(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "PKI")
        cached = await invoker_with(world, aef.iface, "PKI")
        assert (await call(aef.port, pki_context(cached, aef.server_ca_pem))).status == 200
        aef.running.link.port = 1  # nothing listens there: the CCF is gone for the AEF
        await aef.running.link.close()
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem))
        assert reply.status == 503
        assert (await call(aef.port, pki_context(cached, aef.server_ca_pem))).status == 200  # cached: served


class CountingCCF:
    def __init__(self, inner: CCFSource) -> None:
        self.inner, self.asked = inner, 0

    async def trusted_invoker(self, invoker_id: str) -> TrustedInvoker | None:
        self.asked += 1
        return await self.inner.trusted_invoker(invoker_id)

    async def jwks(self) -> VerificationKeys:
        return await self.inner.jwks()


async def test_refused_calls_ask_the_ccf_at_most_once_a_second(world: World) -> None:
    """D167: a refusal from a cached context asks the CCF again only when the context is older than 1 s."""
    async with running_front(world) as aef:
        counting = CountingCCF(aef.running.link)
        aef.running.app.ccf = counting
        who = await invoker_with(world, aef.iface, "OAUTH")
        now = time.time()
        aef.running.app.clock = lambda: now
        for _ in range(5):
            reply = await call(aef.port, pki_context(who, aef.server_ca_pem))
            assert reply.status == 403 and reply.json()["cause"] == WRONG_METHOD
        assert counting.asked == 1
        aef.running.app.clock = lambda: now + 1.5
        assert (await call(aef.port, pki_context(who, aef.server_ca_pem))).status == 403
        assert counting.asked == 2
        aef.running.app.clock = lambda: now + 31  # past TRUST_CACHE_TTL: asked again before deciding
        assert (await call(aef.port, pki_context(who, aef.server_ca_pem))).status == 403
        assert counting.asked == 3 and aef.backend.seen == []
