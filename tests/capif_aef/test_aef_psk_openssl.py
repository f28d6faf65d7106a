"""``openssl s_client -psk <AEFPSK hex> -psk_identity <API invoker ID> -tls1_2`` as a third-party invoker against the
AEF's TLS-PSK listener (the key resolved from the CCF through the async PSK path): the AEFPSK is derived here from
the formula over the invoker's CAPIF-1e session, never by m2msec. Skipped when openssl lacks TLS-PSK."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from ccf.ccf_env import World, world

from .aef_env import psk_invoker, running_aef

__all__ = ["world"]

OPENSSL = shutil.which("openssl")
#: one TLS 1.2 suite of each RFC 4279 / RFC 5489 family the listener offers
SUITES = ("PSK-AES128-GCM-SHA256", "DHE-PSK-AES128-GCM-SHA256", "ECDHE-PSK-AES128-CBC-SHA256")


def openssl_has_psk() -> bool:
    if OPENSSL is None:
        return False
    try:
        listed = subprocess.run([OPENSSL, "ciphers", "-v", ":".join(SUITES)], capture_output=True, timeout=10)
        helped = subprocess.run([OPENSSL, "s_client", "-help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and b"-psk_identity" in helped.stdout + helped.stderr


needs_openssl_psk = pytest.mark.skipif(not openssl_has_psk(), reason="openssl with TLS 1.2 PSK suites is not available")


async def s_client(port: int, identity: str, key_hex: str, suite: str) -> tuple[int, bytes]:
    """Run s_client, send one line, return its exit status and everything it printed."""
    assert OPENSSL is not None
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-psk", key_hex, "-psk_identity", identity, "-tls1_2",
        "-cipher", suite, "-quiet", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"hello from openssl\n")
        await proc.stdin.drain()
        output = await asyncio.wait_for(proc.stdout.read(), 20)
        return await asyncio.wait_for(proc.wait(), 10), output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@needs_openssl_psk
@pytest.mark.parametrize("suite", SUITES)
async def test_openssl_s_client_as_an_invoker(world: World, suite: str) -> None:
    async with running_aef(world) as aef:
        inv = await psk_invoker(world, aef.listener.iface, aef.listener.p0)
        _, output = await s_client(aef.listener.port, inv.id, inv.key.hex(), suite)
        assert f"{inv.id}:hello from openssl\n".encode() in output
        # the same peer with a key one bit off is refused
        wrong = (bytes([inv.key[0] ^ 1]) + inv.key[1:]).hex()
        status, output = await s_client(aef.listener.port, inv.id, wrong, suite)
        assert status != 0 and b"hello from openssl" not in output
