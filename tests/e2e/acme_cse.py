"""Run a real oneM2M CSE (ACME, PyPI `acmecse`, installed in .venv-acme by scripts/install.sh) on loopback.

The ACME configuration, binary lookup and probe live in :mod:`m2msec.demo.acme` (the demo runs the same CSE);
this module keeps the tests' synchronous launcher with its retries."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2msec.demo.acme import ROOT, AcmeConfig, acme_binary, free_port, probe

__all__ = ["ACME", "CSE_ID", "CSE_RN", "ROOT", "free_port", "needs_acme", "running_acme"]

ACME = acme_binary() or ROOT / ".venv-acme" / "bin" / "acmecse"
CSE_ID, CSE_RN = "mn-cse-123456", "cse-mn"
needs_acme = pytest.mark.skipif(not ACME.exists(), reason="ACME not installed: run bash scripts/install.sh")


#: how long one ACME start may take (a loaded 2-core machine has needed more than 60 s), and how many starts are
#: tried: a port chosen free can be taken by another process before ACME binds it, and ACME then exits
START_TIMEOUT = 180.0
START_ATTEMPTS = 3


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_acme(work: Path, *, coap: bool = False) -> Iterator[tuple[int, int | None]]:
    """ACME as an MN-CSE `mn-cse-123456` with its HTTP binding (and CoAP binding): yields (http, coap) ports."""
    problems: list[str] = []
    for attempt in range(START_ATTEMPTS):
        config = AcmeConfig("MN", CSE_ID, CSE_RN, free_port(), free_port(socket.SOCK_DGRAM) if coap else None,
                            log_level="warn")
        config.write(work)
        log = work / f"acme-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(config.argv(ACME, work), cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not probe(config.http_port, CSE_RN) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        if proc.poll() is None and probe(config.http_port, CSE_RN):
            try:
                yield config.http_port, config.coap_port
            finally:
                _stop(proc)
            return
        state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up after {START_TIMEOUT:g} s"
        _stop(proc)
        tail = log.read_text(errors="replace")[-600:].strip()
        problems.append(f"attempt {attempt + 1} (port {config.http_port}): {state}; output: {tail or '(none)'}")
    pytest.fail("ACME did not start: " + " | ".join(problems))
