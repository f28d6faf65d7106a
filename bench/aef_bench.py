"""API calls/s through ``m2msec aef serve`` per CAPIF-2e method (PSK with AEFPSK, PKI with the invoker certificate,
OAuth with a CCF access token) against direct calls to the same backend (plain HTTP), measured in the same run.

Processes: a small HTTP/1.1 backend (keep-alive, answers 200 with a short JSON echo naming the invoker the AEF
forwarded), ``m2msec aef serve`` in front of it (registered with ``m2msec.capif.aef.register``, as ``m2msec aef
register`` does; its configuration written by ``m2msec.capif.aef.config_file``; its API published with ``m2msec aef
publish``); this process runs the CCF (``running_ccf``, as ``m2msec ccf serve`` does: a SQLite store, loopback TLS)
and the clients. Only the package's public API is used (nothing from tests/): m2msec installed is enough.
Invokers are onboarded with ``m2msec.capif.invoker`` (what ``m2msec capif onboard`` does), each obtains a security
context selecting its method (PSK: AEFPSK derived on that CAPIF-1e connection and read back from its file; OAuth: a
token from the token endpoint). Two modes, each in alternating rounds over the
four paths: ``keep-alive`` (``--concurrency`` connections sending calls one after the other) and ``connect`` (a new
connection, hence a new TLS handshake, per call). Printed per mode and path: calls/s (best round), the ratio
calls/s through the AEF / direct calls/s, and the AEF process's CPU per call (/proc, all its threads).

    .venv/bin/python bench/aef_bench.py [--calls 2000] [--rounds 3] [--concurrency 4] [--psk-profile ecdhe-psk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import h11
from procs import cpu_seconds, free_port, wait_listening

from m2msec import http1
from m2msec.capif import invoker
from m2msec.capif.aef.config_file import ConfigAPI, render_config
from m2msec.capif.aef.register import PROVIDER_FILE, register
from m2msec.capif.ccf.admin import issue_credential
from m2msec.capif.ccf.config import CCFConfig
from m2msec.capif.ccf.server import RunningCCF, running_ccf
from m2msec.cli.capif import DEFAULT_NOTIFICATION_DESTINATION
from m2msec.cli.main import main as m2msec_main
from m2msec.errors import HandshakeTimeout
from m2msec.idb import NOT_ONEM2M
from m2msec.pki import create_ca, issue
from m2msec.pki.profile import CertificateFlavour
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, parse_profiles
from m2msec.transport.tls import open_connection

AEF_HOST = "aef.bench.example"
CCF_HOST = "ccf.bench.example"
PATH = "/weather/today"
BODY = b'{"city": "Sophia Antipolis", "forecast": "sun", "temperature": 21, "wind": "' + b"w" * 120 + b'"}'

#: a handshake not done by then is counted as timed out, and the call retried on a new connection
HANDSHAKE_TIMEOUT = 3.0
HANDSHAKE_TRIES = 3
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def serve_backend(port: int) -> None:
    """The provider's HTTP service: keep-alive HTTP/1.1, 200 with BODY and the invoker the AEF named."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (req := await http1.read_message(conn, reader)) is not None:
                invoker = req.header("x-capif-invoker-id") or "-"
                await http1.send_message(conn, writer, http1.Message(
                    headers=[("content-type", "application/json"), ("x-invoker", invoker)], body=BODY, status=200))
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (http1.HTTPError, ConnectionError, h11.LocalProtocolError, h11.RemoteProtocolError):
            pass
        finally:
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        await server.serve_forever()

    asyncio.run(run())


class Route:
    """One way of calling the API: how to open a connection, which headers, which invoker the backend must see."""

    def __init__(self, name: str, port: int, context: TLSContext | None, headers: list[tuple[str, str]],
                 invoker: str) -> None:
        self.name, self.port, self.context, self.headers, self.invoker = name, port, context, headers, invoker
        self.connects = self.timeouts = 0

    async def connect(self) -> Conn:
        if self.context is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        for _ in range(HANDSHAKE_TRIES):
            try:
                reader, writer, _ = await open_connection("127.0.0.1", self.port, self.context,
                                                          handshake_timeout=HANDSHAKE_TIMEOUT, peer_entity=NOT_ONEM2M)
                break
            except HandshakeTimeout:
                self.timeouts += 1  # counted and reported; the call is made on a new connection
        else:
            raise SystemExit(f"{self.name}: {HANDSHAKE_TRIES} handshakes in a row timed out")
        self.connects += 1
        return reader, writer

    def message(self) -> http1.Message:
        return http1.Message(headers=[("host", AEF_HOST), *self.headers], method="GET", target=PATH)


async def run_mode(path: Route, n: int, concurrency: int, keep_alive: bool) -> None:
    left = n

    async def worker() -> None:
        nonlocal left
        kept: Conn | None = await path.connect() if keep_alive else None
        h = h11.Connection(h11.CLIENT)
        while left > 0:
            left -= 1
            reader, writer = kept or await path.connect()
            if kept is None:
                h = h11.Connection(h11.CLIENT)
            elif h.our_state is h11.DONE and h.their_state is h11.DONE:
                h.start_next_cycle()
            await http1.send_message(h, writer, path.message())
            resp = await http1.read_message(h, reader)
            assert resp is not None and resp.status == 200, (path.name, resp and resp.status, resp and resp.body)
            assert resp.body == BODY and resp.header("x-invoker") == path.invoker, (path.name, resp.headers)
            if kept is None:
                writer.close()
        if kept is not None:
            kept[1].close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def cli(*argv: str) -> None:
    code = await asyncio.to_thread(m2msec_main, list(argv))
    if code != 0:
        raise SystemExit(f"m2msec {' '.join(argv[:2])} failed: exit status {code}")


class CCF:
    """The CCF as ``m2msec ccf serve`` runs it (a SQLite key store in the temporary folder, loopback TLS) and what
    its operator hands out: its CA certificate and onboarding credentials (``m2msec ccf onboarding-credential``)."""

    def __init__(self, running: RunningCCF, tmp: Path) -> None:
        self.running, self.tmp = running, tmp
        self.address = ("127.0.0.1", running.port)
        self.ca_pem = running.ca_pem
        self.issuer = running.ccf.policy.issuer
        self._store = running.ccf.store.store

    def credential(self, purpose: str) -> str:
        return issue_credential(self._store, issuer=self.issuer, subject=f"bench {purpose}", lifetime=600,
                                now=int(time.time()), purpose=purpose).token


async def invoker_paths(ccf: CCF, port: int, server_ca: bytes, profile: str) -> list[Route]:
    """One invoker per method, onboarded and given its security context with m2msec.capif.invoker (what
    ``m2msec capif onboard`` / ``security`` / ``token`` do)."""
    iface = {"ipv4Addr": "127.0.0.1", "port": port, "apiPrefix": "/weather"}
    paths: list[Route] = []
    for method in ("PSK", "PKI", "OAUTH"):
        who = await invoker.onboard(ccf.address, CCF_HOST, ccf.ca_pem, ccf.credential("invoker"),
                                    ccf.tmp / f"invoker-{method.lower()}", DEFAULT_NOTIFICATION_DESTINATION)
        got = await invoker.obtain_security(who, [{"interfaceDetails": iface, "prefSecurityMethods": [method]}])
        selected = [e.get("selSecurityMethod") for e in got.context["securityInfo"]]
        assert selected == [method], selected
        if method == "PSK":
            identity, aefpsk = invoker.read_aefpsk(got.psk_files[0].path)
            config = ClientConfig(identity, aefpsk, profiles=parse_profiles(profile), peer_entity=NOT_ONEM2M)
            paths.append(Route(f"AEF PSK ({profile})", port, TLSContext.client(config), [], who.invoker_id))
        elif method == "PKI":
            config = ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=AEF_HOST, certificate=
                                  CertificateConfig(who.certificate_pem, who.private_key_pem, server_ca))
            paths.append(Route("AEF PKI", port, TLSContext.client(config), [], who.invoker_id))
        else:
            token = (await invoker.token(who))["access_token"]
            config = ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=AEF_HOST,
                                  server_authentication_only=True, certificate=CertificateConfig(b"", b"", server_ca))
            paths.append(Route("AEF OAuth", port, TLSContext.client(config), [("authorization", f"Bearer {token}")],
                               who.invoker_id))
    return paths


async def start_front(ccf: CCF, tmp: Path, backend_port: int) -> tuple[asyncio.subprocess.Process, int, bytes]:
    """Register a provider (m2msec.capif.aef.register), publish the API (``m2msec aef publish``), start
    ``m2msec aef serve``; (process, port, server CA PEM)."""
    (tmp / "ccf-ca.pem").write_bytes(ccf.ca_pem)
    ids = await register(ccf.address, CCF_HOST, ccf.ca_pem, ccf.credential("provider"), tmp / "provider")
    assert json.loads((tmp / "provider" / PROVIDER_FILE).read_text())["AEF"] == ids["AEF"]
    ca = create_ca("AEF operator CA", permitted_dns=["bench.example"])
    cert = issue(ca, CertificateFlavour.FQDN, AEF_HOST)
    (tmp / "server.crt").write_bytes(cert.certificate_pem())
    (tmp / "server.key").write_bytes(cert.private_key_pem())
    (tmp / "server.key").chmod(0o600)
    port = free_port()
    config = tmp / "aef.toml"
    config.write_text(render_config(
        listen=f"127.0.0.1:{port}", backend=f"http://127.0.0.1:{backend_port}", aef_id=ids["AEF"],
        ccf_address=f"127.0.0.1:{ccf.address[1]}", ccf_host=CCF_HOST, issuer=ccf.issuer, ccf_ca="ccf-ca.pem",
        apis=[ConfigAPI("weather", "/weather", f"127.0.0.1:{port}/weather")]))
    await cli("aef", "publish", "--config", str(config), "--provider", str(tmp / "provider"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2MSEC_")}
    log = (tmp / "aef.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "m2msec", "aef", "serve", "--config",
                                                str(config), stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env)
    for _ in range(300):
        if "listening on" in (tmp / "aef.log").read_text(errors="replace"):
            return proc, port, ca.certificate_pem()
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise SystemExit("m2msec aef serve did not start:\n" + (tmp / "aef.log").read_text(errors="replace")[-2000:])


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def measure(paths: list[Route], pids: tuple[int, int], n: int, rounds: int, concurrency: int, keep_alive: bool,
                  ) -> dict[str, tuple[float, float, float, float]]:
    """{path: (best calls/s, least CPU s per call of the AEF, the backend, this process (clients))} over alternating
    rounds."""
    aef_pid, backend_pid = pids
    rates: dict[str, list[float]] = {p.name: [] for p in paths}
    cpu: dict[str, list[tuple[float, float, float]]] = {p.name: [] for p in paths}
    for p in paths:
        await run_mode(p, 2 * concurrency, concurrency, keep_alive)  # warm-up: caches filled, code paths run
        p.timeouts = 0
    for _ in range(rounds):
        for p in paths:
            a0, b0, c0, t0 = cpu_seconds(aef_pid), cpu_seconds(backend_pid), own_cpu(), time.perf_counter()
            await run_mode(p, n, concurrency, keep_alive)
            rates[p.name].append(n / (time.perf_counter() - t0))
            await asyncio.sleep(0.05)  # let the servers finish the last connections' closes
            cpu[p.name].append(((cpu_seconds(aef_pid) - a0) / n, (cpu_seconds(backend_pid) - b0) / n,
                                (own_cpu() - c0) / n))
    return {name: (max(rates[name]), *(min(c[i] for c in cpu[name]) for i in range(3))) for name in rates}


def report(mode: str, figures: dict[str, tuple[float, float, float, float]], paths: list[Route], n: int, rounds: int,
           concurrency: int) -> None:
    timeouts = {p.name: p.timeouts for p in paths}
    direct = figures["direct"][0]
    print(f"{mode} (best of {rounds} rounds x {n} calls, {concurrency} concurrent clients; CPU us per call, least)")
    print(f"  {'path':22} {'calls/s':>8} {'ratio':>6} {'AEF':>6} {'backend':>8} {'clients':>8} {'hs timeouts':>12}")
    for name, (rate, aef, backend, client) in figures.items():
        label, aef_cpu = ("direct (plain HTTP)", "-") if name == "direct" else (name, f"{aef * 1e6:.0f}")
        print(f"  {label:22} {rate:8.0f} {rate / direct:6.2f} {aef_cpu:>6} {backend * 1e6:8.0f} {client * 1e6:8.0f} "
              f"{timeouts[name]:12}")


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    backend_port = free_port()
    backend = multiprocessing.Process(target=serve_backend, args=(backend_port,), daemon=True)
    backend.start()
    aef: asyncio.subprocess.Process | None = None
    try:
        wait_listening(backend_port)
        config = CCFConfig(listen="127.0.0.1:0", ccf_host=CCF_HOST, store=f"sqlite://{tmp}/ccf.db")
        async with running_ccf(config) as running:  # as `m2msec ccf serve` runs it
            ccf = CCF(running, tmp)
            t0 = time.perf_counter()
            aef, port, server_ca = await start_front(ccf, tmp, backend_port)
            assert backend.pid is not None
            paths = [Route("direct", backend_port, None, [], "-"),
                     *await invoker_paths(ccf, port, server_ca, args.psk_profile)]
            print(f"setup (CCF, register, publish, aef serve, 3 invokers with contexts): "
                  f"{time.perf_counter() - t0:.1f} s")
            modes = (("keep-alive", True, args.calls), ("connect", False, args.calls // 5))
            for mode, keep_alive, n in (m for m in modes if m[0] in args.modes.split(",")):
                figures = await measure(paths, (aef.pid, backend.pid), n, args.rounds, args.concurrency, keep_alive)
                report(mode, figures, paths, n, args.rounds, args.concurrency)
            print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
                  f"Python {sys.version.split()[0]}")
    except BaseException:
        log = tmp / "aef.log"
        if log.exists():
            print("m2msec aef serve's log (end):\n" + log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        if aef is not None and aef.returncode is None:
            aef.terminate()
            await aef.wait()
        backend.terminate()
        backend.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per keep-alive round (connect: a fifth)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--modes", default="keep-alive,connect")
    parser.add_argument("--psk-profile", default="ecdhe-psk", help="engine profile(s) of the PSK invoker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
