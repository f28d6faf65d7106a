"""The CCF's per-request crypto (issue 18), against baselines measured in the same run:

* AEFPSK derivations/s (``m2msec.capif.kdf.aefpsk``: checks, NFKC, S, HMAC-SHA-256) against a bare
  ``hmac.new(key, S, sha256).digest()`` over the same S;
* CAPIF certificates issued/s (``issue_capif_certificate``: building and signing with the CA's P-256 key, the request
  already checked) against OpenSSL's own ECDSA P-256 signing rate (``openssl speed -seconds 2 ecdsap256``).

    .venv/bin/python bench/capif_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate
from m2msec.capif.kdf import aefpsk, kdf_input
from m2msec.keys.secret import SecretKey
from m2msec.pki import create_ca


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return n / elapsed


def openssl_ecdsa_signs(seconds: int) -> float | None:
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "ecdsap256"], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)", out)
    return float(m.group(1)) if m else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    master, session_id, info = SecretKey(bytes(range(48))), bytes(range(32)), "aef.example.com:8443/nef"
    s = kdf_input(0x7A, info.encode(), session_id)
    raw = master.reveal()
    base = rate(lambda: hmac.new(raw, s, hashlib.sha256).digest(), args.seconds)
    ours = rate(lambda: aefpsk(master, session_id, info), args.seconds)
    print(f"AEFPSK: {ours:10.0f}/s, bare HMAC-SHA-256 over the same S {base:10.0f}/s, ratio {ours / base:.2f}")
    ca = create_ca("bench CCF CA", permitted_dns=["capif.m2msec.localhost"])
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    now = datetime.now(UTC)
    certs = rate(lambda: issue_capif_certificate(ca, csr, CAPIFRole.INVOKER, "INV1", now=now), args.seconds / 4)
    signs = openssl_ecdsa_signs(max(1, int(args.seconds)))
    if signs:
        print(f"CAPIF certificates: {certs:8.0f}/s, openssl ECDSA P-256 signs {signs:8.0f}/s, "
              f"ratio {certs / signs:.2f}")
    else:
        print(f"CAPIF certificates: {certs:8.0f}/s (openssl speed gave no figure)")


if __name__ == "__main__":
    main()
