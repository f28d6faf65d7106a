"""Helpers shared by the interop tests: third-party peers as asyncio subprocesses, and our own peers.

Every third-party tool runs with its stdin a pipe that stays open (``openssl s_client``/``s_server``
quit on stdin EOF), its stdout and stderr collected in the background, strict timeouts, and is killed
when the ``async with`` block ends. Servers listen on 127.0.0.1 only (``gnutls-serv`` has no bind
option and listens on all addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_ID, LIGHT1_KEY
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable
from m2msec.saef import EXPORTER_CONNECTION_LABEL
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import DHE_PSK, ECDHE_PSK, ONEM2M_PSK, PSK, RSA_PSK, TLS13_PSK, CipherProfile
from m2msec.transport.tls import start_stream_server

OPENSSL = shutil.which("openssl")
GNUTLS_CLI = shutil.which("gnutls-cli")
GNUTLS_SERV = shutil.which("gnutls-serv")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not on PATH")
needs_gnutls = pytest.mark.skipif(
    GNUTLS_CLI is None or GNUTLS_SERV is None, reason="gnutls-cli/gnutls-serv are not on PATH"
)

#: seconds any single wait on a peer may take
TIMEOUT = 10.0
#: TS-0003 §10.3.1 export: 48 bytes of EXPORTER-oneM2M-Connection
EXPORT_LABEL, EXPORT_LEN = EXPORTER_CONNECTION_LABEL, 48

_GNUTLS_TLS12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL"
_GNUTLS_GCM = "-CIPHER-ALL:+AES-128-GCM"
_GNUTLS_CBC_SHA256 = "-CIPHER-ALL:+AES-128-CBC:-MAC-ALL:+SHA256"


@dataclass(frozen=True)
class Family:
    """One key-exchange family: our profile, the suite both sides must settle on, gnutls's priority."""

    profile: CipherProfile
    cipher: str
    gnutls_priority: str

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def openssl_args(self) -> tuple[str, ...]:
        if self.tls13:
            return ("-tls1_3", "-ciphersuites", self.cipher)
        return ("-no_tls1_3", "-cipher", self.cipher)

    @property
    def tls13(self) -> bool:
        return not self.profile.tls12_ciphers

    @property
    def gnutls_cli_crashes(self) -> bool:
        """docs/tls-stack.md gotcha 8: gnutls-cli 3.7.9 segfaults after DHE-PSK/ECDHE-PSK TLS 1.2 handshakes."""
        return self.profile in (DHE_PSK, ECDHE_PSK)


FAMILIES = (
    Family(ONEM2M_PSK, "PSK-AES128-CBC-SHA256", f"{_GNUTLS_TLS12}:+PSK:{_GNUTLS_CBC_SHA256}"),
    Family(PSK, "PSK-AES128-GCM-SHA256", f"{_GNUTLS_TLS12}:+PSK:{_GNUTLS_GCM}"),
    Family(DHE_PSK, "DHE-PSK-AES128-GCM-SHA256", f"{_GNUTLS_TLS12}:+DHE-PSK:{_GNUTLS_GCM}"),
    Family(RSA_PSK, "RSA-PSK-AES128-GCM-SHA256", f"{_GNUTLS_TLS12}:+RSA-PSK:{_GNUTLS_GCM}"),
    Family(ECDHE_PSK, "ECDHE-PSK-AES128-CBC-SHA256", f"{_GNUTLS_TLS12}:+ECDHE-PSK:{_GNUTLS_CBC_SHA256}"),
    Family(TLS13_PSK, "TLS_AES_128_GCM_SHA256",
           f"NORMAL:-VERS-ALL:+VERS-TLS1.3:+PSK:+DHE-PSK:+ECDHE-PSK:{_GNUTLS_GCM}"),
)
ONEM2M, TLS13 = FAMILIES[0], FAMILIES[-1]
family_params = pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# third-party peers


class Peer:
    """A running third-party tool; ``output`` is its stdout and stderr so far."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc, self.name = proc, name
        self.output = b""
        self._grew = asyncio.Event()
        self._pump = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output += chunk
            self._grew.set()
        self._grew.set()

    def _fail(self, why: str) -> AssertionError:
        return AssertionError(f"{self.name} {why}; its output:\n{self.output.decode(errors='replace')}")

    async def expect(self, pattern: bytes, timeout: float = TIMEOUT) -> re.Match[bytes]:
        """Wait until the output matches ``pattern`` (a bytes regex)."""
        regex = re.compile(pattern)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._grew.clear()
                    if (match := regex.search(self.output)) is not None:
                        return match
                    if self._pump.done():
                        raise self._fail(f"exited (rc {self.proc.returncode}) without printing {pattern!r}")
                    await self._grew.wait()
        except TimeoutError:
            raise self._fail(f"printed no {pattern!r} within {timeout} s") from None

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the tool to exit on its own; returns its exit status (all output collected)."""
        try:
            async with asyncio.timeout(timeout):
                rc = await self.proc.wait()
                await self._pump
        except TimeoutError:
            raise self._fail(f"did not exit within {timeout} s") from None
        return rc

    async def stop(self) -> None:
        self.close_stdin()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        async with asyncio.timeout(TIMEOUT):
            await self.proc.wait()
            await self._pump


@contextlib.asynccontextmanager
async def run_peer(*argv: str | bytes | Path) -> AsyncIterator[Peer]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    peer = Peer(proc, " ".join(Path(str(a)).name for a in argv[:2]))
    try:
        yield peer
    finally:
        await peer.stop()


def s_client(port: int, *args: str | bytes, identity: str | bytes = LIGHT1_ID, key: str = LIGHT1_KEY
             ) -> contextlib.AbstractAsyncContextManager[Peer]:
    """``openssl s_client`` to 127.0.0.1:port with a PSK (``identity`` may be raw bytes)."""
    assert OPENSSL is not None
    return run_peer(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-psk", key, "-psk_identity", identity,
                    *args)


@dataclass(frozen=True)
class PeerFiles:
    """Files third-party servers read: RSA certificate/key, DH parameters, gnutls PSK file (id:hexkey)."""

    cert: Path
    key: Path
    dhparam: Path
    pskpasswd: Path


@pytest.fixture
async def peer_files(tmp_path: Path, rsa_cert: tuple[bytes, bytes]) -> PeerFiles:
    cert_pem, key_pem = rsa_cert
    files = PeerFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "dh.pem", tmp_path / "psk.txt")
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.pskpasswd.write_text(f"{LIGHT1_ID}:{LIGHT1_KEY}\n")
    if OPENSSL is not None:
        async with run_peer(OPENSSL, "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048",
                            "-out", files.dhparam) as genpkey:
            assert await genpkey.wait() == 0, genpkey.output
    return files


@contextlib.asynccontextmanager
async def listening_peer(argv: Callable[[int], tuple[str | Path, ...]], ready: bytes
                         ) -> AsyncIterator[tuple[Peer, int]]:
    """Start a server tool on a free port; yields (peer, port) once it prints ``ready``. Another process may
    take the port between ``free_port()`` and the tool's bind: a tool that reports "address in use" is
    started again on another port (three attempts)."""
    for attempt in range(3):
        port = free_port()
        async with run_peer(*argv(port)) as peer:
            try:
                await peer.expect(ready)
            except AssertionError:
                if b"in use" not in peer.output or attempt == 2:
                    raise
                continue
            yield peer, port
            return


def s_server(family: Family, files: PeerFiles) -> contextlib.AbstractAsyncContextManager[tuple[Peer, int]]:
    """``openssl s_server`` for one family, printing the 48-byte export."""
    assert OPENSSL is not None
    auth = ("-cert", files.cert, "-key", files.key) if family.profile.needs_certificate else ("-nocert",)
    dh = ("-dhparam", files.dhparam) if family.profile.needs_dh_params else ()
    return listening_peer(
        lambda port: (OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", *auth, *dh, "-psk", LIGHT1_KEY,
                      "-psk_identity", LIGHT1_ID, "-psk_hint", HOME_GATEWAY_CSE_ID, *family.openssl_args,
                      "-keymatexport", EXPORT_LABEL, "-keymatexportlen", str(EXPORT_LEN)),
        rb"ACCEPT",
    )


def gnutls_serv(family: Family, files: PeerFiles) -> contextlib.AbstractAsyncContextManager[tuple[Peer, int]]:
    """``gnutls-serv --echo`` for one family."""
    assert GNUTLS_SERV is not None
    cert = ("--x509certfile", files.cert, "--x509keyfile", files.key) if family.profile.needs_certificate else ()
    return listening_peer(
        lambda port: (GNUTLS_SERV, "--echo", "-p", str(port), "--pskpasswd", files.pskpasswd, *cert,
                      "--priority", family.gnutls_priority),
        rb"listening on IPv4 .*done",
    )


def gnutls_cli(port: int, family: Family, *args: str) -> contextlib.AbstractAsyncContextManager[Peer]:
    assert GNUTLS_CLI is not None
    return run_peer(GNUTLS_CLI, "--insecure", "-p", str(port), "--pskusername", LIGHT1_ID, "--pskkey", LIGHT1_KEY,
                    "--priority", family.gnutls_priority, *args, "127.0.0.1")


# --------------------------------------------------------------------------------------------------
# our peers


def server_context(table: MemoryPSKTable, family: Family, rsa_cert: tuple[bytes, bytes], *,
                   reveal: bool = False) -> TLSContext:
    certificate = CertificateConfig(*rsa_cert) if family.profile.needs_certificate else None
    return TLSContext.server(ServerConfig(psk_lookup=table.lookup, profiles=(family.profile,),
                                          identity_hint=HOME_GATEWAY_CSE_ID, certificate=certificate,
                                          reveal_unknown_psk_identity=reveal))


def client_context(family: Family) -> TLSContext:
    return TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(family.profile,),
                                          peer_entity=HOME_GATEWAY_CSE_ID))


@dataclass(frozen=True)
class Accepted:
    session: SessionInfo
    export: bytes  # EXPORT_LABEL, EXPORT_LEN bytes, no context


class EchoServer:
    """Our engine's stream server: records each authenticated connection, then echoes its bytes."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted: asyncio.Queue[Accepted] = asyncio.Queue()
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        conn = writer.get_extra_info("tls_connection")
        self.accepted.put_nowait(
            Accepted(writer.get_extra_info("m2msec_session"), conn.export_keying_material(EXPORT_LABEL, EXPORT_LEN)
                     .reveal())
        )
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    async def next_accepted(self) -> Accepted:
        try:
            return await asyncio.wait_for(self.accepted.get(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"our server accepted no connection within {TIMEOUT} s") from None


@contextlib.asynccontextmanager
async def echo_server(context: TLSContext) -> AsyncIterator[EchoServer]:
    echo = EchoServer()
    server = await start_stream_server(echo.handle, "127.0.0.1", 0, context, handshake_timeout=5)
    echo.port = int(server.sockets[0].getsockname()[1])
    try:
        yield echo
    finally:
        server.close()
        await server.wait_closed()
        if echo.handlers:  # peers are gone by now: their handlers end at EOF
            _, pending = await asyncio.wait(list(echo.handlers), timeout=TIMEOUT)
            for task in pending:
                task.cancel()


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-cased, in order, duplicates kept

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@contextlib.asynccontextmanager
async def http_backend() -> AsyncIterator[tuple[int, list[Recorded]]]:
    """A minimal CSE stand-in: records each request and answers 200 with X-M2M-RSC: 2000."""
    requests: list[Recorded] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines if ln)]
            body_length = int(dict(headers).get("content-length", "0"))
            await reader.readexactly(body_length)
            requests.append(Recorded(method, target, headers))
            writer.write(b"HTTP/1.1 200 OK\r\nX-M2M-RSC: 2000\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), requests
    finally:
        server.close()
        await server.wait_closed()
