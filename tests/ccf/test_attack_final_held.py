"""Final hostile review of the CCF (issue 18): attacks that are refused today, kept as regression tests (the findings
are in test_attack_final.py). Real TLS on loopback, a real SQLite store, every answer checked against the official
schemas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from m2msec.keys.sqlite_store import MASTER_KEY_ENV

from .ccf_env import (
    PROVIDERS,
    World,
    expected_aefpsk,
    interface_description,
    onboard,
    publish,
    register_provider,
    security,
    world,
)

__all__ = ["world"]

SECURITY = "/capif-security/v1/trustedInvokers"
TOKEN = "/capif-security/v1/securities"






async def test_the_aefpsk_reaches_only_the_aef_of_the_entry(world: World) -> None:
    """The invoker's own answers (PUT, /update, GET) never carry AEFPSK; another domain's AEF, the APF and the AMF of
    the AEF's own domain, and another invoker get a refusal without it; only the AEF gets it, equal to the formula."""
    p, q = await register_provider(world), await register_provider(world)
    await publish(world, p.apf, p.aef, interface_description(9501), name="psk-api")
    await publish(world, q.apf, q.aef, interface_description(9502), name="psk-api")  # the same apiName elsewhere
    inv, other = await onboard(world), await onboard(world)
    entry = {"aefId": p.aef.identity, "prefSecurityMethods": ["PSK"]}
    async with await world.connect(inv) as conn:
        answers = [await conn.request("PUT", f"{SECURITY}/{inv.identity}", json_body=security(entry))]
        answers.append(await conn.request("POST", f"{SECURITY}/{inv.identity}/update", json_body=security(entry)))
        answers.append(await conn.request("GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true"))
        tls = conn.writer.get_extra_info("tls_connection")
        key = expected_aefpsk(tls.master_secret().reveal(), conn.session.session_id, "aef9501.test.example:8443/api")
    assert [a.status for a in answers] == [201, 200, 200], [a.body for a in answers]
    hexkey = key.hex().encode()
    for answer in answers:
        assert hexkey not in answer.body.lower() and b"authenticationInfo" not in answer.body, answer.body
    for who in (q.aef, p.apf, p.amf, other):
        got = await world.call(who, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
        assert got.status in (403, 404) and hexkey not in got.body.lower(), (who.identity, got.body)
    got = await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert got.status == 200 and [e["authenticationInfo"] for e in got.json()["securityInfo"]] == [key.hex()]


async def test_an_aef_removed_from_its_domain_reads_nothing_more(world: World) -> None:
    p = await register_provider(world)
    await publish(world, p.apf, p.aef, interface_description(9503), name="removed-aef-api")
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                           security({"aefId": p.aef.identity, "prefSecurityMethods": ["PSK"]}))
    assert put.status == 201, put.body
    assert (await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")).status == 200
    funcs = [f for f in p.answer["apiProvFuncs"] if f["apiProvFuncId"] != p.aef.identity]
    removed = await world.call(p.amf, "PUT", f"{PROVIDERS}/{p.domain}", dict(p.answer, apiProvFuncs=funcs))
    assert removed.status == 200, removed.body
    got = await world.call(p.aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert got.status == 403, got.body
    assert [d.record_id for d in world.store.documents("capif-aefpsk")] == []


async def test_a_token_names_only_what_the_context_grants_with_oauth(world: World) -> None:
    p, q = await register_provider(world), await register_provider(world)
    await publish(world, p.apf, p.aef, name="mine")
    await publish(world, q.apf, q.aef, name="mine")  # the same apiName at another domain's AEF
    await publish(world, p.apf, p.aef, name="psk-only")
    inv = await onboard(world)
    put = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(
        {"aefId": p.aef.identity, "prefSecurityMethods": ["OAUTH"]}))
    assert put.status == 201, put.body
    cases = {f"3gpp#{q.aef.identity}:mine": "invalid_scope",
             f"3gpp#{p.aef.identity}:mine;{q.aef.identity}:mine": "invalid_scope",
             f"3gpp#{p.aef.identity}:not-published": "invalid_scope"}
    async with await world.connect(inv) as conn:
        for scope, error in cases.items():
            answer = await conn.request("POST", f"{TOKEN}/{inv.identity}/token", form={
                "grant_type": "client_credentials", "client_id": inv.identity, "scope": scope})
            assert answer.status == 400 and answer.json()["error"] == error, (scope, answer.body)
        good = await conn.request("POST", f"{TOKEN}/{inv.identity}/token", form={
            "grant_type": "client_credentials", "client_id": inv.identity, "scope": f"{p.aef.identity}:mine"})
    assert good.status == 200 and good.json()["scope"] == f"3gpp#{p.aef.identity}:mine", good.body


def test_a_world_readable_master_key_file_is_refused(tmp_path: Path) -> None:
    """A careless operator's master key file (mode 0644) is refused, and its content is printed nowhere."""
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_CCF_STORE", "M2MSEC_DB")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    key_file = tmp_path / "master.key"
    secret = "ab" * 32
    key_file.write_text(secret + "\n")
    key_file.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "m2msec.cli.main", "ccf", "--store", f"sqlite://{tmp_path}/c.db",
                             "--master-key-file", str(key_file), "ca-certificate"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0, result.stdout
    assert "BEGIN CERTIFICATE" not in result.stdout
    assert secret not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
