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

from m2msec.capif.ccf.admin import issue_credential
from m2msec.capif.ccf.config import CCFConfig
from m2msec.capif.ccf.server import RunningCCF, running_ccf
from m2msec.capif.client import Answer, CCFConnection
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
                   audience: str | None = None, now: int | None = None, purpose: str = "invoker") -> str:
        """An onboarding credential signed with the CCF's own key (what `m2msec ccf onboarding-credential` does)."""
        ccf = self.ccf.ccf
        return issue_credential(self.store, issuer=ccf.policy.issuer, subject=subject, lifetime=lifetime,
                                now=int(ccf.clock()) if now is None else now, jti=jti or f"jti-{next(self._ids)}",
                                audience=audience, purpose=purpose).token

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


# --------------------------------------------------------------- API providers and published service APIs (providers)

PUBLISHED = "/published-apis/v1"
DISCOVER = "/service-apis/v1/allServiceAPIs"


@dataclass
class Provider:
    """A registered API provider domain: its ID, one function of each role, and the CCF's answer."""

    domain: str
    amf: Identity
    apf: Identity
    aef: Identity
    answer: dict[str, Any] = field(default_factory=dict)
    #: the private key (PEM) of each function by apiProvFuncId, for re-keying and extra functions
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)


def provider_function(role: str, key: ec.EllipticCurvePrivateKey, info: str | None = None) -> dict[str, Any]:
    """An APIProviderFunctionDetails to register with ``key``."""
    func: dict[str, Any] = {"apiProvFuncRole": role, "regInfo": {"apiProvPubKey": csr_pem(key)}}
    if info is not None:
        func["apiProvFuncInfo"] = info
    return func


def identities(answer: dict[str, Any], keys: list[ec.EllipticCurvePrivateKey]) -> list[Identity]:
    """The Identities of the functions of an APIProviderEnrolmentDetails answer, in order, with ``keys``."""
    return [Identity(f["apiProvFuncId"], f["regInfo"]["apiProvCert"].encode(), key_pem(k), f)
            for f, k in zip(answer["apiProvFuncs"], keys, strict=True)]


async def register_provider(world: World, **extra: Any) -> Provider:
    """Register a new API provider domain with one AMF, one APF and one AEF (in that order)."""
    keys = [new_key(), new_key(), new_key()]
    body = {"regSec": "provider-secret", "apiProvDomInfo": "test provider", "suppFeat": "0",
            "apiProvFuncs": [provider_function(r, k, f"{r} function") for r, k in zip(("AMF", "APF", "AEF"), keys,
                                                                                   strict=True)],
            **extra}
    answer = await world.call(None, "POST", PROVIDERS, body,
                              headers={"authorization": f"Bearer {world.credential(purpose='provider')}"})
    assert answer.status == 201, answer.body
    result = answer.json()
    amf, apf, aef = identities(result, keys)
    return Provider(result["apiProvDomId"], amf, apf, aef, result,
                    {i.identity: i.private_key_pem for i in (amf, apf, aef)})


def interface_description(n: int | None = None, **extra: Any) -> dict[str, Any]:
    """An InterfaceDescription (a new host name for each ``n``)."""
    return {"fqdn": f"aef{'' if n is None else n}.test.example", "port": 8443, "apiPrefix": "/api",
            "securityMethods": ["PSK", "PKI", "OAUTH"], **extra}


def service_description(aef: Identity | str, iface: dict[str, Any], name: str = "test-api", **extra: Any
                        ) -> dict[str, Any]:
    """A ServiceAPIDescription of one API exposed at ``aef`` on ``iface``."""
    aef_id = aef if isinstance(aef, str) else aef.identity
    return {"apiName": name, "description": "a test API", "supportedFeatures": "0", "apiSuppFeats": "0F",
            "serviceAPICategory": "test",
            "aefProfiles": [{"aefId": aef_id, "protocol": "HTTP_1_1", "dataFormat": "JSON",
                             "securityMethods": ["PSK", "PKI", "OAUTH"],
                             "versions": [{"apiVersion": "v1", "resources": [
                                 {"resourceName": "items", "commType": "REQUEST_RESPONSE", "uri": "/items",
                                  "operations": ["GET"]}]}],
                             "interfaceDescriptions": [iface]}],
            **extra}


async def publish(world: World, apf: Identity, aef: Identity, interface: dict[str, Any] | None = None,
                  name: str | None = None, **extra: Any) -> dict[str, Any]:
    """Publish a service API of ``apf`` exposed at ``aef`` (on ``interface``, by default a new host name; named
    ``name``, by default a new ``test-api-<n>``: one AEF exposes one service API of a name, D146); the CCF's answer
    (a ServiceAPIDescription with its ``apiId``)."""
    iface = interface if interface is not None else interface_description(next(world._ids))
    name = name if name is not None else f"test-api-{next(world._ids)}"
    answer = await world.call(apf, "POST", f"{PUBLISHED}/{apf.identity}/service-apis",
                              service_description(aef, iface, name, **extra))
    assert answer.status == 201, answer.body
    body: dict[str, Any] = answer.json()
    return body


def discover_path(invoker_id: str | None, **filters: str) -> str:
    """The Discover Service URL path for ``invoker_id`` (None: no api-invoker-id) with query ``filters``
    (``api_name="x"`` becomes ``api-name=x``)."""
    import urllib.parse

    query = {} if invoker_id is None else {"api-invoker-id": invoker_id}
    query.update({k.replace("_", "-"): v for k, v in filters.items()})
    return f"{DISCOVER}?{urllib.parse.urlencode(query)}" if query else DISCOVER


def expected_aefpsk(master: bytes, session_id: bytes, p0: str) -> bytes:
    """TS 33.220 B.2 / TS 33.122 A.1 written here from the formula, independently of m2msec.capif.kdf:
    HMAC-SHA-256(master secret, 0x7A || P0 || L0 || P1 || L1), P1 the session ID, Li two octets."""
    import hashlib
    import hmac

    p = p0.encode()
    s = b"\x7a" + p + len(p).to_bytes(2, "big") + session_id + len(session_id).to_bytes(2, "big")
    return hmac.new(master, s, hashlib.sha256).digest()


def security(*entries: dict[str, Any]) -> dict[str, Any]:
    """A ServiceSecurity body with ``entries`` as its securityInfo."""
    return {"securityInfo": list(entries), "notificationDestination": NOTIFY, "supportedFeatures": "0"}
