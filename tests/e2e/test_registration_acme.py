"""Registration upon SAE in front of a real CSE (ACME), over HTTP and coaps (issue 17).

Credential-only SAs (PSK table entries without ``entity``): the gateway knows only the Credential-ID formed from
the KpsaID, the service subscription rules (TS-0001 §10.2.2.2) decide which CREATE <AE> may reach ACME, and the
AE-ID ACME assigns is bound to the Credential-ID (in a bindings file) for the requests that follow.

Every request to ACME goes through a recording relay, so that "never reached the CSE" is checked on the wire
(the request's unique RQI is not in what the relay carried), besides ACME's own state (the resource a refused
CREATE names does not exist). Expected status codes are the spec's (TS-0004 response status codes, their HTTP
status in TS-0009 and CoAP code in TS-0008 Table 6.2.4-1), never taken from the gateway's tables.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from acme_cse import CSE_ID, CSE_RN, needs_acme, running_acme
from registration_front import (
    OTHER_ID,
    OTHER_KEY,
    RULES,
    SP_ID,
    HTTPClient,
    Relays,
    Stack,
    TCPRelay,
    UDPRelay,
    acme_rsc,
    ae_body,
    assert_answer,
    unique,
)

from conftest import LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec.gateway import coap
from m2msec.gateway.coap_blockwise import Block
from m2msec.keys.secret import SecretKey
from m2msec.saef import PSKCredentials, establish_sa

pytestmark = needs_acme


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    with running_acme(tmp_path_factory.mktemp("acme-reg"), coap=True) as (http_port, coap_port):
        assert coap_port is not None
        yield http_port, coap_port


@pytest.fixture
async def relays(acme: tuple[int, int]) -> AsyncIterator[Relays]:
    http = TCPRelay(acme[0])
    http_port = await http.start()
    udp = UDPRelay(acme[1])
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: udp, local_addr=("127.0.0.1", 0))
    coap_port = int(transport.get_extra_info("sockname")[1])
    yield Relays(acme[0], http, udp, http_port, coap_port)
    http.close()
    udp.close()


@pytest.fixture(params=["http", "coaps"])
async def stack(request: pytest.FixtureRequest, relays: Relays, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await Stack(request.param, relays, tmp_path).start()
    yield s
    await s.close()


# --- 1. a rule with an explicit From
async def test_explicit_from_registers_and_only_that_ae_id_passes(stack: Stack, relays: Relays) -> None:
    kind = stack.kind
    rn, ae_id = unique(f"lt{kind}"), unique(f"Clight-e2e-{kind}")
    light = await stack.client(LIGHT1_ID, LIGHT1_KEY)
    try:
        created = await light.call("create", f"/{CSE_RN}", ae_id, unique("rq"), ae_body(rn, "Nlight"), ty=2)
        assert_answer(kind, created, 2001)
        assert json.loads(created.body)["m2m:ae"]["aei"] == ae_id
        for form in (ae_id, f"/{CSE_ID}/{ae_id}", f"//{SP_ID}/{CSE_ID}/{ae_id}"):  # stem, SP-relative, absolute
            got = await light.call("retrieve", f"/{CSE_RN}/{rn}", form, unique("rq"))
            assert_answer(kind, got, 2000)
            assert json.loads(got.body)["m2m:ae"]["rn"] == rn
        for other in ("CAdmin", unique("Clight-e2e-")):  # not the AE-ID registered through this credential
            rqi = unique("rq-hijack")
            cnt = json.dumps({"m2m:cnt": {"rn": "stolen"}}).encode()
            refused = await light.call("create", f"/{CSE_RN}/{rn}", other, rqi, cnt, ty=3)
            assert_answer(kind, refused, 4106)
            assert not relays.saw(rqi)
            assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}/stolen") == 4004
    finally:
        await light.close()
    assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 2000


# --- 2. the registrar (ACME) assigns the AE-ID
async def test_assigned_ae_id_is_bound_across_connections_and_restarts(stack: Stack, relays: Relays) -> None:
    kind = stack.kind
    rn = unique(f"auto{kind}")
    light = await stack.client(LIGHT2_ID, LIGHT2_KEY)
    try:
        created = await light.call("create", f"/{CSE_RN}", "C", unique("rq"), ae_body(rn, "Nauto"), ty=2)
        assert_answer(kind, created, 2001)
        aei = json.loads(created.body)["m2m:ae"]["aei"]
        assert aei.startswith("C") and len(aei) > 1  # a C-type AE-ID-Stem ACME chose
        assert_answer(kind, await light.call("retrieve", f"/{CSE_RN}/{rn}", aei, unique("rq")), 2000)
    finally:
        await light.close()
    again = await stack.client(LIGHT2_ID, LIGHT2_KEY)  # a new SA of the same credential
    try:
        assert_answer(kind, await again.call("retrieve", f"/{CSE_RN}/{rn}", aei, unique("rq")), 2000)
    finally:
        await again.close()
    await stack.close()
    restarted = await Stack(kind, relays, stack.work).start()  # same bindings file
    try:
        light = await restarted.client(LIGHT2_ID, LIGHT2_KEY)
        try:
            assert_answer(kind, await light.call("retrieve", f"/{CSE_RN}/{rn}", aei, unique("rq")), 2000)
            rqi = unique("rq-other")
            assert_answer(kind, await light.call("retrieve", f"/{CSE_RN}/{rn}", "CAdmin", rqi), 4106)
            assert not relays.saw(rqi)
        finally:
            await light.close()
        # the AE-ID is LIGHT2's only: LIGHT1 (its own rule, nothing bound) cannot use it
        other = await restarted.client(LIGHT1_ID, LIGHT1_KEY)
        try:
            rqi = unique("rq-other")
            assert_answer(kind, await other.call("retrieve", f"/{CSE_RN}/{rn}", aei, rqi), 4106)
            assert not relays.saw(rqi)
        finally:
            await other.close()
    finally:
        await restarted.close()


# --- 3. 4128 and 4126
@pytest.mark.parametrize(("who", "api", "origin", "rsc"), [
    ("other", "Nlight", "Clight-e2e-norule", 4128),  # no rule applies to the credential
    ("light1", "Nwrong", "Clight-e2e-wrongapi", 4126),  # the rule does not admit the App-ID
    ("light1", "Nlight", "Cintruder", 4126),  # ... nor this From
    ("light1", "Nlight", "C", 4126),  # Clight-e2e-* cannot admit a stem ACME would choose (D98)
    ("light2", "Nauto", None, None),  # From absent: ACME assigns, admitted by C* (the positive control)
])
async def test_refused_registrations_never_reach_acme(stack: Stack, relays: Relays, who: str, api: str,
                                                      origin: str | None, rsc: int | None) -> None:
    identity, key = {"other": (OTHER_ID, OTHER_KEY), "light1": (LIGHT1_ID, LIGHT1_KEY),
                     "light2": (LIGHT2_ID, LIGHT2_KEY)}[who]
    rn, rqi = unique(f"ref{stack.kind}"), unique("rq-reg")
    client = await stack.client(identity, key)
    try:
        answer = await client.call("create", f"/{CSE_RN}", origin, rqi, ae_body(rn, api), ty=2)
    finally:
        await client.close()
    if rsc is None:
        assert_answer(stack.kind, answer, 2001)
        assert relays.saw(rqi) and acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 2000
        return
    assert_answer(stack.kind, answer, rsc)
    assert not relays.saw(rqi)
    assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 4004


# --- 4. a CSE-ID as From on a credential-only SA
async def test_cse_id_from_on_a_credential_only_sa_is_4107(stack: Stack, relays: Relays) -> None:
    rn = unique(f"cse{stack.kind}")
    light = await stack.client(LIGHT1_ID, LIGHT1_KEY)
    try:
        rqi = unique("rq-cse")
        assert_answer(stack.kind, await light.call("retrieve", f"/{CSE_RN}", "/some-cse", rqi), 4107)
        rqi2 = unique("rq-cse")
        answer = await light.call("create", f"/{CSE_RN}", "/some-cse", rqi2, ae_body(rn, "Nlight"), ty=2)
        assert_answer(stack.kind, answer, 4107)
    finally:
        await light.close()
    assert not relays.saw(rqi) and not relays.saw(rqi2)
    assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 4004


# --- 5. CREATE <AE> the rules could not check
async def test_create_ae_in_another_form_is_4000_and_not_forwarded(stack: Stack, relays: Relays) -> None:
    kind = stack.kind
    light = await stack.client(LIGHT1_ID, LIGHT1_KEY)
    names: list[str] = []
    try:
        def attempt(label: str) -> tuple[str, str, str]:
            rn = unique(f"smug{label}")
            names.append(rn)
            return rn, unique(f"Clight-e2e-{label}"), unique("rq-smug")

        rn, ae_id, rqi = attempt("dup")  # the rules would read one api, the CSE perhaps the other
        dup = (f'{{"m2m:ae": {{"rn": "{rn}", "api": "Nlight", "api": "Nevil", "rr": false, '
               f'"srv": ["3"]}}}}').encode()
        assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, dup, ty=2), 4000)
        assert not relays.saw(rqi)
        rn, ae_id, rqi = attempt("xml")
        xml = (f'<m2m:ae xmlns:m2m="http://www.onem2m.org/xml/protocols" rn="{rn}"><api>Nlight</api>'
               f'<rr>false</rr><srv>3</srv></m2m:ae>').encode()
        assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, xml, ty=2, fmt="xml"), 4000)
        assert not relays.saw(rqi)
        rn, ae_id, rqi = attempt("cbor")
        cbor = b"\xa1\x66m2m:ae\xa2\x62rn" + bytes([0x60 + len(rn)]) + rn.encode() + b"\x63api\x66Nlight"
        assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, cbor, ty=2, fmt="cbor"), 4000)
        assert not relays.saw(rqi)
        if kind == "coaps":  # RFC 7959 Block1: the rules would see only the first block of the body
            rn, ae_id, rqi = attempt("blk")
            whole = ae_body(rn, "Nlight")
            first = (coap.BLOCK1, Block(0, True, 0).encode())  # 16-byte blocks, more to come
            assert_answer(kind, await light.call("create", f"/{CSE_RN}", ae_id, rqi, whole[:16], ty=2,
                                                 extra=(first,)), 4000)
            assert not relays.saw(rqi)
        if kind == "http":
            # ACME reads the text after the first "=" of the parameters as ty: ty=02 is a CREATE <AE> for it
            for content_type in ("application/json;ty=02", "application/json;x=2", "application/json;ty=2;x=1"):
                rn, ae_id, rqi = attempt("ct")
                answer = await light.call("create", f"/{CSE_RN}", ae_id, rqi, ae_body(rn, "Nlight"),
                                          content_type=content_type)
                assert_answer(kind, answer, 4000)
                assert not relays.saw(rqi), content_type
    finally:
        await light.close()
    for rn in names:
        assert acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn}") == 4004


def test_acme_itself_takes_ty_02_as_a_create_ae(acme: tuple[int, int]) -> None:
    """Why ``ty=02`` must be refused: sent straight to ACME, it registers an AE."""
    rn = unique("direct02")
    req = urllib.request.Request(f"http://127.0.0.1:{acme[0]}/{CSE_RN}", data=ae_body(rn, "Nlight"),
                                 method="POST", headers={"X-M2M-Origin": unique("Cdirect"), "X-M2M-RI": unique("d"),
                                                         "X-M2M-RVI": "3", "Content-Type": "application/json;ty=02"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["X-M2M-RSC"] == "2001"
    assert acme_rsc(acme[0], f"/{CSE_RN}/{rn}") == 2000


# --- 6. the CLI
def write_psk_table(path: Path) -> Path:
    path.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n')
    path.chmod(0o600)
    return path


async def test_cli_gateway_with_app_rules(relays: Relays, tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(write_psk_table(tmp_path / "psk.toml")),
        "--backend", f"http://127.0.0.1:{relays.http_port}", "--listen", "127.0.0.1:0", "--cse-id", CSE_ID,
        "--app-rules", str(tmp_path / "rules.toml"), "--registrations", str(tmp_path / "registrations.sqlite3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), line
        port = int(line.split()[3].rsplit(":", 1)[1])
        light = HTTPClient(await establish_sa("127.0.0.1", port,
                                              PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), CSE_ID)))
        try:
            rn, ae_id = unique("cli"), unique("Clight-e2e-cli")
            assert_answer("http", await light.call("create", f"/{CSE_RN}", ae_id, unique("rq"),
                                                   ae_body(rn, "Nlight"), ty=2), 2001)
            assert_answer("http", await light.call("retrieve", f"/{CSE_RN}/{rn}", ae_id, unique("rq")), 2000)
            rn2, rqi = unique("cli"), unique("rq-cli")
            assert_answer("http", await light.call("create", f"/{CSE_RN}", unique("Cintruder"), rqi,
                                                   ae_body(rn2, "Nlight"), ty=2), 4126)
        finally:
            await light.close()
        assert not relays.saw(rqi) and acme_rsc(relays.acme_http, f"/{CSE_RN}/{rn2}") == 4004
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert LIGHT1_KEY not in err.decode()


def test_cli_app_rules_without_registrations_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    done = subprocess.run(
        [sys.executable, "-m", "m2msec.cli.main", "gateway", "--psk-table", str(write_psk_table(tmp_path / "p.toml")),
         "--backend", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--app-rules", str(tmp_path / "rules.toml")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "--registrations" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
