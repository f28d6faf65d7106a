"""CCF onboardings/s and security-context + AEFPSK derivations/s over real TLS, against a bare TLS 1.2 ECDHE-ECDSA
handshake of a C OpenSSL server measured in the same run (issue 18, "Benchmark").

    .venv/bin/python bench/ccf_bench.py [--seconds 5] [--concurrency 8]

Servers run as their own processes; the load comes from this process (Python's ``ssl``, TLS 1.2,
ECDHE-ECDSA-AES128-GCM-SHA256, ``--concurrency`` connections in flight, a new connection per operation). Each phase
runs ``--seconds``. Figures: the wall rate, and the server process's CPU per operation (utime + stime from /proc);
the ratio is CPU per C handshake / CPU per operation, i.e. the share of a C TLS server's handshake capacity (per
core) that the CCF keeps when every connection carries the operation. Phases:

- ``C handshake``: ``openssl s_server`` with a server certificate of the same kind as the CCF's (P-256, issued by a
  CCF CA made for the run), the CCF's cipher list, a client certificate asked for but optional (``-verify``); the
  client connects, completes the handshake and closes. The denominator of ``onboard``.
- ``CCF handshake``: the same against the CCF (handshake, close, no request): the CCF engine's share.
- ``onboard``: handshake without a client certificate + POST /onboardedInvokers with a fresh onboarding credential and
  a CSR (both made before the phase) + the CCF's JWT check, CSR check, certificate signing, two store writes; 201.
- ``C handshake, client cert``, ``CCF handshake, client cert`` and ``security``: the same with the client presenting
  an invoker certificate (the CCF checks it against its CA; the C server too, ``-verify 1 -CAfile``); the
  security phase is PUT /capif-security/v1/trustedInvokers/{apiInvokerId} by invokers onboarded in ``onboard`` (one
  each), selecting PSK for an AEF whose service is published with PSK only, so the CCF derives an AEFPSK from the
  connection's TLS 1.2 master secret and session ID (TS 33.122 Annex A). Skipped with a message while the route
  answers 404 (the CAPIF security API not on this tree). The AEF and its service are written into the store before
  the CCF starts, in the record formats of ``m2msec.capif.ccf.context``.

Why a C handshake as the baseline: an onboarding is one TLS connection plus three ECDSA operations and a store
write; ``openssl speed``'s sign rate would compare a whole request with one signature (``capif_bench.py`` does that for
certificate issuing alone). The C server's handshake is what any TLS front end must pay per new connection, so the
ratio says what the CCF's request path costs on top of the TLS floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from procs import cpu_seconds, free_port, wait_listening

HOST = "ccf.bench.example"
CIPHER = "ECDHE-ECDSA-AES128-GCM-SHA256"
#: the CCF's cipher list (m2msec.tls.profiles.ECDHE_ECDSA) for the C server too
SERVER_CIPHERS = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"
INVOKERS = "/api-invoker-management/v1/onboardedInvokers"
TRUSTED = "/capif-security/v1/trustedInvokers"
AEF_ID, APF_ID, SERVICE_ID = "AEFbench", "APFbench", "SVCbench"
NOTIFY = "https://invoker.bench.example:8443/notify"


def serve(db: str) -> None:
    """The CCF process (``--serve DB``): the CCF on an ephemeral loopback port, announced on stderr."""
    import logging

    from m2msec.capif.ccf.config import CCFConfig
    from m2msec.capif.ccf.server import open_ccf_store, running_ccf

    logging.disable(logging.WARNING)
    config = CCFConfig(listen="127.0.0.1:0", ccf_host=HOST, store=f"sqlite://{db}")

    async def main() -> None:
        store = open_ccf_store(config)
        async with running_ccf(config, store=store) as running:
            print(f"listening on 127.0.0.1:{running.port}", file=sys.stderr, flush=True)
            await asyncio.Future()

    asyncio.run(main())


@contextlib.contextmanager
def ccf_process(db: Path) -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(db)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "listening on 127.0.0.1:" not in line:
            raise SystemExit(f"the CCF did not start: {line}{proc.stderr.read()}")
        yield proc.pid, int(line.split("listening on 127.0.0.1:")[1].split()[0])
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def c_server(tmp: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    proc = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{port}", "-cert", str(tmp / "server.pem"),
         "-key", str(tmp / "server.key"), "-CAfile", str(tmp / "ca.pem"), "-verify", "1", "-tls1_2",
         "-cipher", SERVER_CIPHERS, "-naccept", "1000000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class Setup:
    """What the run prepared: the store (CA, token key, an AEF and its PSK-only service), files for the C server."""

    db: Path
    ca_file: Path
    credentials: list[str]
    csrs: list[str]
    keys: list[bytes]


def prepare(tmp: Path, count: int) -> Setup:
    """The CCF's store made here before it starts (so this process can sign onboarding credentials with its token
    key), the C server's certificate of the same kind as the CCF's, ``count`` credentials and CSRs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from m2msec.capif.ccf.config import CCFConfig
    from m2msec.capif.ccf.context import CCFPolicy, certificate_digest
    from m2msec.capif.ccf.server import open_ccf, open_ccf_store, server_certificate
    from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate
    from m2msec.capif.tokens import issue_onboarding_credential
    from m2msec.store import Document

    db = tmp / "ccf.db"
    config = CCFConfig(listen="127.0.0.1:0", ccf_host=HOST, store=f"sqlite://{db}")
    store = open_ccf_store(config)
    try:
        ccf = open_ccf(store, CCFPolicy(HOST, f"https://{HOST}"))
        now = datetime.now(UTC)
        server = server_certificate(ccf.ca, HOST, now)
        (tmp / "ca.pem").write_bytes(ccf.ca.certificate_pem())
        (tmp / "server.pem").write_bytes(server.certificate_pem())
        (tmp / "server.key").write_bytes(server.private_key_pem())

        def csr_of(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
            return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())

        aef = issue_capif_certificate(ccf.ca, csr_of(ec.generate_private_key(ec.SECP256R1())), CAPIFRole.AEF,
                                      AEF_ID, now=now)
        store.put_document(Document("capif-provider", "func:" + AEF_ID,
                                    {"domain": "DOMbench", "role": "AEF", "certificate": certificate_digest(aef)}))
        description = {"apiName": "bench-api", "apiId": SERVICE_ID, "aefProfiles": [{
            "aefId": AEF_ID, "versions": [{"apiVersion": "v1"}], "securityMethods": ["PSK"],
            "interfaceDescriptions": [{"ipv4Addr": "127.0.0.1", "port": 8443, "securityMethods": ["PSK"]}]}]}
        store.put_document(Document("capif-service", SERVICE_ID, {"apf": APF_ID, "description": description}))
        stamp = int(time.time())
        credentials = [issue_onboarding_credential(ccf.token_key, issuer=HOST, subject="bench", lifetime=3600,
                                                   now=stamp, jti=f"bench-{i}", purpose="invoker")
                       for i in range(count)]
        keys, csrs = [], []
        for _ in range(count):
            key = ec.generate_private_key(ec.SECP256R1())
            keys.append(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            csrs.append(csr_of(key).public_bytes(serialization.Encoding.PEM).decode())
    finally:
        store.close()
    return Setup(db, tmp / "ca.pem", credentials, csrs, keys)


def client_context(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHER)
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def request(port: int, ctx: ssl.SSLContext, method: str, target: str, body: Any,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP/1.1 request on a new connection (Connection: close): (status, parsed JSON body or None)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST)
    data = json.dumps(body).encode()
    head = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    raw = await reader.read()
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload) if payload else None


async def phase(pid: int, seconds: float, concurrency: int, op: Callable[[], Awaitable[bool]]) -> tuple[float, float]:
    """(server CPU seconds per op, ops per wall second); ``op`` returns False when it has nothing left to do."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            if not await op():
                return
            done += 1

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    if not done:
        raise SystemExit("a phase completed no operation")
    return cpu / done, done / wall


@dataclass
class Onboarded:
    invoker_id: str
    ctx: ssl.SSLContext


async def run_c(port: int, pid: int, setup: Setup, a: argparse.Namespace,
                client_cert: tuple[Path, Path]) -> dict[str, tuple[float, float]]:
    plain, mutual = client_context(setup.ca_file), client_context(setup.ca_file, client_cert)

    async def bare() -> bool:
        await handshake(port, plain)
        return True

    async def with_cert() -> bool:
        await handshake(port, mutual)
        return True

    await phase(pid, 0.5, a.concurrency, bare)  # warm-up
    return {"C handshake": await phase(pid, a.seconds, a.concurrency, bare),
            "C handshake, client cert": await phase(pid, a.seconds, a.concurrency, with_cert)}


async def run_ccf(port: int, pid: int, setup: Setup, tmp: Path,
                  a: argparse.Namespace) -> tuple[dict[str, tuple[float, float]], list[str]]:
    plain = client_context(setup.ca_file)
    results: dict[str, tuple[float, float]] = {}
    notes: list[str] = []
    onboarded: list[Onboarded] = []
    turn = iter(range(len(setup.credentials)))

    async def bare() -> bool:
        await handshake(port, plain)
        return True

    async def onboard() -> bool:
        i = next(turn, None)
        if i is None:
            return False
        status, body = await request(port, plain, "POST", INVOKERS, {
            "notificationDestination": NOTIFY, "onboardingInformation": {"apiInvokerPublicKey": setup.csrs[i]},
            "apiInvokerInformation": "bench", "supportedFeatures": "0"},
            {"Authorization": f"Bearer {setup.credentials[i]}"})
        if status != 201:
            raise SystemExit(f"onboarding answered {status}: {body}")
        ident = body["apiInvokerId"]
        cert, key = tmp / f"{ident}.crt", tmp / f"{ident}.key"
        cert.write_text(body["onboardingInformation"]["apiInvokerCertificate"])
        key.write_bytes(setup.keys[i])
        onboarded.append(Onboarded(ident, client_context(setup.ca_file, (cert, key))))
        return True

    await phase(pid, 0.5, a.concurrency, bare)  # warm-up
    results["CCF handshake"] = await phase(pid, a.seconds, a.concurrency, bare)
    results["onboard"] = await phase(pid, a.seconds, a.concurrency, onboard)
    if len(setup.credentials) == len(onboarded):
        notes.append(f"onboard: all {len(onboarded)} prepared credentials used before {a.seconds:g} s "
                     "(raise --credentials)")

    holder = onboarded[0].ctx  # an invoker's certificate: the CCF's handshake with a client certificate

    async def bare_with_cert() -> bool:
        await handshake(port, holder)
        return True

    results["CCF handshake, client cert"] = await phase(pid, a.seconds, a.concurrency, bare_with_cert)

    def security_body() -> dict[str, Any]:
        return {"notificationDestination": NOTIFY, "supportedFeatures": "0",
                "securityInfo": [{"aefId": AEF_ID, "apiId": SERVICE_ID, "prefSecurityMethods": ["PSK"]}]}

    first = onboarded.pop()
    status, body = await request(port, first.ctx, "PUT", f"{TRUSTED}/{first.invoker_id}", security_body())
    if status == 404:
        notes.append("security: skipped, PUT trustedInvokers answers 404 (the CAPIF security API is not served by "
                     "this tree)")
        return results, notes
    if status not in (200, 201):
        notes.append(f"security: skipped, PUT trustedInvokers answered {status}: {json.dumps(body)[:300]}")
        return results, notes
    psk = 0
    methods = {str(info.get("selSecurityMethod")) for info in body.get("securityInfo", [])}
    if methods != {"PSK"}:
        notes.append(f"security: the CCF selected {sorted(methods)}, not PSK: no AEFPSK derived")

    async def security() -> bool:
        nonlocal psk
        if not onboarded:
            return False
        inv = onboarded.pop()
        status, answer = await request(port, inv.ctx, "PUT", f"{TRUSTED}/{inv.invoker_id}", security_body())
        if status not in (200, 201):
            raise SystemExit(f"PUT trustedInvokers answered {status}: {answer}")
        psk += sum(info.get("selSecurityMethod") == "PSK" for info in answer.get("securityInfo", []))
        return True

    results["security"] = await phase(pid, a.seconds, a.concurrency, security)
    notes.append(f"security: {psk} contexts with PSK selected (an AEFPSK each)")
    if not onboarded:
        notes.append("security: ran out of onboarded invokers before the phase's time (one context each)")
    return results, notes


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--credentials", type=int, default=3000,
                        help="onboarding credentials and CSRs made before the run (the onboard phase stops there)")
    a = parser.parse_args()
    if shutil.which("openssl") is None:
        raise SystemExit("ccf_bench.py needs the openssl command line tool (the C baseline server): apt-get install "
                         "openssl")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.monotonic()
        setup = prepare(tmp, a.credentials)
        print(f"prepared {a.credentials} credentials and CSRs in {time.monotonic() - t0:.1f} s")
        with ccf_process(setup.db) as (pid, port):
            ccf_results, notes = asyncio.run(run_ccf(port, pid, setup, tmp, a))
        client_cert = next((c, c.with_suffix(".key")) for c in tmp.glob("INV*.crt"))
        with c_server(tmp) as (cpid, cport):
            c_results = asyncio.run(run_c(cport, cpid, setup, a, client_cert))
    print(f"\nserver CPU per operation, wall rate ({a.concurrency} in flight, {a.seconds:g} s each, TLS 1.2 {CIPHER})")
    rows = [("C handshake", "C handshake"), ("CCF handshake", "C handshake"), ("onboard", "C handshake"),
            ("C handshake, client cert", "C handshake, client cert"),
            ("CCF handshake, client cert", "C handshake, client cert"), ("security", "C handshake, client cert")]
    everything = {**c_results, **ccf_results}
    for name, base in rows:
        if name not in everything:
            continue
        cpu, rate = everything[name]
        ratio = everything[base][0] / cpu
        print(f"  {name:<26} {cpu * 1e6:8.0f} us  {rate:7.0f}/s  ratio {ratio:.2f}"
              + ("  (denominator)" if name == base else f" of {base}"))
    for note in notes:
        print("  " + note)
    from cryptography.hazmat.backends.openssl import backend

    print(f"C server: {subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.strip()}; "
          f"CCF engine: {backend.openssl_version_text()}; client (python ssl): {ssl.OPENSSL_VERSION}; "
          f"CPUs: {os.cpu_count()}")


if __name__ == "__main__":
    main()
