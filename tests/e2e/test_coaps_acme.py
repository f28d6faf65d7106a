"""coaps:// in front of a real CSE's CoAP binding (ACME, TS-0008): DTLS 1.2 PSK with TLS_PSK_WITH_AES_128_CCM_8,
libcoap's coap-client (OpenSSL and GnuTLS builds) and our own DTLS client as Entity A, the 4106 check, and
openssl s_client -dtls1_2 as a raw DTLS peer."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from acme_cse import CSE_ID, CSE_RN, needs_acme, running_acme

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY
from m2msec.gateway import coap
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import ClientConfig, TLSContext
from m2msec.tls.profiles import ONEM2M_DTLS_PSK
from m2msec.transport.dtls import create_dtls_endpoint

# libcoap 4.3.1's -k takes the key as literal text: an ASCII test key, bound to ACME's admin originator
ADMIN_ID, ADMIN_KEY_TEXT = "admin@in.provider.com", "coaps-test-key"
pytestmark = [
    needs_acme,
    pytest.mark.interop,
]


@pytest.fixture(scope="module")
def acme_coap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_acme(tmp_path_factory.mktemp("acme-coap"), coap=True) as (_, coap_port):
        assert coap_port is not None
        yield coap_port


@pytest.fixture
async def gateway(acme_coap: int) -> AsyncIterator[CoapsGateway]:
    table = MemoryPSKTable([
        PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE),
        PSKEntry(ADMIN_ID, SecretKey(ADMIN_KEY_TEXT.encode()), "CAdmin"),
    ])
    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=acme_coap, port=0), table)
    await gw.start()
    yield gw
    await gw.close()


async def coap_client(binary: str, port: int, origin: str, identity: str = ADMIN_ID,
                      key: str = ADMIN_KEY_TEXT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", "7", "-B", "3", "-m", "get", "-u", identity, "-k", key,
        "-O", f"279,{origin}", "-O", "283,ri-libcoap", "-O", "271,3",
        f"coaps://127.0.0.1:{port}/{CSE_RN}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.parametrize("binary", ["coap-client-openssl", "coap-client-gnutls"])
async def test_libcoap_client_through_coaps_gateway(gateway: CoapsGateway, binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed")
    _, out, err = await coap_client(binary, gateway.port, "CAdmin")
    assert '"m2m:cb"' in out and f'"csi": "/{CSE_ID}"' in out, err[-2000:]
    _, out, err = await coap_client(binary, gateway.port, "Cimpostor")  # not the SA's identity
    assert "m2m:cb" not in out
    log = out + err
    assert "4.03" in log and "307:\\x10\\x0A" in log, log[-3000:]  # oneM2M-RSC 4106 from the gateway itself
    assert gateway.protocol is not None and gateway.protocol.handshaking == 0


async def test_unknown_identity_is_refused(gateway: CoapsGateway) -> None:
    if shutil.which("coap-client-openssl") is None:
        pytest.skip("coap-client-openssl not installed")
    _, out, err = await coap_client("coap-client-openssl", gateway.port, "CAdmin", identity="nobody@x.com")
    assert "m2m:cb" not in out
    # RFC 4279 §2 hiding: no unknown_psk_identity alert, silence as for a wrong key; the gateway knows why
    assert "unknown psk identity" not in (out + err).lower(), (out + err)[-3000:]
    assert gateway.protocol is not None
    assert [p.conn.psk_failure for p in gateway.protocol.peers.values()] == ["unknown psk identity"]


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.q.put_nowait(data)


async def request(transport: asyncio.DatagramTransport, app: Inbox, msg: coap.Message) -> coap.Message:
    for _ in range(4):  # CON retransmission (RFC 7252 §4.2), kept short for loopback
        transport.sendto(msg.encode())
        try:
            while True:
                reply = coap.Message.decode(await asyncio.wait_for(app.q.get(), 2))
                if reply.token == msg.token:
                    return reply
        except TimeoutError:
            continue
    raise AssertionError("no CoAP response")


async def test_entity_a_registers_its_ae_over_coaps(gateway: CoapsGateway) -> None:
    ctx = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                                              peer_entity=CSE_ID))
    transport, app, session = await create_dtls_endpoint(Inbox, "127.0.0.1", gateway.port, ctx)
    assert session.cipher == "PSK-AES128-CCM8"  # TS-0003 §10.2.2 mandatory DTLS suite
    ae = json.dumps({"m2m:ae": {"rn": "coaplight", "api": "Ncoaplight", "rr": False, "srv": ["3"]}}).encode()
    create = coap.Message(coap.MessageType.CON, coap.POST, 0x1001, b"\x11", [
        (coap.URI_PATH, CSE_RN.encode()), (12, coap.encode_uint(50)), (coap.ONEM2M_TY, coap.encode_uint(2)),
        (coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_FR, LIGHT1_AE.encode()), (coap.ONEM2M_RQI, b"r-create"),
    ], ae)
    try:
        created = await request(transport, app, create)  # type: ignore[arg-type]
        assert coap.format_code(created.code) == "2.01", created.payload
        assert coap.decode_uint(created.option(coap.ONEM2M_RSC) or b"") == 2001
        assert not any(n in coap.IDENTITY_OPTIONS for n, _ in created.options)
        retrieve = coap.Message(coap.MessageType.CON, coap.GET, 0x1002, b"\x12", [
            (coap.URI_PATH, CSE_RN.encode()), (coap.URI_PATH, b"coaplight"), (coap.ONEM2M_RVI, b"3"),
            (coap.ONEM2M_FR, LIGHT1_AE.encode()), (coap.ONEM2M_RQI, b"r-get"),
        ])
        got = await request(transport, app, retrieve)  # type: ignore[arg-type]
        assert coap.format_code(got.code) == "2.05" and b'"aei": "Clight-AE1"' in got.payload
        hijack = coap.Message(coap.MessageType.CON, coap.GET, 0x1003, b"\x13", [
            (coap.URI_PATH, CSE_RN.encode()), (coap.ONEM2M_FR, b"CAdmin"), (coap.ONEM2M_RQI, b"r-x")])
        refused = await request(transport, app, hijack)  # type: ignore[arg-type]
        assert coap.format_code(refused.code) == "4.03"
        assert coap.decode_uint(refused.option(coap.ONEM2M_RSC) or b"") == 4106
    finally:
        transport.close()


async def test_openssl_s_client_dtls_handshake(gateway: CoapsGateway) -> None:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{gateway.port}", "-psk", LIGHT1_KEY,
        "-psk_identity", LIGHT1_ID, "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0", "-keymatexport",
        "EXPORTER-oneM2M-Connection", "-keymatexportlen", "48",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        text = b""
        while b"Keying material" not in text:
            text += await asyncio.wait_for(proc.stdout.read(4096), 10)
        assert b"Cipher is PSK-AES128-CCM8" in text
        await asyncio.sleep(0.1)
        assert gateway.protocol is not None and len(gateway.protocol.peers) == 1
    finally:
        proc.kill()
        await proc.wait()


async def test_gateway_cli_serves_coaps(acme_coap: int, tmp_path: Path) -> None:
    """`m2msec gateway --coap-backend` as a user runs it: a real process, coap-client through it."""
    import sys

    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{ADMIN_ID}"\nkey = "{ADMIN_KEY_TEXT.encode().hex()}"\nentity = "CAdmin"\n')
    table.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(table),
        "--coap-backend", f"127.0.0.1:{acme_coap}", "--coaps-listen", "127.0.0.1:0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("m2msec coaps gateway on 127.0.0.1:"), line
        port = int(line.split()[4].rsplit(":", 1)[1])
        _, out, err = await coap_client("coap-client-openssl", port, "CAdmin")
        assert '"m2m:cb"' in out, err[-2000:]
    finally:
        proc.terminate()
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0 and ADMIN_KEY_TEXT not in err_bytes.decode()


async def test_certificate_clients_over_coaps(acme_coap: int, tmp_path: Path) -> None:
    """TS-0003 §10.2.3 for DTLS: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 with an AE-ID certificate, PSK alongside."""
    from m2msec.pki import CertificateFlavour, create_ca, issue
    from m2msec.tls.engine import CertificateConfig
    from m2msec.tls.profiles import ECDHE_ECDSA_DTLS

    sp = "m2m.provider.com"
    ca = create_ca("provider root", permitted_dns=[sp])
    server = issue(ca, CertificateFlavour.CSE_ID, CSE_ID, sp_domain=sp)
    admin = issue(ca, CertificateFlavour.AE_ID, f"//{sp}/{CSE_ID}/CAdmin")
    table = MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)])
    gw = CoapsGateway(CoapsConfig(
        backend_host="127.0.0.1", backend_port=acme_coap, port=0, profiles=(ONEM2M_DTLS_PSK, ECDHE_ECDSA_DTLS),
        certificate=CertificateConfig(server.certificate_pem(), server.private_key_pem(),
                                      trust_anchors_pem=ca.certificate_pem()),
        cse_id=CSE_ID, sp_id=sp), table)
    await gw.start()
    try:
        own = CertificateConfig(admin.certificate_pem(), admin.private_key_pem(), ca.certificate_pem())
        ctx = TLSContext.dtls_client(ClientConfig(None, None, profiles=(ECDHE_ECDSA_DTLS,), certificate=own,
                                                  peer_entity=CSE_ID))
        transport, app, session = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
        assert session.cipher == "ECDHE-ECDSA-AES128-CCM8" and session.authentication == "certificate"
        try:
            get = coap.Message(coap.MessageType.CON, coap.GET, 0x2001, b"\x21", [
                (coap.URI_PATH, CSE_RN.encode()), (coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_FR, b"CAdmin"),
                (coap.ONEM2M_RQI, b"r-cert")])
            got = await request(transport, app, get)  # type: ignore[arg-type]
            assert coap.format_code(got.code) == "2.05" and b'"m2m:cb"' in got.payload  # the AE-ID stem is From
            other = coap.Message(coap.MessageType.CON, coap.GET, 0x2002, b"\x22", [
                (coap.URI_PATH, CSE_RN.encode()), (coap.ONEM2M_FR, b"Cother"), (coap.ONEM2M_RQI, b"r-x")])
            refused = await request(transport, app, other)  # type: ignore[arg-type]
            assert coap.decode_uint(refused.option(coap.ONEM2M_RSC) or b"") == 4106
        finally:
            transport.close()
        # a real peer: openssl s_client -dtls1_2 with the client certificate
        (tmp_path / "c.crt").write_bytes(admin.certificate_pem())
        (tmp_path / "c.key").write_bytes(admin.private_key_pem())
        (tmp_path / "c.key").chmod(0o600)
        (tmp_path / "ca.crt").write_bytes(ca.certificate_pem())
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{gw.port}", "-cert", str(tmp_path / "c.crt"),
            "-key", str(tmp_path / "c.key"), "-CAfile", str(tmp_path / "ca.crt"),
            "-cipher", "ECDHE-ECDSA-AES128-CCM8:@SECLEVEL=0",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            text = b""
            while b"Verify return code" not in text:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), 10)
                assert chunk, text
                text += chunk
            assert b"Cipher is ECDHE-ECDSA-AES128-CCM8" in text and b"Verify return code: 0 (ok)" in text
        finally:
            proc.kill()
            await proc.wait()
        # PSK clients still work on the same port
        light1 = ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_DTLS_PSK,),
                              peer_entity=CSE_ID)
        psk = TLSContext.dtls_client(light1)
        t2, _, s2 = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, psk)
        assert s2.cipher == "PSK-AES128-CCM8"
        t2.close()
    finally:
        await gw.close()


# --- RFC 7959 block-wise transfer through the gateway (issue 14) ---

LONG_RQI = "r" * 200  # ACME's own 1024-byte Block2 plus this no longer fits one DTLS record: the gateway re-blocks


def admin_context() -> TLSContext:
    key = SecretKey(ADMIN_KEY_TEXT.encode())
    return TLSContext.dtls_client(ClientConfig(ADMIN_ID, key, profiles=(ONEM2M_DTLS_PSK,), peer_entity=CSE_ID))


def onem2m(kind: coap.MessageType, code: int, mid: int, token: bytes, path: list[str], rqi: str = "rq-blk",
           *extra: tuple[int, bytes], payload: bytes = b"") -> coap.Message:
    options = [(coap.URI_PATH, p.encode()) for p in path]
    options += [(coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_FR, b"CAdmin"), (coap.ONEM2M_RQI, rqi.encode()), *extra]
    return coap.Message(kind, code, mid, token, [], payload).with_options(*options)


async def test_block_wise_create_and_retrieve_with_our_client(gateway: CoapsGateway) -> None:
    from m2msec.gateway.coap_blockwise import MAX_MESSAGE, Block

    transport, app, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gateway.port, admin_context())
    con = coap.MessageType.CON
    try:
        cnt = json.dumps({"m2m:cnt": {"rn": "blkown", "mbs": 100000}}).encode()
        made = await request(transport, app, onem2m(  # type: ignore[arg-type]
            con, coap.POST, 0x3001, b"\x31", [CSE_RN], "rq-cnt", (12, coap.encode_uint(50)),
            (coap.ONEM2M_TY, coap.encode_uint(3)), payload=cnt))
        assert coap.format_code(made.code) == "2.01", made.payload
        body = json.dumps({"m2m:cin": {"rn": "c1", "con": "x" * 3000}}).encode()
        chunks = [body[i:i + 512] for i in range(0, len(body), 512)]
        for num, chunk in enumerate(chunks):  # Block1, SZX 5 (RFC 7959 §2.5)
            block = Block(num, num + 1 < len(chunks), 5)
            reply = await request(transport, app, onem2m(  # type: ignore[arg-type]
                con, coap.POST, 0x3100 + num, bytes([0x40 + num]), [CSE_RN, "blkown"], "rq-cin",
                (12, coap.encode_uint(50)), (coap.ONEM2M_TY, coap.encode_uint(4)), (coap.BLOCK1, block.encode()),
                payload=chunk))
            want = "2.31" if block.more else "2.01"
            assert coap.format_code(reply.code) == want, reply.payload
        assert coap.decode_uint(reply.option(coap.ONEM2M_RSC) or b"") == 2001
        # RETRIEVE with a 200-byte RQI: ACME answers in 1024-byte blocks that no longer fit a DTLS record with
        # it; the gateway collects them and serves its own (RFC 7959 §2.4) in the largest SZX that fits
        got = bytearray()
        num, szx, mid = 0, 6, 0x3200
        while True:  # the client follows the block size of the answers (RFC 7959 §2.4)
            opts = [(coap.BLOCK2, Block(num, False, szx).encode())] if num else []
            reply = await request(transport, app, onem2m(  # type: ignore[arg-type]
                con, coap.GET, mid + num, b"\x50", [CSE_RN, "blkown", "c1"], LONG_RQI, *opts))
            assert coap.format_code(reply.code) == "2.05" and len(reply.encode()) <= MAX_MESSAGE
            assert reply.option(coap.ONEM2M_RQI) == LONG_RQI.encode()
            got += reply.payload
            block = Block.decode(reply.option(coap.BLOCK2) or b"")
            assert block.szx == 5  # 1024 + 200-byte RQI does not fit: 512
            if not block.more:
                break
            num, szx = block.num + 1, block.szx
        assert json.loads(got)["m2m:cin"]["con"] == "x" * 3000
    finally:
        transport.close()


async def libcoap(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "coap-client-openssl", "-v", "7", "-B", "3", "-u", ADMIN_ID, "-k", ADMIN_KEY_TEXT, "-O", "279,CAdmin",
        "-O", "271,3", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


async def test_block_wise_with_libcoap(gateway: CoapsGateway, tmp_path: Path) -> None:
    """coap-client -b: Block1 CREATE answered 2.31 by the gateway, then Block2 GETs served by the gateway.
    (libcoap drops answers that carry the oneM2M critical options it does not know, 259/271/283/307, after
    logging them: the assertions read its log.)"""
    if shutil.which("coap-client-openssl") is None:
        pytest.skip("coap-client-openssl not installed")
    url = f"coaps://127.0.0.1:{gateway.port}/{CSE_RN}"
    await libcoap(gateway.port, "-m", "post", "-t", "50", "-O", "267,0x03", "-O", "283,rq-cnt",
                  "-e", '{"m2m:cnt":{"rn":"blklib","mbs":100000}}', url)
    cin = tmp_path / "cin.json"
    cin.write_text(json.dumps({"m2m:cin": {"rn": "c1", "con": "y" * 3000}}))
    log = await libcoap(gateway.port, "-m", "post", "-t", "50", "-b", "512", "-O", "267,0x04", "-O", "283,rq-cin",
                        "-f", str(cin), url + "/blklib")
    blocks = -(-cin.stat().st_size // 512)
    for num in range(blocks - 1):
        assert "c:2.31 " in log and f"[ Block1:{num}/M/512 ]" in log, log[-3000:]
    assert f"Block1:{blocks - 1}/_/512" in log and "c:2.01" in log and "307:\\x07\\xD1" in log, log[-3000:]
    log = await libcoap(gateway.port, "-m", "get", "-b", "256", "-O", "283,rq-get", url + "/blklib/c1")
    assert "c:2.05" in log and "Block2:0/M/256" in log and "Size2:3" in log, log[-3000:]  # early negotiation
    log = await libcoap(gateway.port, "-m", "get", "-O", f"283,{LONG_RQI}", url + "/blklib/c1")
    assert "c:2.05" in log and "Block2:0/M/512" in log, log[-3000:]  # re-blocked to fit the DTLS record
