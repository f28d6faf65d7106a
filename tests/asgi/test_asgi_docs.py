"""docs/asgi.md and the decision rows D95-D97 match the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from m2msec.asgi import limits

ROOT = Path(__file__).resolve().parents[2]


def test_every_limit_is_documented_with_its_default() -> None:
    doc = (ROOT / "docs" / "asgi.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `DEFAULT_")}
    constants = {name for name in limits.__all__ if name.startswith("DEFAULT_")}
    assert set(rows) == constants
    for name in constants:
        value = getattr(limits, name)
        keyword = name.removeprefix("DEFAULT_").lower()
        assert f"`{keyword}`" in rows[name], name
        shown = f"{value} s" if isinstance(value, float) else f"{value} bytes"
        assert shown in rows[name], f"{name}: {shown} not in {rows[name]}"


def test_decision_rows_point_at_real_constants() -> None:
    decisions = (ROOT / "docs" / "decisions.md").read_text()
    for number in ("D95", "D96", "D97"):
        row = next(line for line in decisions.splitlines() if line.startswith(f"| {number} |"))
        where = re.findall(r"`(m2msec\.[\w.]+)`", row.split("|")[-2])
        assert where, number
        module, _, name = where[0].rpartition(".")
        assert hasattr(importlib.import_module(module), name), where[0]
        for constant in re.findall(r"`(DEFAULT_[A-Z_]+)`", row):
            assert hasattr(limits, constant), constant


def test_the_example_compiles_against_the_api() -> None:
    text = (ROOT / "docs" / "asgi.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    namespace: dict[str, object] = {}
    exec(compile(block, "docs/asgi.md", "exec"), namespace)
    assert callable(namespace["main"]) and namespace["app"] is not None
