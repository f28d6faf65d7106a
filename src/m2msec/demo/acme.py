"""ACME (PyPI ``acmecse``, a oneM2M CSE installed in ``.venv-acme`` by ``scripts/install.sh``) on loopback.

What both the demo and the e2e tests need: where the binary is, the ``acme.ini`` of an IN-CSE or MN-CSE (registrar,
point of access, which CSEs may register), the command line, and a readiness probe. Starting and stopping the
process is the caller's (:mod:`m2msec.demo.procs` for the demo, ``tests/e2e/acme_cse.py`` for the tests).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: the repository root of an editable install (``src/m2msec/demo/acme.py`` -> the checkout)
ROOT = Path(__file__).resolve().parents[3]
#: the admin originator of every ACME we start (ACME's default)
ADMIN = "CAdmin"
#: ``$M2MSEC_ACME`` names another acmecse binary
ACME_ENV = "M2MSEC_ACME"
#: ACME's [cse.registration] checkInterval in the demo: an MN-CSE up before its registrar (or its tunnel) retries
#: after this many seconds, where ACME's default (60) would make the demo wait a minute (docs/decisions.md D111)
CHECK_INTERVAL = 2
INSTALL_HINT = "ACME (the oneM2M CSE the demo runs) is not installed: run bash scripts/install.sh"


def acme_binary() -> Path | None:
    """``$M2MSEC_ACME``, else ``.venv-acme/bin/acmecse`` of the checkout, else ``acmecse`` on PATH; None if none."""
    env = os.environ.get(ACME_ENV)
    if env:
        return Path(env) if Path(env).exists() else None
    local = ROOT / ".venv-acme" / "bin" / "acmecse"
    if local.exists():
        return local
    found = shutil.which("acmecse")
    return Path(found) if found else None


#: lowest port :func:`free_port` picks from; it picks below the kernel's ephemeral range
FREE_PORT_FLOOR = 20000


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now, for a process that binds it later (ACME reads its ports from its config).

    It is drawn below the kernel's ephemeral range: a port the kernel hands out (bind to port 0, the source port of
    an outgoing connection) is drawn from that range, so every process the demo starts meanwhile could take a port
    chosen there, and ACME then exits without a word. Another process may still take this one: callers retry or
    fail."""
    top = _ephemeral_floor()
    candidates = list(range(FREE_PORT_FLOOR, top)) if top > FREE_PORT_FLOOR + 100 else []
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as s:  # no room below the ephemeral range: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Registrar:
    """Where an MN-CSE registers (CREATE <remoteCSE>, TS-0001 §10.1.1.2.1): the URL, the registrar's CSE-ID and name."""

    address: str
    cse_id: str
    cse_name: str


@dataclass(frozen=True)
class AcmeConfig:
    """One ACME instance: type (IN/MN), CSE-ID (without '/'), CSE-Name, SP-ID (without '//'), ports."""

    cse_type: str
    cse_id: str
    cse_name: str
    http_port: int
    coap_port: int | None = None
    sp_id: str = "acme.example.com"
    #: an MN-CSE's registrar; None: no registration
    registrar: Registrar | None = None
    #: the point of access other CSEs use to reach this one (default: its own HTTP address)
    poa: str | None = None
    #: CSE-IDs that may register here (an IN-CSE's registrees)
    registrees: tuple[str, ...] = ()
    #: seconds between registration attempts and liveliness checks (docs/decisions.md D111)
    check_interval: int = CHECK_INTERVAL
    #: ACME's log level (its log goes to stdout, into the demo's logs directory)
    log_level: str = "info"

    def ini(self) -> str:
        lines = [
            "[basic.config]", f"cseType={self.cse_type}", f"cseID={self.cse_id}", f"cseName={self.cse_name}",
            f"adminID={ADMIN}", "networkInterface=127.0.0.1", "cseHost=127.0.0.1", f"httpPort={self.http_port}",
            "databaseType=memory", f"logLevel={self.log_level}", "",
            "[cse]", f"serviceProviderID=//{self.sp_id}",
        ]
        if self.poa is not None:
            lines.append(f"poa={self.poa}")
        lines += ["", "[cse.registration]", f"checkInterval={self.check_interval}"]
        if self.registrees:  # SP-relative: ACME refuses other forms (and exits 0 without a word)
            lines.append(f"allowedCSROriginators={','.join('/' + r for r in self.registrees)}")
        if self.registrar is not None:
            reg = self.registrar
            lines += ["", "[cse.registrar]", f"address={reg.address}", f"cseID=/{reg.cse_id}",
                      f"resourceName={reg.cse_name}", f"INCSEcseID=/{reg.cse_id}"]
        if self.coap_port is not None:
            lines += ["", "[coap]", "enable=true", f"port={self.coap_port}"]
        return "\n".join(lines) + "\n"

    def argv(self, binary: Path, work: Path) -> list[str]:
        return [str(binary), "--config", "acme.ini", "--headless", "--http",
                "--coap" if self.coap_port is not None else "--no-coap", "--no-mqtt", "--no-ws",
                "--db-type", "memory", "--base-directory", str(work)]

    def write(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "acme.ini").write_text(self.ini())


def probe(http_port: int, cse_name: str, timeout: float = 2.0) -> bool:
    """True when the CSE at ``http_port`` answers a RETRIEVE of its CSEBase with 200."""
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/{cse_name}", headers={
        "X-M2M-Origin": ADMIN, "X-M2M-RI": "probe", "X-M2M-RVI": "3", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
