"""The documentation's code and commands match the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_engine_doc_example_runs() -> None:
    text = (ROOT / "docs" / "engine.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, re.S)[0]  # the complete example; later ones are fragments
    namespace: dict[str, object] = {}
    exec(compile(block, "docs/engine.md", "exec"), namespace)
    s, c = namespace["s"], namespace["c"]
    assert s.session.entity == "Clight-AE1"  # type: ignore[attr-defined]
    assert c.session.entity == "mn-cse-123456"  # type: ignore[attr-defined]


def test_readme_commands_are_the_ci_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands[:2] == ["bash scripts/install.sh", "bash scripts/test.sh"]
    assert commands[2] == ".venv/bin/m2msec demo"
    skip = ("#", "set ", "cd ")
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith(skip)]
    assert ci_commands == commands[:2]


def test_gateway_doc_lists_every_cli_option() -> None:
    from m2msec.cli.main import build_parser

    doc = (ROOT / "docs" / "gateway.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    gateway = sub.choices["gateway"]  # type: ignore[index]
    for action in gateway._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in {"--help", "--quiet"}:
                assert f"`{flag}" in doc, f"{flag} is not documented in docs/gateway.md"
