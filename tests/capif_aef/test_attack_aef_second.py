"""Issue 19, second hostile review: attacks on the AEF front over real sockets (CCF, AEF front, backend, invokers),
after the current-credential fix (D175, D176). The confirmed problems R1-R4 are fixed (D182, D183) and their tests
pass; so do the attacks refused from the start, kept."""

from __future__ import annotations

import pytest

from ccf.ccf_env import World, onboard, security, world

from .aef_env import SECURITY
from .aef_server_env import (
    access_token,
    call,
    invoker_with,
    pki_context,
    psk_context,
    psk_invoker,
    running_front,
    server_only_context,
)
from .test_aef_revocation import notified
from .test_attack_aef import REFUSED, _front_with_nested_api, _raw

__all__ = ["world"]


def _leaves_api(target: str, prefix: str = "/api") -> bool:
    """Whether ``target``, read as a Tomcat/Jetty/Spring backend reads it (``;`` path parameters stripped from each
    segment, then dot segments removed), leaves ``prefix``."""
    from posixpath import normpath
    from urllib.parse import unquote

    path = unquote(target.split("?", 1)[0])
    path = "/".join(segment.split(";", 1)[0] for segment in path.split("/"))
    path = normpath(path)
    return not (path == prefix or path.startswith(prefix + "/"))


@pytest.mark.parametrize("target", ["/api/..;/admin", "/api/..;x=1/admin", "/api/.;/..;/admin"])
async def test_path_parameter_dot_segments_do_not_leave_the_authorized_api(world: World, target: str) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        reply = await call(aef.port, psk_context(inv.id, inv.key), target)
        forwarded = aef.backend.seen
        assert all(not _leaves_api(m.target or "") for m in forwarded), (reply.status, forwarded[0].target)


async def test_a_token_of_a_replaced_context_is_refused_at_once(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")
        old = await access_token(world, who)
        headers = (("authorization", f"Bearer {old}"),)
        server = server_only_context(aef.server_ca_pem)
        assert (await call(aef.port, server, headers=headers)).status == 200  # the AEF caches the context
        # the invoker replaces its context (e.g. it fears the token leaked): a new generation, old tokens are void
        answer = await world.call(who, "PUT", f"{SECURITY}/{who.identity}",
                                  security({"interfaceDetails": aef.iface, "prefSecurityMethods": ["OAUTH"]}))
        assert answer.status in (200, 201), answer.body
        await notified(aef, 1)  # D182: the CCF tells the AEF the context was replaced (delivered in milliseconds)
        # the thief of the old token calls before the invoker's next call refreshed the AEF's cached context
        before = len(aef.backend.seen)
        reply = await call(aef.port, server, headers=headers)
        assert reply.status == 403 and len(aef.backend.seen) == before, reply.status


async def test_an_absolute_form_target_naming_another_host_is_forwarded_as_origin_form(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        request = (b"GET http://internal.example:8080/api/items?x=1 HTTP/1.1\r\nhost: internal.example\r\n"
                   b"connection: close\r\n\r\n")
        answer = await _raw(aef.port, psk_context(inv.id, inv.key), request)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        [seen] = aef.backend.seen
        assert seen.target == "/api/items?x=1"
        assert seen.header("host") == f"127.0.0.1:{aef.backend.port}"


@pytest.mark.parametrize("spelling", ["X-CAPIF-INVOKER-ID", "x-capif-invoker-id", "X_Capif_Invoker_Id"])
async def test_repeated_identity_headers_in_any_spelling_never_reach_the_backend(world: World, spelling: str) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        reply = await call(aef.port, psk_context(inv.id, inv.key),
                           headers=((spelling, "INVvictim"), (spelling, "INVvictim2"),
                                    ("x-capif-security-method", "PKI")))
        assert reply.status == 200, reply.body
        seen = aef.backend.seen[-1]
        ids = [v for k, v in seen.headers if k.lower().replace("_", "-") == "x-capif-invoker-id"]
        methods = [v for k, v in seen.headers if k.lower().replace("_", "-") == "x-capif-security-method"]
        assert ids == [inv.id] and methods == ["PSK"]


async def test_an_obs_folded_identity_header_stays_inside_the_previous_value(world: World) -> None:
    """h11 unfolds an obs-fold line (RFC 9112 §5.2) into the previous field's value: the folded identity header is
    no header of its own, neither at the front nor at the backend."""
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        request = (b"GET /api/items HTTP/1.1\r\nhost: a\r\nx-other: a\r\n x-capif-invoker-id: INVvictim\r\n"
                   b"connection: close\r\n\r\n")
        answer = await _raw(aef.port, psk_context(inv.id, inv.key), request)
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), answer[:80]
        for seen in aef.backend.seen:
            assert [v for k, v in seen.headers if k.lower() == "x-capif-invoker-id"] == [inv.id]
            assert all("\r" not in v and "\n" not in v for _, v in seen.headers)


def _merged(target: str) -> str:
    """``target``'s path as a backend that merges repeated slashes (nginx ``merge_slashes``, Spring, many routers)
    and matches paths without regard to case reads it."""
    import re

    return re.sub("/+", "/", target.split("?", 1)[0]).lower()


@pytest.mark.parametrize("target", ["/api//admin/users", "/api//admin",
                                    "/api/ADMIN/users"])
async def test_a_nested_api_is_not_reached_through_an_empty_segment_or_another_case(world: World, target: str) -> None:
    async with _front_with_nested_api(world) as (aef, _second):
        who = await onboard(world)  # a security context for the /api API only (by apiId), PKI
        answer = await world.call(who, "PUT", f"{SECURITY}/{who.identity}", security(
            {"aefId": aef.id, "apiId": aef.api["apiId"], "prefSecurityMethods": ["PKI"]}))
        assert answer.status == 201, answer.body
        assert (await call(aef.port, pki_context(who, aef.server_ca_pem), "/api/items")).status == 200
        before = len(aef.backend.seen)
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem), target)
        reached = [m.target for m in aef.backend.seen[before:]
                   if _merged(m.target or "") == "/api/admin" or _merged(m.target or "").startswith("/api/admin/")]
        assert reached == [], (reply.status, reached)


async def test_an_aefpsk_replaced_by_a_new_put_no_longer_authenticates(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        assert (await call(aef.port, psk_context(inv.id, inv.key))).status == 200  # the resolver caches it
        # the invoker puts a new context (e.g. it fears its AEFPSK leaked): a new AEFPSK, the old one is deleted
        async with await world.connect(inv.identity) as conn:
            answer = await conn.request("PUT", f"{SECURITY}/{inv.id}", json_body=security(
                {"interfaceDetails": aef.iface, "prefSecurityMethods": ["PSK"]}))
            assert answer.status in (200, 201), answer.body
            assert conn.aefpsk(aef.p0).reveal() != inv.key
        await notified(aef, 1)  # D182: the replaced context's AEF is told
        before = len(aef.backend.seen)
        try:
            reply: int | None = (await call(aef.port, psk_context(inv.id, inv.key))).status
        except REFUSED:
            reply = None
        assert reply in (None, 401, 403) and len(aef.backend.seen) == before, reply


async def test_stale_credential_refusals_log_no_secret_at_debug_level(world: World,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Refusals of the current-credential check (D175, D176), logged at DEBUG: a wrong AEFPSK for a known invoker
    (the handshake), a forged token carrying another generation: no key, token or generation in any record."""
    import base64
    import json
    import logging

    caplog.set_level(logging.DEBUG)
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        generation = payload["capif_ctx"]
        assert (await call(aef.port, psk_context(inv.id, inv.key))).status == 200
        wrong = bytes(b ^ 0xFF for b in inv.key)
        with pytest.raises(REFUSED):
            await call(aef.port, psk_context(inv.id, wrong))
        server = server_only_context(aef.server_ca_pem)
        assert (await call(aef.port, server, headers=(("authorization", f"Bearer {token}"),))).status == 200
        head, _, sig = token.split(".")
        forged = base64.urlsafe_b64encode(json.dumps({**payload, "capif_ctx": "x"}).encode()).rstrip(b"=").decode()
        reply = await call(aef.port, server, headers=(("authorization", f"Bearer {head}.{forged}.{sig}"),))
        assert reply.status == 401
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert caplog.records
    for secret in (inv.key.hex(), wrong.hex(), token, token.split(".")[2], generation):
        assert secret not in text


async def test_an_aefpsk_renegotiated_away_no_longer_authenticates(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0, prefer=("PSK", "OAUTH"))
        assert (await call(aef.port, psk_context(inv.id, inv.key))).status == 200  # the resolver caches it
        answer = await world.call(inv.identity, "POST", f"{SECURITY}/{inv.id}/update",
                                  security({"interfaceDetails": aef.iface, "prefSecurityMethods": ["OAUTH"]}))
        assert answer.status == 200, answer.body
        assert answer.json()["securityInfo"][0]["selSecurityMethod"] == "OAUTH"
        await notified(aef, 1)  # D182: the AEF of the replaced entry is told
        before = len(aef.backend.seen)
        try:
            reply: int | None = (await call(aef.port, psk_context(inv.id, inv.key))).status
        except REFUSED:
            reply = None
        assert reply in (None, 401, 403) and len(aef.backend.seen) == before, reply


@pytest.mark.parametrize("header", ["x-original-url", "x-rewrite-url"])
async def test_url_override_headers_do_not_reach_the_backend(world: World, header: str) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        reply = await call(aef.port, psk_context(inv.id, inv.key), "/api/items", headers=((header, "/admin"),))
        overrides = [v for m in aef.backend.seen for k, v in m.headers if k.lower() == header]
        assert all(not _leaves_api(v) for v in overrides), (reply.status, overrides)


@pytest.mark.parametrize("target", ["/aef-security/v1/../../api/items", "/aef-security%2Fv1/check-authentication",
                                    "/aef-security/v1/check-authentication/../../../api/items",
                                    "/aef-security/v1/revoke-authorization?x=/api/items"])
async def test_security_api_paths_are_never_forwarded_nor_revoke(world: World, target: str) -> None:
    """Spellings of the AEF Security API's paths: answered by the front (4xx), never forwarded, and a PSK invoker
    cannot revoke anyone through them (revoke-authorization is the CCF's, D172)."""
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        victim = await psk_invoker(world, aef.iface, aef.p0)
        body = f'{{"revokeInfo": {{"apiInvokerId": "{victim.id}", "apiIds": ["x"]}}}}'.encode()
        reply = await call(aef.port, psk_context(inv.id, inv.key), target, method="POST", body=body,
                           headers=(("content-type", "application/json"),))
        assert 400 <= reply.status < 500, reply.status
        assert aef.backend.seen == []
        assert (await call(aef.port, psk_context(victim.id, victim.key))).status == 200
