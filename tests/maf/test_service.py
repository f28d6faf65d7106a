"""`m2msec maf serve` in-process over real MAF Handshakes on loopback: PSK (KmID/Km) and certificates.

The client side here is deliberately raw (Entity A's TLS and h11 through :func:`m2msec.saef.establish_sa`), so that
the wire of docs/maf.md is what is tested; tests/maf/test_client*.py use the client library.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.maf.config import MAFConfig
from m2msec.maf.procedures import EXPORTER_CONNECTION_LABEL
from m2msec.maf.server import RunningMAF, running_maf
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import create_ca, issue
from m2msec.saef import ANY_ENTITY, CertificateCredentials, EstablishedSA, PSKCredentials, establish_sa
from m2msec.store import MAFClient, open_store
from m2msec.tls.profiles import ECDHE_ECDSA

from .raw_wire import FQDN, call, later

SP = "sp.example.com"
KM_A = SecretKey(bytes(range(32)))
KM_B = SecretKey(bytes(range(1, 33)))
KMID_A = f"cae1@{FQDN}"
KMID_B = f"mn-gw@{FQDN}"


@dataclass
class World:
    maf: RunningMAF
    tmp: Path
    ca: object


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = create_ca("provider root", permitted_dns=[SP])
    maf_cert = issue(ca, F.FQDN, FQDN)
    (tmp_path / "maf.pem").write_bytes(maf_cert.certificate_pem())
    (tmp_path / "maf.key").write_bytes(maf_cert.private_key_pem())
    (tmp_path / "maf.key").chmod(0o600)  # a world-readable private key is refused (tests/maf/test_attack_maf.py)
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    config = MAFConfig(listen="127.0.0.1:0", maf_fqdn=FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db",
                       certificate=str(tmp_path / "maf.pem"), private_key=str(tmp_path / "maf.key"),
                       client_trust_anchors=str(tmp_path / "ca.pem"))
    store = open_store(config.store)
    store.register_client(MAFClient(KMID_A, KM_A, "/mn-cse-123456/CAE1"))
    store.register_client(MAFClient(KMID_B, KM_B, "/mn-cse-123456"))
    try:
        async with running_maf(config, store=store) as running:
            yield World(running, tmp_path, ca)
    finally:
        store.close()


async def psk(world: World, kmid: str = KMID_A, km: SecretKey = KM_A) -> EstablishedSA:
    return await establish_sa("127.0.0.1", world.maf.port, PSKCredentials(kmid, km, peer_entity=ANY_ENTITY))


async def register(sa: EstablishedSA) -> str:
    status, headers, body = await call(sa, "POST", "/maf/v1/registrations",
                                       {"mafFQDN": FQDN, "expirationTime": later(600), "adminFQDN": FQDN})
    assert status == 201, body
    assert isinstance(body, dict) and headers["location"] == f"/maf/v1/registrations/{body['mafClientRegID']}"
    return str(body["mafClientRegID"])


async def test_key_registration_from_the_handshake_and_retrieval_by_the_target(world: World) -> None:
    a = await psk(world)
    b = await psk(world, KMID_B, KM_B)
    try:
        await register(a)
        await register(b)
        status, headers, body = await call(a, "POST", "/maf/v1/keys", {
            "mafFQDN": FQDN, "expirationTime": later(600), "adminFQDN": FQDN, "SUID": 32,
            "targetIDs": ["/mn-cse-123456"]})
        assert status == 201, body
        # Entity A's own export of the same MAF Handshake (TS-0003 §10.3.1): KcID first 16 bytes, Kc last 32
        exported = a.export_keying_material(EXPORTER_CONNECTION_LABEL, 48).reveal()
        assert isinstance(body, dict)
        assert body["relativeKeyID"] == exported[:16].hex() and headers["location"].endswith(exported[:16].hex())
        assert body["sourceMAFClientID"] == f"//{SP}/mn-cse-123456/CAE1"
        assert body["targetIDs"] == [f"//{SP}/mn-cse-123456"]
        status, headers, got = await call(b, "GET", f"/maf/v1/keys/{body['relativeKeyID']}")
        assert status == 200 and isinstance(got, dict), got
        assert base64.b64decode(got["keyValue"]) == exported[16:]
        assert got["SUID"] == 32 and got["sourceMAFClientID"] == f"//{SP}/mn-cse-123456/CAE1"
        assert headers["cache-control"] == "no-store"
        # A is not a target of its own key; a second exported key on the same handshake is refused
        status, _, problem = await call(a, "GET", f"/maf/v1/keys/{body['relativeKeyID']}")
        assert status == 403 and isinstance(problem, dict) and problem["type"] == "urn:m2msec:maf:not-a-target"
        status, _, problem = await call(a, "POST", "/maf/v1/keys", {
            "mafFQDN": FQDN, "expirationTime": later(600), "adminFQDN": FQDN, "SUID": 32,
            "targetIDs": ["/mn-cse-123456"]})
        assert status == 409
    finally:
        await a.close()
        await b.close()


async def test_unknown_revoked_and_foreign_kmids_fail_the_handshake(world: World) -> None:
    with pytest.raises(HandshakeFailed):
        await psk(world, f"ghost@{FQDN}", KM_A)
    with pytest.raises(HandshakeFailed):
        await psk(world, KMID_A, KM_B)  # right KmID, wrong Km
    with pytest.raises(HandshakeFailed):
        await psk(world, "cae1@maf.other.example.com", KM_A)
    ok = await psk(world, "CAE1@MAF.sp.example.com", KM_A)  # KmIDs are case-insensitive (§10.6)
    try:
        await register(ok)
        await world.maf.maf.revoke_client(KMID_A)
        status, _, problem = await call(ok, "GET", "/maf/v1/keys/" + "00" * 16)
        assert status == 403 and isinstance(problem, dict) and problem["type"].endswith("client-revoked")
    finally:
        await ok.close()
    with pytest.raises(HandshakeFailed):
        await psk(world)


async def test_configuration_retrieval_announces_the_port_the_system_chose(world: World) -> None:
    """A MAF on listen port 0 announced httpPort 0 and failed its own response model (500)."""
    sa = await psk(world)
    try:
        reg_id = await register(sa)
        status, _, body = await call(sa, "GET", f"/maf/v1/registrations/{reg_id}?mafFQDN={FQDN}")
        assert status == 200 and isinstance(body, dict), body
        assert body["mafClientCfg"]["mafClientRegCfg"]["httpPort"] == world.maf.port
        assert body["mafClientCfg"]["mafKeyRegCfg"]["SUID"] == 32
    finally:
        await sa.close()


async def test_certificate_maf_handshake(world: World) -> None:
    from m2msec.pki.profile import Issued

    ca = world.ca
    assert isinstance(ca, Issued)
    client = issue(ca, F.CSE_ID, "mn-cse-7", sp_domain=SP)
    creds = CertificateCredentials(client.certificate_pem(), client.private_key_pem(), ca.certificate_pem(),
                                   peer_entity=ANY_ENTITY, profiles=(ECDHE_ECDSA,))
    sa = await establish_sa("127.0.0.1", world.maf.port, creds)
    try:
        status, _, body = await call(sa, "POST", "/maf/v1/registrations",
                                     {"mafFQDN": FQDN, "expirationTime": later(600), "adminFQDN": FQDN})
        assert status == 201 and isinstance(body, dict) and body["mafClientID"] == f"//{SP}/mn-cse-7"
    finally:
        await sa.close()
    stranger_ca = create_ca("another root", permitted_dns=[SP])
    stranger = issue(stranger_ca, F.CSE_ID, "mn-cse-7", sp_domain=SP)
    with pytest.raises(HandshakeFailed):
        await establish_sa("127.0.0.1", world.maf.port, CertificateCredentials(
            stranger.certificate_pem(), stranger.private_key_pem(), ca.certificate_pem(), peer_entity=ANY_ENTITY,
            profiles=(ECDHE_ECDSA,)))


@pytest.mark.parametrize(("method", "target", "body", "status", "name"), [
    ("POST", "/maf/v1/registrations", b"{not json", 400, "bad-request"),
    ("POST", "/maf/v1/registrations", b'{"mafFQDN": "x"}', 400, "bad-request"),
    ("POST", "/maf/v1/keys", json.dumps({"mafFQDN": FQDN, "expirationTime": "20990101T000000", "adminFQDN": FQDN,
                                         "SUID": 32, "targetIDs": ["/x"], "keyValue": "S0VZ" * 8,
                                         "extra": 1}).encode(), 400, "bad-request"),
    ("POST", "/maf/v1/keys", json.dumps({"mafFQDN": FQDN, "expirationTime": "20990101T000000", "adminFQDN": FQDN,
                                         "SUID": "32", "targetIDs": ["/x"]}).encode(), 400, "bad-request"),
    ("GET", "/maf/v1/nothing", b"", 404, "not-found"),
    ("PUT", "/maf/v1/keys/abc", b"{}", 405, "method-not-allowed"),
    ("GET", "/maf/v1/keys/" + "ab" * 16, b"", 403, "not-registered"),
])
async def test_refusals_are_problem_details(world: World, method: str, target: str, body: bytes, status: int,
                                            name: str) -> None:
    sa = await psk(world)
    try:
        got, headers, problem = await call(sa, method, target, raw=body)
        assert got == status, problem
        assert headers["content-type"] == "application/problem+json"
        assert isinstance(problem, dict) and problem["type"] == f"urn:m2msec:maf:{name}" and problem["status"] == status
        assert "S0VZ" not in json.dumps(problem)  # a key value is never echoed
    finally:
        await sa.close()


async def test_oversize_and_non_json_bodies_are_refused_before_reading(world: World) -> None:
    sa = await psk(world)
    try:
        status, _, problem = await call(sa, "POST", "/maf/v1/keys", raw=b"{}", content_type="text/plain")
        assert status == 415 and isinstance(problem, dict) and problem["type"].endswith("unsupported-media-type")
    finally:
        await sa.close()
    sa = await psk(world)
    try:
        big = b'{"mafFQDN": "' + b"a" * (65 * 1024) + b'"}'
        status, _, problem = await call(sa, "POST", "/maf/v1/registrations", raw=big)
        assert status == 413 and isinstance(problem, dict) and problem["type"].endswith("body-too-large")
    finally:
        await sa.close()


async def test_openapi_document(world: World) -> None:
    sa = await psk(world)
    try:
        status, _, doc = await call(sa, "GET", "/maf/v1/openapi.json")
        assert status == 200 and isinstance(doc, dict)
        assert doc["openapi"].startswith("3.1")
        assert {"/maf/v1/registrations", "/maf/v1/keys", "/maf/v1/keys/{relative_key_id}"} <= set(doc["paths"])
    finally:
        await sa.close()
