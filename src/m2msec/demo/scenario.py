"""The steps of the TR-0038 §7.1 smart home, each returning a :class:`~m2msec.demo.report.Step`.

Every step runs against the real processes :mod:`m2msec.demo.topology` started; what a gateway bound an SA to
and the cipher suite it chose are read from that gateway's own log lines (``SA established ...``), what the CSE
did from the response (RSC) or, for the CSEs' own requests through the tunnels, from the gateway's request log.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from m2msec.demo.clients import CoapClient, HttpClient, Reply
from m2msec.demo.procs import Proc
from m2msec.demo.report import Step, failed_step
from m2msec.demo.topology import (
    IN_CSE_ID,
    IN_CSE_NAME,
    LIGHT1,
    LIGHT2,
    MAF_FQDN,
    MN_CSE_ID,
    MN_CSE_NAME,
    PHONE_AE,
    PHONE_KMID,
    SP,
    TD_M2M_SE_01,
    Files,
    Ports,
)
from m2msec.errors import M2MSecError
from m2msec.http1 import HTTPError
from m2msec.keys.secret import SecretKey
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.saef import PSKCredentials, establish_maf_sa, establish_sa

#: seconds the MN-CSE has to register at the IN-CSE once both answer (it retries every 2 s)
REGISTRATION_WAIT = 60.0
#: what the light's <accessControlPolicy> grants the smartphone: every operation (TS-0004 accessControlOperations
#: CREATE 1 | RETRIEVE 2 | UPDATE 4 | DELETE 8 | NOTIFY 16 | DISCOVERY 32), for the smartphone's AE-ID in the
#: SP-relative form the IN-CSE forwards it in (TS-0004 §7.3.2.6); docs/decisions.md D109
GRANT_OPERATIONS = 63


@dataclass
class World:
    """What the steps share: the processes' logs, the ports, the files, the clients made so far."""

    ports: Ports
    files: Files
    in_gw: Proc
    mn_gw: Proc
    clients: dict[str, HttpClient | CoapClient] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    async def close(self) -> None:
        for client in self.clients.values():
            try:
                await client.close()
            except (OSError, M2MSecError):
                pass


_SA_TAIL = r" associated=(?P<id>\S+) (?:cipher=)?(?P<cipher>\S+)"


def _unquote(value: str) -> str | None:
    return None if value == "None" else value.strip("'\"")


async def sa_seen(gw: Proc, client: HttpClient | CoapClient, timeout: float = 5.0) -> tuple[str | None, str | None]:
    """(bound identity, cipher) of ``client``'s SA as the gateway logged it."""
    rx = re.compile(client.log_pattern + _SA_TAIL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = rx.search(gw.output())
        if m:
            return _unquote(m["id"]), m["cipher"]
        await asyncio.sleep(0.1)
    return None, None


async def wait_log(gw: Proc, pattern: str, timeout: float) -> re.Match[str] | None:
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = rx.search(gw.output())
        if m:
            return m
        await asyncio.sleep(0.2)
    return None


def _created(reply: Reply, kind: str, attr: str) -> str:
    value = reply.body.get(kind, {}).get(attr) if isinstance(reply.body.get(kind), dict) else None
    if value:
        return f"{attr} {value}"
    dbg = reply.body.get("m2m:dbg")
    return f"{reply.status}: {dbg}" if dbg else reply.status


async def cse_registration(w: World) -> Step:
    """MN-CSE -> IN-CSE: CREATE <remoteCSE> through the MN tunnel (MN-CSE's CSE-ID certificate) and IN-GW."""
    action = "MN-CSE registers at IN-CSE (CREATE <remoteCSE>)"
    sa = "MN-CSE (tunnel) <-> IN-GW"
    clause = "TS-0003 §8.2.2.2 certificate-based SAE; TS-0001 §10.1.1.2.1 CSE registration"
    m = await wait_log(w.in_gw, rf"POST \S*/{IN_CSE_NAME} from (\S*{MN_CSE_ID}\S*) -> (\d+) \(rsc (\d+)\)",
                       REGISTRATION_WAIT)
    if m is None:
        return failed_step("cse-registration", sa, "certificate", "HTTP", action, 2001, clause,
                           f"no registration in {REGISTRATION_WAIT:g} s")
    cipher = None
    sa_m = re.search(rf"SA established with .*?certificate.*?associated='([^']*{MN_CSE_ID})' cipher=(\S+)",
                     w.in_gw.output())
    if sa_m:
        cipher = sa_m[2]
    ident = _unquote(m[1])
    return Step("cse-registration", sa, "certificate", "HTTP", cipher, ident, action,
                f"<remoteCSE> {MN_CSE_ID} at {IN_CSE_ID}", int(m[3]), 2001, clause)


async def _light_sa(w: World, light: tuple[str, str, str | None], coaps: bool) -> HttpClient | CoapClient:
    key = SecretKey.from_hex(light[1])
    if coaps:
        return await CoapClient.connect("127.0.0.1", w.ports.mn_coaps, light[0], key, MN_CSE_ID)
    return HttpClient(await establish_sa("127.0.0.1", w.ports.mn_gw, PSKCredentials(light[0], key, MN_CSE_ID)))


@dataclass(frozen=True)
class Registration:
    """One CREATE <AE> attempt of a PSK device at the MN-CSE, and what the specification says it gets."""

    step: str
    who: str
    credentials: tuple[str, str, str | None]
    coaps: bool
    api: str
    expected_rsc: int
    clause: str


REGISTRATION_CLAUSE = "TS-0003 §8.2.2.1 PSK SAE (TR-0038 §7.1.2); TS-0001 §10.2.2.2 AE registration"
RULE_CLAUSES = {
    4126: "TS-0001 §10.2.2.2 <serviceSubscribedAppRule>: App-ID not allowed (4126 APP_RULE_VALIDATION_FAILED)",
    4128: "TS-0001 §10.2.2.2: no rule for this credential (4128 SERVICE_SUBSCRIPTION_NOT_ESTABLISHED)",
}


async def register(w: World, r: Registration) -> Step:
    """PSK SAE with MN-GW (the SA of an earlier attempt is reused), then CREATE <AE>: the CSE assigns the
    AE-ID-Stem (From ``C``) unless the credential is bound to an AE-ID already."""
    binding = "CoAP" if r.coaps else "HTTP"
    action = f"{r.who} registers at MN-CSE (CREATE <AE>, api {r.api})"
    sa = f"{r.who} <-> MN-GW"
    client = w.clients.get(r.who)
    if client is None:
        try:
            client = await _light_sa(w, r.credentials, r.coaps)
        except M2MSecError as exc:
            return failed_step(r.step, sa, "PSK", binding, action, r.expected_rsc, r.clause, f"SA refused: {exc}")
        w.clients[r.who] = client
    ident, cipher = await sa_seen(w.mn_gw, client)
    reply = await client.send("POST", f"/{MN_CSE_NAME}", r.credentials[2] or "C",
                              {"m2m:ae": {"rn": r.who.lower(), "api": r.api, "rr": False, "srv": ["3"]}}, ty=2)
    aei = reply.body.get("m2m:ae", {}).get("aei") if isinstance(reply.body.get("m2m:ae"), dict) else None
    result = _created(reply, "m2m:ae", "aei").replace("aei", "AE-ID")
    if aei and reply.rsc == 2001:
        w.ids[r.who] = str(aei)
        bound = await wait_log(w.mn_gw, rf"AE-ID '{re.escape(str(aei))}' registered through .*?, bound to "
                                        r"Credential-ID '([^']+)'", 2.0)
        if bound is not None:  # what MN-GW bound the SA's credential to (its log), not what the CSE answered
            ident = str(aei)
            result += f", bound to {bound[1]}"
    elif reply.rsc in RULE_CLAUSES or reply.rsc == 4107:
        result = f"refused by MN-GW ({reply.status}), not forwarded"
    return Step(r.step, sa, "PSK", binding, cipher or client.cipher, ident, action, result, reply.rsc,
                r.expected_rsc, r.clause)


async def phone_registration(w: World) -> Step:
    """Smartphone: MAF-based SAE with IN-GW (Kc from the MAF), then CREATE <AE> at the IN-CSE."""
    action = "smartphone registers at IN-CSE (CREATE <AE>)"
    sa = "smartphone <-> IN-GW"
    clause = "TS-0003 §8.2.2.3 MAF-based SAE (TR-0038 §7.1.3); TS-0001 §10.2.2.2"
    km = SecretKey.from_hex(w.files.phone_km.read_text().strip())
    maf = MAFClient("127.0.0.1", w.ports.maf, MAFCredentials(MAF_FQDN, kmid=PHONE_KMID, km=km))
    try:
        async with maf:
            sa_ = await establish_maf_sa("127.0.0.1", w.ports.in_gw, maf=maf, peer_entity=f"/{IN_CSE_ID}",
                                         lifetime=600)
    except M2MSecError as exc:
        return failed_step("smartphone-registration", sa, "MAF-based", "HTTP", action, 2001, clause,
                           f"SA refused: {exc}")
    client = HttpClient(sa_)
    w.clients["smartphone"] = client
    ident, cipher = await sa_seen(w.in_gw, client)
    origin = ident or f"//{SP}{PHONE_AE}"
    reply = await client.send("POST", f"/{IN_CSE_NAME}", origin,
                              {"m2m:ae": {"rn": "smartphone", "api": "Nsmartphone", "rr": False, "srv": ["3"]}},
                              ty=2)
    aei = reply.body.get("m2m:ae", {}).get("aei") if isinstance(reply.body.get("m2m:ae"), dict) else None
    if aei:
        w.ids["smartphone"] = str(aei)
    return Step("smartphone-registration", sa, "MAF-based", "HTTP", cipher or client.cipher, ident, action,
                _created(reply, "m2m:ae", "aei").replace("aei", "AE-ID"), reply.rsc, 2001, clause)


def sp_relative(ae_id: str) -> str:
    """``//sp/cse/Cx`` -> ``/cse/Cx`` (the form a CSE of the same SP forwards, TS-0004 §7.3.2.6)."""
    return ae_id[len(f"//{SP}"):] if ae_id.startswith(f"//{SP}/") else ae_id


async def light_grants_phone(w: World, name: str) -> Step:
    """The light creates an <accessControlPolicy> granting the smartphone and a <container> under it."""
    action = f"{name} creates <ACP> for the smartphone + <container> state"
    sa = f"{name} <-> MN-GW"
    clause = "TS-0001 §9.6.2 <accessControlPolicy>, §9.6.6 <container>"
    client = w.clients.get(name)
    me = w.ids.get(name)
    if client is None or me is None:
        return failed_step(f"{name}-container", sa, "PSK", "HTTP", action, 2001, clause, "not registered")
    phone = sp_relative(w.ids.get("smartphone", f"//{SP}{PHONE_AE}"))
    rn = name.lower()
    acp = await client.send("POST", f"/{MN_CSE_NAME}/{rn}", me, {"m2m:acp": {
        "rn": "lightacp", "pv": {"acr": [{"acor": [phone], "acop": GRANT_OPERATIONS},
                                         {"acor": [me], "acop": GRANT_OPERATIONS}]},
        "pvs": {"acr": [{"acor": [me], "acop": GRANT_OPERATIONS}]}}}, ty=1)
    if acp.rsc != 2001:
        return Step(f"{name}-container", sa, "PSK", client.binding, client.cipher, me, action,
                    _created(acp, "m2m:acp", "ri"), acp.rsc, 2001, clause)
    cnt = await client.send("POST", f"/{MN_CSE_NAME}/{rn}", me, {"m2m:cnt": {
        "rn": "state", "acpi": [f"/{MN_CSE_ID}/{MN_CSE_NAME}/{rn}/lightacp"]}}, ty=3)
    return Step(f"{name}-container", sa, "PSK", client.binding, client.cipher, me, action,
                f"<acp> for {phone}, " + _created(cnt, "m2m:cnt", "rn"), cnt.rsc, 2001, clause)


async def phone_controls_light(w: World, name: str) -> list[Step]:
    """The smartphone switches the light on: CREATE <contentInstance> addressed SP-relative via the IN-CSE,
    retargeted by it to the MN-CSE through the IN tunnel and MN-GW; then what MN-GW saw of that request."""
    clause = "TR-0038 §7.1; TS-0001 §10.2.4 retargeting; TS-0004 §7.3.2.1 relayed originators"
    client = w.clients.get("smartphone")
    phone = w.ids.get("smartphone")
    action = f"smartphone switches {name} on via IN-CSE (CREATE <cin> 'on')"
    sa = "smartphone <-> IN-GW"
    if client is None or phone is None:
        return [failed_step("smartphone-control", sa, "MAF-based", "HTTP", action, 2001, clause, "not registered")]
    ident, _ = await sa_seen(w.in_gw, client)
    target = f"/~/{MN_CSE_ID}/{MN_CSE_NAME}/{name.lower()}/state"
    reply = await client.send("POST", target, ident or phone, {"m2m:cin": {"con": "on"}}, ty=4)
    steps = [Step("smartphone-control", sa, "MAF-based", "HTTP", client.cipher, ident, action,
                  _created(reply, "m2m:cin", "con").replace("con", "content"), reply.rsc, 2001, clause)]
    path = rf"POST \S*/{MN_CSE_NAME}/{name.lower()}/state"
    relay = (rf"{path} from (?P<origin>\S+) -> \d+ \(rsc (?P<rsc>\d+)\)"
             rf"|refused {path} from .*?: rsc=(?P<refused>\d+) (?P<why>.*)")
    seen = await wait_log(w.mn_gw, relay, 2.0)
    sa_m = re.search(rf"SA established with .*?certificate.*?associated='([^']*{IN_CSE_ID})' cipher=(\S+)",
                     w.mn_gw.output())
    steps.append(Step("in-cse-relay", "IN-CSE (tunnel) <-> MN-GW", "certificate", "HTTP",
                      sa_m[2] if sa_m else None, sa_m[1] if sa_m else None,
                      f"IN-CSE relays the smartphone's request to MN-CSE (From {sp_relative(phone)})",
                      _relay_result(seen), int(seen["rsc"] or seen["refused"]) if seen else None, 2001,
                      "TS-0003 §8.2.2.2; TS-0004 §7.3.2.1"))
    return steps


def _relay_result(seen: re.Match[str] | None) -> str:
    if seen is None:
        return "not seen at MN-GW"
    if seen["refused"]:
        return f"refused by MN-GW: {seen['why'][:80]}"
    return f"forwarded to MN-CSE on the SA of {_unquote(seen['origin'])}"


async def impersonation(w: World, attacker: str, victim: str) -> Step:
    """The attacker's SA sends with the victim's AE-ID as From: 4106 from MN-GW, nothing reaches the CSE."""
    client = w.clients.get(attacker)
    target_ae = w.ids.get(victim)
    action = f"{attacker} claims to be {victim} (From {target_ae})"
    sa = f"{attacker} <-> MN-GW"
    clause = "TS-0003 §7.2.1 originator check (4106 ORIGINATOR_NOT_AUTHENTICATED)"
    if client is None or target_ae is None:
        return failed_step("impersonation", sa, "PSK", "-", action, 4106, clause, "not registered")
    reply = await client.send("POST", f"/{MN_CSE_NAME}/{victim.lower()}", target_ae, {"m2m:cnt": {"rn": "hijack"}},
                              ty=3)
    victim_client = w.clients.get(victim)
    check: Reply | None = None
    if victim_client is not None:
        check = await victim_client.send("GET", f"/{MN_CSE_NAME}/{victim.lower()}/hijack", target_ae)
    forwarded = check is not None and check.rsc != 4004
    result = f"refused by MN-GW ({reply.status}), {'REACHED the CSE' if forwarded else 'not forwarded'}"
    ident = w.ids.get(attacker) or (await sa_seen(w.mn_gw, client))[0]
    step = Step("impersonation", sa, "PSK", client.binding, client.cipher, ident, action, result, reply.rsc, 4106,
                clause)
    step.ok = step.ok and not forwarded
    return step


async def cse_id_without_sa(w: World, who: str) -> Step:
    """A device known only by its Credential-ID (nothing bound: its registration was refused) sends with the
    IN-CSE's CSE-ID as From: 4107, as no SA with that CSE carries it."""
    client = w.clients.get(who)
    action = f"{who} sends as the IN-CSE (From /{IN_CSE_ID})"
    sa = f"{who} <-> MN-GW"
    clause = "TS-0004 §7.3.2.1 (4107 SECURITY_ASSOCIATION_REQUIRED)"
    if client is None:
        return failed_step("cse-id-without-sa", sa, "PSK", "-", action, 4107, clause, "no SA")
    reply = await client.send("GET", f"/{MN_CSE_NAME}", f"/{IN_CSE_ID}")
    ident, _ = await sa_seen(w.mn_gw, client)
    return Step("cse-id-without-sa", sa, "PSK", client.binding, client.cipher, ident, action,
                f"refused by MN-GW ({reply.status}), not forwarded", reply.rsc, 4107, clause)


async def light_reads_state(w: World, name: str) -> Step:
    """The light reads its latest state: the smartphone's "on"."""
    client = w.clients.get(name)
    me = w.ids.get(name)
    action = f"{name} reads its state (RETRIEVE la)"
    sa = f"{name} <-> MN-GW"
    clause = "TR-0038 §7.1 (the light follows the smartphone's command)"
    if client is None or me is None:
        return failed_step(f"{name}-state", sa, "PSK", "-", action, 2000, clause, "not registered")
    reply = await client.send("GET", f"/{MN_CSE_NAME}/{name.lower()}/state/la", me)
    con: Any = reply.body.get("m2m:cin", {}).get("con") if isinstance(reply.body.get("m2m:cin"), dict) else None
    step = Step(f"{name}-state", sa, "PSK", client.binding, client.cipher, me, action,
                f"content {con!r}" if con is not None else reply.status, reply.rsc, 2000, clause)
    step.ok = step.ok and con == "on"
    return step


REGISTRATIONS = (
    Registration("ADN-AE1-registration", "ADN-AE1", LIGHT1, False, "Nlight", 2001, REGISTRATION_CLAUSE),
    # the same rules over coaps: an App-ID no rule of its credential allows, then the right one (the refused
    # CREATE never reached the CSE: the second one, with the same resource name, is not a conflict)
    Registration("ADN-AE2-wrong-app-id", "ADN-AE2", LIGHT2, True, "Nthermostat", 4126, RULE_CLAUSES[4126]),
    Registration("ADN-AE2-registration", "ADN-AE2", LIGHT2, True, "Nlight", 2001, REGISTRATION_CLAUSE),
    Registration("unsubscribed-registration", "TD_M2M_SE_01 device", TD_M2M_SE_01, False, "APP01", 4128,
                 RULE_CLAUSES[4128]),
)


#: what a step may raise when a peer misbehaves (a connection closed, no answer in time): the step failed, the
#: demo goes on with the next one and reports it
STEP_ERRORS = (M2MSecError, HTTPError, OSError, TimeoutError)


async def guarded(step: Callable[[], Awaitable[Step | list[Step]]], name: str) -> list[Step]:
    """The step's records; one failed record (expected RSC 0: none is right) when it raised one of STEP_ERRORS."""
    try:
        done = await step()
    except STEP_ERRORS as exc:
        return [failed_step(name, "-", "-", "-", name, 0, "-", f"failed: {type(exc).__name__}: {exc}"[:200])]
    return done if isinstance(done, list) else [done]


async def run_steps(w: World, progress: Callable[[str], None]) -> list[Step]:
    """The scenario in order; each step's outcome is reported as it completes."""
    steps: list[Step] = []

    async def record(step: Callable[[], Awaitable[Step | list[Step]]], name: str) -> None:
        for s in await guarded(step, name):
            steps.append(s)
            progress(f"{'ok' if s.ok else 'UNEXPECTED'}: {s.action}: {s.result} (rsc {s.rsc}, expected "
                     f"{s.expected_rsc})")

    progress("waiting for the MN-CSE's registration at the IN-CSE")
    await record(lambda: cse_registration(w), "cse-registration")
    for r in REGISTRATIONS:
        await record(functools.partial(register, w, r), r.step)
    await record(lambda: phone_registration(w), "smartphone-registration")
    await record(lambda: light_grants_phone(w, "ADN-AE1"), "ADN-AE1-container")
    await record(lambda: phone_controls_light(w, "ADN-AE1"), "smartphone-control")
    await record(lambda: light_reads_state(w, "ADN-AE1"), "ADN-AE1-state")
    await record(lambda: impersonation(w, "ADN-AE2", "ADN-AE1"), "impersonation")
    await record(lambda: cse_id_without_sa(w, "TD_M2M_SE_01 device"), "cse-id-without-sa")
    return steps
