"""``openssl s_client`` as a third-party invoker through the AEF front: TLS-PSK with an AEFPSK derived here from the
formula (never by m2msec), and PKI with the invoker certificate the CCF issued; an HTTP request reaches the backend
with the invoker ID. Skipped when openssl lacks TLS-PSK."""

from __future__ import annotations

from pathlib import Path

from ccf.ccf_env import World, world

from .aef_env import needs_openssl_psk, openssl_s_client
from .aef_server_env import invoker_with, psk_invoker, running_front

__all__ = ["world"]

REQUEST = b"GET /api/items?via=openssl HTTP/1.1\r\nHost: aef.test.example\r\nConnection: close\r\n\r\n"


async def s_client(port: int, *options: str) -> tuple[int, bytes]:
    return await openssl_s_client(port, REQUEST, *options)


@needs_openssl_psk
async def test_openssl_psk_invoker_reaches_the_backend(world: World) -> None:
    async with running_front(world) as aef:
        inv = await psk_invoker(world, aef.iface, aef.p0)
        _, output = await s_client(aef.port, "-psk", inv.key.hex(), "-psk_identity", inv.id,
                                   "-cipher", "ECDHE-PSK-AES128-CBC-SHA256")
        assert b"HTTP/1.1 200" in output, output[-400:]
        assert f'{{"invoker": "{inv.id}", "path": "/api/items?via=openssl"}}'.encode() in output
        assert aef.backend.seen[-1].header("x-capif-invoker-id") == inv.id


@needs_openssl_psk
async def test_openssl_pki_invoker_reaches_the_backend(world: World, tmp_path: Path) -> None:
    async with running_front(world) as aef:
        who = await invoker_with(world, aef.iface, "PKI")
        (tmp_path / "inv.crt").write_bytes(who.certificate_pem)
        (tmp_path / "inv.key").write_bytes(who.private_key_pem)
        (tmp_path / "ca.pem").write_bytes(aef.server_ca_pem)
        _, output = await s_client(aef.port, "-cert", str(tmp_path / "inv.crt"), "-key",
                                        str(tmp_path / "inv.key"), "-CAfile", str(tmp_path / "ca.pem"),
                                        "-verify_return_error", "-servername", "aef.test.example",
                                        "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert b"HTTP/1.1 200" in output, output[-400:]
        assert f'"invoker": "{who.identity}"'.encode() in output
        # without the certificate (and no token) the call is refused, never forwarded
        _, output = await s_client(aef.port, "-CAfile", str(tmp_path / "ca.pem"), "-verify_return_error",
                                   "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert b"HTTP/1.1 401" in output and len(aef.backend.seen) == 1
