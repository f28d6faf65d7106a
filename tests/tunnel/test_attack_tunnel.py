"""attack17b: second hostile review of ``m2msec tunnel`` (issue 17).

Each test shows one finding; it failed on main at commit e538f11 and passes since the fixes that follow the merge.

2. ``m2msec tunnel`` (like ``m2msec request``: both take ``cli/credentials.py``) has no way to give CRLs for the
   peer gateway's certificate, though :class:`~m2msec.saef.CertificateCredentials` has ``crl_pem`` and the engine
   checks it (the library control below). A CSE-ID certificate of the IN-CSE that the CA revoked (its key
   stolen) still receives the MN-CSE's registration and every request it sends through the tunnel: whoever holds
   the revoked key impersonates the registrar, and the operator cannot stop it short of a new CA.
5. The TLS connection is made as soon as a plain connection is accepted, and a connection that never sends a byte
   lives until ``idle_timeout`` (60 s). Any local process (no credential needed) that opens ``max_connections``
   silent connections holds every slot of the tunnel, and as many TLS connections at the gateway (its
   per-credential cap, D47, which they share), for a minute at a time and again on reconnecting: the CSE's
   registration and retargeted requests are reset meanwhile. Low: D107 already trusts local users with the
   credential itself; but a slowloris needs no more than a connect().
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tunnel_env import IN_CSE, MN_CSE, Certificates, EchoBackend, PlainClient, make_certificates, onem2m, start_gateway

from m2msec import http1
from m2msec.pki import create_crl
from m2msec.saef import CertificateCredentials
from m2msec.tunnel import Tunnel, TunnelConfig


@pytest.fixture(scope="module")
def certs() -> Certificates:
    return make_certificates()


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    rec = await EchoBackend().start()
    yield rec
    await rec.close()


def crl_revoking_gateway(certs: Certificates) -> bytes:
    """A CRL of the provider's CA revoking the IN-CSE gateway's certificate."""
    crl = create_crl(certs.ca, [certs.gateway.certificate.serial_number])
    return crl.public_bytes(serialization.Encoding.PEM)


async def refused(port: int) -> bool:
    """True when a request through the tunnel on ``port`` gets no answer (the tunnel reset the connection)."""
    client = await PlainClient.connect(port)
    try:
        await client.request(onem2m(f"/{MN_CSE}"), timeout=10)
    except (ConnectionError, AssertionError, OSError, http1.HTTPError):
        return True
    finally:
        await client.close()
    return False


async def test_library_tunnel_refuses_a_revoked_gateway(certs: Certificates, backend: EchoBackend) -> None:
    """Control (passes on main): the engine refuses a revoked server certificate when given the CRL."""
    gw = await start_gateway(backend.port, certs)
    creds = CertificateCredentials(certs.mn_cse.certificate_pem(), certs.mn_cse.private_key_pem(),
                                   certs.ca.certificate_pem(), peer_entity=IN_CSE, crl_pem=crl_revoking_gateway(certs))
    try:
        async with Tunnel(TunnelConfig("127.0.0.1", gw.port, creds)) as tunnel:
            assert await refused(tunnel.port)
            assert tunnel.failed == 1
    finally:
        await gw.close()
    assert backend.requests == []


async def test_cli_tunnel_can_refuse_a_revoked_gateway(tmp_path: Path, certs: Certificates,
                                                        backend: EchoBackend) -> None:
    (tmp_path / "mn.crt").write_bytes(certs.mn_cse.certificate_pem())
    key = tmp_path / "mn.key"
    key.write_bytes(certs.mn_cse.private_key_pem())
    key.chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(certs.ca.certificate_pem())
    (tmp_path / "ca.crl").write_bytes(crl_revoking_gateway(certs))
    gw = await start_gateway(backend.port, certs)  # its certificate is revoked: its key is in the wrong hands
    try:
        # without a CRL option, the tunnel carries the MN-CSE's requests to the revoked certificate's holder
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "m2msec", "tunnel", "--to", f"127.0.0.1:{gw.port}", "--entity-id", IN_CSE,
            "--cert", str(tmp_path / "mn.crt"), "--cert-key", str(key), "--ca", str(tmp_path / "ca.crt"),
            "--crl", str(tmp_path / "ca.crl"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        try:
            assert line.startswith("listening on 127.0.0.1:"), "m2msec tunnel has no --crl"
            assert await refused(int(line.strip().rpartition(":")[2]))
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await gw.close()
    assert backend.requests == []


async def test_cli_tunnel_without_crl_reaches_a_revoked_gateway(tmp_path: Path, certs: Certificates,
                                                           backend: EchoBackend) -> None:
    """The harm (passes on main): the revoked gateway gets the MN-CSE's request through ``m2msec tunnel``, which
    has no option to know better."""
    (tmp_path / "mn.crt").write_bytes(certs.mn_cse.certificate_pem())
    key = tmp_path / "mn.key"
    key.write_bytes(certs.mn_cse.private_key_pem())
    key.chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(certs.ca.certificate_pem())
    gw = await start_gateway(backend.port, certs)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "m2msec", "tunnel", "--to", f"127.0.0.1:{gw.port}", "--entity-id", IN_CSE,
            "--cert", str(tmp_path / "mn.crt"), "--cert-key", str(key), "--ca", str(tmp_path / "ca.crt"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        try:
            assert line.startswith("listening on 127.0.0.1:"), line
            assert not await refused(int(line.strip().rpartition(":")[2]))
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await gw.close()
    assert len(backend.requests) == 1


async def test_silent_plain_connections_do_not_hold_the_tunnel(certs: Certificates, backend: EchoBackend) -> None:
    gw = await start_gateway(backend.port, certs)
    try:
        config = TunnelConfig("127.0.0.1", gw.port, CertificateCredentials(
            certs.mn_cse.certificate_pem(), certs.mn_cse.private_key_pem(), certs.ca.certificate_pem(),
            peer_entity=IN_CSE), max_connections=2, connect_timeout=1.0)
        async with Tunnel(config) as tunnel:
            # a local process connects twice and sends nothing (no credential needed)
            silent = [await asyncio.open_connection("127.0.0.1", tunnel.port) for _ in range(2)]
            try:
                await asyncio.sleep(3.0)  # three connect timeouts later: they hold both slots (and two TLS SAs)
                assert not await refused(tunnel.port), (
                    f"the CSE's request was reset: {tunnel.active} silent connections hold the tunnel")
            finally:
                for _, writer in silent:
                    writer.close()
    finally:
        await gw.close()
