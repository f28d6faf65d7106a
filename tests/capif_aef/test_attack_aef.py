"""Issue 19 hostile review: attacks on the AEF front over real sockets (CCF, AEF front, backend, invokers).
Confirmed problems are ``xfail(strict=True)``; attacks refused that are worth keeping pass."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ccf.ccf_env import (
    CCF_HOST,
    INVOKERS,
    Identity,
    Provider,
    World,
    csr_pem,
    expected_aefpsk,
    key_pem,
    new_key,
    onboard,
    publish,
    security,
    world,
)
from m2msec.capif.aef.authorize import ServedAPI
from m2msec.capif.aef.config import load_config
from m2msec.errors import M2MSecError
from m2msec.idb import NOT_ONEM2M
from m2msec.transport.tls import open_connection

from .aef_env import SECURITY
from .aef_server_env import (
    REFUSED,
    Front,
    Kept,
    access_token,
    call,
    invoker_with,
    notified,
    pki_context,
    psk_context,
    psk_invoker,
    running_front,
    server_only_context,
)
from .test_aef_server_config import GOOD, files

__all__ = ["world"]



def _resolves_outside(target: str, prefix: str = "/api") -> bool:
    """Whether ``target`` (as the backend got it), once its dot segments are removed (RFC 3986 §5.2.4) after
    percent-decoding, leaves the published API's prefix."""
    from posixpath import normpath
    from urllib.parse import unquote

    path = normpath(unquote(target.split("?", 1)[0]))
    return not (path == prefix or path.startswith(prefix + "/"))


@pytest.mark.parametrize("target", ["/api/../admin", "/api/%2e%2e/admin", "/api/..%2Fadmin"])
async def test_dot_segments_do_not_leave_the_authorized_api(world: World, target: str) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        before = len(aef.backend.seen)
        reply = await call(aef.port, psk_context(inv.id, inv.key), target)
        forwarded = aef.backend.seen[before:]
        # refused (4xx, nothing forwarded), or forwarded with a target that stays under the API's prefix
        assert all(not _resolves_outside(m.target or "") for m in forwarded), (reply.status, forwarded[0].target)


async def test_an_underscore_spelling_of_the_identity_header_is_not_forwarded(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        reply = await call(aef.port, psk_context(inv.id, inv.key),
                           headers=(("x_capif_invoker_id", "INVvictim"), ("X_CAPIF_SECURITY_METHOD", "PKI")))
        assert reply.status == 200, reply.body
        names = {k.lower().replace("_", "-") for k, _ in aef.backend.seen[-1].headers}
        seen = [v for k, v in aef.backend.seen[-1].headers if k.lower().replace("_", "-") == "x-capif-invoker-id"]
        assert seen == [inv.id] and "x-capif-security-method" in names


async def test_a_psk_session_carrying_another_invokers_token_is_the_psk_invokers(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        other = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, other)
        reply = await call(aef.port, psk_context(inv.id, inv.key), headers=(("authorization", f"Bearer {token}"),))
        assert reply.status == 200, reply.body
        seen = aef.backend.seen[-1]
        assert seen.header("x-capif-invoker-id") == inv.id and seen.header("x-capif-security-method") == "PSK"
        assert seen.header("authorization") is None


async def test_a_certificate_session_carrying_another_invokers_token_is_the_certificates(world: World) -> None:
    async with running_front(world) as aef:
        victim = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, victim)
        attacker = await invoker_with(world, aef.iface, "OAUTH")  # its context selects OAUTH, not PKI
        reply = await call(aef.port, pki_context(attacker, aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))
        # the certificate decides the identity and the method: PKI is not selected for the attacker: refused
        assert reply.status == 403, reply.body
        assert reply.json()["cause"] == "SECURITY_METHOD_NOT_SELECTED"
        assert all(m.header("x-capif-invoker-id") != victim.identity for m in aef.backend.seen)


async def test_a_token_for_a_pki_invoker_is_refused_without_its_certificate(world: World) -> None:
    """A token obtained by an invoker whose context selects PKI: used on a server-only connection it is OAUTH,
    which is not selected: refused (the token alone does not stand in for the certificate)."""
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "PKI")
        answer = await world.call(who, "POST", f"/capif-security/v1/securities/{who.identity}/token",
                                  form={"grant_type": "client_credentials", "client_id": who.identity})
        if answer.status != 200:
            return  # the CCF does not issue a token for a PKI context: refused upstream, also fine
        token = answer.json()["access_token"]
        reply = await call(aef.port, server_only_context(aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))
        assert reply.status == 403 and not aef.backend.seen


def _b64json(part: str) -> Any:
    """A JWT part (base64url without padding) decoded as JSON."""
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_a_forged_or_garbled_bearer_token_is_refused_without_a_secret_in_the_answer(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        head, payload, sig = token.split(".")
        claims = _b64json(payload)
        claims["client_id"] = "INVvictim"
        forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        for bad in (f"{head}.{forged_payload}.{sig}", f"{head}.{payload}.", "eyJhbGciOiJub25lIn0." + payload + "."):
            reply = await call(aef.port, server_only_context(aef.server_ca_pem),
                               headers=(("authorization", f"Bearer {bad}"),))
            assert reply.status == 401, reply.body
            assert "www-authenticate" in reply.headers
            assert sig not in reply.body.decode() and payload not in reply.body.decode()
        assert not aef.backend.seen


async def _raw(port: int, context: Any, request: bytes) -> bytes:
    """Send ``request`` as written over TLS; what the front answers until it closes (the request says close)."""
    reader, writer, _ = await open_connection("127.0.0.1", port, context, handshake_timeout=10,
                                              peer_entity=NOT_ONEM2M)
    try:
        writer.write(request)
        await writer.drain()
        out = b""
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            out += chunk
        return out
    finally:
        writer.close()


async def test_request_smuggling_to_the_backend_is_refused_or_reframed(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        ctx = psk_context(inv.id, inv.key)
        smuggled = b"GET /admin HTTP/1.1\r\nhost: x\r\n\r\n"
        # Content-Length and Transfer-Encoding together (CL.TE / TE.CL desync): refused, nothing forwarded
        both = (b"POST /api/items HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 5\r\n"
                b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
        answer = await _raw(aef.port, ctx, both)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
        assert aef.backend.seen == []
        # chunked with a request hidden after a chunk and hop-by-hop headers: one body, re-framed with its length
        body = b"abc\r\n0\r\n\r\n" + smuggled
        chunked = (b"POST /api/items HTTP/1.1\r\nhost: a\r\nconnection: close, keep-alive\r\nte: trailers\r\n"
                   b"keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"
                   + f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n")
        answer = await _raw(aef.port, ctx, chunked)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        [seen] = aef.backend.seen
        assert (seen.method, seen.target, seen.body) == ("POST", "/api/items", body)
        assert seen.header("content-length") == str(len(body))
        assert seen.header("host") == f"127.0.0.1:{aef.backend.port}"
        for hop in ("transfer-encoding", "te", "keep-alive", "proxy-connection"):
            assert seen.header(hop) is None, hop
        assert seen.header("connection") is None  # the client's is never forwarded; the pool keeps alive (D177)


@contextlib.asynccontextmanager
async def _front_with_nested_api(world: World) -> AsyncIterator[tuple[Front, dict[str, Any]]]:
    """The AEF front of :func:`running_front`, configured (as an operator may write the [[api]] tables) with the
    published API under /api first and a second published API of the same interface under /api/admin after it."""
    published: list[dict[str, Any]] = []

    async def admin(provider: Provider, iface: dict[str, Any], p0: str) -> tuple[ServedAPI]:
        second = await publish(world, provider.apf, provider.aef, interface=iface)
        published.append(second)
        return (ServedAPI(second["apiName"], "/api/admin", p0, second["apiId"]),)

    async with running_front(world, more_apis=admin) as aef:
        yield aef, published[0]


async def test_a_nested_api_prefix_is_authorized_as_its_own_api(world: World) -> None:
    async with _front_with_nested_api(world) as (aef, _second):
        who = await onboard(world)  # a security context for the /api API only (by apiId), PKI
        answer = await world.call(who, "PUT", f"{SECURITY}/{who.identity}", security(
            {"aefId": aef.id, "apiId": aef.api["apiId"], "prefSecurityMethods": ["PKI"]}))
        assert answer.status == 201, answer.body
        ok = await call(aef.port, pki_context(who, aef.server_ca_pem), "/api/items")
        assert ok.status == 200, ok.body
        before = len(aef.backend.seen)
        reply = await call(aef.port, pki_context(who, aef.server_ca_pem), "/api/admin/users")
        assert reply.status == 403, reply.body
        assert len(aef.backend.seen) == before


@pytest.mark.parametrize("key_file", ["aef.key", "server.key"])
def test_the_front_refuses_a_world_readable_private_key(tmp_path: Path, key_file: str) -> None:
    config = _key_files(tmp_path)
    (tmp_path / key_file).chmod(0o644)
    with pytest.raises(M2MSecError, match=key_file):
        load_config(config)


def test_the_config_accepts_private_keys_of_mode_0600(tmp_path: Path) -> None:
    """The control of the test above: the same folder with both keys 0600 loads."""
    assert load_config(_key_files(tmp_path)).private_key_pem == b"-- aef.key --"


def _key_files(tmp: Path) -> Path:
    """The configuration of test_aef_server_config.py and its files (keys 0600, the others 0644) in a 0700 folder."""
    config = files(tmp, GOOD)
    for name in ("ca.pem", "aef.crt", "server.crt"):
        (tmp / name).chmod(0o644)
    tmp.chmod(0o700)
    return config


async def test_no_key_material_in_the_logs_at_debug_level(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A PSK call, an OAUTH call and refused attempts with everything logged at DEBUG: neither the AEFPSK, the access
    token, nor the events path token appear in any log record."""
    caplog.set_level(logging.DEBUG)
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        assert (await call(aef.port, psk_context(inv.id, inv.key))).status == 200
        assert (await call(aef.port, server_only_context(aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token}"),))).status == 200
        # refused: the token on the wrong API path, a token of the PSK invoker's ID with a bad signature
        assert (await call(aef.port, server_only_context(aef.server_ca_pem), "/nowhere",
                           headers=(("authorization", f"Bearer {token}"),))).status == 404
        assert (await call(aef.port, server_only_context(aef.server_ca_pem),
                           headers=(("authorization", f"Bearer {token[:-4]}AAAA"),))).status == 401
        assert aef.running.events is not None
        path_token = aef.running.events.path.rsplit("/", 1)[1]
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert caplog.records  # the capture works
    for secret in (inv.key.hex(), inv.key.hex().upper(), token, token.split(".")[2], path_token):
        assert secret not in text


async def test_the_provider_folder_keys_are_private(world: World, tmp_path: Path) -> None:
    """`m2msec aef register` writes the AMF/APF/AEF private keys 0600 in a 0700 folder."""
    from m2msec.capif.aef.register import register

    out = tmp_path / "provider"
    await register(("127.0.0.1", world.ccf.port), CCF_HOST, world.ca_pem, world.credential(purpose="provider"), out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    keys = sorted(p.name for p in out.iterdir() if p.name.endswith(".key"))
    assert keys == ["aef.key", "amf.key", "apf.key"]
    for name in keys:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
        assert b"PRIVATE KEY" in (out / name).read_bytes()


async def _rekeyed(world: World, who: Identity) -> Identity:
    """``who`` after a certificate update (PUT onboardedInvokers with a new CSR, e.g. its key leaked): the CCF's
    answer carries the new certificate; the old one is then refused by the CCF (checked here)."""
    key = new_key()
    body = dict(who.answer, onboardingInformation={"apiInvokerPublicKey": csr_pem(key)})
    answer = await world.call(who, "PUT", f"{INVOKERS}/{who.identity}", body)
    assert answer.status == 200, answer.body
    new = Identity(who.identity, answer.json()["onboardingInformation"]["apiInvokerCertificate"].encode(),
                   key_pem(key), answer.json())
    assert new.certificate_pem != who.certificate_pem
    # the CCF: the old certificate is refused although it still chains to the CA; the new one is served
    assert (await world.call(who, "GET", f"{SECURITY}/{who.identity}")).status == 403
    assert (await world.call(new, "GET", f"{SECURITY}/{who.identity}")).status in (200, 404)
    return new


async def _rekeyed_with_context(world: World, who: Identity, iface: dict[str, Any]) -> Identity:
    """:func:`_rekeyed`, then the invoker (with its new certificate) obtains a PKI security context again."""
    new = await _rekeyed(world, who)
    answer = await world.call(new, "PUT", f"{SECURITY}/{new.identity}",
                              security({"interfaceDetails": iface, "prefSecurityMethods": ["PKI"]}))
    assert answer.status in (200, 201), answer.body
    assert answer.json()["securityInfo"][0]["selSecurityMethod"] == "PKI"
    return new


async def test_a_replaced_invoker_certificate_no_longer_authenticates_at_the_aef(world: World) -> None:
    async with running_front(world) as aef:
        old = await invoker_with(world, aef.iface, "PKI")
        assert (await call(aef.port, pki_context(old, aef.server_ca_pem))).status == 200
        new = await _rekeyed_with_context(world, old, aef.iface)
        assert (await call(aef.port, pki_context(new, aef.server_ca_pem))).status == 200
        before = len(aef.backend.seen)
        try:
            reply = await call(aef.port, pki_context(old, aef.server_ca_pem))
        except REFUSED:
            reply = None
        assert reply is None or reply.status in (401, 403), reply
        assert len(aef.backend.seen) == before


async def test_a_replaced_invoker_certificate_fails_check_authentication(world: World) -> None:
    async with running_front(world) as aef:
        old = await invoker_with(world, aef.iface, "PKI")
        await _rekeyed_with_context(world, old, aef.iface)
        body = json.dumps({"apiInvokerId": old.identity, "supportedFeatures": "0"}).encode()
        try:
            reply = await call(aef.port, pki_context(old, aef.server_ca_pem), "/aef-security/v1/check-authentication",
                               method="POST", body=body, headers=(("content-type", "application/json"),))
        except REFUSED:
            reply = None
        assert reply is None or reply.status in (401, 403), reply


async def test_a_token_obtained_before_a_rekey_is_refused_after_it(world: World) -> None:
    async with running_front(world) as aef:
        old = await invoker_with(world, aef.iface, "OAUTH")
        stolen = await access_token(world, old)  # the holder of the old (leaked) key asks for a token
        ctx = server_only_context(aef.server_ca_pem)
        assert (await call(aef.port, ctx, headers=(("authorization", f"Bearer {stolen}"),))).status == 200
        new = await _rekeyed(world, old)
        answer = await world.call(new, "PUT", f"{SECURITY}/{new.identity}",
                                  security({"interfaceDetails": aef.iface, "prefSecurityMethods": ["OAUTH"]}))
        assert answer.status in (200, 201), answer.body
        fresh = await access_token(world, new)
        assert (await call(aef.port, ctx, headers=(("authorization", f"Bearer {fresh}"),))).status == 200
        before = len(aef.backend.seen)
        reply = await call(aef.port, ctx, headers=(("authorization", f"Bearer {stolen}"),))
        assert reply.status in (401, 403), reply
        assert len(aef.backend.seen) == before


async def test_aef_register_refuses_a_credential_file_others_can_read(world: World, tmp_path: Path) -> None:
    from m2msec.cli.main import main

    (tmp_path / "ccf-ca.pem").write_bytes(world.ca_pem)
    (tmp_path / "credential").write_text(world.credential(purpose="provider"))
    (tmp_path / "credential").chmod(0o644)
    tmp_path.chmod(0o700)
    code = await asyncio.to_thread(main, ["aef", "register", "--ccf", f"127.0.0.1:{world.ccf.port}", "--ccf-host",
                                          CCF_HOST, "--ca", str(tmp_path / "ccf-ca.pem"), "--credential",
                                          str(tmp_path / "credential"), "--out", str(tmp_path / "provider")])
    assert code != 0 and not (tmp_path / "provider").exists()


async def test_an_idle_session_of_a_revoked_aefpsk_does_not_survive_the_revocation(world: World) -> None:

    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        assert (await call(aef.port, psk_context(inv.id, inv.key))).status == 200
        # the holder of the old key opens a session with the old AEFPSK and makes no call yet
        idle = await Kept.open(aef.port, psk_context(inv.id, inv.key))
        try:
            new = await _rekeyed(world, inv.identity)  # the CCF purges the context and its AEFPSKs, and notifies
            await notified(aef, 1)
            async with await world.connect(new) as conn:  # the invoker negotiates PSK again: a new AEFPSK
                answer = await conn.request("PUT", f"{SECURITY}/{new.identity}", json_body=security(
                    {"interfaceDetails": aef.iface, "prefSecurityMethods": ["PSK"]}))
                assert answer.status in (200, 201), answer.body
                tls = conn.writer.get_extra_info("tls_connection")
                new_key = expected_aefpsk(tls.master_secret().reveal(), conn.session.session_id, aef.p0)
            assert new_key != inv.key
            assert (await call(aef.port, psk_context(inv.id, new_key))).status == 200
            with pytest.raises(REFUSED):  # a new handshake with the old AEFPSK fails
                await call(aef.port, psk_context(inv.id, inv.key))
            before = len(aef.backend.seen)
            try:
                answer = await idle.get()
                status = answer.status
            except (*REFUSED, AssertionError):
                status = None
            assert status in (None, 401, 403), status
            assert len(aef.backend.seen) == before
        finally:
            idle.close()


async def test_unknown_key_ids_do_not_make_the_front_hammer_the_ccf(world: World) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "OAUTH")
        token = await access_token(world, who)
        head, payload, sig = token.split(".")
        header = _b64json(head)
        link = aef.running.app.ccf
        fetches = 0
        real = link.jwks

        async def counting() -> Any:
            nonlocal fetches
            fetches += 1
            return await real()

        link.jwks = counting  # type: ignore[method-assign]
        ctx = server_only_context(aef.server_ca_pem)
        assert (await call(aef.port, ctx, headers=(("authorization", f"Bearer {token}"),))).status == 200
        first = fetches  # the first call may fetch the key set once
        for n in range(20):
            forged_head = base64.urlsafe_b64encode(json.dumps(dict(header, kid=f"nope-{n}")).encode()).rstrip(b"=")
            reply = await call(aef.port, ctx, headers=(("authorization", f"Bearer {forged_head.decode()}.{payload}."
                                                                          f"{sig}"),))
            assert reply.status == 401, reply.body
        assert fetches - first <= 2, fetches - first
