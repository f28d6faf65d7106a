"""The documentation's code and commands match the code."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
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


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def _gateway_parser() -> argparse.ArgumentParser:
    from m2msec.cli.main import build_parser

    return _subparsers(build_parser())["gateway"]


def test_gateway_doc_lists_every_cli_option() -> None:
    doc = (ROOT / "docs" / "gateway.md").read_text()
    for flag in sorted(_options(_gateway_parser())):
        if flag.startswith("--") and flag != "--help":
            assert f"`{flag}" in doc, f"{flag} is not documented in docs/gateway.md"


def test_gateway_option_table_lists_only_real_options() -> None:
    doc = (ROOT / "docs" / "gateway.md").read_text()
    table = [line for line in doc.splitlines() if line.startswith("| `--")]
    assert len(table) > 10
    flags = {flag for line in table for flag in re.findall(r"`(--[a-z0-9-]+)", line.split("|")[1])}
    assert flags - _options(_gateway_parser()) == set()


def _m2msec_commands(text: str) -> list[list[str]]:
    """Every `m2msec ...` command line in a Markdown text (shell blocks, with continuations, and inline code)."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [m.group(1) for m in re.finditer(r"\bm2msec (.*)", line.split("#")[0])]
    for code in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        commands += [m.group(1) for m in re.finditer(r"\bm2msec (.*)", code)]
    return [shlex.split(c) for c in commands]


def test_every_documented_m2msec_flag_exists() -> None:
    from m2msec.cli.main import build_parser

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for path in docs:
        for argv in _m2msec_commands(path.read_text()):
            parser = build_parser()
            allowed = _options(parser)
            for word in argv:
                sub = _subparsers(parser)
                if word in sub:
                    parser = sub[word]
                    allowed |= _options(parser)
                elif word.startswith("--"):
                    flag = word.split("=")[0]
                    assert flag in allowed, f"{path.name}: `m2msec {' '.join(argv)}`: {flag} does not exist"
                    checked += 1
    assert checked > 30  # the commands were found


def test_nothing_refers_outside_the_repository() -> None:
    """A clone has neither ../shared nor the notes directory: every citation points inside the repository."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|shared/bench|notes/tls-stack")
    offenders = [name for name in files if name != "tests/test_docs.py" and (ROOT / name).is_file()
                 and outside.search((ROOT / name).read_text(errors="replace"))]
    assert offenders == []
    for cited in re.findall(r"docs/tls-stack\.md gotcha (\d+)", "".join(
            Path(ROOT / name).read_text(errors="replace") for name in files if name.endswith((".py", ".md")))):
        assert f"\n{cited}. **" in (ROOT / "docs" / "tls-stack.md").read_text()


def test_ccf_doc_lists_every_setting_with_its_default() -> None:
    from dataclasses import fields

    from m2msec.capif.ccf.config import CCFConfig

    doc = (ROOT / "docs" / "ccf.md").read_text()
    for f in fields(CCFConfig):
        default = f.default
        shown = f'`"{default}"`' if default == "" else f"`{default}`"
        assert f"| `{f.name}` | {shown} |" in doc, f"{f.name} (default {default!r}) is not in docs/ccf.md's table"
