"""The gateways tlsfuzzer runs against (docs/security.md section 1), on loopback with a stand-in CSE.

Three configurations of the same engine (m2msec.tls) and asyncio adapter (m2msec.transport) behind the HTTP gateway:

- ``psk``: the PSK profiles a gateway offers (``tls13``, ``onem2m``, ``psk``, ``ecdhe-psk``, ``dhe-psk``) with one
  PSK identity, as ``m2msec gateway --profiles tls13,onem2m,psk,ecdhe-psk,dhe-psk`` would serve.
- ``ecdsa``: the certificate profile ``ecdhe-ecdsa`` (TS-0003 §10.2.3) plus ``tls13``, a P-256 server certificate
  from m2msec.pki; a fuzzing configuration: the client certificate is optional (tlsfuzzer sends none).
- ``rsa``: a fuzzing-only profile with RSA key exchange and AES suites and an RSA-2048 server certificate, for the
  TLS 1.2 scripts that cannot be switched off RSA key exchange, plus ``tls13`` for the TLS 1.3 scripts that offer
  RSA signature schemes only. Not a profile m2msec offers.

Run standalone (``python scripts/tlsfuzz_servers.py``) it prints ``NAME PORT`` lines and serves until killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.pki import CertificateFlavour, create_ca, issue
from m2msec.tls.config import CertificateConfig, ServerConfig
from m2msec.tls.profiles import DHE_PSK, ECDHE_ECDSA, ECDHE_PSK, ONEM2M_PSK, PSK, TLS13_PSK, CipherProfile

#: the PSK tlsfuzzer's TLS 1.3 PSK scripts use (--psk/--psk-iden); a test key, never a deployed one
FUZZ_PSK_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
FUZZ_PSK_IDENTITY = "client1"
#: fuzzing-only RSA key exchange profile (server-only RSA certificate); m2msec offers no such profile
#: @SECLEVEL=0: tlsfuzzer's RSA ClientHellos carry no signature_algorithms, so RFC 5246 §7.4.1.4.1 implies SHA-1,
#: which OpenSSL 3 refuses at level 1 and above (handshake_failure before any probe runs)
FUZZ_RSA = CipherProfile("fuzz-rsa", "AES128-GCM-SHA256:AES128-SHA256:AES128-SHA:AES256-SHA:@SECLEVEL=0",
                         needs_certificate=True, description="fuzzing only: RSA key exchange")
#: fuzzing-only server-certificate ECDHE-ECDSA profile: the TS-0003 suites (plus the SHA-1 CBC one some scripts
#: pick) without a CertificateRequest, since tlsfuzzer's scripts expect ServerHelloDone after ServerKeyExchange
FUZZ_ECDSA = dataclasses.replace(ECDHE_ECDSA, name="fuzz-ecdsa", mutual_certificates=False,
                                 tls12_ciphers=ECDHE_ECDSA.tls12_ciphers + ":ECDHE-ECDSA-AES128-SHA")
#: seconds the gateway waits for a handshake; tlsfuzzer's probes are fast, a stuck one must not block the run
HANDSHAKE_TIMEOUT = 10.0


def _rsa_certificate() -> CertificateConfig:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsfuzz.localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("tlsfuzz.localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return CertificateConfig(chain_pem=pem, private_key_pem=key_pem, trust_anchors_pem=pem)


def _ecdsa_certificate() -> CertificateConfig:
    ca = create_ca("tlsfuzz CA", permitted_dns=["localhost"])
    leaf = issue(ca, CertificateFlavour.FQDN, "tlsfuzz.localhost")
    assert leaf.private_key is not None
    key_pem = leaf.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
    return CertificateConfig(chain_pem=leaf.certificate_pem(), private_key_pem=key_pem,
                             trust_anchors_pem=ca.certificate_pem())


class FuzzGatewayConfig(GatewayConfig):
    """Fuzzing only: a handshake that authenticated the server alone completes (the engine otherwise closes it:
    tlsfuzzer has no PSK in its TLS 1.2 scripts and sends no client certificate); the gateway then binds the SA
    to nothing (D215) and refuses each request with 403 / RSC 4106."""

    def server_config(self, table: object, profiles: tuple[CipherProfile, ...], *,
                      async_psk: bool = False) -> ServerConfig:
        base = super().server_config(table, profiles, async_psk=async_psk)  # type: ignore[arg-type]
        return dataclasses.replace(base, optional_client_certificate=True)


async def _backend() -> asyncio.Server:
    """The stand-in CSE: answers every request 200 with X-M2M-RSC 2000."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nX-M2M-RSC: 2000\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


CONFIGURATIONS: dict[str, tuple[CipherProfile, ...]] = {
    "psk": (TLS13_PSK, ONEM2M_PSK, PSK, ECDHE_PSK, DHE_PSK),
    "ecdsa": (TLS13_PSK, FUZZ_ECDSA),
    "rsa": (TLS13_PSK, FUZZ_RSA),
}


async def start_gateways() -> tuple[dict[str, int], list[Gateway], asyncio.Server]:
    backend = await _backend()
    backend_port = int(backend.sockets[0].getsockname()[1])
    table = MemoryPSKTable([PSKEntry(FUZZ_PSK_IDENTITY, SecretKey.from_hex(FUZZ_PSK_HEX))])
    certificates = {"psk": None, "ecdsa": _ecdsa_certificate(), "rsa": _rsa_certificate()}
    ports: dict[str, int] = {}
    gateways: list[Gateway] = []
    for name, profiles in CONFIGURATIONS.items():
        config = FuzzGatewayConfig(backend=Backend("127.0.0.1", backend_port), host="127.0.0.1", port=0,
                                   profiles=profiles, certificate=certificates[name],
                                   handshake_timeout=HANDSHAKE_TIMEOUT, max_handshakes_per_source=4096,
                                   max_connections_per_source=4096)
        gateway = Gateway(config, table)
        await gateway.start()
        gateways.append(gateway)
        ports[name] = gateway.port
    return ports, gateways, backend


@contextmanager
def running_gateways() -> Iterator[dict[str, int]]:
    """Serve the three configurations on an event loop in a background thread; yields ``{name: port}``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tlsfuzz-gateways", daemon=True)
    thread.start()
    ports, gateways, backend = asyncio.run_coroutine_threadsafe(start_gateways(), loop).result(60)
    try:
        yield ports
    finally:
        async def stop() -> None:
            for gateway in gateways:
                await gateway.close()
            backend.close()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main() -> int:
    with running_gateways() as ports:
        for name, port in ports.items():
            print(name, port, flush=True)
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
