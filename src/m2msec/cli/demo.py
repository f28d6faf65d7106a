"""``m2msec demo``: the TR-0038 §7.1.2 example end to end, on loopback, with no setup.

It creates a throw-away SQLite key store holding the TR-0038 Table 7.1.2-2 credentials (published
test vectors, not secrets) and the TS-0013 TD_M2M_SE_01 one, starts the gateway (Entity B, the
Home Gateway ``mn-cse-123456``) in front of a small stand-in for the CSE that answers every request
with what it received, and runs Entity A (the Lights) through the cases below. Exit status 0 means
every case behaved as TS-0003 says it must.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import h11

from m2msec import http1
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import SQLitePSKStore
from m2msec.keys.table import PSKEntry
from m2msec.saef import PSKCredentials, establish_sa

# TR-0038 Table 7.1.2-1/7.1.2-2 and TS-0013 TD_M2M_SE_01: published example values (test vectors).
LIGHT1 = ("AE123456789012-Light@in.provider.com", "1a2b3c4d5e6f7a8b", "Clight-AE1")
LIGHT2 = ("AE123456789015-Light@in.provider.com", "12345678abcdefab", "Clight-AE2")
TD_M2M_SE_01 = ("test@onem2m.com", "123456", None)
CSE_ID = "mn-cse-123456"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the TR-0038 PSK SAEF example on loopback")
    p.set_defaults(func=run)


async def _stand_in_cse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 2000 OK with the request line and headers it saw (a stand-in, not a CSE)."""
    conn = h11.Connection(h11.SERVER)
    try:
        req = await http1.read_message(conn, reader)
        if req is not None:
            seen = {"request": f"{req.method} {req.target}", "headers": dict(req.headers)}
            await http1.send_message(conn, writer, http1.Message(
                headers=[("content-type", "application/json"), ("x-m2m-rsc", "2000"),
                         ("x-m2m-ri", req.header("x-m2m-ri") or "")],
                body=json.dumps(seen).encode(), status=200))
    except (http1.HTTPError, ConnectionError):
        pass
    finally:
        writer.close()


async def _case(port: int, who: tuple[str, str, str | None], origin: str, key_hex: str | None = None) -> str:
    creds = PSKCredentials(who[0], SecretKey.from_hex(key_hex or who[1]), peer_entity=CSE_ID)
    try:
        sa = await establish_sa("127.0.0.1", port, creds)
    except HandshakeFailed as exc:
        return f"handshake refused ({exc.alert or exc.reason})"
    try:
        resp = await sa.request(http1.Message(
            headers=[("host", CSE_ID), ("x-m2m-origin", origin), ("x-m2m-ri", "demo-1"), ("x-m2m-rvi", "3")],
            method="GET", target=f"/{CSE_ID}"))
    finally:
        await sa.close()
    rsc = resp.header("x-m2m-rsc")
    if resp.status == 200:
        seen = json.loads(resp.body)["headers"]
        return f"forwarded, rsc {rsc}, CSE saw SA identity {seen.get('x-m2msec-sa-identity')!r}"
    return f"refused, HTTP {resp.status} rsc {rsc}"


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="m2msec-demo-") as tmp:
        db = Path(tmp) / "keys.db"
        with SQLitePSKStore(db) as store:
            for ident, key, entity in (LIGHT1, LIGHT2, TD_M2M_SE_01):
                store.add(PSKEntry(ident, SecretKey.from_hex(key), entity))
        backend = await asyncio.start_server(_stand_in_cse, "127.0.0.1", 0)
        bport = backend.sockets[0].getsockname()[1]
        table = SQLitePSKStore(db)
        gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", bport), port=0), table)
        await gateway.start()
        print(f"gateway (Entity B, {CSE_ID}) on 127.0.0.1:{gateway.port}, key store {db}")
        cases: list[tuple[str, tuple[str, str, str | None], str, str | None, str]] = [
            ("ADN-AE1 with its own KpsaID, From Clight-AE1", LIGHT1, "Clight-AE1", None, "forwarded, rsc 2000"),
            ("ADN-AE2 pretending to be Clight-AE1", LIGHT2, "Clight-AE1", None, "refused, HTTP 403 rsc 4106"),
            ("unknown KpsaID (answered as a wrong key, RFC 4279 §2)", ("nobody@in.provider.com", "00112233", None),
             "Cx", None, "handshake refused (bad_record_mac)"),
            ("ADN-AE1 with a wrong Kpsa", LIGHT1, "Clight-AE1", "0badc0de0badc0de", "handshake refused"),
            ("TD_M2M_SE_01 KpsaID with no bound AE-ID", TD_M2M_SE_01, "CAE01", None, "refused, HTTP 403 rsc 4106"),
        ]
        failures = 0
        try:
            for title, who, origin, wrong_key, expected in cases:
                outcome = await _case(gateway.port, who, origin, wrong_key)
                ok = outcome.startswith(expected)
                failures += not ok
                print(f"[{'ok' if ok else 'UNEXPECTED'}] {title}: {outcome}")
        finally:
            await gateway.close()
            table.close()
            backend.close()
            await backend.wait_closed()
    print("all cases behaved as TS-0003 requires" if not failures else f"{failures} case(s) unexpected")
    return 1 if failures else 0
