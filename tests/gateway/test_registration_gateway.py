"""Registration upon SAE through the HTTP gateway over loopback (issue 17): real TLS-PSK clients, a real HTTP
stand-in for the registrar CSE that assigns AE-IDs, a real rules file and a real SQLite bindings file.

The rule outcomes against a real CSE (ACME, HTTP and coaps) are in tests/e2e/test_registration_acme.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY, TD_ID, TD_KEY
from m2msec import http1
from m2msec.errors import ConfigurationError
from m2msec.gateway import registrar as registrar_module
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.registrar import BindingStore, Registrar
from m2msec.gateway.subscription import RuleTable
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa

SP = "in.provider.com"
# the lights' TR-0038 KpsaIDs (Table 7.1.2-2) without a bound entity: their SAs are known by Credential-ID only,
# TS-0003 §10.4 type 12 "symmetric key in SAEF" followed by the KpsaID
RULES = """
[[app_rule]]
apci = ["12-*-Light@in.provider.com"]
aai = ["Nlight"]
aae = ["C*"]
"""
# TS-0013 TD_M2M_SE_01's credential (test@onem2m.com) has no rule: 4128


@dataclass
class StandInCSE:
    """A real HTTP/1.1 server standing in for the registrar CSE: CREATE <AE> gets 201 / 2001 with the AE-ID (the
    From stem, or ``C<n>`` it assigns for an absent, empty or ``C`` From, TS-0001 §10.2.2.2); anything else 2000."""

    requests: list[http1.Message] = field(default_factory=list)
    server: asyncio.Server | None = None
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    answer_aei: bool = True
    sp_relative_aei: bool = False  # answer the aei as /<cse-id>/<stem> (TS-0001 §7.2 allows either)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (req := await http1.read_message(conn, reader)) is not None:
                self.requests.append(req)
                origin = req.header("x-m2m-origin") or ""
                if req.method == "POST" and (req.header("content-type") or "").endswith("ty=2"):
                    aei = origin if origin not in ("", "C") else f"Cassigned{next(self.counter)}"
                    aei = f"/{HOME_GATEWAY_CSE_ID}/{aei}" if self.sp_relative_aei else aei
                    body = json.dumps({"m2m:ae": {"aei": aei}}).encode() if self.answer_aei else b""
                    status, rsc = 201, "2001"
                else:
                    body, status, rsc = b'{"m2m:cb": {}}', 200, "2000"
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/json"), ("x-m2m-rsc", rsc),
                             ("x-m2m-ri", req.header("x-m2m-ri") or "")], body=body, status=status))
                conn.start_next_cycle()
        except (http1.HTTPError, ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def origins(self) -> list[str | None]:
        return [r.header("x-m2m-origin") for r in self.requests]


@pytest.fixture
async def cse() -> AsyncIterator[StandInCSE]:
    stand_in = StandInCSE()
    stand_in.server = await asyncio.start_server(stand_in.handle, "127.0.0.1", 0)
    yield stand_in
    stand_in.server.close()
    await stand_in.server.wait_closed()


def table() -> MemoryPSKTable:
    return MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)),
                           PSKEntry(LIGHT2_ID, SecretKey.from_hex(LIGHT2_KEY)),
                           PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY))])


def make_registrar(tmp_path: Path, text: str = RULES) -> Registrar:
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    return Registrar(RuleTable.from_file(rules), BindingStore(tmp_path / "registrations.sqlite"),
                     cse_id=HOME_GATEWAY_CSE_ID, sp_id=SP)


async def start(cse: StandInCSE, registrar: Registrar) -> Gateway:
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse.port), port=0, cse_id=HOME_GATEWAY_CSE_ID,
                               sp_id=SP), table(), registrar=registrar)
    await gw.start()
    return gw


async def connect(gw: Gateway, who: tuple[str, str] = (LIGHT1_ID, LIGHT1_KEY)) -> EstablishedSA:
    return await establish_sa("127.0.0.1", gw.port,
                              PSKCredentials(who[0], SecretKey.from_hex(who[1]), HOME_GATEWAY_CSE_ID))


def create_ae(origin: str | None, api: str = "Nlight", content_type: str = "application/json;ty=2") -> http1.Message:
    headers = [("host", "gw"), ("x-m2m-ri", "reg"), ("x-m2m-rvi", "3"), ("content-type", content_type)]
    if origin is not None:
        headers.append(("x-m2m-origin", origin))
    body = json.dumps({"m2m:ae": {"api": api, "rr": False, "srv": ["3"]}}).encode()
    return http1.Message(headers=headers, body=body, method="POST", target=f"/{HOME_GATEWAY_CSE_ID}")


def retrieve(origin: str) -> http1.Message:
    return http1.Message(headers=[("host", "gw"), ("x-m2m-ri", "get"), ("x-m2m-rvi", "3"), ("x-m2m-origin", origin)],
                         method="GET", target=f"/{HOME_GATEWAY_CSE_ID}")


async def outcome(sa: EstablishedSA, msg: http1.Message) -> tuple[int, str | None]:
    resp = await sa.request(msg)
    return resp.status, resp.header("x-m2m-rsc")


async def register(sa: EstablishedSA, origin: str | None) -> str:
    resp = await sa.request(create_ae(origin))
    assert (resp.status, resp.header("x-m2m-rsc")) == (201, "2001"), resp.body
    return str(json.loads(resp.body)["m2m:ae"]["aei"])


async def test_assigned_ae_id_is_bound_and_checked(cse: StandInCSE, tmp_path: Path) -> None:
    gw = await start(cse, make_registrar(tmp_path))
    try:
        sa = await connect(gw)
        assert await outcome(sa, retrieve("Cassigned1")) == (403, "4106")  # nothing bound yet
        aei = await register(sa, "C")  # the registrar chooses the stem (D98; the rule admits C*)
        assert aei == "Cassigned1"
        for origin in (aei, f"/{HOME_GATEWAY_CSE_ID}/{aei}", f"//{SP}/{HOME_GATEWAY_CSE_ID}/{aei}"):
            assert await outcome(sa, retrieve(origin)) == (200, "2000"), origin
        for origin in ("Cassigned2", "Clight-AE2", f"/{HOME_GATEWAY_CSE_ID}/Cother"):
            assert await outcome(sa, retrieve(origin)) == (403, "4106"), origin
        assert await outcome(sa, retrieve("/mn-cse-999")) == (403, "4107")
        await sa.close()
    finally:
        await gw.close()
    assert cse.origins() == ["C", "Cassigned1", f"/{HOME_GATEWAY_CSE_ID}/Cassigned1",
                             f"//{SP}/{HOME_GATEWAY_CSE_ID}/Cassigned1"]
    assert cse.requests[0].header("x-m2msec-credential-id") == "12-AE123456789012-Light@in.provider.com"


async def test_the_binding_serves_later_sas_other_connections_and_a_restart(cse: StandInCSE, tmp_path: Path) -> None:
    gw = await start(cse, make_registrar(tmp_path))
    try:
        early = await connect(gw)  # established before the registration
        other_light = await connect(gw, (LIGHT2_ID, LIGHT2_KEY))
        sa = await connect(gw)
        aei = await register(sa, "Clight-AE1")
        assert aei == "Clight-AE1"
        assert await outcome(early, retrieve(aei)) == (200, "2000")  # re-read on its first miss
        assert await outcome(other_light, retrieve(aei)) == (403, "4106")  # another Credential-ID
        later = await connect(gw)
        assert await outcome(later, retrieve(f"/{HOME_GATEWAY_CSE_ID}/{aei}")) == (200, "2000")
        for s in (early, other_light, sa, later):
            await s.close()
    finally:
        await gw.close()
    gw = await start(cse, make_registrar(tmp_path))  # a restart reads the same file
    try:
        sa = await connect(gw)
        assert await outcome(sa, retrieve("Clight-AE1")) == (200, "2000")
        await sa.close()
    finally:
        await gw.close()


async def test_an_ae_id_registered_anew_leaves_its_former_credential(cse: StandInCSE, tmp_path: Path) -> None:
    """The CSE gives an AE-ID to one registration at a time: when another credential registers it (the former AE
    deregistered), the former credential's SAs, live ones included, can no longer use it."""
    gw = await start(cse, make_registrar(tmp_path))
    try:
        first = await connect(gw)
        assert await register(first, "Cshared") == "Cshared"
        assert await outcome(first, retrieve("Cshared")) == (200, "2000")
        second = await connect(gw, (LIGHT2_ID, LIGHT2_KEY))
        cse.sp_relative_aei = True  # the same AE-ID, spelt otherwise
        assert await register(second, "Cshared") == f"/{HOME_GATEWAY_CSE_ID}/Cshared"
        for origin in ("Cshared", f"/{HOME_GATEWAY_CSE_ID}/Cshared"):  # any spelling of it
            assert await outcome(first, retrieve(origin)) == (403, "4106"), origin
            assert await outcome(second, retrieve(origin)) == (200, "2000"), origin
        await first.close()
        await second.close()
    finally:
        await gw.close()


async def test_a_lower_case_post_is_a_registration_too(cse: StandInCSE, tmp_path: Path) -> None:
    gw = await start(cse, make_registrar(tmp_path))
    try:
        td = await connect(gw, (TD_ID, TD_KEY))
        msg = create_ae("Ctd")
        msg.method = "post"  # Werkzeug (ACME) upper-cases the method: a CREATE <AE> all the same
        assert await outcome(td, msg) == (403, "4128")
        await td.close()
    finally:
        await gw.close()
    assert cse.requests == []


async def test_bindings_count_only_while_a_rule_applies(cse: StandInCSE, tmp_path: Path) -> None:
    """Removing a credential's rules revokes what it registered (attack17 observation)."""
    gw = await start(cse, make_registrar(tmp_path))
    try:
        sa = await connect(gw)
        await register(sa, "Clight-AE1")
        await sa.close()
    finally:
        await gw.close()
    gw = await start(cse, make_registrar(tmp_path, RULES.replace("12-*-Light@", "12-other@")))
    try:
        sa = await connect(gw)
        assert await outcome(sa, retrieve("Clight-AE1")) == (403, "4106")
        await sa.close()
    finally:
        await gw.close()


async def test_refused_registrations_never_reach_the_cse(cse: StandInCSE, tmp_path: Path) -> None:
    gw = await start(cse, make_registrar(tmp_path))
    try:
        td = await connect(gw, (TD_ID, TD_KEY))
        assert await outcome(td, create_ae("Ctd")) == (403, "4128")  # no rule applies to its Credential-ID
        await td.close()
        sa = await connect(gw)
        assert await outcome(sa, create_ae("Clight", api="Nheater")) == (403, "4126")  # App-ID not allowed
        assert await outcome(sa, create_ae("Slight")) == (403, "4126")  # AE-ID-Stem not allowed
        assert await outcome(sa, create_ae("/mn-cse-9")) == (403, "4107")  # a CSE-ID is no AE-ID-Stem
        assert await outcome(sa, create_ae("Clight", content_type="application/json;x=2")) == (400, "4000")
        assert await outcome(sa, create_ae("Clight", content_type="application/xml;ty=2")) == (400, "4000")
        await sa.close()
    finally:
        await gw.close()
    assert cse.requests == []


async def test_a_registration_must_ask_for_its_resource(cse: StandInCSE, tmp_path: Path) -> None:
    """D106: rcn other than 1 would answer without the aei (nothing bound, nothing counted: attack17 findings 8,
    9); refused before the CSE. An answer without aei all the same binds nothing, not even an explicit From."""
    gw = await start(cse, make_registrar(tmp_path))
    try:
        sa = await connect(gw)
        for query in ("?rcn=0", "?rcn=2", "?rcn=3", "?rcn=1&rcn=0", "?r%63n=0", "?RCN=0", "?rcn=%30"):
            msg = create_ae("Clight-x")
            msg.target += query
            assert await outcome(sa, msg) == (400, "4000"), query
        assert cse.requests == []
        msg = create_ae("Clight-x")
        msg.target += "?rcn=1"
        assert await outcome(sa, msg) == (201, "2001")
        cse.answer_aei = False
        assert await outcome(sa, create_ae("Clight-y")) == (201, "2001")
        assert await outcome(sa, retrieve("Clight-y")) == (403, "4106")  # the CSE did not say which AE-ID
        assert await outcome(sa, retrieve("Clight-x")) == (200, "2000")
        await sa.close()
    finally:
        await gw.close()


async def test_a_credential_binds_a_bounded_number_of_ae_ids(cse: StandInCSE, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registrar_module, "MAX_AE_IDS_PER_CREDENTIAL", 2)
    gw = await start(cse, make_registrar(tmp_path))
    try:
        sa = await connect(gw)
        await register(sa, "C")
        await register(sa, "C")
        assert await outcome(sa, create_ae("C")) == (403, "4126")
        await register(sa, "Cassigned1")  # re-registering a bound AE-ID is not a new one
        await sa.close()
    finally:
        await gw.close()
    assert cse.origins() == ["C", "C", "Cassigned1"]


def test_bindings_file_is_private(tmp_path: Path) -> None:
    store = BindingStore(tmp_path / "b.sqlite")
    store.close()
    assert (tmp_path / "b.sqlite").stat().st_mode & 0o077 == 0
    for mode in (0o620, 0o602, 0o666):  # rows others can write are identities they choose (attack17 finding 4)
        (tmp_path / "b.sqlite").chmod(mode)
        with pytest.raises(ConfigurationError, match="writable by nobody else"):
            BindingStore(tmp_path / "b.sqlite")
    (tmp_path / "b.sqlite").chmod(0o644)
    BindingStore(tmp_path / "b.sqlite").close()
    wal = tmp_path / "b.sqlite-wal"  # a side file planted writable (attack17b finding 1)
    wal.touch()
    wal.chmod(0o666)
    with pytest.raises(ConfigurationError, match=r"b\.sqlite-wal"):
        BindingStore(tmp_path / "b.sqlite")
    wal.chmod(0o600)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others may write the directory, and it is not sticky
    with pytest.raises(ConfigurationError, match="directory others may write"):
        BindingStore(shared / "b.sqlite")
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot replace our files
    BindingStore(shared / "b.sqlite").close()


@pytest.mark.parametrize(("args", "message"), [
    (["--app-rules", "{rules}"], "--app-rules needs --registrations FILE"),
    (["--registrations", "{db}"], "--registrations needs --app-rules"),
    (["--app-rules", "{missing}", "--registrations", "{db}"], "missing.toml"),
    (["--app-rules", "{bad}", "--registrations", "{db}"], "app_rule 0: missing field aae"),
])
def test_cli_refuses_bad_registration_options_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    psk = tmp_path / "psk.toml"
    psk.write_text(f'[[psk]]\nidentity = "{TD_ID}"\nkey = "{TD_KEY}"\n')
    psk.chmod(0o600)
    (tmp_path / "rules.toml").write_text(RULES)
    (tmp_path / "bad.toml").write_text('[[app_rule]]\napci = "x"\naai = "y"\n')
    paths = {"rules": tmp_path / "rules.toml", "db": tmp_path / "r.sqlite", "missing": tmp_path / "missing.toml",
             "bad": tmp_path / "bad.toml"}
    cmd = [sys.executable, "-m", "m2msec", "gateway", "--psk-table", str(psk), "--backend", "http://127.0.0.1:9",
           "--listen", "127.0.0.1:0", *(a.format(**paths) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
