"""Issue 19 hostile review, the invoker side: the library's files and the `m2msec capif` CLI against the real CCF
(tests/ccf/ccf_env.py). Attacks refused that are worth keeping."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ccf.ccf_env import CCF_HOST, World, interface_description, publish, register_provider, world
from m2msec.capif import invoker as lib

from .test_cli import m2msec

__all__ = ["world"]


async def _invoker(world: World, home: Path) -> lib.Invoker:
    return await lib.onboard(("127.0.0.1", world.ccf.port), CCF_HOST, world.ca_pem, world.credential(),
                             home / "inv", "https://invoker.test.example/notify")


async def test_token_out_does_not_write_through_a_planted_symlink(world: World, tmp_path: Path) -> None:
    """`capif token --out F` where another user planted F as a symlink to a file of theirs (or of the victim's):
    refused, the target untouched, the token on neither stream."""
    provider = await register_provider(world)
    await publish(world, provider.apf, provider.aef, interface_description(41), name="tok-api")
    home = tmp_path / "home"
    home.mkdir()
    inv = await _invoker(world, home)
    await lib.obtain_security(inv, aef_id=provider.aef.identity, preferred=["OAUTH"])
    target = tmp_path / "elsewhere.txt"
    target.write_text("untouched\n")
    target.chmod(0o644)
    planted = home / "token.jwt"
    planted.symlink_to(target)
    status, out, err = await m2msec("token", "--folder", str(inv.folder), "--out", str(planted))
    assert status != 0 and out == "", (out, err)
    assert target.read_text() == "untouched\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert "eyJ" not in out + err  # no JWT on either stream
    # control: a new name works and is 0600
    status, out, err = await m2msec("token", "--folder", str(inv.folder), "--out", str(home / "fresh.jwt"))
    assert (status, out) == (0, ""), err
    assert stat.S_IMODE((home / "fresh.jwt").stat().st_mode) == 0o600
    assert (home / "fresh.jwt").read_text().startswith("eyJ")


async def test_the_invoker_folder_holds_no_aefpsk_outside_its_0600_files(world: World, tmp_path: Path) -> None:
    """After a PSK security context: the only files holding the AEFPSK are the 0600 ones in the 0700 aefpsk folder;
    security.json (0644) has no authenticationInfo; the folder is 0700 and the private key 0600."""
    provider = await register_provider(world)
    published = await publish(world, provider.apf, provider.aef, interface_description(42), name="psk-api")
    home = tmp_path / "home"
    home.mkdir()
    inv = await _invoker(world, home)
    result = await lib.obtain_security(inv, aef_id=provider.aef.identity, api_id=published["apiId"],
                                       preferred=["PSK"])
    [psk] = result.psk_files
    _, key = lib.read_aefpsk(psk.path)
    got = await world.call(provider.aef, "GET", f"/capif-security/v1/trustedInvokers/{inv.invoker_id}"
                           "?authenticationInfo=true")
    assert bytes.fromhex(got.json()["securityInfo"][0]["authenticationInfo"]) == key.reveal()
    secret = key.reveal().hex()
    holders = []
    for root, dirs, names in os.walk(inv.folder):
        for d in dirs:
            assert stat.S_IMODE((Path(root) / d).stat().st_mode) == 0o700
        for name in names:
            path = Path(root) / name
            if secret in path.read_text(errors="replace").lower():
                holders.append(path)
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert holders == [psk.path]
    assert stat.S_IMODE(inv.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((inv.folder / "invoker.key").stat().st_mode) == 0o600
    context = json.loads((inv.folder / "security.json").read_text())
    assert all("authenticationInfo" not in e for e in context["securityInfo"])
