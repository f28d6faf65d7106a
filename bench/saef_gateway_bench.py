"""Gateway handshakes with a cached MAF Kc (``m2msec gateway --maf``) against a provisioned PSK (``--psk-table``),
measured in the same run (issue 16 part 5; goal: ratio >= 0.9).

Three processes: ``m2msec maf serve`` (clients provisioned with ``m2msec maf clients add``), a gateway with only a
PSK table and a gateway with the same table and ``--maf``. This process registers one Kc at the MAF (Entity A),
lets the ``--maf`` gateway retrieve it once (warm-up), then runs TLS-PSK handshakes (then close) against each
gateway in alternating rounds, ``--concurrency`` in flight. The figure is each gateway process's CPU seconds per
handshake (from /proc, robust on a shared machine); the ratio is the ``--maf`` gateway's capacity with the cached
Kc over the plain gateway's with the provisioned PSK (CPU per PSK handshake / CPU per Kc handshake).

    .venv/bin/python bench/saef_gateway_bench.py [--handshakes 400] [--rounds 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from procs import cpu_seconds, free_port, wait_listening

from m2msec.keys.secret import SecretKey
from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.saef import PSKCredentials, establish_sa

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
FQDN = "maf.m2msec.localhost"  # the MAF's embedded default
IDB = "/mn-cse-b"
PLAIN_ID, PLAIN_KEY = "plain@in.provider.com", SecretKey(bytes(range(32)))


async def handshakes(port: int, creds: PSKCredentials, n: int, concurrency: int) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            sa = await establish_sa("127.0.0.1", port, creds)
            await sa.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MSEC_")}
    store = ["maf", "--store", f"sqlite://{tmp}/maf.db"]
    for name, identity in (("cae1", "/mn-cse-a/CAE1"), ("gw-b", IDB)):
        subprocess.run([*M2MSEC, *store, "clients", "add", name, "--identity", identity, "--generate", "32",
                        "--out", str(tmp / f"{name}.km")], check=True, capture_output=True, env=env)
    table = tmp / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{PLAIN_ID}"\nkey = "{PLAIN_KEY.reveal().hex()}"\nentity = "CPlain"\n')
    table.chmod(0o600)
    maf_port, plain_port, kc_port = free_port(), free_port(), free_port()
    gateway = ["gateway", "--psk-table", str(table), "--backend", "http://127.0.0.1:9", "--quiet"]
    maf_opts = ["--maf", f"https://127.0.0.1:{maf_port}", "--maf-fqdn", FQDN, "--maf-kmid", f"gw-b@{FQDN}",
                "--maf-key-file", str(tmp / "gw-b.km")]
    procs = [subprocess.Popen([*M2MSEC, *store, "serve", "--listen", f"127.0.0.1:{maf_port}"], env=env,
                              stderr=subprocess.DEVNULL),
             subprocess.Popen([*M2MSEC, *gateway, "--listen", f"127.0.0.1:{plain_port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([*M2MSEC, *gateway, *maf_opts, "--listen", f"127.0.0.1:{kc_port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for port in (maf_port, plain_port, kc_port):
            wait_listening(port)
        km = SecretKey.from_hex((tmp / "cae1.km").read_text())
        async with MAFClient("127.0.0.1", maf_port, MAFCredentials(FQDN, kmid=f"cae1@{FQDN}", km=km)) as a:
            key = await a.register_key(suid=32, target_ids=[IDB], lifetime=3600)
        assert key.kc is not None
        kc = PSKCredentials(f"{key.relative_key_id}@{FQDN}", key.kc, peer_entity=IDB)
        plain = PSKCredentials(PLAIN_ID, PLAIN_KEY, peer_entity=IDB)
        await handshakes(kc_port, kc, 20, 1)  # the one Key Retrieval, then the cache
        await handshakes(plain_port, plain, 20, 1)
        cost: dict[str, list[float]] = {"psk": [], "kc": []}
        for _ in range(args.rounds):
            for name, proc, port, creds in (("psk", procs[1], plain_port, plain), ("kc", procs[2], kc_port, kc)):
                before = cpu_seconds(proc.pid)
                await handshakes(port, creds, args.handshakes, args.concurrency)
                cost[name].append((cpu_seconds(proc.pid) - before) / args.handshakes)
        psk, kcc = min(cost["psk"]), min(cost["kc"])
        rounds = [round(p / k, 3) for p, k in zip(cost["psk"], cost["kc"], strict=True)]
        print(f"provisioned PSK {psk * 1e6:.0f} us CPU/handshake, cached Kc {kcc * 1e6:.0f} us CPU/handshake, "
              f"capacity ratio Kc/PSK {psk / kcc:.3f} (best of {args.rounds} x {args.handshakes}, "
              f"concurrency {args.concurrency}; per round {rounds})")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
