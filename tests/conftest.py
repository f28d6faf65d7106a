"""Shared fixtures. Key values here are published test vectors (TR-0038 Table 7.1.2-1, TS-0013
TD_M2M_SE_01) or fixed test keys, never real credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import pytest
import uvloop
from hypothesis import settings

from m2msec.keys.secret import SecretKey
from m2msec.keys.table import MemoryPSKTable, PSKEntry
from m2msec.tls.engine import ClientConfig, ServerConfig, TLSConnection, TLSContext
from m2msec.tls.profiles import CipherProfile
from postgres import PostgresServer, postgres_server, postgres_url  # noqa: F401 - fixtures for every test directory

# no per-example deadline: a shared, loaded machine makes hypothesis' 200 ms deadline a flaky timing assertion
settings.register_profile("m2msec", deadline=None)
settings.load_profile("m2msec")

#: test files whose async tests run on both asyncio's loop (the default) and uvloop (``--loop uvloop``)
BOTH_LOOPS = {"test_transport.py", "test_gateway.py", "test_gateway_certificates.py", "test_dtls.py", "test_limits.py",
              "test_attack_front.py", "test_asgi_server.py", "test_tunnel.py"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


# TR-0038 §7.1.2, Tables 7.1.2-1 and 7.1.2-2 (seed 001)
LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE = "AE123456789012-Light@in.provider.com", "1a2b3c4d5e6f7a8b", "Clight-AE1"
LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE = "AE123456789015-Light@in.provider.com", "12345678abcdefab", "Clight-AE2"
HOME_GATEWAY_CSE_ID = "mn-cse-123456"
# TS-0013 TD_M2M_SE_01: Kpsa = 123456, KpsaId = test@onem2m.com (no bound entity)
TD_ID, TD_KEY = "test@onem2m.com", "123456"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (polling every 10 ms) until ``condition()`` holds; AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def make_table() -> MemoryPSKTable:
    return MemoryPSKTable(
        [
            PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE),
            PSKEntry(LIGHT2_ID, SecretKey.from_hex(LIGHT2_KEY), LIGHT2_AE),
            PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY)),
        ]
    )


@pytest.fixture
def table() -> MemoryPSKTable:
    return make_table()


def handshake_pair(
    server: TLSContext, client: TLSContext, *, max_rounds: int = 20
) -> tuple[TLSConnection, TLSConnection]:
    """Run a full in-memory handshake; raises what the engine raises."""
    s, c = server.connection(), client.connection()
    to_server = c.data_to_send()
    for _ in range(max_rounds):
        if to_server:
            s.receive_data(to_server)
        to_client = s.data_to_send()
        if to_client:
            c.receive_data(to_client)
        to_server = c.data_to_send()
        if s.session is not None and c.session is not None and not to_server:
            return s, c
    raise AssertionError("handshake did not finish")


def contexts(
    table: MemoryPSKTable, profiles: tuple[CipherProfile, ...], identity: str = LIGHT1_ID, key: str = LIGHT1_KEY,
    **server_kw: object,
) -> tuple[TLSContext, TLSContext]:
    server = TLSContext.server(ServerConfig(table.lookup, profiles=profiles, **server_kw))  # type: ignore[arg-type]
    client = TLSContext.client(ClientConfig(identity, SecretKey.from_hex(key), profiles=profiles,
                                            peer_entity=HOME_GATEWAY_CSE_ID))
    return server, client


@pytest.fixture(scope="session")
def rsa_cert() -> Iterator[tuple[bytes, bytes]]:
    """A throw-away self-signed RSA certificate for the RSA_PSK profile."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mn-cse-123456.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    yield (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )
