"""The TR-0038 §7.1 smart home on loopback: the files (certificates, PSK table, MAF store and client keys) and
the processes (two ACME CSEs, two gateways, a MAF, two tunnels), started in the order their ports need.

::

    smartphone ──MAF-based SAE──> IN-GW ──> IN-CSE (ACME, id-in)        MAF (m2msec maf serve)
                                    ^            │ retargeting: poa = IN tunnel
                      MN tunnel (MN cert)        v
                                    │       IN tunnel (IN cert)
    lights ──PSK SAE (HTTP, coaps)──> MN-GW <────┘
                                    │ ──> MN-CSE (ACME, mn-cse-123456) ──registrar = MN tunnel──┘
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from m2msec.demo.acme import AcmeConfig, Registrar, free_port
from m2msec.demo.procs import Processes, m2msec_argv
from m2msec.pki import CertificateFlavour, create_ca, issue, write_issued

SP = "in.provider.com"  # TR-0038's service provider domain
IN_CSE_ID, IN_CSE_NAME = "id-in", "cse-in"
MN_CSE_ID, MN_CSE_NAME = "mn-cse-123456", "cse-mn"
MAF_FQDN = f"maf.{SP}"
PHONE_KMID, IN_GW_KMID = f"smartphone@{MAF_FQDN}", f"in-gw@{MAF_FQDN}"
#: the smartphone's AE-ID as provisioned at the MAF (SP-relative; the MAF makes it absolute)
PHONE_AE = f"/{IN_CSE_ID}/Csmartphone"
#: TR-0038 Table 7.1.2-2 / TS-0013 TD_M2M_SE_01: published example values (test vectors, not secrets). No AE-ID
#: is bound in the PSK table: the service subscription rules admit the lights' registrations, the CSE assigns
#: their AE-IDs and MN-GW binds them (docs/gateway.md "Registration upon SAE")
LIGHT1 = ("AE123456789012-Light@in.provider.com", "1a2b3c4d5e6f7a8b", None)
LIGHT2 = ("AE123456789015-Light@in.provider.com", "12345678abcdefab", None)
TD_M2M_SE_01 = ("test@onem2m.com", "123456", None)
#: MN-GW's service subscription rules: the two lights (by Credential-ID, TS-0003 §10.4), App-IDs Nlight*, any
#: C-type AE-ID-Stem the CSE assigns; no rule applies to TD_M2M_SE_01's credential
APP_RULES = f"""[[app_rule]]
apci = ["12-{LIGHT1[0]}", "12-{LIGHT2[0]}"]
aai = ["Nlight*"]
aae = ["C*"]
"""

LISTEN = r"on 127\.0\.0\.1:(\d+)"
TUNNEL_LISTEN = r"listening on 127\.0\.0\.1:(\d+)"
MAF_LISTEN = r"MAF \S+ listening on 127\.0\.0\.1:(\d+)"


@dataclass
class Files:
    ca: Path
    in_cert: Path
    in_key: Path
    mn_cert: Path
    mn_key: Path
    psk_table: Path
    app_rules: Path
    maf_config: Path
    phone_km: Path
    in_gw_km: Path


@dataclass
class Ports:
    in_gw: int = 0
    mn_gw: int = 0
    mn_coaps: int = 0
    maf: int = 0
    in_cse: int = 0
    mn_cse: int = 0
    mn_cse_coap: int = 0


def _psk_table(path: Path) -> Path:
    rows = []
    for ident, key, entity in (LIGHT1, LIGHT2, TD_M2M_SE_01):
        rows.append(f'[[psk]]\nidentity = "{ident}"\nkey = "{key}"\n' + (f'entity = "{entity}"\n' if entity else ""))
    path.write_text("\n".join(rows))
    path.chmod(0o600)
    return path


def make_certificates(work: Path) -> tuple[Path, Path, Path, Path, Path]:
    """One name-constrained CA for the SP, the IN-CSE's and the MN-CSE's CSE-ID certificates (m2msec.pki, what
    ``m2msec pki ca`` / ``issue --flavour cse-id`` run)."""
    ca = create_ca("in.provider.com demo CA", permitted_dns=[SP])
    ca_crt, _ = write_issued(ca, work / "ca")
    in_crt, in_key = write_issued(issue(ca, CertificateFlavour.CSE_ID, IN_CSE_ID, sp_domain=SP), work / IN_CSE_ID)
    mn_crt, mn_key = write_issued(issue(ca, CertificateFlavour.CSE_ID, MN_CSE_ID, sp_domain=SP), work / MN_CSE_ID)
    assert in_key is not None and mn_key is not None
    return ca_crt, in_crt, in_key, mn_crt, mn_key


async def make_files(work: Path, procs: Processes) -> Files:
    ca, in_crt, in_key, mn_crt, mn_key = make_certificates(work)
    maf_config = work / "maf.toml"
    maf_config.write_text(f'listen = "127.0.0.1:0"\nmaf_fqdn = "{MAF_FQDN}"\nsp_id = "{SP}"\n'
                          f'store = "sqlite://{work}/maf.db"\n')
    phone_km, in_gw_km = work / "smartphone.km", work / "in-gw.km"
    # one after the other: both open the same new SQLite store
    for name, kmid, identity, out in (("maf-add-phone", PHONE_KMID, PHONE_AE, phone_km),
                                      ("maf-add-in-gw", IN_GW_KMID, f"/{IN_CSE_ID}", in_gw_km)):
        proc = procs.start(name, m2msec_argv("maf", "--config", str(maf_config), "clients", "add", kmid,
                                             "--identity", identity, "--generate", "32", "--out", str(out)))
        await procs.wait_line(proc, r"added MAF client")
    rules = work / "rules.toml"
    rules.write_text(APP_RULES)
    return Files(ca, in_crt, in_key, mn_crt, mn_key, _psk_table(work / "psk.toml"), rules, maf_config, phone_km,
                 in_gw_km)


def in_cse_config(ports: Ports) -> AcmeConfig:
    return AcmeConfig("IN", IN_CSE_ID, IN_CSE_NAME, ports.in_cse, sp_id=SP, registrees=(MN_CSE_ID,))


def mn_cse_config(ports: Ports, mn_tunnel: int, in_tunnel: int) -> AcmeConfig:
    return AcmeConfig("MN", MN_CSE_ID, MN_CSE_NAME, ports.mn_cse, ports.mn_cse_coap, sp_id=SP,
                      registrar=Registrar(f"http://127.0.0.1:{mn_tunnel}", IN_CSE_ID, IN_CSE_NAME),
                      poa=f"http://127.0.0.1:{in_tunnel}")


def _gateway_argv(files: Files, cert: Path, key: Path, cse_id: str, backend: int) -> list[str]:
    return m2msec_argv("gateway", "--listen", "127.0.0.1:0", "--backend", f"http://127.0.0.1:{backend}",
                       "--profiles", "onem2m,ecdhe-psk,ecdhe-ecdsa", "--cert", str(cert), "--key", str(key),
                       "--client-ca", str(files.ca), "--sp-id", SP, "--cse-id", cse_id)


async def start_all(procs: Processes, acme: Path, progress: Callable[[str], None]) -> tuple[Files, Ports]:
    """Start everything; returns once both CSEs answer (the MN-CSE's registration may still be under way)."""
    work = procs.work
    ports = Ports(in_cse=free_port(), mn_cse=free_port(), mn_cse_coap=free_port(2))  # 2: SOCK_DGRAM
    in_cfg = in_cse_config(ports)
    in_cse = procs.start_acme("in-cse", acme, in_cfg)  # first: the slowest to start
    progress(f"IN-CSE (ACME, {IN_CSE_ID}) starting on 127.0.0.1:{ports.in_cse}")
    files = await make_files(work, procs)
    maf = procs.start("maf", m2msec_argv("maf", "--config", str(files.maf_config), "serve"))
    ports.maf = await procs.wait_port(maf, MAF_LISTEN)
    progress(f"MAF {MAF_FQDN} on 127.0.0.1:{ports.maf}")
    in_gw = procs.start("in-gw", [*_gateway_argv(files, files.in_cert, files.in_key, IN_CSE_ID, ports.in_cse),
                                  "--maf", f"https://127.0.0.1:{ports.maf}", "--maf-fqdn", MAF_FQDN,
                                  "--maf-kmid", IN_GW_KMID, "--maf-key-file", str(files.in_gw_km)])
    mn_gw = procs.start("mn-gw", [*_gateway_argv(files, files.mn_cert, files.mn_key, MN_CSE_ID, ports.mn_cse),
                                  "--psk-table", str(files.psk_table), "--app-rules", str(files.app_rules),
                                  "--registrations", str(work / "registrations.sqlite"), "--coap-backend",
                                  f"127.0.0.1:{ports.mn_cse_coap}", "--coaps-listen", "127.0.0.1:0"])
    ports.in_gw = await procs.wait_port(in_gw, r"m2msec gateway " + LISTEN)
    ports.mn_gw = await procs.wait_port(mn_gw, r"m2msec gateway " + LISTEN)
    ports.mn_coaps = await procs.wait_port(mn_gw, r"m2msec coaps gateway " + LISTEN)
    progress(f"IN-GW on 127.0.0.1:{ports.in_gw}; MN-GW on 127.0.0.1:{ports.mn_gw} (HTTP), "
             f"127.0.0.1:{ports.mn_coaps} (coaps)")
    mn_tunnel = procs.start("mn-tunnel", m2msec_argv(
        "tunnel", "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{ports.in_gw}", "--cert", str(files.mn_cert),
        "--cert-key", str(files.mn_key), "--ca", str(files.ca), "--entity-id", IN_CSE_ID))
    in_tunnel = procs.start("in-tunnel", m2msec_argv(
        "tunnel", "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{ports.mn_gw}", "--cert", str(files.in_cert),
        "--cert-key", str(files.in_key), "--ca", str(files.ca), "--entity-id", MN_CSE_ID))
    mn_port = await procs.wait_port(mn_tunnel, TUNNEL_LISTEN)
    in_port = await procs.wait_port(in_tunnel, TUNNEL_LISTEN)
    progress(f"tunnels: MN-CSE -> IN-GW via 127.0.0.1:{mn_port}, IN-CSE -> MN-GW via 127.0.0.1:{in_port}")
    mn_cfg = mn_cse_config(ports, mn_port, in_port)
    mn_cse = procs.start_acme("mn-cse", acme, mn_cfg)
    progress(f"MN-CSE (ACME, {MN_CSE_ID}) starting on 127.0.0.1:{ports.mn_cse} (CoAP {ports.mn_cse_coap})")
    await asyncio.gather(procs.acme_ready(in_cse, acme, in_cfg), procs.acme_ready(mn_cse, acme, mn_cfg))
    progress("both CSEs answer")
    return files, ports


class Progress:
    """A progress line on stderr (a callable, so that tests can collect them)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        import sys

        self.lines.append(line)
        if not self.quiet:
            print(f"demo: {line}", file=sys.stderr, flush=True)
