"""``m2msec capif`` as processes against the CCF of tests/ccf/ccf_env.py (in this process, real TLS on loopback):
onboard -> discover -> security (PSK) -> the AEFPSK file equals what the AEF gets -> token (OAUTH) -> offboard,
and bad input: one line on standard error, a non-zero status, no secret on either stream."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from ccf.ccf_env import CCF_HOST, World, interface_description, publish, register_provider, start_world, world
from m2msec.capif.invoker import read_aefpsk
from m2msec.capif.tokens import VerificationKeys, verify_access_token

__all__ = ["world"]

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
SECURITY = "/capif-security/v1/trustedInvokers"


async def m2msec(*args: str) -> tuple[int, str, str]:
    """Run ``m2msec capif ARGS`` while this event loop keeps serving the CCF."""
    env = {k: v for k, v in os.environ.items() if k != "M2MSEC_DEBUG"}
    proc = await asyncio.create_subprocess_exec(*M2MSEC, "capif", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(result: tuple[int, str, str], *parts: str) -> None:
    status, out, err = result
    assert status != 0, (out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("m2msec: error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


@pytest.fixture
def files(world: World, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "ca.pem").write_bytes(world.ca_pem)
    fd = os.open(home / "cred.jwt", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, world.credential().encode() + b"\n")
    os.close(fd)
    return home


def onboard_args(world: World, home: Path, out: str = "inv", **over: str) -> list[str]:
    args = {"--ccf": f"127.0.0.1:{world.ccf.port}", "--ccf-host": CCF_HOST, "--ca": str(home / "ca.pem"),
            "--credential": str(home / "cred.jwt"), "--out": str(home / out)}
    args.update(over)
    return ["onboard", *(x for kv in args.items() for x in kv)]


async def test_the_invoker_story_through_the_cli(world: World, files: Path) -> None:
    provider = await register_provider(world)
    iface = interface_description(31)
    published = await publish(world, provider.apf, provider.aef, iface, name="cli-api")
    credential = (files / "cred.jwt").read_text().strip()

    status, out, err = await m2msec(*onboard_args(world, files))
    assert status == 0, err
    folder = files / "inv"
    invoker_id = json.loads((folder / "invoker.json").read_text())["apiInvokerId"]
    assert out == f"onboarded as {invoker_id}; credentials in {folder}\n"
    assert stat.S_IMODE((folder / "invoker.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in out + err and credential not in out + err

    status, out, err = await m2msec("discover", "--folder", str(folder), "--api-name", "cli-api")
    assert status == 0, err
    assert [d["apiId"] for d in json.loads(out)] == [published["apiId"]]
    status, out, err = await m2msec("discover", "--folder", str(folder), "--api-name", "nothing")
    assert (status, json.loads(out), err) == (0, [], "no service API matches\n")

    status, out, err = await m2msec("security", "--folder", str(folder), "--aef-id", provider.aef.identity,
                                    "--prefer", "psk")
    assert status == 0, err
    [line] = out.splitlines()
    assert line.startswith(f"{provider.aef.identity}: PSK (AEFPSK for aef31.test.example:8443/api in ")
    psk_path = Path(line.rsplit(" in ", 1)[1].rstrip(")"))
    identity, key = read_aefpsk(psk_path)
    assert identity == invoker_id
    assert key.reveal().hex() not in out + err
    got = await world.call(provider.aef, "GET", f"{SECURITY}/{invoker_id}?authenticationInfo=true")
    assert got.status == 200 and bytes.fromhex(got.json()["securityInfo"][0]["authenticationInfo"]) == key.reveal()

    # OAUTH: a token on standard output, verified with the CCF's key set; or into a new 0600 file
    status, out, err = await m2msec("security", "--folder", str(folder), "--aef-id", provider.aef.identity,
                                    "--prefer", "OAUTH")
    assert (status, out) == (0, f"{provider.aef.identity}: OAUTH\n"), err
    assert not psk_path.exists()  # the new context replaced the PSK one: its AEFPSK file goes
    scope = f"3gpp#{provider.aef.identity}:cli-api"
    status, out, err = await m2msec("token", "--folder", str(folder), "--scope", scope)
    assert status == 0, err
    jwks = await world.call(provider.aef, "GET", "/capif-security/v1/jwks")
    claims = verify_access_token(out.strip(), VerificationKeys.from_jwks(jwks.json()), issuer=CCF_HOST,
                                 aef_id=provider.aef.identity, api_name="cli-api", now=int(world.ccf.ccf.clock()))
    assert claims.client_id == invoker_id and out.strip() not in err
    status, out, err = await m2msec("token", "--folder", str(folder), "--out", str(files / "token.jwt"))
    assert (status, out) == (0, ""), err
    assert stat.S_IMODE((files / "token.jwt").stat().st_mode) == 0o600

    status, out, err = await m2msec("offboard", "--folder", str(folder))
    assert (status, out) == (0, f"offboarded {invoker_id}\n"), err
    assert (await world.call(provider.aef, "GET", f"{SECURITY}/{invoker_id}")).status == 404
    # the certificate no longer works: one line, non-zero
    result = await m2msec("discover", "--folder", str(folder))
    one_line_error(result)


async def test_bad_input_is_one_line_and_non_zero(world: World, files: Path, tmp_path: Path) -> None:
    one_line_error(await m2msec(*onboard_args(world, files, **{"--credential": str(files / "missing.jwt")})),
                   "missing.jwt", "no such onboarding credential file")
    assert not (files / "inv").exists()

    (files / "cred.jwt").chmod(0o644)
    one_line_error(await m2msec(*onboard_args(world, files)), "cred.jwt")
    (files / "cred.jwt").chmod(0o600)

    # a CA that is not this CCF's: the handshake fails, nothing is written, the credential is not spent
    (tmp_path / "other").mkdir()
    gen = start_world(tmp_path / "other")
    other = await gen.__anext__()
    (files / "other-ca.pem").write_bytes(other.ca_pem)
    await gen.aclose()
    one_line_error(await m2msec(*onboard_args(world, files, **{"--ca": str(files / "other-ca.pem")})))
    (files / "garbage.pem").write_text("not a certificate\n")
    one_line_error(await m2msec(*onboard_args(world, files, **{"--ca": str(files / "garbage.pem")})),
                   "not a PEM certificate")
    assert sorted(p.name for p in files.iterdir()) == ["ca.pem", "cred.jwt", "garbage.pem", "other-ca.pem"]

    # a refused credential (not one the CCF issued)
    fd = os.open(files / "forged.jwt", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n")
    os.close(fd)
    one_line_error(await m2msec(*onboard_args(world, files, **{"--credential": str(files / "forged.jwt")})),
                   "HTTP 401", "INVALID_ONBOARDING_CREDENTIAL")
    assert not (files / "inv").exists()

    # nothing listening
    one_line_error(await m2msec(*onboard_args(world, files, **{"--ccf": "127.0.0.1:1"})), "cannot connect")

    # the credential still works after all that, and only once
    status, _, err = await m2msec(*onboard_args(world, files))
    assert status == 0, err
    one_line_error(await m2msec(*onboard_args(world, files, out="again")), "HTTP 401")
    one_line_error(await m2msec(*onboard_args(world, files)), "exists already")

    # the other actions on a folder that is not one, or with bad options
    one_line_error(await m2msec("discover", "--folder", str(files)), "not an invoker credential folder")
    one_line_error(await m2msec("security", "--folder", str(files / "inv"), "--aef-id", "AEFnone", "--prefer",
                                "PSK,TLS"), "--prefer")
    one_line_error(await m2msec("security", "--folder", str(files / "inv"), "--aef-id", "AEFnone"),
                   "HTTP 400", "UNKNOWN_AEF_OR_INTERFACE")
    one_line_error(await m2msec("token", "--folder", str(files / "inv")), "HTTP 400", "unauthorized_client")
