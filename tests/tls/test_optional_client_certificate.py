"""ServerConfig.optional_client_certificate (the CAPIF CCF: onboarding without a client certificate, everything
else with one) and certificate clients that authenticate the server only; the master secret both ends see."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_certificates import Cert, client_ctx, pki

from conftest import handshake_pair
from m2msec.errors import HandshakeFailed
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA

__all__ = ["pki"]


def optional_server(pki: dict[str, Cert]) -> TLSContext:
    s = pki["server"]
    return TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), optional_client_certificate=True,
                                          certificate=CertificateConfig(s.pem, s.key_pem, pki["root"].pem)))


def anonymous_client(pki: dict[str, Cert], trust: str = "root") -> TLSContext:
    return TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_authentication_only=True,
                                          certificate=CertificateConfig(b"", b"", pki[trust].pem)))


def test_a_client_without_certificate_completes_and_is_known_as_none(pki: dict[str, Cert]) -> None:
    s, c = handshake_pair(optional_server(pki), anonymous_client(pki))
    assert s.session is not None and c.session is not None
    assert s.session.peer_certificate is None and s.session.authentication == "none"
    assert c.session.peer_certificate == pki["server"].cert  # the server was authenticated
    assert s.master_secret().reveal() == c.master_secret().reveal() and len(s.master_secret()) == 48
    assert s.session.session_id == c.session.session_id and 1 <= len(s.session.session_id) <= 32


def test_a_certificate_sent_is_verified_as_always(pki: dict[str, Cert]) -> None:
    s, _ = handshake_pair(optional_server(pki), client_ctx(pki))
    assert s.session is not None and s.session.peer_certificate == pki["client"].cert
    assert s.session.authentication == "certificate"
    for who in ("stranger", "expired", "outside"):
        with pytest.raises(HandshakeFailed):
            handshake_pair(optional_server(pki), client_ctx(pki, who))


def test_the_default_still_requires_a_certificate(pki: dict[str, Cert]) -> None:
    s = pki["server"]
    server = TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,),
                                            certificate=CertificateConfig(s.pem, s.key_pem, pki["root"].pem)))
    with pytest.raises(HandshakeFailed):
        handshake_pair(server, anonymous_client(pki))


def test_the_anonymous_client_still_checks_the_server(pki: dict[str, Cert]) -> None:
    with pytest.raises(HandshakeFailed):
        handshake_pair(optional_server(pki), anonymous_client(pki, trust="other_root"))


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_openssl_s_client_without_certificate(pki: dict[str, Cert], tmp_path: Path) -> None:
    """A third-party client with no certificate (openssl s_client) completes the handshake with such a server."""
    import asyncio

    from m2msec.transport.tls import start_server

    (tmp_path / "root.pem").write_bytes(pki["root"].pem)

    async def main() -> str:
        seen: list[object] = []

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                seen.append(transport.get_extra_info("m2msec_session"))
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(b"hello\n")
                transport.close()

        server = await start_server(Echo, "127.0.0.1", 0, optional_server(pki))
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-CAfile", str(tmp_path / "root.pem"),
            "-verify_return_error", "-quiet", stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        server.close()
        assert seen and getattr(seen[0], "peer_certificate", "x") is None
        return out.decode()

    assert "hello" in asyncio.run(main())
