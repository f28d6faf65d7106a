"""The CI subset of scripts/tlsfuzz.py (docs/security.md section 1): tlsfuzzer's TLS 1.3 PSK scripts (psk_ke
refusals declared with -x) and the two conversation scripts against the real gateway over loopback.

tlsfuzzer comes from shared/tools/tlsfuzzer beside the repository (or $TLSFUZZER); without it the test is
skipped with a message. Its venv (tlslite-ng, ecdsa from PyPI) is created on first use (about 15 s), then reused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TLSFUZZER = Path(os.environ.get("TLSFUZZER", REPO.parent / "shared" / "tools" / "tlsfuzzer"))

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not (TLSFUZZER / "tlsfuzzer" / "_apps").is_dir(),
                       reason=f"tlsfuzzer is not at {TLSFUZZER} (set TLSFUZZER)"),
]


def test_tlsfuzzer_quick_subset_passes() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "tlsfuzz.py"), "--quick",
                           "--tlsfuzzer", str(TLSFUZZER)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = {line.split()[1]: line.split()[0] for line in lines if line.startswith(("PASS ", "FAIL "))}
    assert results == {"test_tls13_psk_dhe_ke": "PASS", "test_tls13_psk_ke": "PASS",
                       "test_tls13_conversation": "PASS", "test_conversation": "PASS"}
    # psk_ke is refused as declared (D3 / RFC 8446 §4.2.9: psk_dhe_ke only), never accepted
    psk_ke = next(line for line in lines if line.startswith("PASS test_tls13_psk_ke"))
    assert "xfail=2" in psk_ke and "pass=0" in psk_ke
    assert "4 passed, 0 failed" in lines[-1] and "; 0 gateway errors logged" in lines[-1]
