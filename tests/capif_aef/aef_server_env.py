"""The AEF front next to a real CCF (``world``), a real backend (a small asyncio HTTP server that records what it
gets) and invokers of each method, for tests/capif_aef/test_aef_server*.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from ccf.ccf_env import CCF_HOST, Identity, Provider, World, onboard, publish, register_provider, security
from m2msec import http1
from m2msec.capif.aef.authorize import ServedAPI
from m2msec.capif.aef.config import AEFConfig
from m2msec.capif.aef.events import EVENTS_LISTEN
from m2msec.capif.aef.server import RunningAEF, running_aef_front
from m2msec.errors import HandshakeFailed, HandshakeTimeout
from m2msec.idb import NOT_ONEM2M
from m2msec.keys.secret import SecretKey
from m2msec.pki import create_ca, issue
from m2msec.pki.profile import CertificateFlavour
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, parse_profiles
from m2msec.transport.tls import open_connection

from .aef_env import SECURITY, interface, p0_of, psk_invoker

#: the AEF's server name (its certificate, from a CA of the operator's, D168)
AEF_HOST = "aef.test.example"
#: what a refused handshake or a dropped connection raises at the invoker
REFUSED = (HandshakeFailed, HandshakeTimeout, ConnectionError)
#: more APIs for :func:`running_front` to serve: given the provider, the front's interface and P0, publish and return
MoreAPIs = Callable[[Provider, dict[str, Any], str], Awaitable[Sequence[ServedAPI]]]


class Backend:
    """The API provider's HTTP service: answers 200 with a JSON echo of what it saw; records each request."""

    def __init__(self) -> None:
        self.seen: list[http1.Message] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            msg = await http1.read_message(conn, reader)
            if msg is None:
                return
            self.seen.append(msg)
            body = f'{{"invoker": "{msg.header("x-capif-invoker-id")}", "path": "{msg.target}"}}'.encode()
            await http1.send_message(conn, writer, http1.Message(
                headers=[("content-type", "application/json"), ("x-backend", "yes")], body=body, status=200))
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Front:
    world: World
    provider: Provider
    running: RunningAEF
    backend: Backend
    api: dict[str, Any]
    iface: dict[str, Any]
    p0: str
    server_ca_pem: bytes

    @property
    def id(self) -> str:
        return self.provider.aef.identity

    @property
    def port(self) -> int:
        return self.running.port


def server_credentials() -> tuple[bytes, bytes, bytes]:
    """(chain, key, CA) of the AEF's server certificate for AEF_HOST, from a CA made here (D168)."""
    ca = create_ca("AEF operator CA", permitted_dns=["test.example"])
    cert = issue(ca, CertificateFlavour.FQDN, AEF_HOST)
    return cert.certificate_pem(), cert.private_key_pem(), ca.certificate_pem()


@contextlib.asynccontextmanager
async def running_front(world: World, *, events: tuple[str, int] | None = EVENTS_LISTEN,
                        more_apis: MoreAPIs | None = None, **kw: Any) -> AsyncIterator[Front]:
    """A registered provider whose AEF front listens on 127.0.0.1 (port chosen by the system) with one published API
    under /api (then those of ``more_apis``, in its order), forwarding to a recording backend."""
    provider = await register_provider(world)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = int(sock.getsockname()[1])
    iface, p0 = interface(port), p0_of(port)
    api = await publish(world, provider.apf, provider.aef, interface=iface)
    backend = Backend()
    await backend.start()
    chain, key, server_ca = server_credentials()
    more = tuple(await more_apis(provider, iface, p0)) if more_apis is not None else ()
    config = AEFConfig(
        listen=("127.0.0.1", port), backend=("127.0.0.1", backend.port), aef_id=provider.aef.identity,
        ccf_address=("127.0.0.1", world.ccf.port), ccf_host=CCF_HOST, issuer=world.ccf.ccf.policy.issuer,
        ccf_ca_pem=world.ca_pem, certificate_pem=provider.aef.certificate_pem,
        private_key_pem=provider.aef.private_key_pem, server_certificate_pem=chain, server_key_pem=key,
        apis=(ServedAPI(api["apiName"], "/api", p0, api["apiId"]), *more), **kw)
    try:
        async with running_aef_front(config, sock=sock, events=events) as running:
            yield Front(world, provider, running, backend, api, iface, p0, server_ca)
    finally:
        await backend.stop()
        sock.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def call(port: int, context: TLSContext, path: str = "/api/items", *, headers: tuple[tuple[str, str], ...] = (),
               method: str = "GET", body: bytes = b"") -> Reply:
    """One HTTP request to the AEF front over our engine's TLS with ``context``."""
    reader, writer, _ = await open_connection("127.0.0.1", port, context, handshake_timeout=10,
                                              peer_entity=NOT_ONEM2M)
    try:
        msg = http1.Message(headers=[("host", AEF_HOST), *headers], body=body, method=method, target=path)
        answer = await asyncio.wait_for(http1.request(reader, writer, msg), 10)
        return Reply(answer.status, {k.lower(): v for k, v in answer.headers}, answer.body)
    finally:
        writer.close()


def psk_context(invoker_id: str, key: bytes, profiles: str = "psk,dhe-psk,ecdhe-psk") -> TLSContext:
    return TLSContext.client(ClientConfig(invoker_id, SecretKey(key), profiles=parse_profiles(profiles),
                                          peer_entity=NOT_ONEM2M))


def pki_context(who: Identity, server_ca: bytes) -> TLSContext:
    return TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=AEF_HOST, certificate=
                                          CertificateConfig(who.certificate_pem, who.private_key_pem, server_ca)))


def server_only_context(server_ca: bytes) -> TLSContext:
    return TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=AEF_HOST,
                                          server_authentication_only=True,
                                          certificate=CertificateConfig(b"", b"", server_ca)))


async def invoker_with(world: World, iface: dict[str, Any], method: str) -> Identity:
    """A new onboarded invoker whose security context for ``iface`` selects ``method``."""
    who = await onboard(world)
    answer = await world.call(who, "PUT", f"{SECURITY}/{who.identity}",
                              security({"interfaceDetails": iface, "prefSecurityMethods": [method]}))
    assert answer.status == 201, answer.body
    assert answer.json()["securityInfo"][0]["selSecurityMethod"] == method
    return who


async def access_token(world: World, who: Identity) -> str:
    answer = await world.call(who, "POST", f"/capif-security/v1/securities/{who.identity}/token",
                              form={"grant_type": "client_credentials", "client_id": who.identity})
    assert answer.status == 200, answer.body
    token: str = answer.json()["access_token"]
    return token


# ------------------------------------------------------------ kept connections and the front's revocation receiver

class Kept:
    """One TLS connection to the front kept open across requests (HTTP/1.1 keep-alive)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: TLSContext) -> Kept:
        reader, writer, _ = await open_connection("127.0.0.1", port, context, handshake_timeout=10,
                                                  peer_entity=NOT_ONEM2M)
        return cls(reader, writer)

    async def get(self, path: str = "/api/items", token: str | None = None) -> http1.Message:
        conn = h11.Connection(h11.CLIENT)
        headers = [("host", AEF_HOST)] + ([("authorization", f"Bearer {token}")] if token else [])
        await http1.send_message(conn, self.writer, http1.Message(headers=headers, method="GET", target=path))
        answer = await asyncio.wait_for(http1.read_message(conn, self.reader), 10)
        assert answer is not None
        return answer

    async def closed_by_the_front(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except TimeoutError:  # still open (an OSError too: caught first, else a timeout would count as closed)
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.writer.close()


async def notified(aef: Front, count: int) -> None:
    """Wait until the front's receiver acted on ``count`` notifications (the CCF delivers asynchronously)."""
    events = aef.running.events
    assert events is not None
    async with asyncio.timeout(10):
        while events.received < count:
            await asyncio.sleep(0.02)


def ended(answer: http1.Message) -> bool:
    body = json.loads(answer.body)
    return answer.status == 403 and body["cause"] == "API_INVOKER_NOT_AUTHORIZED" and \
        (answer.header("connection") or "").lower() == "close"


__all__ = ["AEF_HOST", "REFUSED", "Backend", "Front", "Kept", "MoreAPIs", "access_token", "call", "ended",
           "invoker_with", "notified", "pki_context", "psk_context", "psk_invoker", "running_front",
           "server_only_context"]
