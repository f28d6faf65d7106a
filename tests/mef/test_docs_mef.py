"""docs/mef.md matches the code: every setting with its default, every refusal with its status."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from m2msec.mef.config import MEFConfig
from m2msec.mef.wire import PROBLEMS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "mef.md").read_text()


def test_mef_doc_lists_every_setting_with_its_default() -> None:
    for f in fields(MEFConfig):
        shown = f'`"{f.default}"`' if f.default == "" else f"`{f.default}`"
        assert f"| `{f.name}` | {shown} |" in DOC, f"{f.name} (default {f.default!r}) is not in docs/mef.md's table"


def test_mef_doc_lists_every_refusal_with_its_status() -> None:
    for name, (status, _) in PROBLEMS.items():
        assert f"| {status} | `{name}` |" in DOC, f"{status} {name} is not in docs/mef.md's errors table"


def test_decisions_cited_by_the_mef_exist() -> None:
    decisions = (Path(__file__).resolve().parents[2] / "docs" / "decisions.md").read_text()
    for number in ("D184", "D185", "D186", "D187", "D188", "D189", "D190", "D191", "D192", "D193", "D195", "D197",
                   "D198", "D199"):
        assert number in DOC, number
        assert any(line.startswith(f"| {number} |") for line in decisions.splitlines()), number
