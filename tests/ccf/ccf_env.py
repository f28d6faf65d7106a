"""A CCF on loopback for the tests (real TLS, a real SQLite store, every answer checked against the official
schemas: ``validate_responses``), and the clients of its users: invokers onboarded with a CSR made here, API
provider functions.

Import what you need: ``from .ccf_env import World, world, onboard, ...`` and use ``world`` as a fixture (it is
re-exported by each test module that imports it).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.capif.ccf.config import CCFConfig
from m2msec.capif.ccf.server import RunningCCF, running_ccf
from m2msec.capif.client import Answer, CCFConnection
from m2msec.capif.tokens import issue_onboarding_credential
from m2msec.store import KeyStore, open_store

CCF_HOST = "ccf.test.example"
INVOKERS = "/api-invoker-management/v1/onboardedInvokers"
PROVIDERS = "/api-provider-management/v1/registrations"
NOTIFY = "https://invoker.test.example:9999/notify"


@dataclass
class Identity:
    """A CAPIF identity the CCF certified: its id, certificate and key (PEM), and what the CCF answered."""

    identity: str
    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)
    answer: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    ccf: RunningCCF
    store: KeyStore
    tmp: Path
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def ca_pem(self) -> bytes:
        return self.ccf.ca_pem

    def credential(self, subject: str = "tester", *, lifetime: int = 600, jti: str | None = None,
                   audience: str | None = None, now: int | None = None) -> str:
        """An onboarding credential signed with the CCF's own key (what `m2msec ccf onboarding-credential` does)."""
        ccf = self.ccf.ccf
        return issue_onboarding_credential(ccf.token_key, issuer=ccf.policy.issuer, subject=subject,
                                           lifetime=lifetime, now=int(ccf.clock()) if now is None else now,
                                           jti=jti or f"jti-{next(self._ids)}", audience=audience)

    async def connect(self, who: Identity | None = None) -> CCFConnection:
        return await CCFConnection.open(
            "127.0.0.1", self.ccf.port, ccf_host=CCF_HOST, ca_pem=self.ca_pem,
            certificate_pem=None if who is None else who.certificate_pem,
            private_key_pem=None if who is None else who.private_key_pem)

    async def call(self, who: Identity | None, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        """One request on a new connection as ``who`` (None: no client certificate)."""
        async with await self.connect(who) as conn:
            return await conn.request(method, path, json_body=body, **kw)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key: ec.EllipticCurvePrivateKey, cn: str = "requested-name") -> str:
    """A PKCS#10 request over ``key`` (the CCF takes only the key from it)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def enrolment(key: ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    """An APIInvokerEnrolmentDetails for onboarding with ``key``."""
    return {"notificationDestination": NOTIFY, "onboardingInformation": {"apiInvokerPublicKey": csr_pem(key)},
            "apiInvokerInformation": "test invoker", "supportedFeatures": "0", **extra}


async def onboard(world: World, **extra: Any) -> Identity:
    """Onboard a new invoker; its certificate comes from the CCF's answer."""
    key = new_key()
    answer = await world.call(None, "POST", INVOKERS, enrolment(key, **extra),
                              headers={"authorization": f"Bearer {world.credential()}"})
    assert answer.status == 201, answer.body
    body = answer.json()
    return Identity(body["apiInvokerId"], body["onboardingInformation"]["apiInvokerCertificate"].encode(),
                    key_pem(key), body)


async def start_world(tmp: Path) -> AsyncIterator[World]:
    store = open_store(f"sqlite://{tmp}/ccf.db")
    config = CCFConfig(listen="127.0.0.1:0", ccf_host=CCF_HOST)
    try:
        async with running_ccf(config, store=store, validate_responses=True) as running:
            yield World(running, store, tmp)
    finally:
        store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in start_world(tmp_path):
        yield w
