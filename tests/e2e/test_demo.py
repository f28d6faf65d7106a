"""`m2msec demo` as a user runs it: a real process starting two ACME CSEs, two gateways, a MAF and two tunnels;
its JSON is checked step by step against what the specifications say (RSC, framework, bound identity), never
against values the demo computed itself (AE-IDs are checked for their shape)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from acme_cse import needs_acme

from conftest import LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY

pytestmark = needs_acme

#: TS-0001 §7.2: a C-type AE-ID-Stem (CSE-relative) as a CSE assigns it, or the bound TR-0038 one
AE_STEM = re.compile(r"^C[A-Za-z0-9_.-]+$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("home")  # zero configuration: nothing from the user's home is needed
    result = subprocess.run([sys.executable, "-m", "m2msec", "demo", "--json"], capture_output=True, text=True,
                            timeout=600, cwd=home, env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for key in (LIGHT1_KEY, LIGHT2_KEY):  # the TR-0038 keys are in no output
        assert key not in result.stdout + result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    assert doc["ok"] is True and doc["error"] is None
    assert "demo: both CSEs answer" in result.stderr  # progress goes to stderr, never into the JSON
    return doc


def step(doc: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [s for s in doc["steps"] if s["name"] == name]
    assert found["ok"] is True, found
    return found


def test_every_step_behaved_as_specified(demo: dict[str, Any]) -> None:
    assert all(s["ok"] and s["rsc"] == s["expected_rsc"] for s in demo["steps"])
    assert demo["seconds"] < 240


def test_mn_cse_registers_at_the_in_cse_with_its_certificate(demo: dict[str, Any]) -> None:
    s = step(demo, "cse-registration")
    assert (s["rsc"], s["framework"], s["bound_identity"]) == (2001, "certificate", "/mn-cse-123456")
    assert s["cipher"].startswith("ECDHE-ECDSA-")  # TS-0003 §10.2.3


@pytest.mark.parametrize(("name", "binding", "cipher", "kpsa_id"), [
    ("ADN-AE1", "HTTP", "PSK-", LIGHT1_ID), ("ADN-AE2", "CoAP", "PSK-AES128-CCM8", LIGHT2_ID)])
def test_lights_register_over_psk_and_the_assigned_ae_id_is_bound(demo: dict[str, Any], name: str, binding: str,
                                                                  cipher: str, kpsa_id: str) -> None:
    s = step(demo, f"{name}-registration")
    assert (s["rsc"], s["framework"], s["binding"]) == (2001, "PSK", binding)
    assert s["cipher"].startswith(cipher)
    m = re.fullmatch(r"AE-ID (\S+), bound to (\S+)", s["result"])
    assert m is not None, s
    assert AE_STEM.match(m[1]) and m[1] != "C"  # assigned by the CSE (the lights registered with From C)
    assert s["bound_identity"] == m[1] and m[2] == f"12-{kpsa_id}"  # TS-0003 §10.4 Credential-ID


def test_registrations_refused_by_the_service_subscription_rules(demo: dict[str, Any]) -> None:
    wrong_app = step(demo, "ADN-AE2-wrong-app-id")  # over coaps: 4.03 with oneM2M-RSC
    assert (wrong_app["rsc"], wrong_app["binding"]) == (4126, "CoAP") and "not forwarded" in wrong_app["result"]
    assert wrong_app["bound_identity"] == f"12-{LIGHT2_ID}"  # nothing bound yet: its Credential-ID
    unsubscribed = step(demo, "unsubscribed-registration")
    assert (unsubscribed["rsc"], unsubscribed["binding"]) == (4128, "HTTP")
    assert unsubscribed["bound_identity"] == "12-test@onem2m.com"


def test_a_cse_id_on_an_sa_of_no_cse_is_4107(demo: dict[str, Any]) -> None:
    assert step(demo, "cse-id-without-sa")["rsc"] == 4107


def test_smartphone_registers_over_the_maf_based_sa(demo: dict[str, Any]) -> None:
    s = step(demo, "smartphone-registration")
    assert (s["rsc"], s["framework"]) == (2001, "MAF-based")
    assert re.fullmatch(r"//in\.provider\.com/id-in/C\S+", s["bound_identity"]), s
    assert s["result"] == f"AE-ID {s['bound_identity']}"


def test_smartphone_controls_the_light_through_both_cses(demo: dict[str, Any]) -> None:
    assert step(demo, "ADN-AE1-container")["rsc"] == 2001
    control = step(demo, "smartphone-control")
    assert control["rsc"] == 2001 and control["framework"] == "MAF-based"
    relay = step(demo, "in-cse-relay")
    assert (relay["rsc"], relay["framework"], relay["bound_identity"]) == (2001, "certificate", "/id-in")
    assert step(demo, "ADN-AE1-state")["result"] == "content 'on'"


def test_impersonation_is_refused_before_the_cse(demo: dict[str, Any]) -> None:
    s = step(demo, "impersonation")
    assert s["rsc"] == 4106 and "not forwarded" in s["result"]
    victim = step(demo, "ADN-AE1-registration")["bound_identity"]
    assert s["action"].endswith(f"(From {victim})") and s["bound_identity"] != victim


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_demo_leaves_nothing_running(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT) or SIGTERM once every process runs: each is stopped, the demo exits 130."""
    proc = subprocess.Popen([sys.executable, "-m", "m2msec", "demo", "--keep", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    progress = []
    try:
        for line in proc.stderr:
            progress.append(line)
            if "MN-CSE (ACME" in line:  # the last process started
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(progress) + err
    ports = {int(p) for line in progress for p in re.findall(r"127\.0\.0\.1:(\d+)", line)}
    assert len(ports) >= 8  # both CSEs, the MAF, both gateways (HTTP, coaps), both tunnels
    for port in ports:  # nobody listens any more (the coaps port is UDP: its gateway is the HTTP one's process)
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
