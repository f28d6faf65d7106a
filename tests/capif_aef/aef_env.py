"""An AEF's TLS-PSK listener next to a real CCF (``world`` from tests/ccf/ccf_env.py), for the tests: the provider
registered, an API published on the listener's interface, invokers with a PSK security context and the AEFPSK
recomputed here from the formula (never by m2msec.capif.kdf), and a TCP relay that can take the CCF away."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ccf.ccf_env import (
    CCF_HOST,
    Identity,
    Provider,
    World,
    expected_aefpsk,
    onboard,
    publish,
    register_provider,
    security,
)
from m2msec.capif.aef.ccf_link import CCFLink
from m2msec.capif.aef.psk import AEFPSKResolver
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import CipherProfile, parse_profiles
from m2msec.transport.tls import open_connection, start_stream_server

SECURITY = "/capif-security/v1/trustedInvokers"
#: the profiles of the AEF listener (RFC 4279 §2, §3 and RFC 5489)
LISTENER_PROFILES = "psk,dhe-psk,ecdhe-psk"


def interface(port: int, prefix: str = "/api") -> dict[str, Any]:
    """The InterfaceDescription of a listener on 127.0.0.1:``port``."""
    return {"ipv4Addr": "127.0.0.1", "port": port, "apiPrefix": prefix, "securityMethods": ["PSK", "PKI", "OAUTH"]}


def p0_of(port: int, prefix: str = "/api") -> str:
    """P0 of :func:`interface` written by hand (D115: ``<host>:<port><apiPrefix>``)."""
    return f"127.0.0.1:{port}{prefix}"


@dataclass
class Invoker:
    identity: Identity
    #: the AEFPSK from the formula over the PUT's session (what the invoker uses)
    key: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return self.identity.identity


async def psk_invoker(world: World, iface: dict[str, Any], p0: str, prefer: tuple[str, ...] = ("PSK",)) -> Invoker:
    """A new invoker that onboards and PUTs a security context for ``iface`` preferring ``prefer``, on a connection
    it keeps; its AEFPSK is recomputed from that session's master secret and ID, and checked against what the
    client library derives."""
    who = await onboard(world)
    async with await world.connect(who) as conn:
        answer = await conn.request("PUT", f"{SECURITY}/{who.identity}", json_body=security(
            {"interfaceDetails": iface, "prefSecurityMethods": list(prefer)}))
        assert answer.status == 201, answer.body
        assert answer.json()["securityInfo"][0]["selSecurityMethod"] == prefer[0]
        tls = conn.writer.get_extra_info("tls_connection")
        key = expected_aefpsk(tls.master_secret().reveal(), conn.session.session_id, p0)
        assert conn.aefpsk(p0).reveal() == key
    return Invoker(who, key)


class Listener:
    """The AEF's TLS-PSK listener: an echo service that answers ``<psk_identity>:<line>``."""

    def __init__(self, profiles: str = LISTENER_PROFILES, certificate: tuple[bytes, bytes] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.iface = interface(self.port)
        self.p0 = p0_of(self.port)
        self.context = TLSContext.server(ServerConfig(
            None, profiles=parse_profiles(profiles), async_psk=True,
            certificate=None if certificate is None else CertificateConfig(*certificate)))
        self.server: asyncio.Server | None = None

    async def start(self, resolver: AEFPSKResolver) -> None:
        self.server = await start_stream_server(self._echo, None, None, self.context, handshake_timeout=5,
                                                psk_resolver=resolver, sock=self.sock)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = writer.get_extra_info("m2msec_session")
        try:
            line = await reader.readline()
            writer.write(f"{session.psk_identity}:".encode() + line)
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.sock.close()


async def say_hello(port: int, invoker_id: str, key: bytes, profile: CipherProfile | None = None,
                    *, timeout: float = 10) -> str:
    """Our engine's client (the invoker): handshake with (``invoker_id``, ``key``), send a line, return the answer
    and the cipher. Raises HandshakeFailed when the AEF refuses."""
    profiles = (profile,) if profile is not None else parse_profiles(LISTENER_PROFILES)
    context = TLSContext.client(ClientConfig(invoker_id, SecretKey(key), profiles=profiles, peer_entity="the-aef"))
    reader, writer, session = await open_connection("127.0.0.1", port, context, handshake_timeout=timeout)
    try:
        writer.write(b"hello\n")
        await writer.drain()
        answer = (await asyncio.wait_for(reader.readline(), timeout)).decode()
        return f"{answer.strip()} {session.cipher}"
    finally:
        writer.close()


class Relay:
    """A TCP relay to the CCF that the test can take down (refusing) or make silent (accepting, never answering)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.silent = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._pipes.add(writer)
        if self.silent:
            return  # held open until down()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pipes.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def down(self) -> None:
        """Stop listening (connections refused) and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._pipes:
            w.close()
        self._pipes.clear()

    async def up(self) -> None:
        await self.start()


@dataclass
class AEF:
    world: World
    provider: Provider
    listener: Listener
    link: CCFLink
    resolver: AEFPSKResolver
    api: dict[str, Any]

    @property
    def id(self) -> str:
        return self.provider.aef.identity


def link_for(world: World, aef: Identity, port: int | None = None, **kw: Any) -> CCFLink:
    """The AEF's CCFLink (its certificate), to the CCF or to ``port`` (a relay)."""
    return CCFLink("127.0.0.1", port if port is not None else world.ccf.port, ccf_host=CCF_HOST, ca_pem=world.ca_pem,
                   certificate_pem=aef.certificate_pem, private_key_pem=aef.private_key_pem, **kw)


def hold_lookups(aef: AEF, *, only: str | None = None, asked: list[str] | None = None) -> asyncio.Event:
    """Make the resolver's look-ups at the CCF (of ``only`` that invoker, by default of all) wait until the returned
    event is set, then go to the real link; each invoker ID looked up is appended to ``asked``."""
    gate = asyncio.Event()
    real = aef.link.trusted_invoker

    async def held(invoker_id: str) -> Any:
        if asked is not None:
            asked.append(invoker_id)
        if only is None or invoker_id == only:
            await gate.wait()
        return await real(invoker_id)

    aef.resolver.link = type("Held", (), {"trusted_invoker": staticmethod(held)})()
    return gate


@contextlib.asynccontextmanager
async def running_aef(world: World, *, profiles: str = LISTENER_PROFILES,
                      certificate: tuple[bytes, bytes] | None = None, port: int | None = None,
                      **link_kw: Any) -> AsyncIterator[AEF]:
    """A registered provider whose AEF listens with the async PSK path, one API published on its interface."""
    provider = await register_provider(world)
    listener = Listener(profiles, certificate)
    api = await publish(world, provider.apf, provider.aef, interface=listener.iface)
    link = link_for(world, provider.aef, port, **link_kw)
    resolver = AEFPSKResolver(link, listener.p0)
    await listener.start(resolver)
    try:
        yield AEF(world, provider, listener, link, resolver, api)
    finally:
        await listener.stop()
        await link.close()


# ------------------------------------------------------------------------------- openssl s_client as an invoker

OPENSSL = shutil.which("openssl")
#: one TLS 1.2 suite of each RFC 4279 / RFC 5489 family the listener offers
PSK_SUITES = ("PSK-AES128-GCM-SHA256", "DHE-PSK-AES128-GCM-SHA256", "ECDHE-PSK-AES128-CBC-SHA256")


def openssl_has_psk() -> bool:
    if OPENSSL is None:
        return False
    try:
        listed = subprocess.run([OPENSSL, "ciphers", "-v", ":".join(PSK_SUITES)], capture_output=True, timeout=10)
        helped = subprocess.run([OPENSSL, "s_client", "-help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and b"-psk_identity" in helped.stdout + helped.stderr


needs_openssl_psk = pytest.mark.skipif(not openssl_has_psk(), reason="openssl with TLS 1.2 PSK suites is not available")


async def openssl_s_client(port: int, sent: bytes, *options: str) -> tuple[int, bytes]:
    """``openssl s_client -connect 127.0.0.1:port -tls1_2 -quiet <options>``: send ``sent``, return its exit status
    and everything it printed (stdout and stderr) once it ends."""
    assert OPENSSL is not None
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-quiet", *options,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(sent)
        await proc.stdin.drain()
        output = await asyncio.wait_for(proc.stdout.read(), 20)
        return await asyncio.wait_for(proc.wait(), 10), output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
