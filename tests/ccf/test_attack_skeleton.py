"""Hostile review of the CCF skeleton (issue 18), its findings: each test shows a problem the review found, now
fixed (the attacks refused from the start are in test_attack_skeleton_held.py, the helpers in attack_skeleton_env.py).
Everything runs against the ``world`` CCF (real TLS on loopback, a real SQLite store, every answer checked against
the official schemas), or the engine directly where noted."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from m2msec.capif.ccf.http import MAX_BODY
from m2msec.capif.ccf.server import MAX_CONNECTIONS
from m2msec.errors import StorageError
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA
from m2msec.transport.limits import DEFAULT_MAX_CONNECTIONS_PER_SA, sa_share
from m2msec.transport.tls import TLSAdapter

from .attack_skeleton_env import (
    PausingStore,
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

# ========================================================================================= findings (all fixed)

async def test_patch_is_served_and_only_for_the_caller(world: World) -> None:
    a, b = await onboard(world), await onboard(world)
    async with await world.connect(b) as conn:
        other = await conn.request("PATCH", f"{INVOKERS}/{a.identity}", json_body={"apiInvokerInformation": "b"},
                                   content_type="application/merge-patch+json")
    assert other.status == 403, other.body
    async with await world.connect(a) as conn:
        own = await conn.request("PATCH", f"{INVOKERS}/{a.identity}", json_body={"apiInvokerInformation": "renamed"},
                                 content_type="application/merge-patch+json")
    assert own.status == 200, own.body
    assert own.json()["apiInvokerInformation"] == "renamed"
    assert own.json()["apiInvokerId"] == a.identity


async def test_patch_cannot_smuggle_members_the_enrolment_schema_refuses(world: World) -> None:
    a = await onboard(world)
    before = world.store.get_document("capif-invoker", a.identity)
    async with await world.connect(a) as conn:
        answer = await conn.request("PATCH", f"{INVOKERS}/{a.identity}", json_body={"supportedFeatures": 5},
                                    content_type="application/merge-patch+json")
    assert answer.status == 400, answer.body
    after = world.store.get_document("capif-invoker", a.identity)
    assert before is not None and after is not None and after.body == before.body


async def test_a_trailing_slash_is_not_redirected_to_the_host_header(world: World) -> None:
    body = json.dumps(enrolment(new_key())).encode()
    answer = await raw(world, None, http("POST", INVOKERS + "/", body, [("content-type", "application/json"),
                                                                      ("authorization", "Bearer x")],
                                         host="evil.example"))
    assert "evil.example" not in answer.headers.get("location", "")
    assert answer.status == 404 and answer.headers["content-type"] == "application/problem+json"


async def test_405_names_the_allowed_methods(world: World) -> None:
    answer = await raw(world, None, http("GET", INVOKERS))
    assert answer.status == 405
    assert answer.headers.get("allow") == "POST"


async def test_a_lone_surrogate_is_refused_before_the_credential_is_spent(world: World) -> None:
    token = world.credential()
    body = json.dumps(enrolment(new_key())).replace('"test invoker"', '"\\ud800"').encode()
    answer = await raw(world, None, onboarding(world, body, token))
    assert answer.status == 400, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    assert not spent(world, jti_of(token)) and invokers(world) == []


async def test_deep_nesting_is_refused_before_the_credential_is_spent(world: World) -> None:
    token = world.credential()
    depth = 500
    body = (json.dumps(enrolment(new_key()))[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}").encode()
    assert len(body) < MAX_BODY
    answer = await raw(world, None, onboarding(world, body, token))
    assert answer.status in (400, 413), answer.body
    assert not spent(world, jti_of(token))


async def test_a_number_overflowing_to_infinity_is_refused(world: World) -> None:
    body = enrolment(new_key())
    body["apiList"] = {"serviceAPIDescriptions": [{"apiName": "x", "aefProfiles": [{
        "aefId": "a", "versions": [{"apiVersion": "v1"}], "domainName": "aef.example",
        "aefLocation": {"geoArea": {"shape": "POINT_UNCERTAINTY_CIRCLE", "point": {"lon": 0, "lat": 0},
                                    "uncertainty": "@INF@"}}}]}]}
    data = json.dumps(body).replace('"@INF@"', "1e999").encode()
    answer = await raw(world, None, onboarding(world, data, world.credential()))
    assert b"Infinity" not in answer.body
    assert answer.status == 400, answer.body


async def _hold_anonymous(world: World, local: str) -> asyncio.Transport:
    """A certificate-less TLS connection to the CCF from source address ``local``, kept open and idle."""
    context = TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=CCF_HOST,
                                             server_authentication_only=True,
                                             certificate=CertificateConfig(b"", b"", world.ca_pem)))
    loop = asyncio.get_running_loop()
    _, adapter = await loop.create_connection(lambda: TLSAdapter(context, asyncio.Protocol, handshake_timeout=10),
                                              "127.0.0.1", world.ccf.port, local_addr=(local, 0))
    await adapter.handshake
    assert adapter.raw_transport is not None
    return adapter.raw_transport


async def test_one_host_cannot_hold_every_onboarding_slot(world: World) -> None:
    cap = sa_share(DEFAULT_MAX_CONNECTIONS_PER_SA, MAX_CONNECTIONS)
    held = [await _hold_anonymous(world, "127.0.0.2") for _ in range(cap)]
    try:
        await asyncio.sleep(0.05)
        status = await onboard_with(world, world.credential())  # another client, from 127.0.0.1
    except (ConnectionError, OSError) as exc:
        pytest.fail(f"the onboarding connection was dropped: {exc!r}")
    finally:
        for transport in held:
            transport.close()
    assert status == 201


async def test_an_anonymous_body_does_not_stall_the_ccf(world: World) -> None:
    profile = {"aefId": "a", "versions": [{"apiVersion": "v"}], "domainName": "d",
               "aefLocation": {"geoArea": {"shape": 5}}}
    body = dict(enrolment(new_key()), apiList={"serviceAPIDescriptions": [{"apiName": "x",
                                                                           "aefProfiles": [profile] * 2000}]})
    data = json.dumps(body, separators=(",", ":")).encode()
    assert len(data) < MAX_BODY
    stalls: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        answer = await raw(world, None, http("POST", INVOKERS, data, [("content-type", "application/json")]))
    finally:
        done.set()
        await ticker
    assert answer.status in (400, 401)
    assert max(stalls) < 0.5, f"the event loop (the CCF's) stood still for {max(stalls):.2f} s"


async def test_a_concurrent_update_cannot_undo_a_rekey(world: World) -> None:
    a = await onboard(world)
    gate = PausingStore(world.ccf.ccf.store)
    world.ccf.ccf.store = gate  # type: ignore[assignment]
    # the holder of the old key sends an update without a key change; it is authenticated, then held before writing
    stale = asyncio.create_task(world.call(a, "PUT", f"{INVOKERS}/{a.identity}",
                                           dict(a.answer, apiInvokerInformation="attacker")))
    await asyncio.wait_for(gate.paused.wait(), 10)
    # meanwhile the invoker re-keys
    fresh_key = new_key()
    rekey = dict(a.answer, onboardingInformation={"apiInvokerPublicKey": csr_of(fresh_key, algorithm=hashes.SHA256())})
    answer = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", rekey)
    assert answer.status == 200
    new = Identity(a.identity, answer.json()["onboardingInformation"]["apiInvokerCertificate"].encode(),
                   key_pem(fresh_key))
    gate.release.set()
    await stale
    old_after = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", a.answer)
    new_after = await world.call(new, "PUT", f"{INVOKERS}/{a.identity}", dict(a.answer, apiInvokerInformation="n"))
    assert old_after.status == 403
    assert new_after.status == 200


async def test_an_update_racing_offboarding_is_not_a_store_failure(world: World) -> None:
    a = await onboard(world)
    gate = PausingStore(world.ccf.ccf.store)
    world.ccf.ccf.store = gate  # type: ignore[assignment]
    update = asyncio.create_task(world.call(a, "PUT", f"{INVOKERS}/{a.identity}", a.answer))
    await asyncio.wait_for(gate.paused.wait(), 10)
    gone = await world.call(a, "DELETE", f"{INVOKERS}/{a.identity}")
    assert gone.status == 204
    gate.release.set()
    answer = await update
    assert answer.status in (403, 404), answer.body
    assert invokers(world) == []


async def test_a_request_repr_shows_no_credential(world: World) -> None:
    from m2msec.capif.ccf.context import Caller
    from m2msec.capif.ccf.http import CCFRequest

    token = world.credential()
    caller = Caller(None, None, None, tls=None)  # type: ignore[arg-type]  # as Caller.of makes it without a cert
    raw_headers = {"authorization": [f"Bearer {token}"], "host": [CCF_HOST]}
    request = CCFRequest(world.ccf.ccf, caller, {}, {}, {"onboardingInformation": {"onboardingSecret": "s3cr3t"}},
                         {k: ", ".join(v) for k, v in raw_headers.items()}, raw_headers)
    text = repr(request)
    assert token not in text and token.split(".")[2] not in text
    assert "s3cr3t" not in text


async def test_revoking_a_used_credential_cuts_off_its_invoker(world: World) -> None:
    token = world.credential()
    key = new_key()
    answer = await world.call(None, "POST", INVOKERS, enrolment(key), headers={"authorization": f"Bearer {token}"})
    assert answer.status == 201
    body = answer.json()
    inv = Identity(body["apiInvokerId"], body["onboardingInformation"]["apiInvokerCertificate"].encode(), key_pem(key),
                   body)
    m2msec_ccf(world, "revoke-credential", jti_of(token))
    after = await world.call(inv, "PUT", f"{INVOKERS}/{inv.identity}", inv.answer)
    assert after.status == 403


async def test_revoking_an_unknown_jti_is_an_error(world: World) -> None:
    real = world.credential()
    result = m2msec_ccf(world, "revoke-credential", jti_of(real) + "x")
    assert result.returncode != 0
    assert await onboard_with(world, real) == 201


class FailingStore:
    """The CCF's store, whose next write of an invoker record fails as a store outage would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_document(self, document: Any, *, replace: bool = False, expect: Any = None) -> None:
        if document.kind == "capif-invoker" and self.armed:
            self.armed = False
            raise StorageError("database is locked")
        await self.inner.put_document(document, replace=replace, expect=expect)


async def test_a_store_failure_does_not_burn_the_credential(world: World) -> None:
    token = world.credential()
    store = world.ccf.ccf.store
    world.ccf.ccf.store = FailingStore(store)  # type: ignore[assignment]
    first = await onboard_answer(world, token)
    world.ccf.ccf.store = store
    assert first.status == 503
    assert await onboard_with(world, token) == 201


async def test_resending_the_same_csr_differently_encoded_keeps_the_certificate(world: World) -> None:
    a = await onboard(world)
    csr = a.answer["onboardingInformation"]["apiInvokerPublicKey"]
    same = dict(a.answer, onboardingInformation={"apiInvokerPublicKey": csr.replace("\n", "\r\n")})
    answer = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", same)
    assert answer.status == 200
    assert (await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", a.answer)).status == 200


async def test_a_client_leaving_mid_body_is_not_an_error(world: World, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO)
    for _ in range(3):
        conn = await world.connect(None)
        conn.writer.write(http("POST", INVOKERS, b"", [("content-type", "application/json")]).replace(
            b"content-length: 0", b"content-length: 1000") + b'{"a":')
        await conn.writer.drain()
        await asyncio.sleep(0.1)
        await conn.close()
    await asyncio.sleep(0.3)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("m2msec")]
    assert errors == []


def test_an_api_root_with_a_trailing_slash_gives_clean_locations() -> None:
    from types import SimpleNamespace

    from m2msec.capif.ccf.config import CCFConfig
    from m2msec.capif.ccf.invokers import invoker_location

    config = CCFConfig(api_root="https://ccf.example:8445/")
    location = invoker_location(SimpleNamespace(policy=SimpleNamespace(api_root=config.api_root)), "INV1")  # type: ignore[arg-type]
    assert location == "https://ccf.example:8445/api-invoker-management/v1/onboardedInvokers/INV1"


@pytest.mark.parametrize("api_root", ["https://", "https://a b?x#y", "https://user:pw@ccf.example"])
def test_api_root_must_be_an_origin(api_root: str) -> None:
    from m2msec.capif.ccf.config import CCFConfig
    from m2msec.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        CCFConfig(api_root=api_root)


async def test_a_refused_credential_is_answered_with_www_authenticate(world: World) -> None:
    missing = await world.call(None, "POST", INVOKERS, enrolment(new_key()))
    refused = await onboard_answer(world, world.credential()[:-3])
    assert missing.status == refused.status == 401
    assert (missing.header("www-authenticate") or "").startswith("Bearer")
    assert 'error="invalid_token"' in (refused.header("www-authenticate") or "")


def test_empty_certificate_files_are_a_configuration_error_outside_capif() -> None:
    from m2msec.errors import ConfigurationError
    from m2msec.pki import create_ca
    from m2msec.saef import CertificateCredentials

    ca = create_ca("attack-ca", permitted_dns=["server.example"])
    credentials = CertificateCredentials(b"", b"", ca.certificate_pem(), peer_entity="server.example")
    with pytest.raises(ConfigurationError):
        TLSContext.client(credentials.client_config("server.example"))


