"""Run tlsfuzzer's TLS state-machine scripts against the gateway (issue 21 part 1, docs/security.md section 1).

One command: ``.venv/bin/python scripts/tlsfuzz.py`` (``--quick`` for the CI subset, ``--only NAME`` for one row).
It creates tlsfuzzer's own venv when missing (tlslite-ng 0.9.0b2 and ecdsa from PyPI), starts the gateway in
three configurations on loopback in front of a stand-in CSE (scripts/tlsfuzz_servers.py), runs each script with
the options of its row in ``RUNS``, prints PASS/FAIL per run with the configuration it ran against and a summary,
and exits 1 when any run fails. tlsfuzzer itself is found at ``--tlsfuzzer`` / ``$TLSFUZZER`` (default
``shared/tools/tlsfuzzer`` beside the repository); without it the command says so and exits 0 (``skipped``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tlsfuzz_servers import FUZZ_PSK_HEX, FUZZ_PSK_IDENTITY, running_gateways

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TLSFUZZER = REPO.parent / "shared" / "tools" / "tlsfuzzer"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "m2msec" / "tlsfuzz-venv"
TLSLITE = "tlslite-ng==0.9.0b2"
#: seconds one tlsfuzzer script may take before it counts as a failure (a hang)
SCRIPT_TIMEOUT = 600.0
PSK_ARGS = ("--psk", FUZZ_PSK_HEX, "--psk-iden", FUZZ_PSK_IDENTITY)
ECDSA = ("-d", "-C", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256")


@dataclass(frozen=True)
class Run:
    """One tlsfuzzer script run: ``config`` names the gateway configuration (tlsfuzz_servers.CONFIGURATIONS)."""

    script: str
    config: str
    args: tuple[str, ...] = ()
    quick: bool = False
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.script}{'[' + self.label + ']' if self.label else ''}"


#: test_tls13_psk_ke: the gateway offers psk_dhe_ke only (RFC 8446 §4.2.9; profiles.TLS13_PSK), so every psk_ke
#: handshake must be refused: declared expected failures (-x) with the alert OpenSSL sends (-X).
PSK_KE_REFUSALS = ("-x", "sanity", "-X", "missing_extension")

#: OpenSSL answers these malformed ClientHellos with illegal_parameter where tlsfuzzer expects decode_error
#: (RFC 8446 §6.2 leaves the choice to the implementation): declared, not skipped (docs/security.md section 1)
_ALERT = 'Expected alert description "decode_error" does not match received "illegal_parameter"'
_TRUNCATED = ('hello truncate: 193 of bytes truncated', 'huge pad: 131584 of "0" byte padding',
              'max pad: 16777021 of "0" byte padding')
TRUNCATION_ALERTS = tuple(arg for probe in _TRUNCATED for arg in ("-x", probe, "-X", _ALERT))

#: OpenSSL 3.0 (plain ``openssl s_server`` fails the same 6 probes): it checks the TLS 1.3 plaintext limit after
#: removing the padding (RFC 8446 §5.4 counts it), and a record of 2**14 + 256 bytes or a 2**14-byte Finished in
#: the handshake gets no alert before tlsfuzzer's timeout (the gateway's handshake timeout closes it)
_OPENSSL_LIMITS = tuple(
    f"{probe}{cipher}"
    for cipher in ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
    for probe in ("max size of Finished msg, with 16587 bytes of record layer padding ",
                  "max size payload (2**14) of Finished msg, with 16348 bytes of left padding, cipher ",
                  "too big plaintext, size: 2**14 - 8, with an additional 9 bytes of padding, cipher "))
RECORD_LIMITS = tuple(arg for probe in _OPENSSL_LIMITS for arg in ("-x", probe))
#: OpenSSL's alert for an oversized KeyUpdate, as for the truncated ClientHellos above; and OpenSSL answers a
#: KeyUpdate(update_requested) with its own only when it next writes, which RFC 8446 §4.6.3 allows ("prior to
#: sending its next Application Data record"): the probe that waits for it in the middle of a request times out
#: (plain ``openssl s_server`` too)
KEYUPDATE = ("-x", "large KeyUpdate message", "-X", _ALERT, "-x", "app data split, conversation with KeyUpdate msg")

#: the gateway negotiates no ALPN (HTTP/1.1 only); the script's 'max client hello' probe insists on it
NO_ALPN = ("-x", "max client hello", "-X", "Server did not send extension(s): alpn")

RUNS: tuple[Run, ...] = (
    # TLS 1.3 external PSK against the PSK configuration
    Run("test_tls13_psk_dhe_ke", "psk", PSK_ARGS, quick=True),
    Run("test_tls13_psk_ke", "psk", PSK_ARGS + PSK_KE_REFUSALS, quick=True),
    # TLS 1.3 certificate scripts against the server-certificate configuration (TLS 1.3 with the ECDSA certificate)
    Run("test_tls13_conversation", "ecdsa", quick=True),
    # these offer RSA signature schemes only: TLS 1.3 with the RSA certificate
    Run("test_tls13_record_layer_limits", "rsa", RECORD_LIMITS),
    Run("test_tls13_zero_length_data", "rsa"),
    Run("test_tls13_keyupdate", "rsa", KEYUPDATE),
    # TLS 1.2 with the certificate profile (server-only ECDHE-ECDSA) where the script takes -d -C
    Run("test_conversation", "ecdsa", ECDSA, quick=True),
    Run("test_fuzzed_MAC", "ecdsa", ECDSA),
    Run("test_fuzzed_ciphertext", "ecdsa", ECDSA),
    Run("test_truncating_of_client_hello", "ecdsa", ECDSA + TRUNCATION_ALERTS),
    Run("test_record_layer_fragmentation", "ecdsa", ECDSA),
    Run("test_invalid_compression_methods", "ecdsa", ECDSA),
    Run("test_renegotiation_disabled", "ecdsa", ECDSA),
    # scripts that know RSA key exchange only: the fuzzing-only RSA configuration
    Run("test_fuzzed_padding", "rsa"),
    Run("test_fuzzed_finished", "rsa"),
    Run("test_invalid_client_hello", "rsa"),
    Run("test_client_hello_max_size", "rsa", NO_ALPN),
    Run("test_large_hello", "rsa"),
    Run("test_empty_extensions", "rsa"),
    Run("test_no_heartbeat", "rsa"),
)


def ensure_venv(venv: Path) -> Path:
    """tlsfuzzer's own venv (it must not share the project's packages); created with pip from PyPI when missing."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import tlslite, ecdsa"], capture_output=True,
                                          timeout=60).returncode == 0:
        return python
    print(f"creating tlsfuzzer venv {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TLSLITE, "ecdsa"], check=True, timeout=600)
    return python


def run_one(run: Run, python: Path, tlsfuzzer: Path, port: int) -> tuple[Run, bool, float, str]:
    # -n 0: every probe, not a random sample (record_layer_limits, keyupdate, invalid_client_hello, large_hello)
    cmd = [str(python), "-m", f"tlsfuzzer._apps.{run.script}", "-h", "127.0.0.1", "-p", str(port), "-n", "0",
           *run.args]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tlsfuzzer, env={**os.environ, "PYTHONPATH": str(tlsfuzzer)},
                              capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, stdin=subprocess.DEVNULL)
        out, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired:
        out, ok = f"timed out after {SCRIPT_TIMEOUT:.0f} s", False
    return run, ok, time.monotonic() - start, out


def summary_line(out: str) -> str:
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key in ("TOTAL", "PASS", "XFAIL", "FAIL", "SKIP") and value.strip().isdigit():
            fields[key] = value.strip()
    return " ".join(f"{k.lower()}={v}" for k, v in fields.items())


class _Errors(logging.Handler):
    """Every ERROR the gateway process logs while fuzzed (an exception in a protocol callback, a crashed task):
    tlsfuzzer sees only the wire, so these count as a failure of the run."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:300])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tlsfuzzer", type=Path, default=Path(os.environ.get("TLSFUZZER", DEFAULT_TLSFUZZER)))
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("TLSFUZZ_VENV", DEFAULT_VENV)))
    parser.add_argument("--quick", action="store_true", help="the CI subset only")
    parser.add_argument("--only", action="append", default=[], help="run only this script (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="scripts run at once (default 2)")
    parser.add_argument("--log-dir", type=Path, help="write each script's output here")
    opts = parser.parse_args(argv)
    if not (opts.tlsfuzzer / "tlsfuzzer" / "_apps").is_dir():
        print(f"tlsfuzz: skipped: no tlsfuzzer at {opts.tlsfuzzer} (set --tlsfuzzer or TLSFUZZER)")
        return 0
    runs = [r for r in RUNS if (not opts.quick or r.quick) and (not opts.only or r.script in opts.only)]
    python = ensure_venv(opts.venv)
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    logging.getLogger("m2msec").setLevel(logging.ERROR)  # the gateway's per-request refusals are expected here
    started = time.monotonic()
    failed = 0
    with running_gateways() as ports, ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        futures = [pool.submit(run_one, r, python, opts.tlsfuzzer, ports[r.config])
                   for r in runs]
        for future in futures:
            run, ok, seconds, out = future.result()
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {run.name:42} config={run.config:5} {seconds:6.1f} s  "
                  f"{summary_line(out)}", flush=True)
            if opts.log_dir is not None:
                opts.log_dir.mkdir(parents=True, exist_ok=True)
                (opts.log_dir / f"{run.name}-{run.config}.log").write_text(out)
            if not ok:
                print("\n".join("    " + line for line in out.splitlines()[-25:]), flush=True)
    for line in errors.records:
        print(f"gateway error: {line}")
    print(f"tlsfuzz: {len(runs) - failed} passed, {failed} failed in {time.monotonic() - started:.0f} s; "
          f"{len(errors.records)} gateway errors logged")
    return 1 if failed or errors.records else 0


if __name__ == "__main__":
    sys.exit(main())
