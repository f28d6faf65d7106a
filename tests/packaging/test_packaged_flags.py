"""Every gateway option the packaging files use exists, and the example configuration's values start a real
gateway (as flags today; as the file itself through --check-config and --config once those are on the branch)."""

from __future__ import annotations

import shlex
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest
from gateway_env import EXAMPLE, M2MSEC, PENDING, UNITS, example_keys, free_port, missing, render_example


def unit_commands(unit: Path) -> list[list[str]]:
    out = []
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.startswith("Exec") and "/m2msec " in value:
            out.append(shlex.split(value.replace("%i", "edge")))
    return out


def flags_of(argv: list[str]) -> set[str]:
    return {w.split("=")[0] for w in argv if w.startswith("--")}


def skip_if_pending(flags: set[str]) -> None:
    assert missing(flags) - PENDING == set(), f"not gateway options: {sorted(missing(flags) - PENDING)}"
    if missing(flags):
        pytest.skip(f"pending on this branch (issue 22 parts 1-2), enable at merge: {sorted(missing(flags))}")


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_flags_exist(unit: Path) -> None:
    commands = unit_commands(unit)
    assert len(commands) == 3 and all(argv[1] == "gateway" for argv in commands)
    skip_if_pending(set().union(*(flags_of(argv) for argv in commands)))


def test_example_keys_are_gateway_options() -> None:
    """Set and commented-out keys alike: each is a long flag name without its dashes."""
    keys = example_keys()
    assert sum(keys.values()) >= 8 and len(keys) >= 25
    skip_if_pending({f"--{key}" for key in keys})


def test_example_ports_need_no_capability() -> None:
    """The units have no CAP_NET_BIND_SERVICE: every port the example configuration opens is above 1023."""
    settings = tomllib.loads(EXAMPLE.read_text())
    commented = {line.split(" = ")[0].lstrip("# "): line.split(" = ")[1].strip('"') for line in
                 EXAMPLE.read_text().splitlines() if line.startswith("# ") and " = " in line}
    addresses = [settings["listen"], settings["metrics"], commented["coaps-listen"]]
    assert all(int(address.rsplit(":", 1)[1]) > 1023 for address in addresses)


def test_example_values_start_a_gateway(tmp_path: Path) -> None:
    """The example's settings, given as flags (the file's keys are the flag names), start a real gateway: key store,
    master key, profiles and limits are accepted (options still pending on this branch are left out)."""
    config = render_example(tmp_path, free_port())
    argv = [M2MSEC, "gateway"]
    for key, value in tomllib.loads(config.read_text()).items():
        if f"--{key}" in PENDING and missing({f"--{key}"}):
            continue
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    gateway = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        line = gateway.stdout.readline()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), gateway.communicate(timeout=10)
    finally:
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, err


def test_example_passes_check_config(tmp_path: Path) -> None:
    needed = missing({"--config", "--check-config"})
    if needed:
        pytest.skip(f"pending on this branch (issue 22 part 1), enable at merge: {sorted(needed)}")
    config = render_example(tmp_path, free_port())
    ok = subprocess.run([M2MSEC, "gateway", "--config", str(config), "--check-config"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # and the check does check: the same file without its master key fails
    (config.parent / "master.key").unlink()
    bad = subprocess.run([M2MSEC, "gateway", "--config", str(config), "--check-config"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "master" in (bad.stdout + bad.stderr).lower()
