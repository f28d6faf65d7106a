"""Certificate-based SAEF (TS-0003 §8.2.2.2, §10.2.3) against real peers: ``openssl s_client``/``s_server`` and
``gnutls-cli``/``gnutls-serv`` with mutual ECDHE-ECDSA, refusals of bad client certificates seen from OpenSSL,
and PSK and certificate clients side by side on one gateway port.

Certificates come from :mod:`m2msec.pki` (a CA with DNS name constraints only: OpenSSL 3.0 rejects scheme-less
AE-ID URIs under URI constraints), except the out-of-constraints one, which ``issue`` refuses to make.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import LIGHT1_AE, LIGHT1_ID
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.table import MemoryPSKTable
from m2msec.pki import (
    END_ENTITY_BASIC_CONSTRAINTS,
    END_ENTITY_KEY_USAGE,
    CertificateFlavour,
    Issued,
    create_ca,
    create_crl,
    issue,
    write_issued,
)
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_PSK
from m2msec.transport.tls import open_connection

from .conftest import (
    EXPORT_LABEL,
    EXPORT_LEN,
    GNUTLS_CLI,
    GNUTLS_SERV,
    OPENSSL,
    TIMEOUT,
    EchoServer,
    Peer,
    echo_server,
    http_backend,
    listening_peer,
    needs_gnutls,
    needs_openssl,
    run_peer,
    s_client,
)

pytestmark = [pytest.mark.interop, needs_openssl]

#: TS-0003 §10.2.3 mandatory suite, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256
CIPHER = "ECDHE-ECDSA-AES128-SHA256"
GNUTLS_PRIORITY = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+ECDHE-ECDSA:-CIPHER-ALL:+AES-128-CBC:-MAC-ALL:+SHA256"
SP_DOMAIN = "m2m.provider.com"
SERVER_CSE, CLIENT_CSE = "in-cse", "mn-cse-123456"
SERVER_NAME = f"{SERVER_CSE}.{SP_DOMAIN}"
_EXPORT_ARGS = ("-keymatexport", EXPORT_LABEL, "-keymatexportlen", str(EXPORT_LEN))
_PEM_CERT = rb"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----"


@dataclass(frozen=True)
class Pki:
    root: Issued
    leaves: dict[str, Issued]  # server, client, and the client certificates our server must refuse
    crl_pem: bytes  # the root's CRL, revoking leaves["revoked"]


def _outside(ca: Issued, now: datetime) -> Issued:
    """A CSE-ID certificate outside the CA's DNS constraints, which m2msec.pki refuses to issue."""
    assert ca.private_key is not None
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(END_ENTITY_BASIC_CONSTRAINTS, critical=True)
        .add_extension(END_ENTITY_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{CLIENT_CSE}.evil.example")]), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
                       critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return Issued(cert, key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    now = datetime.now(UTC)
    root = create_ca("m2msec interop root", permitted_dns=[SP_DOMAIN])
    other = create_ca("someone else's root", permitted_dns=[SP_DOMAIN])

    def cse(ca: Issued, cse_id: str = CLIENT_CSE, *, now: datetime | None = None, days: int = 365) -> Issued:
        return issue(ca, CertificateFlavour.CSE_ID, cse_id, sp_domain=SP_DOMAIN, now=now, days=days)

    leaves = {
        "server": cse(root, SERVER_CSE), "client": cse(root), "stranger": cse(other),
        "expired": cse(root, now=now - timedelta(days=3), days=1), "revoked": cse(root), "outside": _outside(root, now),
    }
    crl = create_crl(root, [leaves["revoked"].certificate.serial_number])
    return Pki(root, leaves, crl.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Files:
    """PEM files for the third-party tools: ``<who>.crt``, ``<who>.key`` (mode 0600) and ``root.crt``."""

    dir: Path

    def crt(self, who: str) -> Path:
        return self.dir / f"{who}.crt"

    def key(self, who: str) -> Path:
        return self.dir / f"{who}.key"

    @property
    def root(self) -> Path:
        return self.dir / "root.crt"


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> Files:
    for who, issued in pki.leaves.items():
        write_issued(issued, tmp_path / who)  # the key file is created 0600
        assert Files(tmp_path).key(who).stat().st_mode & 0o777 == 0o600
    Files(tmp_path).root.write_bytes(pki.root.certificate_pem())
    return Files(tmp_path)


def _credential(pki: Pki, who: str, *, crl: bool = False) -> CertificateConfig:
    leaf = pki.leaves[who]
    return CertificateConfig(leaf.certificate_pem(), leaf.private_key_pem(),
                             trust_anchors_pem=pki.root.certificate_pem(), crl_pem=pki.crl_pem if crl else None)


def _server_context(pki: Pki, *, crl: bool = False) -> TLSContext:
    credential = _credential(pki, "server", crl=crl)
    return TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=credential))


def _client_context(pki: Pki) -> TLSContext:
    return TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,), peer_entity=SERVER_CSE,
                                          certificate=_credential(pki, "client")))


def cert_s_client(port: int, files: Files, who: str | None, *args: str) -> contextlib.AbstractAsyncContextManager[Peer]:
    """``openssl s_client`` with the certificate ``who`` (None: no client certificate), TLS 1.2, ``CIPHER``."""
    assert OPENSSL is not None
    cred = ("-cert", files.crt(who), "-key", files.key(who)) if who is not None else ()
    return run_peer(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *cred, "-CAfile", files.root,
                    "-cipher", CIPHER, "-no_tls1_3", *args)


def _printed(pattern: bytes, output: bytes) -> str:
    match = re.search(pattern, output)
    assert match is not None, f"{pattern!r} not in:\n{output.decode(errors='replace')}"
    return match[1].decode()


async def _check_s_client(server: EchoServer, files: Files, pki: Pki) -> None:
    """A good certificate client: handshake, echo, cipher, both certificates verified, export agrees."""
    async with cert_s_client(server.port, files, "client", *_EXPORT_ARGS) as peer:
        printed = await peer.expect(rb"Keying material: ([0-9A-F]+)\s")
        accepted = await server.next_accepted()
        await peer.send(b"ping from openssl\n")
        await peer.expect(rb"\nping from openssl\n")
    session = accepted.session
    assert _printed(rb"Cipher is (\S+)", peer.output) == session.cipher == CIPHER
    assert (session.authentication, session.psk_identity, session.version) == ("certificate", None, "TLSv1.2")
    assert session.peer_certificate == pki.leaves["client"].certificate
    assert _printed(rb"Verify return code: (\d+ \(\w+\))", peer.output) == "0 (ok)"  # our server's certificate
    assert bytes.fromhex(printed[1].decode()) == accepted.export


async def test_s_client_certificate_to_engine_server(pki: Pki, files: Files) -> None:
    async with echo_server(_server_context(pki)) as server:
        await _check_s_client(server, files, pki)


async def test_engine_client_certificate_to_s_server(pki: Pki, files: Files) -> None:
    assert OPENSSL is not None
    argv = ("s_server", "-cert", files.crt("server"), "-key", files.key("server"), "-CAfile", files.root,
            "-Verify", "1", "-cipher", CIPHER, "-no_tls1_3", *_EXPORT_ARGS)
    async with listening_peer(lambda port: (OPENSSL, *argv, "-accept", f"127.0.0.1:{port}"), rb"ACCEPT") as (
        peer, port
    ):
        reader, writer, session = await open_connection("127.0.0.1", port, _client_context(pki), handshake_timeout=5)
        try:
            ours = writer.get_extra_info("tls_connection").export_keying_material(EXPORT_LABEL, EXPORT_LEN)
            printed = await peer.expect(rb"Keying material: ([0-9A-F]+)\s")
            writer.write(b"ping from m2msec\n")
            await peer.expect(rb"ping from m2msec\n")
            await peer.send(b"pong from openssl\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"pong from openssl\n"
        finally:
            writer.close()
    out = peer.output
    assert _printed(rb"CIPHER is (\S+)", out) == session.cipher == CIPHER
    assert (session.authentication, session.peer_certificate) == ("certificate", pki.leaves["server"].certificate)
    # -Verify 1: s_server's verify callback accepted the client's leaf, then it printed that certificate
    assert re.search(rb"\ndepth=0 [^\n]*\nverify return:1\n", out) and b"verify error" not in out, out.decode()
    client_pem = re.search(rb"Client certificate\n(" + _PEM_CERT + rb")", out)
    assert client_pem is not None and x509.load_pem_x509_certificate(client_pem[1]) == pki.leaves["client"].certificate
    assert bytes.fromhex(printed[1].decode()) == ours.reveal()


@needs_gnutls
async def test_gnutls_cli_certificate_to_engine_server(pki: Pki, files: Files) -> None:
    assert GNUTLS_CLI is not None
    async with echo_server(_server_context(pki)) as server, run_peer(
        GNUTLS_CLI, "-p", str(server.port), "--x509certfile", files.crt("client"), "--x509keyfile",
        files.key("client"), "--x509cafile", files.root, "--verify-hostname", SERVER_NAME,
        "--priority", GNUTLS_PRIORITY, "--keymatexport", EXPORT_LABEL, "--keymatexportsize", str(EXPORT_LEN),
        "127.0.0.1",
    ) as peer:
        accepted = await server.next_accepted()
        assert (accepted.session.cipher, accepted.session.authentication) == (CIPHER, "certificate")
        assert accepted.session.peer_certificate == pki.leaves["client"].certificate
        # gnutls-cli 3.7.9 crashes after some PSK handshakes (conftest Family.gnutls_cli_crashes); not after this
        # one, so its exit status is checked strictly
        await peer.send(b"ping from gnutls\n")
        peer.close_stdin()
        assert await peer.wait() == 0, peer.output.decode(errors="replace")
    assert b"- Status: The certificate is trusted." in peer.output  # our server's certificate, with hostname
    assert b"\nping from gnutls\n" in peer.output
    assert bytes.fromhex(_printed(rb"- Key material: ([0-9a-f]+)\s", peer.output)) == accepted.export


@needs_gnutls
async def test_engine_client_certificate_to_gnutls_serv(pki: Pki, files: Files) -> None:
    assert GNUTLS_SERV is not None
    argv = (GNUTLS_SERV, "--echo", "--x509certfile", files.crt("server"), "--x509keyfile", files.key("server"),
            "--x509cafile", files.root, "--require-client-cert", "--verify-client-cert", "--priority", GNUTLS_PRIORITY)
    async with listening_peer(lambda port: (*argv, "-p", str(port)), rb"listening on IPv4 .*done") as (peer, port):
        reader, writer, session = await open_connection("127.0.0.1", port, _client_context(pki), handshake_timeout=5)
        try:
            # RFC 9266 tls-exporter, which gnutls-serv prints (32 bytes, empty context)
            binding = writer.get_extra_info("tls_connection").export_keying_material(
                "EXPORTER-Channel-Binding", 32, context=b"")
            writer.write(b"ping from m2msec\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"ping from m2msec\n"
            printed = await peer.expect(rb"'tls-exporter': ([0-9a-f]+)\s")
        finally:
            writer.close()
    assert (session.cipher, session.peer_certificate) == (CIPHER, pki.leaves["server"].certificate)
    assert b"- Status: The certificate is trusted." in peer.output  # --verify-client-cert: our client's chain
    client_pem = re.search(_PEM_CERT, peer.output)
    assert client_pem is not None and x509.load_pem_x509_certificate(client_pem[0]) == pki.leaves["client"].certificate
    assert bytes.fromhex(printed[1].decode()) == binding.reveal()


@pytest.mark.parametrize(
    ("who", "client_sees", "server_logs"),
    [
        pytest.param("stranger", rb"alert unknown ca", "unable to get local issuer certificate", id="other-ca"),
        pytest.param("expired", rb"alert certificate expired", "certificate has expired", id="expired"),
        pytest.param("revoked", rb"alert certificate revoked", "certificate revoked", id="revoked"),
        pytest.param("outside", rb"alert certificate unknown", "permitted subtree violation", id="outside-constraints"),
        pytest.param(None, rb"alert handshake failure", "peer did not return a certificate", id="no-certificate"),
    ],
)
async def test_bad_client_certificate_refused_then_server_keeps_serving(
    who: str | None, client_sees: bytes, server_logs: str, pki: Pki, files: Files, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="m2msec.transport")
    async with echo_server(_server_context(pki, crl=True)) as server:
        async with cert_s_client(server.port, files, who) as peer:
            assert await peer.wait() != 0
        assert re.search(client_sees, peer.output), peer.output.decode(errors="replace")
        assert server.accepted.empty()
        assert any("failed" in r.getMessage() and server_logs in r.getMessage() for r in caplog.records), \
            [r.getMessage() for r in caplog.records]
        await _check_s_client(server, files, pki)  # the same server (and CRL) still lets the good client in


def _request(origin: str) -> bytes:
    return (f"GET /~/{SERVER_CSE}/light HTTP/1.1\r\nHost: {SERVER_NAME}\r\nX-M2M-Origin: {origin}\r\n"
            "X-M2M-RI: req-0001\r\nX-M2M-RVI: 3\r\nx-m2msec-sa-identity: Cforged-AE\r\nConnection: close\r\n\r\n"
            ).encode()


async def _exchange(client: contextlib.AbstractAsyncContextManager[Peer], origin: str) -> tuple[int, dict[str, str]]:
    """One raw HTTP/1.1 request through an ``s_client -quiet``; returns (status, lower-cased headers)."""
    async with client as peer:
        await peer.send(_request(origin))
        await peer.wait()  # the gateway answers, then closes (Connection: close)
    match = re.search(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n(.*?)\r\n\r\n", peer.output, re.S)
    assert match is not None, peer.output.decode(errors="replace")
    return int(match[1]), dict(line.split(": ", 1) for line in match[2].decode("latin-1").lower().split("\r\n"))


async def test_psk_and_certificate_clients_through_one_gateway_port(
    pki: Pki, files: Files, table: MemoryPSKTable
) -> None:
    async with http_backend() as (backend_port, requests):
        gateway = Gateway(GatewayConfig(
            backend=Backend("127.0.0.1", backend_port), host="127.0.0.1", port=0, profiles=(ONEM2M_PSK, ECDHE_ECDSA),
            handshake_timeout=5, backend_timeout=5, certificate=_credential(pki, "server", crl=True),
            cse_id=SERVER_CSE, sp_id=SP_DOMAIN), table)
        await gateway.start()
        try:
            psk_client = s_client(gateway.port, "-quiet", "-cipher", "PSK-AES128-CBC-SHA256", "-no_tls1_3")
            status, headers = await _exchange(psk_client, LIGHT1_AE)
            assert (status, headers["x-m2m-rsc"]) == (200, "2000")
            [forwarded] = requests
            assert forwarded.values("x-m2msec-sa-identity") == [LIGHT1_AE]
            assert forwarded.values("x-m2msec-psk-identity") == [LIGHT1_ID]

            # TS-0003 §8.2.2.2: a CSE-ID certificate's SA is associated with the SP-relative CSE-ID
            status, headers = await _exchange(cert_s_client(gateway.port, files, "client", "-quiet"), f"/{CLIENT_CSE}")
            assert (status, headers["x-m2m-rsc"]) == (200, "2000")
            forwarded = requests[1]
            assert forwarded.values("x-m2msec-sa-identity") == [f"/{CLIENT_CSE}"]  # the forged copy is gone
            assert forwarded.values("x-m2m-origin") == [f"/{CLIENT_CSE}"]
            assert forwarded.values("x-m2msec-psk-identity") == []

            # TS-0003 §7.2.1: any other From on that SA is ORIGINATOR_NOT_AUTHENTICATED and not forwarded
            status, headers = await _exchange(cert_s_client(gateway.port, files, "client", "-quiet"), "/other-cse")
            assert (status, headers["x-m2m-rsc"], headers["x-m2m-ri"]) == (403, "4106", "req-0001")
            assert len(requests) == 2
        finally:
            await gateway.close()
