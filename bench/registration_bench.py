"""What registration upon SAE costs the gateway (issue 17): requests per CPU second through the HTTP gateway, three
ways, measured in the same run in alternating rounds:

* ``plain``: no ``--app-rules``; the light's PSK is bound to its entity (the baseline);
* ``bound``: ``--app-rules``; the light's SA is known by its Credential-ID only and acts as the AE-ID bound at its
  registration (the gateway re-reads the credential's AE-IDs from the SQLite bindings file at each request);
* ``create``: ``--app-rules``; every request is a CREATE <AE> (the strict body read, the rules, the binding write),
  against ``create-plain``: the same CREATE <AE> through the gateway without ``--app-rules``.

Client, gateway and a stand-in CSE run in this process over real loopback TLS-PSK (one keep-alive SA each); the figure
is this process's CPU time per request (``time.process_time``, robust on a shared machine), so the ratios understate
the gateway's own share of the difference (client and stand-in costs are in both).

    .venv/bin/python bench/registration_bench.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import h11

from m2msec import http1
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.registrar import BindingStore, Registrar
from m2msec.gateway.subscription import RuleTable
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa

# TR-0038 Table 7.1.2-2 example credential (a published test vector)
LIGHT_ID, LIGHT_KEY, CSE = "AE123456789012-Light@in.provider.com", "1a2b3c4d5e6f7a8b", "mn-cse-123456"
RULES = '[[app_rule]]\napci = ["12-*-Light@in.provider.com"]\naai = ["Nlight"]\naae = ["C*"]\n'


async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while (req := await http1.read_message(conn, reader)) is not None:
            created = req.method == "POST"
            body = json.dumps({"m2m:ae": {"aei": req.header("x-m2m-origin")}}).encode() if created else b"{}"
            await http1.send_message(conn, writer, http1.Message(
                headers=[("content-type", "application/json"), ("x-m2m-rsc", "2001" if created else "2000")],
                body=body, status=201 if created else 200))
            conn.start_next_cycle()
    except (http1.HTTPError, ConnectionError, h11.ProtocolError):
        pass
    finally:
        writer.close()


def request(create: bool) -> http1.Message:
    headers = [("host", CSE), ("x-m2m-origin", "Clight-bench"), ("x-m2m-ri", "b"), ("x-m2m-rvi", "3")]
    if not create:
        return http1.Message(headers=headers, method="GET", target=f"/{CSE}")
    body = json.dumps({"m2m:ae": {"api": "Nlight", "rr": False, "srv": ["3"]}}).encode()
    return http1.Message(headers=[*headers, ("content-type", "application/json;ty=2")], body=body, method="POST",
                         target=f"/{CSE}")


async def cpu_per_request(sa: EstablishedSA, create: bool, n: int) -> float:
    msg = request(create)
    start = time.process_time()
    for _ in range(n):
        resp = await sa.request(msg)
        if resp.status not in (200, 201):
            raise SystemExit(f"unexpected answer {resp.status} {resp.body[:200]!r}")
    return (time.process_time() - start) / n


async def main(args: argparse.Namespace) -> None:
    backend = await asyncio.start_server(stand_in, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    key = SecretKey.from_hex(LIGHT_KEY)
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.toml"
        rules.write_text(RULES)
        config = GatewayConfig(backend=Backend("127.0.0.1", port), port=0, cse_id=CSE)
        plain = Gateway(config, MemoryPSKTable([PSKEntry(LIGHT_ID, key, "Clight-bench")]))
        registrar = Registrar(RuleTable.from_file(rules), BindingStore(Path(tmp) / "reg.sqlite"), cse_id=CSE)
        ruled = Gateway(config, MemoryPSKTable([PSKEntry(LIGHT_ID, key)]), registrar=registrar)
        for gw in (plain, ruled):
            await gw.start()
        creds = PSKCredentials(LIGHT_ID, key, CSE)
        plain_sa = await establish_sa("127.0.0.1", plain.port, creds)
        ruled_sa = await establish_sa("127.0.0.1", ruled.port, creds)
        await cpu_per_request(ruled_sa, True, 1)  # registers Clight-bench: the SA acts as it from now on
        await cpu_per_request(plain_sa, False, 100)  # warm-up
        figures: dict[str, list[float]] = {"plain": [], "bound": [], "create-plain": [], "create": []}
        for _ in range(args.rounds):
            figures["plain"].append(await cpu_per_request(plain_sa, False, args.requests))
            figures["bound"].append(await cpu_per_request(ruled_sa, False, args.requests))
            figures["create-plain"].append(await cpu_per_request(plain_sa, True, args.requests))
            figures["create"].append(await cpu_per_request(ruled_sa, True, args.requests))
        for sa in (plain_sa, ruled_sa):
            await sa.close()
        for gw in (plain, ruled):
            await gw.close()
        registrar.close()
    backend.close()
    print(f"{'way':13} {'CPU us/request (best of ' + str(args.rounds) + ')':>34} {'requests/s vs baseline':>23}")
    for way, values in figures.items():
        base = min(figures["create-plain" if way.startswith("create") else "plain"])
        best = min(values)
        print(f"{way:13} {best * 1e6:34.1f} {base / best:23.2f}")
    print(f"python {sys.version.split()[0]}, {args.requests} requests x {args.rounds} rounds, one keep-alive SA each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
