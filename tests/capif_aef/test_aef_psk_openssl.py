"""``openssl s_client -psk <AEFPSK hex> -psk_identity <API invoker ID> -tls1_2`` as a third-party invoker against the
AEF's TLS-PSK listener (the key resolved from the CCF through the async PSK path): the AEFPSK is derived here from
the formula over the invoker's CAPIF-1e session, never by m2msec. Skipped when openssl lacks TLS-PSK."""

from __future__ import annotations

import pytest

from ccf.ccf_env import World, world

from .aef_env import OPENSSL, PSK_SUITES, needs_openssl_psk, openssl_has_psk, openssl_s_client, psk_invoker, running_aef

__all__ = ["OPENSSL", "needs_openssl_psk", "openssl_has_psk", "world"]

SUITES = PSK_SUITES


async def s_client(port: int, identity: str, key_hex: str, suite: str) -> tuple[int, bytes]:
    """Run s_client with the PSK, send one line, return its exit status and everything it printed."""
    return await openssl_s_client(port, b"hello from openssl\n", "-psk", key_hex, "-psk_identity", identity,
                                  "-cipher", suite)


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
