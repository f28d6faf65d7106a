"""Revocation takes effect (issue 14, part 2): the PSK table and CRLs are reloaded for both sides (HTTP and
coaps), a live SA ends at its next request when its PSK entry is removed or changed, its certificate is revoked,
or it reaches the maximum SA lifetime (CRLs: test_revocation_crl.py). Real TLS/DTLS handshakes over loopback,
real files."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_gateway import RecordingBackend, backend, onem2m, start_gateway  # noqa: F401
from test_gateway import connect as psk_connect

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_AE, LIGHT2_ID, LIGHT2_KEY
from m2msec import http1
from m2msec.errors import HandshakeFailed, TLSError
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.http_gateway import Gateway
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry, TomlPSKTable
from m2msec.saef import EstablishedSA
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

#: these tests read why a removed identity is refused: the gateway tells them (D34's debugging option)
REVEAL = True


def write_table(path: Path, *rows: tuple[str, str, str]) -> None:
    """Write the TOML table and move its mtime forward (the reloader compares mtime, size and inode)."""
    path.write_text("".join(f'[[psk]]\nidentity = "{i}"\nkey = "{k}"\nentity = "{e}"\n' for i, k, e in rows))
    path.chmod(0o600)
    bump(path)


_BUMPS = itertools.count(1)


def bump(path: Path) -> None:
    """A new mtime for every write, even within the filesystem's timestamp granularity."""
    stamp = time.time_ns() + 10**9 * next(_BUMPS)
    os.utime(path, ns=(stamp, stamp))


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def refused_handshake(gw: Gateway, identity: str, key: str) -> str:
    try:
        sa = await connect(gw, identity, key)
    except HandshakeFailed as exc:
        return str(exc)
    await sa.close()
    return "accepted"


# -- coaps helpers: a CoAP "CSE" that answers 2.05 to every request, and a DTLS PSK client


class CoapCSE(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[coap.Message] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = coap.Message.decode(data)
        self.received.append(msg)
        self.last_addr = addr
        self.transport.sendto(coap.Message(coap.MessageType.ACK, coap.make_code(2, 5), msg.message_id, msg.token,
                                           [(coap.ONEM2M_RSC, coap.encode_uint(2000))], b"{}").encode(), addr)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()
        self.lost = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@pytest.fixture
async def coap_cse() -> AsyncIterator[tuple[CoapCSE, int]]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(CoapCSE, ("127.0.0.1", 0))
    yield proto, transport.get_extra_info("sockname")[1]
    transport.close()


class CoapsPeer:
    def __init__(self, transport: Any, inbox: Inbox) -> None:
        self.transport, self.inbox = transport, inbox
        self.mid = 100

    async def get(self, origin: str) -> coap.Message:
        self.mid += 1
        msg = coap.Message(coap.MessageType.CON, coap.GET, self.mid, b"tk", [(coap.ONEM2M_FR, origin.encode())])
        self.transport.sendto(msg.encode())
        return coap.Message.decode(await asyncio.wait_for(self.inbox.q.get(), 5))


_PEERS: list[CoapsPeer] = []
_SAS: list[EstablishedSA] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _PEERS:
        _PEERS.pop().transport.close()
    while _SAS:
        await _SAS.pop().close()


async def connect(gw: Gateway, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> EstablishedSA:
    _SAS.append(await psk_connect(gw, identity, key))
    return _SAS[-1]


async def coaps_connect(port: int, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> CoapsPeer:
    ctx = TLSContext.dtls_client(ClientConfig(identity, SecretKey.from_hex(key), profiles=(ONEM2M_DTLS_PSK,),
                                              peer_entity=HOME_GATEWAY_CSE_ID))
    transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", port, ctx, handshake_timeout=5)
    assert isinstance(inbox, Inbox)
    _PEERS.append(CoapsPeer(transport, inbox))
    return _PEERS[-1]


def rsc(msg: coap.Message) -> int:
    value = msg.option(coap.ONEM2M_RSC)
    assert value is not None
    return coap.decode_uint(value)


# -- item 1: one reload path, both sides


async def test_coaps_only_gateway_reloads_the_table_and_ends_the_removed_sa(
    coap_cse: tuple[CoapCSE, int], tmp_path: Path
) -> None:
    """With only --coap-backend the table used to be read once: a removed entry kept handshaking forever."""
    cse, cse_port = coap_cse
    path = tmp_path / "psk.toml"
    write_table(path, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE), (LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE))
    table = TomlPSKTable(path)
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=cse_port, port=0,
                                  reveal_unknown_psk_identity=REVEAL), table)
    await gw.start()
    try:
        light1, light2 = await coaps_connect(gw.port), await coaps_connect(gw.port, LIGHT2_ID, LIGHT2_KEY)
        assert rsc(await light1.get(LIGHT1_AE)) == 2000
        write_table(path, (LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE))  # revoke Light 1 only
        await eventually(lambda: LIGHT1_ID not in table)
        with pytest.raises(HandshakeFailed, match="alert unknown psk identity"):
            await coaps_connect(gw.port)
        forwarded = len(cse.received)
        answer = await light1.get(LIGHT1_AE)  # the live SA's next request: refused, not forwarded, peer closed
        assert (answer.code, rsc(answer)) == (coap.make_code(4, 3), 4106)
        assert b"PSK identity" in answer.payload and b"removed" in answer.payload
        assert len(cse.received) == forwarded
        await asyncio.wait_for(light1.inbox.lost.wait(), 5)  # close_notify from the gateway
        assert rsc(await light2.get(LIGHT2_AE)) == 2000  # the other entry is untouched
    finally:
        await gw.close()


async def test_http_side_ends_the_live_sa_of_a_removed_entry(backend: RecordingBackend, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "psk.toml"
    write_table(path, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE), (LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE))
    table = TomlPSKTable(path)
    gw = await start_gateway(backend.port, table, reveal_unknown_psk_identity=REVEAL, reload_interval=0.05)
    try:
        light1, light2 = await connect(gw), await connect(gw, LIGHT2_ID, LIGHT2_KEY)
        assert (await light1.request(onem2m(LIGHT1_AE))).status == 200
        write_table(path, (LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE))
        await eventually(lambda: LIGHT1_ID not in table)
        assert "unknown psk identity" in await refused_handshake(gw, LIGHT1_ID, LIGHT1_KEY)
        forwarded = len(backend.requests)
        resp = await light1.request(onem2m(LIGHT1_AE))
        assert (resp.status, resp.header("x-m2m-rsc"), resp.header("connection")) == (403, "4106", "close")
        assert b"was removed" in resp.body
        assert len(backend.requests) == forwarded
        with pytest.raises((ConnectionError, TLSError, http1.HTTPError, OSError)):
            await light1.request(onem2m(LIGHT1_AE), timeout=5)
        assert (await light2.request(onem2m(LIGHT2_AE))).status == 200
        await light2.close()
    finally:
        await gw.close()


async def test_both_sides_share_one_reload(
    backend: RecordingBackend, coap_cse: tuple[CoapCSE, int], tmp_path: Path, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    """HTTP and coaps on one TOML table: one edit revokes on both; a broken edit is one ERROR naming the file."""
    path = tmp_path / "psk.toml"
    write_table(path, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE), (LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE))
    table = TomlPSKTable(path)
    http_gw = await start_gateway(backend.port, table, reveal_unknown_psk_identity=REVEAL, reload_interval=0.05)
    coaps_gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=coap_cse[1], port=0,
                                        reveal_unknown_psk_identity=REVEAL,
                                        reload_interval=0.05), table)
    await coaps_gw.start()
    try:
        path.write_text('[[psk]]\nidentity = "x"\nkey = "zz')  # an editor's half-written save
        bump(path)
        await eventually(lambda: any("PSK table not reloaded" in r.message for r in caplog.records))
        await asyncio.sleep(0.3)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(path) in errors[0].getMessage() and "invalid TOML" in errors[0].getMessage()
        assert LIGHT1_KEY not in caplog.text and LIGHT2_KEY not in caplog.text
        sa = await connect(http_gw)  # the last good table is still served meanwhile
        write_table(path, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE))  # fixed, and Light 2 revoked
        await eventually(lambda: LIGHT2_ID not in table)
        assert "unknown psk identity" in await refused_handshake(http_gw, LIGHT2_ID, LIGHT2_KEY)
        with pytest.raises(HandshakeFailed, match="alert unknown psk identity"):
            await coaps_connect(coaps_gw.port, LIGHT2_ID, LIGHT2_KEY)
        assert (await sa.request(onem2m(LIGHT1_AE))).status == 200
        assert rsc(await (await coaps_connect(coaps_gw.port)).get(LIGHT1_AE)) == 2000
        await sa.close()
    finally:
        await coaps_gw.close()
        await http_gw.close()


async def test_deleted_table_serves_nothing_after_the_grace(
    backend: RecordingBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    path = tmp_path / "psk.toml"
    write_table(path, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE))
    table = TomlPSKTable(path, failure_grace=0.5)
    gw = await start_gateway(backend.port, table, reveal_unknown_psk_identity=REVEAL, reload_interval=0.05)
    try:
        live = await connect(gw)
        path.unlink()
        await eventually(lambda: "PSK table not reloaded" in caplog.text)
        assert str(path) in caplog.text and "No such file" in caplog.text
        await eventually(lambda: len(table) == 0)
        assert "no PSK is served" in caplog.text
        assert "unknown psk identity" in await refused_handshake(gw, LIGHT1_ID, LIGHT1_KEY)
        resp = await live.request(onem2m(LIGHT1_AE))
        assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
        write_table(path, (LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE))  # the operator puts it back
        await eventually(lambda: LIGHT1_ID in table)
        again = await connect(gw)
        assert (await again.request(onem2m(LIGHT1_AE))).status == 200
        await again.close()
    finally:
        await gw.close()


# -- item 2: live SAs end when their entry changes, and at the maximum lifetime


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (PSKEntry(LIGHT1_ID, SecretKey.from_hex("00" * 8), LIGHT1_AE), b"PSK of"),
        (PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), "Clight-other"), b"entity bound to"),
    ],
)
async def test_changed_key_or_binding_ends_the_live_sa(
    backend: RecordingBackend, change: PSKEntry, reason: bytes  # noqa: F811
) -> None:
    table = MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)])
    gw = await start_gateway(backend.port, table, reveal_unknown_psk_identity=REVEAL)
    try:
        sa = await connect(gw)
        assert (await sa.request(onem2m(LIGHT1_AE))).status == 200
        table.replace([change])
        resp = await sa.request(onem2m(LIGHT1_AE))
        assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
        assert reason in resp.body
        assert len(backend.requests) == 1
    finally:
        await gw.close()


async def test_max_sa_lifetime_http_and_coaps(backend: RecordingBackend, coap_cse: tuple[CoapCSE, int]) -> None:  # noqa: F811
    table = MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)])
    http_gw = await start_gateway(backend.port, table, reveal_unknown_psk_identity=REVEAL, max_sa_lifetime=0.5)
    coaps_gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=coap_cse[1], port=0,
                                        reveal_unknown_psk_identity=REVEAL,
                                        max_sa_lifetime=0.5), table)
    await coaps_gw.start()
    try:
        sa, peer = await connect(http_gw), await coaps_connect(coaps_gw.port)
        assert (await sa.request(onem2m(LIGHT1_AE))).status == 200
        assert rsc(await peer.get(LIGHT1_AE)) == 2000
        await asyncio.sleep(0.6)
        resp = await sa.request(onem2m(LIGHT1_AE))
        assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
        assert b"maximum SA lifetime" in resp.body
        answer = await peer.get(LIGHT1_AE)
        assert (answer.code, rsc(answer)) == (coap.make_code(4, 3), 4106)
        assert b"maximum SA lifetime" in answer.payload
        fresh = await connect(http_gw)  # a new handshake starts a new lifetime
        assert (await fresh.request(onem2m(LIGHT1_AE))).status == 200
        await fresh.close()
    finally:
        await coaps_gw.close()
        await http_gw.close()


async def test_sqlite_store_removal_ends_the_live_sa(backend: RecordingBackend, tmp_path: Path) -> None:  # noqa: F811
    from m2msec.keys.sqlite_store import SQLitePSKStore

    store = SQLitePSKStore(tmp_path / "keys.db")
    store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE))
    gw = await start_gateway(backend.port, store, reveal_unknown_psk_identity=REVEAL)
    try:
        sa = await connect(gw)
        assert (await sa.request(onem2m(LIGHT1_AE))).status == 200
        SQLitePSKStore(tmp_path / "keys.db").remove(LIGHT1_ID)  # 'm2msec keys remove' from another process
        await asyncio.sleep(1.1)  # LOOKUP_CACHE_SECONDS
        resp = await sa.request(onem2m(LIGHT1_AE))
        assert (resp.status, resp.header("x-m2m-rsc")) == (403, "4106")
    finally:
        await gw.close()


async def test_coaps_nothing_from_the_cse_reaches_an_ended_peer(coap_cse: tuple[CoapCSE, int]) -> None:
    """A notification from the CSE for a peer whose PSK was removed is not relayed; the peer is closed."""
    cse, cse_port = coap_cse
    table = MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)])
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=cse_port, port=0,
                                  reveal_unknown_psk_identity=REVEAL), table)
    await gw.start()
    try:
        peer = await coaps_connect(gw.port)
        assert rsc(await peer.get(LIGHT1_AE)) == 2000  # the relay's CSE-side socket now exists
        relay_addr = cse.last_addr
        table.replace([])
        notify = coap.Message(coap.MessageType.NON, coap.POST, 7, b"nt", [(coap.ONEM2M_FR, b"/in-cse")], b"{}")
        cse.transport.sendto(notify.encode(), relay_addr)
        await asyncio.wait_for(peer.inbox.lost.wait(), 5)
        assert peer.inbox.q.empty()
    finally:
        await gw.close()
