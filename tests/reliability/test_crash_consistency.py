"""The CI cut of scripts/crash_consistency.py: ~20 ``kill -9`` of real writer processes on real SQLite stores.

The full campaign (200 kills per scenario, the gateway too) is the script; figures in docs/security.md §4.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crash_consistency.py"


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_consistency", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_consistency"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crash() -> ModuleType:
    return _harness()


@pytest.mark.parametrize(("name", "kills"), [("keys-add", 7), ("keys-import", 6), ("maf-store", 7)])
def test_killed_writers_lose_nothing(crash: ModuleType, tmp_path: Path, name: str, kills: int) -> None:
    tmp_path.chmod(0o700)
    scenario = crash.scenarios(tmp_path, "ci")[name]
    result = crash.campaign(scenario, kills, max_delay=0.3, rng=random.Random(kills))
    assert result.errors == []
    assert (result.kills, result.lost, result.partial, result.unclean) == (kills, 0, 0, 0)
    assert result.keys > 0  # the kills landed while keys were being written, not before the first one


def test_the_harness_sees_a_lost_key(crash: ModuleType, tmp_path: Path) -> None:
    """Control: a writer that acknowledges a key before (here: instead of) storing it is caught."""
    tmp_path.chmod(0o700)
    honest = crash.scenarios(tmp_path, "ci")["keys-add"]
    liar = [sys.executable, "-c", "print('ready', flush=True); print('ack never-stored', flush=True)\n"
            "import time; time.sleep(60)"]
    scenario = crash.Scenario("liar", lambda n: liar, honest.check)
    result = crash.campaign(scenario, 1, max_delay=0.3, rng=random.Random(1))
    assert result.lost == 1 and result.keys == 1
