"""attack-final: hostile review of D40-D49 (fair shares, connection caps, sealed SQLite rows, CRL rollback).

Each test states what should hold and fails while it does not."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import sqlite3
import time
from pathlib import Path

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import (
    HOME_GATEWAY_CSE_ID,
    LIGHT1_AE,
    LIGHT1_ID,
    LIGHT1_KEY,
    LIGHT2_AE,
    LIGHT2_ID,
    LIGHT2_KEY,
    make_table,
)
from m2msec import http1
from m2msec.crl import CRLFile
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import SQLitePSKStore
from m2msec.pki import create_ca, create_crl
from m2msec.tls.engine import ClientConfig, SessionInfo, TLSContext
from m2msec.transport.limits import SourceLimiter, sa_key
from m2msec.transport.tls import open_connection

SP = "m2m.provider.com"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
MASTER_V1 = SecretKey.from_hex("00112233445566778899aabbccddeeff" * 2)
V1_STORE = Path(__file__).parent / "keys" / "data" / "v1-store.db"


def _raw(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(sql, args).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


# --- (c) SQLite sealing (D44) ----------------------------------------------------------------------------------

def test_sqlite_a_v1_check_value_put_back_does_not_reseal_a_forged_binding(tmp_path: Path) -> None:
    """D44 says a format-1 row put back later is refused. But the format lives in the ``meta`` check value,
    which is itself replayable: put back the format-1 check value (from any pre-migration backup) together with
    a format-1 row whose entity was edited, and the next open "migrates" it, sealing the forged binding."""
    db = tmp_path / "keys.db"
    shutil.copyfile(V1_STORE, db)
    db.chmod(0o600)
    old_check = _raw(db, "SELECT value FROM meta WHERE name = 'check'")[0][0]
    old_row = _raw(db, "SELECT nonce, sealed FROM psk WHERE identity = ?", LIGHT1_ID)[0]
    SQLitePSKStore(db, MASTER_V1).close()  # migrated to format 2
    _raw(db, "UPDATE meta SET value = ? WHERE name = 'check'", old_check)  # format 1 again
    _raw(db, "UPDATE psk SET nonce = ?, sealed = ?, entity = 'CAdmin' WHERE identity = ?", *old_row, LIGHT1_ID)
    with SQLitePSKStore(db, MASTER_V1) as store:
        entry = store.lookup(LIGHT1_ID)
    assert entry is None or entry.entity != "CAdmin", "a forged entity binding was sealed by a replayed migration"


# --- (d) CRL rollback (D42) ------------------------------------------------------------------------------------

def _install(path: Path, data: bytes, step: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(time.time_ns() + step * 10**9,) * 2)


def test_crl_rollback_in_two_steps_through_a_file_without_that_issuer_is_refused(tmp_path: Path) -> None:
    """D42 compares only with the CRLs in force, and "a new issuer is accepted": write a file without the
    issuer's CRL (accepted), then the old CRL (accepted as a new issuer). The revoked serial is trusted again."""
    ca = create_ca("rollback root", permitted_dns=[SP])
    other = create_ca("other root", permitted_dns=[SP])
    old = create_crl(ca, [], now=NOW - datetime.timedelta(days=1)).public_bytes(serialization.Encoding.PEM)
    new = create_crl(ca, [7], now=NOW).public_bytes(serialization.Encoding.PEM)
    unrelated = create_crl(other, [], now=NOW).public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "crls.pem"
    path.write_bytes(new + unrelated)
    crls = CRLFile(path, trusted=[ca.certificate, other.certificate])
    assert 7 in crls.crls.index[ca.certificate.subject][0]
    _install(path, unrelated, 1)  # step 1: the issuer's CRL is gone
    crls.poll()
    _install(path, old + unrelated, 2)  # step 2: its older CRL is "a new issuer"
    crls.poll()
    mine = crls.crls.index.get(ca.certificate.subject)
    assert mine is None or 7 in mine[0], "an older CRL was put back in force: serial 7 is no longer revoked"


# --- (a) per-credential keys (D46/D47) -------------------------------------------------------------------------

def _ca_key_and_cert(dn: x509.Name) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(dn).issuer_name(dn).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str, serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _session(cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> SessionInfo:
    return SessionInfo(is_server=True, version="TLSv1.2", cipher="ECDHE-ECDSA-AES128-GCM-SHA256", psk_identity=None,
                       entity=None, server_name=None, identity_hint=None, session_id=b"",
                       peer_certificate=cert, peer_chain=chain)


def test_two_clients_of_different_cas_with_the_same_name_and_serial_are_different_credentials() -> None:
    """``sa_key`` names a certificate client by issuer DN and serial. Two trusted CAs may share a DN (a CA key
    rollover keeps the name and may restart serials; a co-tenant SP's CA, or a sub-CA it signs, can pick any
    DN): a client of one then counts against the other's per-credential connection cap (D47) and body-memory
    share (D46). Here an attacker holding the cap's worth of connections locks the victim out."""
    dn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Provider Device CA")])
    victim_ca_key, victim_ca = _ca_key_and_cert(dn)
    rogue_ca_key, rogue_ca = _ca_key_and_cert(dn)
    victim = _leaf(victim_ca_key, victim_ca, "victim", 0x1001)
    attacker = _leaf(rogue_ca_key, rogue_ca, "attacker", 0x1001)
    assert victim.fingerprint(hashes.SHA256()) != attacker.fingerprint(hashes.SHA256())
    per_sa = SourceLimiter(2)
    for _ in range(2):
        assert per_sa.acquire(sa_key(_session(attacker, (attacker, rogue_ca))))
    assert per_sa.acquire(sa_key(_session(victim, (victim, victim_ca)))), \
        "the victim's first connection was refused: the attacker's connections counted against its credential"


# --- (a) eviction of a request the CSE already has (D46) -------------------------------------------------------

class _SlowCSE:
    """Loopback CSE that records each request's RI, then answers after ``delay`` seconds."""

    def __init__(self, delay: float, body_size: int = 0) -> None:
        self.delay, self.body_size = delay, body_size
        self.seen: list[str] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[object]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            conn = h11.Connection(h11.SERVER)
            req = await http1.read_message(conn, reader, max_body=1 << 20)
            if req is not None:
                self.seen.append(req.header("x-m2m-ri") or "")
                await asyncio.sleep(self.delay)
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("x-m2m-rsc", "2001"), ("x-m2m-ri", req.header("x-m2m-ri") or "")],
                    body=b"r" * self.body_size, status=201))
        except (http1.HTTPError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def _open(identity: str, key: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w, _ = await open_connection("127.0.0.1", port, TLSContext.client(ClientConfig(
        identity, SecretKey.from_hex(key), peer_entity=HOME_GATEWAY_CSE_ID)))
    return r, w


def _post(origin: str, ri: str, size: int) -> bytes:
    return (f"POST /{HOME_GATEWAY_CSE_ID} HTTP/1.1\r\nhost: x\r\nx-m2m-origin: {origin}\r\nx-m2m-ri: {ri}\r\n"
            f"content-type: application/json;ty=4\r\ncontent-length: {size}\r\n\r\n").encode() + b"x" * size


async def test_eviction_does_not_tell_a_client_to_retry_a_request_the_cse_already_executed() -> None:
    """Light 2 POSTs (a CREATE) 6000 bytes; the gateway has forwarded it and waits for the CSE. Light 1 sends
    5000 bytes into the full budget: Light 2 holds more than Light 1 would, so its connection is evicted (task
    cancelled mid-forward) and answered 503 / rsc 5000 / Retry-After, "the request is fine, retry" (D33). The CSE
    has executed it already: a retry creates it twice, and Light 1 can do this to every large request of Light 2."""
    cse = _SlowCSE(delay=1.0)
    async with cse as cse_port:
        gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse_port), port=0, max_body=8000,
                                   max_body_memory=10000), make_table())
        await gw.start()
        writers: list[asyncio.StreamWriter] = []
        try:
            r2, w2, _ = await open_connection("127.0.0.1", gw.port, TLSContext.client(ClientConfig(
                LIGHT2_ID, SecretKey.from_hex(LIGHT2_KEY), peer_entity=HOME_GATEWAY_CSE_ID)))
            writers.append(w2)
            w2.write(_post(LIGHT2_AE, "victim", 6000))
            await asyncio.sleep(0.3)  # the victim's CREATE is at the CSE, its 6000 bytes still counted
            _r1, w1, _ = await open_connection("127.0.0.1", gw.port, TLSContext.client(ClientConfig(
                LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), peer_entity=HOME_GATEWAY_CSE_ID)))
            writers.append(w1)
            w1.write(_post(LIGHT1_AE, "attacker", 5000))
            resp = await asyncio.wait_for(http1.read_message(h11.Connection(h11.CLIENT), r2), 10)
            assert resp is not None and "victim" in cse.seen
            told_to_retry = resp.status == 503 and resp.header("retry-after") is not None
            assert not told_to_retry, (
                f"the victim's request reached the CSE (evicted={gw.body_budget.evicted}) yet it was answered "
                f"{resp.status} rsc {resp.header('x-m2m-rsc')} Retry-After {resp.header('retry-after')}")
            assert resp.status == 201 and gw.body_budget.evicted == 0  # not evictable while at the CSE
        finally:
            for w in writers:
                w.close()
            await gw.close()


# --- (a) block-wise share (D48): a shed stored answer turns a POST's next block into a second POST --------------

def test_shedding_a_stored_post_answer_does_not_send_the_post_to_the_cse_again() -> None:
    """Light 2 POSTs; the CSE's 2.01 answer is too large for one DTLS record, so the gateway keeps it and serves
    it block by block (the CSE never answered block-wise). Light 1 fills the block-wise budget with an upload:
    D48 sheds Light 2's stored answer. Light 2's next Block2 request (the POST repeated with Block2 NUM 1, RFC
    7959 §2.4) is then forwarded to the CSE as a POST: the CSE creates the resource a second time, by Light 1's
    doing. A shed answer of a non-repeatable request must be answered by the gateway (e.g. 4.08), never resent."""
    from m2msec.gateway import coap
    from m2msec.gateway.coap import Message, MessageType
    from m2msec.gateway.coap_blockwise import Block, BlockwiseLimits, ByteBudget, PeerBlockwise, ToClient, ToCSE

    budget = ByteBudget(4096)
    mids = iter(range(0x7000, 0x8000))
    victim = PeerBlockwise(BlockwiseLimits(), budget, lambda: next(mids), owner="psk:light2")
    attacker = PeerBlockwise(BlockwiseLimits(), budget, lambda: next(mids), owner="psk:light1")
    post = Message(MessageType.CON, coap.POST, 0x10, b"\x0b", [(coap.URI_PATH, b"cse-in")], b"{}")
    (to_cse,) = victim.from_client(post, 0.0)
    assert isinstance(to_cse, ToCSE)
    created = Message(MessageType.ACK, coap.make_code(2, 1), 0x10, b"\x0b", [], b"c" * 3000)
    (first,) = victim.from_cse(created, 0.0)
    assert first.message.option(coap.BLOCK2) is not None and victim.held == 3000  # stored, block 0 sent
    for num in range(2):  # Light 1's upload: the second block sheds Light 2's stored answer
        up = Message(MessageType.CON, coap.POST, 0x200 + num, b"\xaa", [(coap.URI_PATH, b"cse-in")],
                     b"u" * 1024).with_options((coap.BLOCK1, Block(num, True, 6).encode()))
        attacker.from_client(up, 0.0)
    assert victim.held == 0, "precondition: the stored answer was shed"
    again = Message(MessageType.CON, coap.POST, 0x11, b"\x0b", [(coap.URI_PATH, b"cse-in")], b"{}").with_options(
        (coap.BLOCK2, Block(1, False, 6).encode()))
    actions = victim.from_client(again, 1.0)
    resent = [a for a in actions if isinstance(a, ToCSE) and a.message.code == coap.POST]
    assert not resent, "the victim's POST goes to the CSE a second time after its stored answer was shed"
    (reply,) = actions
    assert isinstance(reply, ToClient) and coap.format_code(reply.message.code) == "4.08"


# --- (d) key-file directories (D43): a symlink chain through a writable directory ------------------------------

def test_a_key_file_reached_through_a_second_symlink_in_a_writable_directory_is_refused(tmp_path: Path) -> None:
    """D43 checks the directories of the link and of its final target, but not those of the links in between:
    ``safe/psk.toml -> shared/current -> safe/psk-v3.toml`` with ``shared`` writable by everyone passes, and any
    user may repoint ``shared/current`` (between the check and the read, at the next reload) to a file of theirs."""
    import pytest

    from m2msec.errors import CredentialsLoadError
    from m2msec.keys.table import check_file_permissions

    safe, shared = tmp_path / "safe", tmp_path / "shared"
    safe.mkdir(mode=0o700)
    shared.mkdir()
    target = safe / "psk-v3.toml"
    target.write_text('[[psk]]\nidentity = "a@b.c"\nkey = "00112233445566778899aabbccddeeff"\n')
    target.chmod(0o600)
    (shared / "current").symlink_to(target)
    shared.chmod(0o777)  # others may repoint "current"
    link = safe / "psk.toml"
    link.symlink_to(shared / "current")
    with pytest.raises(CredentialsLoadError, match="writable"):
        check_file_permissions(link)


def test_crl_an_unsigned_crl_with_a_huge_number_does_not_lock_out_every_later_genuine_crl(tmp_path: Path) -> None:
    """CRL files are often fetched from plain-HTTP distribution points (CRLs authenticate themselves by their
    signature). Nothing checks that signature when the file is loaded: a CRL in the CA's name signed by anyone,
    with cRLNumber 2**100, is taken, and from then on D42 refuses every genuine CRL of that CA as "older"."""
    ca = create_ca("rollback root", permitted_dns=[SP])
    path = tmp_path / "ca.crl"
    path.write_bytes(create_crl(ca, [], now=NOW).public_bytes(serialization.Encoding.PEM))
    crls = CRLFile(path, trusted=[ca.certificate])
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject).last_update(NOW)
              .next_update(NOW + datetime.timedelta(days=3650)).add_extension(x509.CRLNumber(2**100), critical=False)
              .sign(forger, hashes.SHA256()))
    _install(path, forged.public_bytes(serialization.Encoding.PEM), 1)
    crls.poll()
    _install(path, create_crl(ca, [7], now=NOW + datetime.timedelta(seconds=5)).public_bytes(
        serialization.Encoding.PEM), 2)  # the CA's next genuine CRL revokes serial 7
    crls.poll()
    assert 7 in crls.crls.index[ca.certificate.subject][0], \
        "the genuine CRL was refused as older than a CRL nobody trusted signed"


async def test_a_response_that_does_not_fit_is_not_answered_retry_after_the_cse_executed_the_request() -> None:
    """Same root cause without eviction: Light 1 holds 5000 bytes of unfinished upload (less than Light 2 will
    hold, so it cannot be evicted); Light 2's CREATE is forwarded and executed, its 6000-byte answer does not fit,
    and Light 2 is told 503 / rsc 5000 / Retry-After: "retry". The retry creates the resource twice."""
    cse = _SlowCSE(delay=0.0, body_size=6000)
    async with cse as cse_port:
        gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse_port), port=0, max_body=8000,
                                   max_body_memory=10000), make_table())
        await gw.start()
        writers: list[asyncio.StreamWriter] = []
        try:
            _r1, w1 = await _open(LIGHT1_ID, LIGHT1_KEY, gw.port)
            writers.append(w1)
            w1.write(_post(LIGHT1_AE, "attacker", 8000)[:-3000])  # 5000 of 8000 body bytes, then stalls
            for _ in range(300):
                if gw.body_budget.used == 5000:
                    break
                await asyncio.sleep(0.01)
            r2, w2 = await _open(LIGHT2_ID, LIGHT2_KEY, gw.port)
            writers.append(w2)
            w2.write(_post(LIGHT2_AE, "victim", 100))
            resp = await asyncio.wait_for(http1.read_message(h11.Connection(h11.CLIENT), r2), 10)
            assert resp is not None and "victim" in cse.seen
            assert not (resp.status == 503 and resp.header("retry-after") is not None), (
                f"the CSE executed the victim's CREATE, yet it was answered {resp.status} rsc "
                f"{resp.header('x-m2m-rsc')} Retry-After {resp.header('retry-after')}")
            assert (resp.status, resp.header("x-m2m-rsc")) == (500, "5000")
            assert b"the request was executed" in resp.body
        finally:
            for w in writers:
                w.close()
            await gw.close()
