"""Two CCF instances sharing one PostgreSQL store (a real server, tests/postgres.py): one CA and one token key, an
invoker onboarded at one instance served by the other, one credential good for one onboarding across both."""

from __future__ import annotations

import asyncio
from pathlib import Path

from m2msec.capif.ccf.config import CCFConfig
from m2msec.capif.ccf.server import RunningCCF, running_ccf
from m2msec.capif.client import CCFConnection
from m2msec.capif.tokens import issue_onboarding_credential
from m2msec.keys.secret import SecretKey

from .ccf_env import CCF_HOST, INVOKERS, enrolment, key_pem, new_key


async def _call(ccf: RunningCCF, method: str, path: str, body: object = None, *, cert: bytes | None = None,
                key: bytes | None = None, token: str | None = None) -> tuple[int, object]:
    async with await CCFConnection.open("127.0.0.1", ccf.port, ccf_host=CCF_HOST, ca_pem=ccf.ca_pem,
                                        certificate_pem=cert, private_key_pem=key) as conn:
        answer = await conn.request(method, path, json_body=body,
                                    headers={"authorization": f"Bearer {token}"} if token else None)
    return answer.status, answer.json()


async def test_two_instances_one_key_space(postgres_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(SecretKey.generate(32).reveal().hex())
    key_file.chmod(0o600)
    config = CCFConfig(listen="127.0.0.1:0", ccf_host=CCF_HOST, store=postgres_url, master_key_file=str(key_file))
    async with running_ccf(config, validate_responses=True) as one, \
            running_ccf(config, validate_responses=True) as two:
        assert one.ca_pem == two.ca_pem  # the CA was created once, in the store
        ccf = one.ccf

        def credential(jti: str) -> str:
            return issue_onboarding_credential(two.ccf.token_key, issuer=CCF_HOST, subject="t", lifetime=600,
                                               purpose="invoker", now=int(ccf.clock()), jti=jti)

        # a credential signed with instance two's key onboards at instance one: one token key
        invoker_key = new_key()
        status, body = await _call(one, "POST", INVOKERS, enrolment(invoker_key), token=credential("a"))
        assert status == 201 and isinstance(body, dict), body
        cert, key = body["onboardingInformation"]["apiInvokerCertificate"].encode(), key_pem(invoker_key)
        own = f"{INVOKERS}/{body['apiInvokerId']}"
        status, _ = await _call(two, "PUT", own, dict(body, apiInvokerInformation="moved"), cert=cert, key=key)
        assert status == 200

        # one credential, sent to both instances at once: one onboarding
        token = credential("race")
        results = await asyncio.gather(*(_call(c, "POST", INVOKERS, enrolment(new_key()), token=token)
                                         for c in (one, two, one, two)))
        assert sorted(s for s, _ in results) == [201, 401, 401, 401], results

        # offboarded at one instance, refused at the other
        status, _ = await _call(two, "DELETE", own, cert=cert, key=key)
        assert status == 204
        status, _ = await _call(one, "PUT", own, dict(body, apiInvokerInformation="back"), cert=cert, key=key)
        assert status == 403


async def test_an_outbox_event_is_relayed_by_one_instance(postgres_url: str, tmp_path: Path) -> None:
    """D155: an event the operator's process put in the outbox is handed to the notifier of exactly one instance."""
    from typing import Any

    from m2msec.capif.ccf.outbox import OutboxSink, relay_once

    key_file = tmp_path / "master.key"
    key_file.write_text(SecretKey.generate(32).reveal().hex())
    key_file.chmod(0o600)
    config = CCFConfig(listen="127.0.0.1:0", ccf_host=CCF_HOST, store=postgres_url, master_key_file=str(key_file))
    seen: list[tuple[str, str, dict[str, Any]]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def emit(self, event: str, detail: dict[str, Any]) -> None:
            seen.append((self.name, event, detail))

    async with running_ccf(config) as one, running_ccf(config) as two:
        one.ccf.events, two.ccf.events = Recorder("one"), Recorder("two")
        sink = OutboxSink(one.ccf.store, one.ccf.clock)
        for i in range(20):
            await sink.emit("API_INVOKER_OFFBOARDED", {"apiInvokerIds": [f"INV{i}"]})
        taken = await asyncio.gather(relay_once(one.ccf), relay_once(two.ccf), relay_once(one.ccf))
        for _ in range(50):  # and the instances' own relays, every second
            if len(seen) >= 20:
                break
            await asyncio.sleep(0.1)
    assert sum(taken) <= 20
    assert sorted(d["apiInvokerIds"][0] for _, _, d in seen) == sorted(f"INV{i}" for i in range(20))
