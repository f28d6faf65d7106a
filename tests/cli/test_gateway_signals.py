"""``m2msec gateway`` stops cleanly on SIGTERM sent as soon as it says it listens (its handlers are installed before
the start line: a supervisor that starts it and stops it at once must not see it killed by the signal)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from conftest import TD_ID, TD_KEY


def test_sigterm_right_after_the_start_line_is_a_clean_exit(tmp_path: Path) -> None:
    psk = tmp_path / "psk.toml"
    psk.write_text(f'[[psk]]\nidentity = "{TD_ID}"\nkey = "{TD_KEY}"\n')
    psk.chmod(0o600)
    for _ in range(5):  # the race was narrow: try it a few times
        with subprocess.Popen([sys.executable, "-m", "m2msec", "gateway", "--psk-table", str(psk), "--backend",
                               "http://127.0.0.1:9", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as proc:
            try:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line.startswith("m2msec gateway on 127.0.0.1:"), line
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
