"""The CLI's import graph has no cycle: subcommand modules take their shared helpers from m2msec.cli.common and
never import m2msec.cli.main (which imports them to build the parser)."""

from __future__ import annotations

import ast
from pathlib import Path

import m2msec.cli

CLI = Path(m2msec.cli.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_subcommand_imports_main() -> None:
    modules = [p for p in CLI.glob("*.py") if p.name not in {"main.py", "__init__.py"}]
    assert {p.name for p in modules} >= {"common.py", "gateway.py", "keys.py", "request.py", "pki.py", "demo.py"}
    offenders = {p.name for p in modules if "m2msec.cli.main" in _imported_modules(p)}
    assert offenders == set(), f"import m2msec.cli.main (a cycle): {sorted(offenders)}"


def test_common_imports_no_cli_module() -> None:
    assert not any(m.startswith("m2msec.cli") for m in _imported_modules(CLI / "common.py"))
