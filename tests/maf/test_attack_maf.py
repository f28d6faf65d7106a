"""Hostile review of the MAF (issue 16): each test reproduces an attack that worked, over real handshakes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from m2msec import http1
from m2msec.errors import ConfigurationError, HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.maf.config import MAFConfig
from m2msec.maf.procedures import MAF
from m2msec.maf.server import RunningMAF, running_maf
from m2msec.maf.wire import format_timestamp
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import create_ca, issue
from m2msec.saef import ANY_ENTITY, EstablishedSA, PSKCredentials, establish_sa
from m2msec.store import MAFClient, open_store
from m2msec.transport.limits import DEFAULT_MAX_HANDSHAKES_PER_SOURCE

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


KM_A, KM_B = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))
KMID_A, KMID_B = f"cae1@{FQDN}", f"mn-gw@{FQDN}"


@pytest.fixture
async def maf(tmp_path: Path) -> AsyncIterator[RunningMAF]:
    config = MAFConfig(listen="127.0.0.1:0", maf_fqdn=FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db")
    store = open_store(config.store)
    store.register_client(MAFClient(KMID_A, KM_A, "/mn-cse-123456/CAE1"))
    store.register_client(MAFClient(KMID_B, KM_B, "/mn-cse-123456"))
    try:
        async with running_maf(config, store=store) as running:
            yield running
    finally:
        store.close()


async def _psk(maf: RunningMAF, kmid: str, km: SecretKey) -> EstablishedSA:
    return await establish_sa("127.0.0.1", maf.port, PSKCredentials(kmid, km, peer_entity=ANY_ENTITY))


async def _call(sa: EstablishedSA, method: str, target: str, body: object = None) -> tuple[int, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", FQDN)]
    if method in ("POST", "PATCH"):
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    resp = await sa.request(http1.Message(headers, data, method=method, target=target))
    return resp.status, json.loads(resp.body) if resp.body else None


def _later() -> str:
    return format_timestamp(time.time() + 600)


async def _register(sa: EstablishedSA) -> None:
    status, body = await _call(sa, "POST", "/maf/v1/registrations",
                               {"mafFQDN": FQDN, "expirationTime": _later(), "adminFQDN": FQDN})
    assert status == 201, body


async def test_a_key_registered_by_a_client_being_revoked_does_not_outlive_the_revocation(maf: RunningMAF) -> None:
    # `maf clients revoke` runs in its own process: it marks the client revoked and deletes its keys. The serving
    # MAF reused its read of the client for up to CACHE_TTL (D74), so a compromised client connected at that moment
    # registered a key after the deletion: a key of a revoked client, retrievable by its target (a gateway binds an
    # SA to the revoked identity with it) for up to max_key_lifetime (24 h).
    a, b = await _psk(maf, KMID_A, KM_A), await _psk(maf, KMID_B, KM_B)
    try:
        await _register(a)
        await _register(b)
        operator = MAF(maf.maf.store, maf.maf.policy)  # `m2msec maf clients revoke`, another instance
        assert await operator.revoke_client(KMID_A) == 0
        status, body = await _call(a, "POST", "/maf/v1/keys", {
            "mafFQDN": FQDN, "expirationTime": _later(), "adminFQDN": FQDN, "SUID": 32,
            "targetIDs": ["/mn-cse-123456"], "keyValue": base64.b64encode(b"k" * 32).decode()})
        assert status == 403 and body["type"] == "urn:m2msec:maf:client-revoked", body
        status, body = await _call(a, "POST", "/maf/v1/keys", {  # the handshake's exported key likewise
            "mafFQDN": FQDN, "expirationTime": _later(), "adminFQDN": FQDN, "SUID": 32,
            "targetIDs": ["/mn-cse-123456"]})
        assert status == 403 and body["type"] == "urn:m2msec:maf:client-revoked", body
    finally:
        await a.close()
        await b.close()


async def _closed_at_once(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 1.0) == b""
    except (TimeoutError, ConnectionError):
        return False


async def test_one_source_cannot_hold_every_connection_of_the_maf(maf: RunningMAF) -> None:
    # `maf serve` ran without any connection limit: one host opening TCP connections and never finishing a
    # handshake held a file descriptor each for the handshake timeout, as many as it liked, until the MAF could
    # accept nobody. Now the gateway's per-source caps apply (D31, D47) under a total cap (D60).
    assert DEFAULT_MAX_HANDSHAKES_PER_SOURCE < 48
    opened = [await asyncio.open_connection("127.0.0.1", maf.port, local_addr=("127.0.0.2", 0)) for _ in range(48)]
    try:
        closed = await asyncio.gather(*(_closed_at_once(r) for r, _ in opened))
        assert sum(closed) == 48 - DEFAULT_MAX_HANDSHAKES_PER_SOURCE
        a = await _psk(maf, KMID_A, KM_A)  # another source is served meanwhile
        await _register(a)
        await a.close()
    finally:
        for _, w in opened:
            w.close()


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("DELETE", None),
                                              ("PATCH", {"mafFQDN": FQDN, "labels": ["x"]})])
async def test_a_non_ascii_registration_id_is_an_unknown_registration(maf: RunningMAF, method: str, body: object,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # secrets.compare_digest raises TypeError for str holding non-ASCII characters: a registered client asking
    # for /registrations/%C3%A9 got a 500 and the MAF logged a traceback
    a = await _psk(maf, KMID_A, KM_A)
    try:
        await _register(a)
        query = f"?mafFQDN={FQDN}" if body is None else ""
        status, problem = await _call(a, method, f"/maf/v1/registrations/%C3%A9{query}", body)
        assert status == 404 and problem["type"] == "urn:m2msec:maf:unknown-registration", problem
        assert "Traceback" not in caplog.text and "TypeError" not in caplog.text
    finally:
        await a.close()


async def test_a_revoked_client_certificate_fails_the_maf_handshake(tmp_path: Path) -> None:
    # `maf clients revoke` reaches PSK clients only: a certificate client whose key was stolen kept its MAF access
    # (Key Registration under its AE-ID/CSE-ID, Key Retrieval of the keys meant for it) until its certificate
    # expired; the MAF had no way to take CRLs. Now `client_crl` does, as `m2msec gateway --crl` (read at start).
    from cryptography.hazmat.primitives import serialization

    from m2msec.pki import create_crl
    from m2msec.pki.profile import Issued
    from m2msec.saef import CertificateCredentials
    from m2msec.tls.profiles import ECDHE_ECDSA

    config = _certificate_config(tmp_path, 0o600)
    ca = create_ca("provider root", permitted_dns=[SP])
    cert = issue(ca, F.FQDN, FQDN)
    (tmp_path / "maf.pem").write_bytes(cert.certificate_pem())
    (tmp_path / "maf.key").write_bytes(cert.private_key_pem())
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    stolen, good = issue(ca, F.CSE_ID, "mn-cse-7", sp_domain=SP), issue(ca, F.CSE_ID, "mn-cse-8", sp_domain=SP)
    crl = create_crl(ca, [stolen.certificate.serial_number])
    (tmp_path / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def creds(client: Issued) -> CertificateCredentials:
        return CertificateCredentials(client.certificate_pem(), client.private_key_pem(), ca.certificate_pem(),
                                      peer_entity=ANY_ENTITY, profiles=(ECDHE_ECDSA,))

    async with running_maf(dataclasses.replace(config, client_crl=str(tmp_path / "ca.crl"))) as running:
        with pytest.raises(HandshakeFailed):
            await establish_sa("127.0.0.1", running.port, creds(stolen))
        sa = await establish_sa("127.0.0.1", running.port, creds(good))
        await _register(sa)
        await sa.close()
    with pytest.raises(ConfigurationError, match="client_crl needs"):
        MAFConfig(client_crl=str(tmp_path / "ca.crl"))
