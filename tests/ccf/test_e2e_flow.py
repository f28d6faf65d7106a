"""The whole CAPIF story over real TLS, as its users live it: a provider registers its AMF, APF and AEF; the APF
publishes an API whose interface offers PSK, PKI and OAUTH; an invoker onboards, discovers it, obtains PSK on a kept
connection and derives AEFPSK on that connection; the AEF fetches the same key; the test recomputes it from the
formula; a second invoker obtains an OAuth token the AEF verifies with the CCF's key set; the AEF is told of the
onboardings and of the offboarding; after offboarding nothing is left. Then a third-party TLS peer (``openssl
s_server``, standing for the AEF) accepts the AEFPSK the CCF handed out from our engine's client (the invoker)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator

import pytest

from m2msec.capif.tokens import VerificationKeys, verify_access_token
from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import PSK
from m2msec.transport.tls import open_connection

from .ccf_env import (
    CCF_HOST,
    INVOKERS,
    World,
    discover_path,
    interface_description,
    onboard,
    publish,
    register_provider,
    world,
)
from .test_events import EVENTS, Receiver, notifier, subscription_id

__all__ = ["world"]

SECURITY = "/capif-security/v1/trustedInvokers"
OPENSSL = shutil.which("openssl")
#: the PSK suite both sides settle on (RFC 4279 §2 plain PSK, TLS 1.2): AEFPSK is the whole key of the handshake
PSK_SUITE = "PSK-AES128-GCM-SHA256"


def formula_aefpsk(master: bytes, session_id: bytes, p0: str) -> bytes:
    """TS 33.122 A.1 over TS 33.220 B.2, written here: HMAC-SHA-256(Ks = master secret,
    S = FC 0x7A || P0 || L0 || P1 = session ID || L1), L = 2-byte big-endian length."""
    p0_bytes = p0.encode("utf-8")
    s = b"\x7a" + p0_bytes + len(p0_bytes).to_bytes(2, "big") + session_id + len(session_id).to_bytes(2, "big")
    return hmac.new(master, s, hashlib.sha256).digest()


def openssl_has_psk() -> bool:
    if OPENSSL is None:
        return False
    try:
        listed = subprocess.run([OPENSSL, "ciphers", "-v", PSK_SUITE], capture_output=True, timeout=10)
        helped = subprocess.run([OPENSSL, "s_server", "-help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and b"-psk_identity" in helped.stdout + helped.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def s_server(psk_hex: str, identity: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``openssl s_server`` with one PSK and its identity, no certificate, TLS 1.2 plain PSK only."""
    assert OPENSSL is not None
    for attempt in range(3):
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-nocert", "-psk", psk_hex, "-psk_identity",
            identity, "-no_tls1_3", "-cipher", PSK_SUITE, "-naccept", "1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            seen = b""
            while b"ACCEPT" not in seen:
                line = await asyncio.wait_for(proc.stdout.readline(), 10)
                if not line:
                    break
                seen += line
            if b"ACCEPT" not in seen:
                if b"in use" in seen and attempt < 2:
                    continue
                raise AssertionError(f"openssl s_server did not start: {seen!r}")
            yield proc, port
            return
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def read_until(stream: asyncio.StreamReader, wanted: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            chunk = await stream.read(4096)
            if not chunk:
                break
            seen += chunk
    assert wanted in seen, seen
    return seen


async def events_of(rx: Receiver, count: int) -> list[tuple[str, list[str]]]:
    out = []
    for _ in range(count):
        got = await rx.next()  # checked against the official EventNotification callback schema
        out.append((got.body["events"], got.body["eventDetail"]["apiInvokerIds"]))
    return out


async def test_the_whole_capif_story(world: World) -> None:
    # 1. the provider registers its AMF, APF and AEF (each with a CSR the CCF certifies)
    provider = await register_provider(world)
    aef, apf = provider.aef, provider.apf
    roles = {f["apiProvFuncRole"]: f["apiProvFuncId"] for f in provider.answer["apiProvFuncs"]}
    assert roles == {"AMF": provider.amf.identity, "APF": apf.identity, "AEF": aef.identity}

    # 2. the APF publishes an API whose interface offers PSK, PKI and OAUTH
    iface = interface_description(4242)
    assert iface["securityMethods"] == ["PSK", "PKI", "OAUTH"]
    p0 = "aef4242.test.example:8443/api"  # D115, written by hand: host, port, API prefix
    published = await publish(world, apf, aef, iface, name="e2e-api")

    async with notifier(world) as events, Receiver() as rx:
        # the AEF subscribes to the invokers' onboarding and offboarding
        sub = await world.call(aef, "POST", f"{EVENTS}/{aef.identity}/subscriptions", {
            "events": ["API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED"], "notificationDestination": rx.url()})
        subscription_id(sub)

        # 3. the invoker onboards and discovers the API
        inv = await onboard(world)
        found = await world.call(inv, "GET", discover_path(inv.identity, api_name="e2e-api"))
        assert found.status == 200, found.body
        [description] = found.json()["serviceAPIDescriptions"]
        assert description["apiId"] == published["apiId"]
        [profile] = description["aefProfiles"]
        assert profile["aefId"] == aef.identity
        [offered] = profile["interfaceDescriptions"]
        assert offered["fqdn"] == iface["fqdn"] and offered["securityMethods"] == ["PSK", "PKI", "OAUTH"]

        # 4. security context preferring PSK, on a connection the invoker keeps to derive AEFPSK from
        async with await world.connect(inv) as conn:
            put = await conn.request("PUT", f"{SECURITY}/{inv.identity}", json_body={
                "securityInfo": [{"interfaceDetails": offered, "prefSecurityMethods": ["PSK", "PKI", "OAUTH"]}],
                "notificationDestination": rx.url("/security"), "supportedFeatures": "0"})
            assert put.status == 201, put.body
            assert put.json()["securityInfo"][0]["selSecurityMethod"] == "PSK"
            invoker_key = conn.aefpsk(p0).reveal()
            assert conn.session.version == "TLSv1.2"
            master = conn.writer.get_extra_info("tls_connection").master_secret().reveal()
            session_id = conn.session.session_id
        expected = formula_aefpsk(master, session_id, p0)
        assert len(master) == 48 and len(session_id) == 32
        assert invoker_key == expected
        assert expected.hex().encode() not in put.body

        # 5. the AEF fetches the same key
        got = await world.call(aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
        assert got.status == 200, got.body
        [entry] = got.json()["securityInfo"]
        assert entry["selSecurityMethod"] == "PSK"
        aef_key = bytes.fromhex(entry["authenticationInfo"])
        assert aef_key == expected

        # 6. a second invoker prefers OAUTH and gets a token the AEF verifies with the CCF's key set
        second = await onboard(world)
        put2 = await world.call(second, "PUT", f"{SECURITY}/{second.identity}", {
            "securityInfo": [{"aefId": aef.identity, "prefSecurityMethods": ["OAUTH"]}],
            "notificationDestination": rx.url("/security"), "supportedFeatures": "0"})
        assert put2.status == 201 and put2.json()["securityInfo"][0]["selSecurityMethod"] == "OAUTH"
        async with await world.connect(second) as conn:
            answer = await conn.request("POST", f"/capif-security/v1/securities/{second.identity}/token", form={
                "grant_type": "client_credentials", "client_id": second.identity,
                "scope": f"3gpp#{aef.identity}:e2e-api"})
        assert answer.status == 200, answer.body
        jwks = await world.call(aef, "GET", "/capif-security/v1/jwks")
        claims = verify_access_token(
            answer.json()["access_token"], VerificationKeys.from_jwks(jwks.json()), issuer=CCF_HOST,
            aef_id=aef.identity, api_name="e2e-api", now=int(world.ccf.ccf.clock()))
        assert (claims.client_id, claims.issuer, str(claims.scope)) == (second.identity, CCF_HOST,
                                                                         f"3gpp#{aef.identity}:e2e-api")
        # the first invoker's PSK context does not give it a token (OAUTH was not selected for it)
        async with await world.connect(inv) as conn:
            refused = await conn.request("POST", f"/capif-security/v1/securities/{inv.identity}/token", form={
                "grant_type": "client_credentials", "client_id": inv.identity})
        assert refused.status == 400 and refused.json()["error"] == "unauthorized_client"

        # 7. a third-party TLS peer accepts the AEFPSK (below), then the first invoker offboards
        await third_party_peer_accepts(aef_key, invoker_key, inv.identity, aef.identity)
        gone = await world.call(inv, "DELETE", f"{INVOKERS}/{inv.identity}")
        assert gone.status == 204

        # the AEF was told of both onboardings and of the offboarding
        assert await events_of(rx, 3) == [("API_INVOKER_ONBOARDED", [inv.identity]),
                                          ("API_INVOKER_ONBOARDED", [second.identity]),
                                          ("API_INVOKER_OFFBOARDED", [inv.identity])]
        await events.drain()

    # 8. after offboarding: the AEF learns nothing more and no AEFPSK of the invoker is left
    assert (await world.call(aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")).status == 404
    assert [d for d in world.store.documents("capif-aefpsk") if d.body.get("invoker") == inv.identity] == []
    assert world.store.get_document("capif-aefpsk", f"{inv.identity} {aef.identity} {p0}") is None
    assert (await world.call(aef, "GET", f"{SECURITY}/{second.identity}")).status == 200


async def third_party_peer_accepts(aef_key: bytes, invoker_key: bytes, invoker_id: str, aef_id: str) -> None:
    """``openssl s_server -psk <AEFPSK the AEF got> -psk_identity <invokerId>`` (the AEF's side), our engine's TLS
    client with the AEFPSK the invoker derived (its side): the handshake completes and data flows both ways."""
    if not openssl_has_psk():
        pytest.skip("openssl with TLS-PSK (s_server -psk, PSK-AES128-GCM-SHA256) is not available")
    async with s_server(aef_key.hex(), invoker_id) as (proc, port):
        assert proc.stdin is not None and proc.stdout is not None
        context = TLSContext.client(ClientConfig(invoker_id, SecretKey(invoker_key), profiles=(PSK,),
                                                 peer_entity=aef_id))
        reader, writer, session = await open_connection("127.0.0.1", port, context, handshake_timeout=10)
        try:
            assert session.version == "TLSv1.2" and session.cipher == PSK_SUITE
            writer.write(b"hello AEF\n")
            await writer.drain()
            await read_until(proc.stdout, b"hello AEF\n")
            proc.stdin.write(b"hello invoker\n")
            await proc.stdin.drain()
            assert await asyncio.wait_for(reader.readline(), 10) == b"hello invoker\n"
        finally:
            writer.close()


async def test_a_wrong_key_is_refused_by_the_third_party_peer() -> None:
    """The check above can fail: the same peer refuses a key one bit off."""
    if not openssl_has_psk():
        pytest.skip("openssl with TLS-PSK is not available")
    key = bytes(range(32))
    wrong = bytes([key[0] ^ 1]) + key[1:]
    with pytest.raises(HandshakeFailed, match="bad record mac"):
        await third_party_peer_accepts(key, wrong, "INVsomeone", "AEFsomewhere")
