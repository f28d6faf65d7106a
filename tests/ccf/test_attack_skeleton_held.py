"""Hostile review of the CCF skeleton (issue 18): the attacks that were refused from the start, kept as regression
tests (the findings are in test_attack_skeleton.py, the helpers in attack_skeleton_env.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from m2msec.capif.ccf.http import MAX_BODY
from m2msec.capif.certificates import MAX_CSR_PEM, CAPIFRole, issue_capif_certificate, load_csr
from m2msec.capif.client import CCFConnection
from m2msec.capif.tokens import issue_access_token
from m2msec.errors import HandshakeFailed
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA

from .attack_skeleton_env import (
    BAD_CREDENTIAL,
    BAD_CSR,
    csr_of,
    http,
    invokers,
    jti_of,
    m2msec_ccf,
    onboard_answer,
    onboard_with,
    onboarding,
    raw,
    spent,
)
from .ccf_env import CCF_HOST, INVOKERS, Identity, World, enrolment, key_pem, new_key, onboard, world

__all__ = ["world"]

# ====================================================================================== attacks that are refused

async def test_a_credential_raced_by_many_onboardings_onboards_once(world: World) -> None:
    token = world.credential()
    statuses = await asyncio.gather(*(onboard_with(world, token) for _ in range(8)))
    assert sorted(statuses) == [201] + [401] * 7
    assert len(invokers(world)) == 1


async def test_an_access_token_is_not_an_onboarding_credential(world: World) -> None:
    ccf = world.ccf.ccf
    token = issue_access_token(ccf.token_key, issuer=ccf.policy.issuer, client_id="INVx", scope="3gpp#aef1:api1",
                               now=int(ccf.clock()), jti="at-1")["access_token"]
    answer = await onboard_answer(world, token)
    assert answer.status == 401 and answer.json()["cause"] == BAD_CREDENTIAL
    assert invokers(world) == []


@pytest.mark.parametrize("variant", ["audience", "future", "expired-beyond-leeway", "revoked", "truncated"])
async def test_bad_credentials_are_refused_and_never_echoed(world: World, variant: str) -> None:
    now = int(world.ccf.ccf.clock())
    token = {"audience": lambda: world.credential(audience="someone-else"),
             "future": lambda: world.credential(now=now + 3600),
             "expired-beyond-leeway": lambda: world.credential(now=now - 700, lifetime=600),
             "revoked": lambda: world.credential(jti="revoked-1"),
             "truncated": lambda: world.credential()[:-3]}[variant]()
    if variant == "revoked":
        assert m2msec_ccf(world, "revoke-credential", "revoked-1").returncode == 0
    answer = await onboard_answer(world, token)
    assert answer.status == 401 and answer.json()["cause"] == BAD_CREDENTIAL
    for part in token.split("."):
        assert part.encode() not in answer.body
    assert invokers(world) == []


async def test_a_repeated_authorization_header_is_refused_and_spends_nothing(world: World) -> None:
    token = world.credential()
    body = json.dumps(enrolment(new_key())).encode()
    data = http("POST", INVOKERS, body, [("content-type", "application/json"), ("authorization", f"Bearer {token}"),
                                         ("authorization", f"Bearer {token}")])
    answer = await raw(world, None, data)
    assert answer.status == 400 and answer.json()["cause"] == "INVALID_MSG_FORMAT"
    assert not spent(world, jti_of(token))
    assert await onboard_with(world, token) == 201


def _tricky_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = new_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, CAPIFRole.AEF.value),
        x509.NameAttribute(NameOID.COMMON_NAME, "INVvictim,OU=aef"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "amf"),
        x509.NameAttribute(NameOID.COMMON_NAME, "x=y+z"),
    ])
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.SubjectAlternativeName([x509.DNSName(CCF_HOST)]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]
    return key, csr_of(key, subject, extensions, hashes.SHA256())


async def test_only_the_key_of_a_csr_is_certified(world: World) -> None:
    key, csr = _tricky_csr()
    body = dict(enrolment(key), apiInvokerId="INVvictim")
    body["onboardingInformation"] = {"apiInvokerPublicKey": csr, "apiInvokerCertificate": "forged"}
    answer = await world.call(None, "POST", INVOKERS, body, headers={"authorization": f"Bearer {world.credential()}"})
    assert answer.status == 201, answer.body
    got = answer.json()
    assert got["apiInvokerId"] != "INVvictim"
    cert = x509.load_pem_x509_certificate(got["onboardingInformation"]["apiInvokerCertificate"].encode())
    assert [(a.oid, a.value) for a in cert.subject] == [(NameOID.ORGANIZATIONAL_UNIT_NAME, "api-invoker"),
                                                        (NameOID.COMMON_NAME, got["apiInvokerId"])]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.public_key() == key.public_key()
    # and the certificate names exactly that identity at the CCF
    who = Identity(got["apiInvokerId"], cert.public_bytes(serialization.Encoding.PEM), key_pem(key), got)
    assert (await world.call(who, "PUT", f"{INVOKERS}/{who.identity}", got)).status == 200


def _bad_signature_csr() -> str:
    der = bytearray(x509.load_pem_x509_csr(csr_of(new_key(), algorithm=hashes.SHA256()).encode()).public_bytes(
        serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("variant", ["rsa1024", "secp256k1", "ed25519", "huge", "bad-signature", "certificate",
                                     "not-pem"])
async def test_bad_csrs_are_refused_before_the_credential_is_spent(world: World, variant: str) -> None:
    def make() -> str:
        if variant == "rsa1024":
            return csr_of(rsa.generate_private_key(65537, 1024), algorithm=hashes.SHA256())
        if variant == "secp256k1":
            return csr_of(ec.generate_private_key(ec.SECP256K1()), algorithm=hashes.SHA256())
        if variant == "ed25519":
            return csr_of(ed25519.Ed25519PrivateKey.generate())
        if variant == "huge":
            return csr_of(new_key(), extensions=[(x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x04\x82\x30\x00" + b"A" * 0x3000), False)],
                algorithm=hashes.SHA256())
        if variant == "bad-signature":
            return _bad_signature_csr()
        if variant == "certificate":
            return world.ca_pem.decode()
        return "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"

    csr = make()
    if variant == "huge":
        assert MAX_CSR_PEM < len(csr) < MAX_BODY
    token = world.credential()
    body = dict(enrolment(new_key()), onboardingInformation={"apiInvokerPublicKey": csr})
    answer = await world.call(None, "POST", INVOKERS, body, headers={"authorization": f"Bearer {token}"})
    assert answer.status == 400 and answer.json()["cause"] == BAD_CSR, answer.body
    assert not spent(world, jti_of(token))
    assert await onboard_with(world, token) == 201  # the credential is still good


async def test_a_provider_certificate_naming_an_invoker_is_refused(world: World) -> None:
    victim = await onboard(world)
    key = new_key()
    ccf = world.ccf.ccf
    forged = issue_capif_certificate(ccf.ca, load_csr(csr_of(key, algorithm=hashes.SHA256())), CAPIFRole.AEF,
                                     victim.identity, now=ccf.now())
    aef = Identity(victim.identity, forged.public_bytes(serialization.Encoding.PEM), key_pem(key))
    for method, body in (("PUT", victim.answer), ("DELETE", None)):
        answer = await world.call(aef, method, f"{INVOKERS}/{victim.identity}", body)
        assert answer.status == 403, (method, answer.body)
    assert victim.identity in invokers(world)


async def test_a_second_certificate_for_an_invoker_id_is_refused(world: World) -> None:
    """A certificate of the right role and name from the CCF's own CA, but not the one the record holds."""
    victim = await onboard(world)
    key = new_key()
    ccf = world.ccf.ccf
    twin = issue_capif_certificate(ccf.ca, load_csr(csr_of(key, algorithm=hashes.SHA256())), CAPIFRole.INVOKER,
                                   victim.identity, now=ccf.now())
    who = Identity(victim.identity, twin.public_bytes(serialization.Encoding.PEM), key_pem(key))
    answer = await world.call(who, "DELETE", f"{INVOKERS}/{victim.identity}")
    assert answer.status == 403
    assert victim.identity in invokers(world)


async def test_an_expired_certificate_fails_the_handshake_and_is_never_anonymous(world: World) -> None:
    """With the client certificate optional, a certificate that does not verify must still end the handshake
    (not pass as a certificate-less onboarding)."""
    key = new_key()
    ccf = world.ccf.ccf
    old = issue_capif_certificate(ccf.ca, load_csr(csr_of(key, algorithm=hashes.SHA256())), CAPIFRole.INVOKER,
                                  "INVexpired", now=ccf.now() - timedelta(days=3), days=1)
    who = Identity("INVexpired", old.public_bytes(serialization.Encoding.PEM), key_pem(key))
    with pytest.raises(HandshakeFailed):
        await world.call(who, "POST", INVOKERS, enrolment(new_key()),
                         headers={"authorization": f"Bearer {world.credential()}"})


async def test_put_cannot_rename_the_invoker(world: World) -> None:
    a, b = await onboard(world), await onboard(world)
    answer = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", dict(a.answer, apiInvokerId=b.identity))
    assert answer.status == 400
    assert (await world.call(b, "PUT", f"{INVOKERS}/{b.identity}", b.answer)).status == 200


async def test_patch_cannot_rename_the_invoker_or_drop_required_members(world: World) -> None:
    """Whatever PATCH answers (today a 500, see the xfail above), it never moves or breaks an enrolment."""
    a, b = await onboard(world), await onboard(world)
    before = {i: world.store.get_document("capif-invoker", i) for i in (a.identity, b.identity)}
    for patch in ({"apiInvokerId": b.identity}, {"notificationDestination": None}, {"onboardingInformation": None},
                  {"onboardingInformation": {"apiInvokerPublicKey": None}}):
        async with await world.connect(a) as conn:
            answer = await conn.request("PATCH", f"{INVOKERS}/{a.identity}", json_body=patch,
                                        content_type="application/merge-patch+json")
        if answer.status == 200:
            assert answer.json()["apiInvokerId"] == a.identity
        else:
            assert answer.status in (400, 500), (patch, answer.body)
    after = {i: world.store.get_document("capif-invoker", i) for i in (a.identity, b.identity)}
    assert after[b.identity] == before[b.identity]
    record = after[a.identity]
    assert record is not None
    enrolment_after = record.body["enrolment"]
    assert enrolment_after["apiInvokerId"] == a.identity and "notificationDestination" in enrolment_after
    assert enrolment_after["onboardingInformation"]["apiInvokerPublicKey"]


async def test_rekey_retires_the_old_certificate_also_on_an_open_connection(world: World) -> None:
    a = await onboard(world)
    fresh_key = new_key()
    async with await world.connect(a) as kept:  # opened with the old certificate, kept alive
        assert (await kept.request("PUT", f"{INVOKERS}/{a.identity}", json_body=a.answer)).status == 200
        rekey = dict(a.answer, onboardingInformation={"apiInvokerPublicKey": csr_of(fresh_key,
                                                                                    algorithm=hashes.SHA256())})
        answer = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", rekey)
        assert answer.status == 200
        assert (await kept.request("PUT", f"{INVOKERS}/{a.identity}", json_body=a.answer)).status == 403
        assert (await kept.request("DELETE", f"{INVOKERS}/{a.identity}")).status == 403
    new = Identity(a.identity, answer.json()["onboardingInformation"]["apiInvokerCertificate"].encode(),
                   key_pem(fresh_key))
    assert (await world.call(new, "DELETE", f"{INVOKERS}/{a.identity}")).status == 204
    assert (await world.call(new, "DELETE", f"{INVOKERS}/{a.identity}")).status == 403  # offboarded


async def test_onboarding_over_an_invoker_certificate_makes_a_new_identity_only(world: World) -> None:
    a = await onboard(world)
    answer = await world.call(a, "POST", INVOKERS, enrolment(new_key(), apiInvokerId=a.identity),
                              headers={"authorization": f"Bearer {world.credential()}"})
    assert answer.status == 201
    assert answer.json()["apiInvokerId"] != a.identity
    assert (await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", a.answer)).status == 200  # a is untouched


@pytest.mark.parametrize(("name", "data", "status"), [
    ("text/plain", (b'{"a":1}', "text/plain"), 415),
    ("json in a list of types", (b'{"a":1}', "application/json, text/plain"), 415),
    ("repeated member deep down", (b'{"onboardingInformation":{"apiInvokerPublicKey":"a","apiInvokerPublicKey":"b"},'
                                   b'"notificationDestination":"x"}', "application/json"), 400),
    ("NaN", (b'{"notificationDestination":NaN}', "application/json"), 400),
    ("latin-1", ('{"notificationDestination":"caf\xe9"}'.encode("latin-1"), "application/json"), 400),
    ("BOM", (b'\xef\xbb\xbf{"notificationDestination":"x"}', "application/json"), 400),
    ("huge integer", (b'{"notificationDestination":' + b"9" * 5000 + b"}", "application/json"), 400),
    ("deep beyond the parser", (b'{"a":' * 50000 + b"1" + b"}" * 50000, "application/json"), 413),
    ("not JSON", (b"\x00\x01", "application/json"), 400),
])
async def test_hostile_bodies_are_problem_details_and_spend_nothing(world: World, name: str,
                                                                   data: tuple[bytes, str], status: int) -> None:
    token = world.credential()
    answer = await raw(world, None, onboarding(world, data[0], token, data[1]))
    assert answer.status == status, (name, answer.body[:300])
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == status
    assert not spent(world, jti_of(token))


async def test_a_chunked_body_over_the_limit_is_cut(world: World) -> None:
    chunk = b"[" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // len(chunk) + 1)) + b"0\r\n\r\n"
    head = (f"POST {INVOKERS} HTTP/1.1\r\nhost: {CCF_HOST}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {world.credential()}\r\n"
            "transfer-encoding: chunked\r\nconnection: close\r\n\r\n").encode()
    answer = await raw(world, None, head + chunks)
    assert answer.status == 413
    # without a credential, the body is not even read
    head = head.replace(b"authorization: Bearer", b"x-not-authorization:")
    assert (await raw(world, None, head + chunks)).status == 401


@pytest.mark.parametrize("path", [
    f"{INVOKERS}/..%2F..%2Fx", f"{INVOKERS}/%2e%2e", f"{INVOKERS}/INV%00", INVOKERS.upper() + "/x",
    f"{INVOKERS}/{{me}}/..",
])
async def test_odd_paths_never_reach_another_invoker(world: World, path: str) -> None:
    a = await onboard(world)
    b = await onboard(world)
    answer = await raw(world, a, http("DELETE", path.replace("{me}", b.identity)))
    assert answer.status in (403, 404, 405)
    assert answer.headers["content-type"] == "application/problem+json"
    assert sorted(invokers(world)) == sorted([a.identity, b.identity])


async def test_methods_the_contract_does_not_declare_are_405_problem_details(world: World) -> None:
    a = await onboard(world)
    for method in ("GET", "HEAD", "OPTIONS", "TRACE", "post"):
        answer = await raw(world, a, http(method, f"{INVOKERS}/{a.identity}"))
        assert answer.status == 405, method
        if method != "HEAD":
            assert answer.json()["status"] == 405


async def test_a_request_not_over_m2msec_tls_is_refused(world: World) -> None:
    """The ASGI application directly (another server, a test client): no m2msec.tls extension, no identity."""
    from m2msec.capif.ccf.http import create_app

    app = create_app(world.ccf.ccf)
    sent: list[dict[str, Any]] = []
    body = json.dumps(enrolment(new_key())).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "https",
             "path": INVOKERS, "raw_path": INVOKERS.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {world.credential()}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "extensions": {}}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    assert sent[0]["status"] == 403
    assert invokers(world) == []


async def test_no_secret_reaches_the_log(world: World, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    token = world.credential()
    key = new_key()
    answer = await world.call(None, "POST", INVOKERS, enrolment(key), headers={"authorization": f"Bearer {token}"})
    assert answer.status == 201
    body = answer.json()
    inv = Identity(body["apiInvokerId"], body["onboardingInformation"]["apiInvokerCertificate"].encode(), key_pem(key))
    await world.call(None, "POST", INVOKERS, enrolment(new_key()), headers={"authorization": f"Bearer {token}"})
    await world.call(inv, "PUT", f"{INVOKERS}/{inv.identity}", dict(body, apiInvokerInformation=7))
    await raw(world, None, onboarding(world, b'{"x":', world.credential()))
    async with await world.connect(inv) as conn:
        master = conn.writer.get_extra_info("tls_connection").master_secret().reveal()
        await conn.request("DELETE", f"{INVOKERS}/{inv.identity}")
    text = caplog.text
    signing = ccf_key_bytes(world)
    for secret in (token, token.split(".")[2], master.hex(), key_pem(key).decode().splitlines()[1], signing):
        assert secret not in text


def ccf_key_bytes(world: World) -> str:
    der = world.ccf.ccf.token_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
    return der.hex()[-40:]


async def test_the_tls_extension_hides_and_then_forgets_the_master_secret(world: World) -> None:
    """m2msec.asgi.TLSExtension.master_secret: never in a repr, refused once the connection is closed."""
    from m2msec.asgi import serve
    from m2msec.asgi.scope import EXTENSION
    from m2msec.capif.ccf.server import server_certificate, server_context
    from m2msec.errors import TLSProtocolError

    ccf = world.ccf.ccf
    seen: list[Any] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        ext = scope["extensions"][EXTENSION]
        seen.append((ext, ext.master_secret()))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = await serve(app, server_context(ccf.ca, server_certificate(ccf.ca, CCF_HOST, ccf.now())), "127.0.0.1", 0)
    try:
        async with await CCFConnection.open("127.0.0.1", server.port, ccf_host=CCF_HOST, ca_pem=world.ca_pem) as conn:
            assert (await conn.request("GET", "/")).status == 200
            client_master = conn.writer.get_extra_info("tls_connection").master_secret().reveal()
        ext, master = seen[0]
        assert master.reveal() == client_master
        for text in (repr(ext), repr(master), str(master), repr(ext.session)):
            assert client_master.hex() not in text and client_master.hex().upper() not in text
        assert ext.session.authentication == "none" and ext.session.peer_certificate is None
        for _ in range(100):
            try:
                ext.master_secret()
            except TLSProtocolError:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the master secret was still readable after the connection closed")
    finally:
        server.close()
        await server.wait_closed()


def test_empty_client_credentials_cannot_reach_a_mutual_server() -> None:
    """A careless operator's empty certificate and key files: a client told to authenticate the server only (the
    CAPIF client's explicit flag) is still refused by a server that does not make the certificate optional (gateway,
    MAF, tunnel: the default); without the flag the empty files are a configuration error (tested above)."""
    from conftest import handshake_pair
    from m2msec.pki import CertificateFlavour, create_ca, issue
    from m2msec.tls.engine import ServerConfig

    ca = create_ca("attack-ca", permitted_dns=["server.example"])
    server_cert = issue(ca, CertificateFlavour.FQDN, "server.example")
    server = TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=CertificateConfig(
        server_cert.certificate_pem(), server_cert.private_key_pem(), ca.certificate_pem())))
    client = TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name="server.example",
                                            server_authentication_only=True,
                                            certificate=CertificateConfig(b"", b"", ca.certificate_pem())))
    with pytest.raises(HandshakeFailed):
        handshake_pair(server, client)


def test_an_issued_credential_is_on_stdout_only_and_the_store_is_private(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_CCF_STORE", "M2MSEC_DB")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-m", "m2msec.cli.main", "ccf", "onboarding-credential", "--for",
                             "invoker", "--subject", "alice"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2
    for part in token.split("."):
        assert part not in result.stderr
    assert jti_of(token) in result.stderr  # what the operator needs to revoke it
    for file in (tmp_path / "data" / "m2msec").iterdir():
        assert file.stat().st_mode & 0o077 == 0, file

