"""m2msec.capif.invoker against the real CCF on loopback (tests/ccf/ccf_env.py: real TLS, SQLite, every answer
checked against the official schemas): onboard -> discover -> security (PSK, OAUTH) -> token -> offboard."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ccf.ccf_env import (
    CCF_HOST,
    World,
    expected_aefpsk,
    interface_description,
    publish,
    register_provider,
    world,
)
from m2msec.capif import invoker as lib
from m2msec.capif.tokens import VerificationKeys, verify_access_token
from m2msec.errors import CAPIFError, ConfigurationError, HandshakeFailed

__all__ = ["world"]

SECURITY = "/capif-security/v1/trustedInvokers"


async def new_invoker(world: World, tmp: Path, name: str = "inv") -> lib.Invoker:
    return await lib.onboard(("127.0.0.1", world.ccf.port), CCF_HOST, world.ca_pem, world.credential(),
                             tmp / name, "https://invoker.test.example/notify")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Where the invoker's folders go (tmp_path holds the CCF's store)."""
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_onboard_writes_the_folder_and_the_ccf_knows_the_certificate(world: World, home: Path) -> None:
    inv = await new_invoker(world, home)
    folder = home / "inv"
    assert sorted(p.name for p in folder.iterdir()) == ["ccf-ca.pem", "invoker.crt", "invoker.json", "invoker.key"]
    assert mode(folder) == 0o700 and mode(folder / "invoker.key") == 0o600
    assert inv.invoker_id.startswith("INV") and len(inv.invoker_id) == 35
    assert "PRIVATE KEY" not in repr(inv) and b"PRIVATE KEY" in (folder / "invoker.key").read_bytes()
    assert (folder / "ccf-ca.pem").read_bytes() == world.ca_pem
    # the certificate the CCF issued works for a certificate-only operation: discovery (nothing published: [])
    assert await lib.discover(folder) == []
    # no leftover temporary folder
    assert [p.name for p in home.iterdir()] == ["inv"]


async def test_onboard_refusals_leave_nothing(world: World, home: Path) -> None:
    with pytest.raises(CAPIFError, match=r"HTTP 401.*INVALID_ONBOARDING_CREDENTIAL"):
        await lib.onboard(("127.0.0.1", world.ccf.port), CCF_HOST, world.ca_pem, "eyJhbGciOi.x.y", home / "a",
                          "https://invoker.test.example/notify")
    assert list(home.iterdir()) == []
    other_ca = (await _other_ca(home))
    with pytest.raises(HandshakeFailed):
        await lib.onboard(("127.0.0.1", world.ccf.port), CCF_HOST, other_ca, world.credential(), home / "b",
                          "https://invoker.test.example/notify")
    assert [p.name for p in home.iterdir()] == ["other"]
    (home / "c").mkdir()
    with pytest.raises(ConfigurationError, match="exists already"):
        await lib.onboard(("127.0.0.1", world.ccf.port), CCF_HOST, world.ca_pem, world.credential(), home / "c",
                          "https://invoker.test.example/notify")


async def _other_ca(tmp: Path) -> bytes:
    """The CA of another CCF (a second world): valid PEM, not the CA of this CCF."""
    from ccf.ccf_env import start_world

    (tmp / "other").mkdir()
    gen = start_world(tmp / "other")
    other = await gen.__anext__()
    ca = other.ca_pem
    await gen.aclose()
    return ca


async def test_discover_security_psk_and_the_aefpsk_file(world: World, home: Path) -> None:
    provider = await register_provider(world)
    iface = interface_description(777)
    published = await publish(world, provider.apf, provider.aef, iface, name="inv-api")
    await publish(world, provider.apf, provider.aef, name="other-api")  # another interface of the same AEF
    inv = await new_invoker(world, home)

    found = await lib.discover(inv, api_name="inv-api")
    assert [d["apiId"] for d in found] == [published["apiId"]]
    assert await lib.discover(inv, api_name="no-such-api") == []
    with pytest.raises(ConfigurationError, match="unknown discovery filter"):
        await lib.discover(inv, colour="blue")

    # the AEF exposes two interfaces: an aefId-wide entry cannot get PSK (D130), an apiId-narrowed one can
    result = await lib.obtain_security(inv, aef_id=provider.aef.identity, api_id=published["apiId"],
                                       preferred=["PSK"])
    [entry] = result.context["securityInfo"]
    assert entry["selSecurityMethod"] == "PSK"
    [psk] = result.psk_files
    p0 = "aef777.test.example:8443/api"  # D115, written by hand
    assert (psk.aef_id, psk.interface) == (provider.aef.identity, p0)
    assert mode(psk.path) == 0o600 and mode(psk.path.parent) == 0o700
    identity, key = lib.read_aefpsk(psk.path)
    assert identity == inv.invoker_id

    # what the CCF hands the AEF is the same key
    got = await world.call(provider.aef, "GET", f"{SECURITY}/{inv.invoker_id}?authenticationInfo=true")
    assert got.status == 200, got.body
    [aef_entry] = got.json()["securityInfo"]
    assert bytes.fromhex(aef_entry["authenticationInfo"]) == key.reveal()

    # an independent computation from the formula (tests/ccf/ccf_env.expected_aefpsk) with the session values of
    # the connection obtain_security uses: run it again on a connection the test observes
    conn_key = await _psk_on_observed_connection(inv, provider.aef.identity, published["apiId"], p0)
    _, key2 = lib.read_aefpsk(psk.path)
    assert key2.reveal() == conn_key and key2.reveal() != key.reveal()  # a new session: a new AEFPSK
    got = await world.call(provider.aef, "GET", f"{SECURITY}/{inv.invoker_id}?authenticationInfo=true")
    assert bytes.fromhex(got.json()["securityInfo"][0]["authenticationInfo"]) == conn_key
    assert key.reveal().hex() not in json.dumps(result.context)
    assert key2.reveal().hex() not in (home / "inv" / "security.json").read_text()

    # offboarding: the CCF forgets everything, the folder loses its AEFPSK files
    await lib.offboard(inv)
    assert not (home / "inv" / "aefpsk").exists()
    got = await world.call(provider.aef, "GET", f"{SECURITY}/{inv.invoker_id}?authenticationInfo=true")
    assert got.status == 404
    with pytest.raises((CAPIFError, HandshakeFailed)):
        await lib.discover(inv)


async def _psk_on_observed_connection(inv: lib.Invoker, aef_id: str, api_id: str, p0: str) -> bytes:
    """obtain_security again with the connection it opens recorded: the formula over that connection's master
    secret and session ID (tests/ccf/ccf_env.expected_aefpsk, independent of m2msec.capif.kdf)."""
    seen: list[tuple[bytes, bytes]] = []
    original = lib.Invoker.connect

    async def spy(self: lib.Invoker, timeout: float = 10.0) -> lib.CCFConnection:
        conn = await original(self, timeout)
        tls = conn.writer.get_extra_info("tls_connection")
        seen.append((tls.master_secret().reveal(), conn.session.session_id))
        return conn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lib.Invoker, "connect", spy)
        await lib.obtain_security(inv, aef_id=aef_id, api_id=api_id, preferred=["PSK"])
    [(master, session_id)] = seen
    assert len(master) == 48 and 1 <= len(session_id) <= 32
    return expected_aefpsk(master, session_id, p0)


async def test_oauth_token_verifies_with_the_ccf_key_set(world: World, home: Path) -> None:
    provider = await register_provider(world)
    await publish(world, provider.apf, provider.aef, name="tok-api")
    inv = await new_invoker(world, home)
    with pytest.raises(CAPIFError, match=r"HTTP 400.*unauthorized_client"):  # no context yet
        await lib.token(inv)
    result = await lib.obtain_security(inv, aef_id=provider.aef.identity, preferred=["OAUTH"])
    assert result.context["securityInfo"][0]["selSecurityMethod"] == "OAUTH" and result.psk_files == []
    answer = await lib.token(inv, f"3gpp#{provider.aef.identity}:tok-api")
    jwks = await world.call(provider.aef, "GET", "/capif-security/v1/jwks")
    claims = verify_access_token(answer["access_token"], VerificationKeys.from_jwks(jwks.json()), issuer=CCF_HOST,
                                 aef_id=provider.aef.identity, api_name="tok-api", now=int(world.ccf.ccf.clock()))
    assert claims.client_id == inv.invoker_id
    with pytest.raises(CAPIFError, match=r"HTTP 400.*invalid_scope"):
        await lib.token(inv, f"3gpp#{provider.aef.identity}:not-an-api")


async def test_a_private_key_others_can_read_is_refused(world: World, home: Path) -> None:
    await new_invoker(world, home)
    (home / "inv" / "invoker.key").chmod(0o644)
    with pytest.raises(ConfigurationError, match=r"invoker\.key"):
        lib.load(home / "inv")
    with pytest.raises(ConfigurationError, match="not an invoker credential folder"):
        lib.load(home)
