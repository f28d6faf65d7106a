"""Hostile review of the MAF (issue 16): each test reproduces an attack that worked, over real handshakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from m2msec.errors import ConfigurationError
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import running_maf
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import create_ca, issue

SP = "sp.example.com"
FQDN = "maf.sp.example.com"


def _certificate_config(tmp_path: Path, key_mode: int) -> MAFConfig:
    ca = create_ca("provider root", permitted_dns=[SP])
    cert = issue(ca, F.FQDN, FQDN)
    (tmp_path / "maf.pem").write_bytes(cert.certificate_pem())
    (tmp_path / "maf.key").write_bytes(cert.private_key_pem())
    (tmp_path / "maf.key").chmod(key_mode)
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    return MAFConfig(listen="127.0.0.1:0", maf_fqdn=FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db",
                     certificate=str(tmp_path / "maf.pem"), private_key=str(tmp_path / "maf.key"),
                     client_trust_anchors=str(tmp_path / "ca.pem"))


async def test_a_world_readable_maf_private_key_is_refused(tmp_path: Path) -> None:
    # a careless operator: the MAF's TLS private key readable by every local user. `m2msec gateway --key` and the
    # MAF client's --maf-cert-key refuse that; `maf serve` used to load it silently.
    config = _certificate_config(tmp_path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        async with running_maf(config):
            pass
    (tmp_path / "maf.key").chmod(0o600)
    async with running_maf(config) as running:
        assert running.port > 0


def test_maf_serve_with_a_world_readable_key_says_so_in_one_line(tmp_path: Path) -> None:
    config = _certificate_config(tmp_path, 0o644)
    toml = tmp_path / "maf.toml"
    toml.write_text("\n".join(f'{k} = "{v}"' for k, v in (
        ("listen", config.listen), ("maf_fqdn", FQDN), ("sp_id", SP), ("store", config.store),
        ("certificate", config.certificate), ("private_key", config.private_key),
        ("client_trust_anchors", config.client_trust_anchors))) + "\n")
    done = subprocess.run([sys.executable, "-m", "m2msec.cli.main", "maf", "--config", str(toml), "serve"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "maf.key" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
