"""The demo's result: one :class:`Step` per thing it showed, printed as a table (stdout) or one JSON document."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass
class Step:
    """What one step showed: the SA it used (who <-> whom), how that SA was made, what the gateway bound it to,
    the request's outcome (RSC), what the specification expects, and where it says so."""

    name: str
    sa: str
    framework: str  # "PSK", "certificate", "MAF-based"
    binding: str  # "HTTP", "CoAP"
    cipher: str | None
    bound_identity: str | None
    action: str
    result: str
    rsc: int | None
    expected_rsc: int
    clause: str
    ok: bool = False

    def __post_init__(self) -> None:
        self.ok = self.ok or self.rsc == self.expected_rsc


def failed_step(name: str, sa: str, framework: str, binding: str, action: str, expected_rsc: int, clause: str,
                why: str) -> Step:
    """A step that could not run (its SA was refused, a process was missing...)."""
    return Step(name, sa, framework, binding, None, None, action, why, None, expected_rsc, clause)


COLUMNS = ("#", "SA (who <-> whom)", "framework", "cipher suite", "bound identity", "RSC", "spec", "")


def _row(i: int, s: Step) -> tuple[str, ...]:
    return (str(i), s.sa, f"{s.framework}/{s.binding}", s.cipher or "-", s.bound_identity or "-",
            str(s.rsc) if s.rsc is not None else "-", str(s.expected_rsc), "ok" if s.ok else "UNEXPECTED")


def table(steps: Sequence[Step]) -> str:
    rows = [COLUMNS, *(_row(i, s) for i, s in enumerate(steps, 1))]
    widths = [max(len(r[c]) for r in rows) for c in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    lines.append("")
    for i, s in enumerate(steps, 1):
        lines.append(f"{i:>2}. {s.action}: {s.result}")
        lines.append(f"    {s.clause}")
    bad = sum(not s.ok for s in steps)
    lines.append("")
    lines.append("every step behaved as specified" if not bad else f"{bad} step(s) did not behave as specified")
    return "\n".join(lines)


def document(steps: Sequence[Step], seconds: float, error: str | None = None) -> str:
    return json.dumps({"ok": bool(steps) and all(s.ok for s in steps) and error is None, "error": error,
                       "seconds": round(seconds, 1), "steps": [asdict(s) for s in steps]}, indent=2)
