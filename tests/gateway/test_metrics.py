"""``--metrics``: a real gateway over loopback TLS, a known set of good and bad handshakes and requests, then
``/metrics`` scraped over HTTP and parsed with the Prometheus client's own parser; the counts are exact."""

from __future__ import annotations

import argparse
import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_gateway import RecordingBackend, connect, onem2m

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY, TD_ID, TD_KEY, make_table
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.table import TomlPSKTable
from m2msec.metrics import FAILURE_REASONS, MAX_IDENTITY_LABELS, OTHER_IDENTITIES, GatewayMetrics, start_observability
from m2msec.transport.limits import FailureRate

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

TABLE = "".join(f'[[psk]]\nidentity = "{i}"\nkey = "{k}"\n' + (f'entity = "{e}"\n' if e else "")
                for i, k, e in [(LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE), (LIGHT2_ID, LIGHT2_KEY, "Clight-AE2"),
                                (TD_ID, TD_KEY, None)])


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def samples(port: int) -> Samples:
    status, text = await asyncio.to_thread(scrape, port)
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def backend() -> AsyncIterator[RecordingBackend]:
    rec = RecordingBackend()
    rec.server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    yield rec
    rec.server.close()
    await rec.server.wait_closed()


async def observed(backend: RecordingBackend, tmp_path: Path, identity_labels: bool = False,
                   **kw: object) -> tuple[Gateway, int, object]:
    """A gateway on a TOML table with ``--metrics 127.0.0.1:0`` started as ``m2msec gateway`` starts it."""
    table_file = tmp_path / "psk.toml"
    table_file.write_text(TABLE)
    table_file.chmod(0o600)
    config = GatewayConfig(backend=Backend("127.0.0.1", backend.port), port=0, reload_interval=0.1,
                           **kw)  # type: ignore[arg-type]
    gw = Gateway(config, TomlPSKTable(table_file))
    args = argparse.Namespace(metrics="127.0.0.1:0", metrics_identity_labels=identity_labels)
    obs = start_observability(args, gw, None)
    assert obs is not None
    await gw.start()
    return gw, obs.server.port, obs


async def wait_closed_by_server(sock: socket.socket) -> None:
    """Until the gateway closes ``sock`` (its handshake ended there)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    async with asyncio.timeout(10):
        while True:
            try:
                if not await loop.sock_recv(sock, 4096):
                    return
            except ConnectionResetError:
                return


async def raw(port: int, data: bytes = b"") -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    if data:
        await loop.sock_sendall(sock, data)
    return sock


async def until(port: int, name: str, want: float, **labels: str) -> Samples:
    async with asyncio.timeout(10):
        while True:
            found = await samples(port)
            if found.get((name, tuple(sorted(labels.items())))) == want:
                return found
            await asyncio.sleep(0.05)


async def test_known_handshakes_and_requests_counted_exactly(backend: RecordingBackend, tmp_path: Path) -> None:
    gw, port, obs = await observed(backend, tmp_path, handshake_timeout=0.5, max_handshakes_per_source=2)
    try:
        assert await asyncio.to_thread(scrape, port, "/healthz") == (200, "ok\n")
        assert (await asyncio.to_thread(scrape, port, "/nothing"))[0] == 404
        found = await samples(port)
        assert value(found, "m2msec_gateway_psk_table_identities") == 3
        assert value(found, "m2msec_gateway_handshakes_total", transport="tls", authentication="psk") == 0

        good = await connect(gw)  # good PSK, a forwarded request
        resp = await good.request(onem2m(LIGHT1_AE))
        assert resp.header("x-m2m-rsc") == "2000"
        found = await samples(port)
        assert value(found, "m2msec_gateway_open_connections", transport="tls") == 1
        await good.close()
        spoof = await connect(gw, LIGHT2_ID, LIGHT2_KEY)  # good PSK, then 4106: Clight-AE2 claims Clight-AE1
        assert (await spoof.request(onem2m(LIGHT1_AE))).header("x-m2m-rsc") == "4106"
        await spoof.close()
        td = await connect(gw, TD_ID, TD_KEY)  # good PSK, then 4107: a CSE-ID as From on an unbound SA
        assert (await td.request(onem2m("/mn-cse-other"))).header("x-m2m-rsc") == "4107"
        await td.close()
        with pytest.raises(HandshakeFailed):
            await connect(gw, LIGHT1_ID, LIGHT2_KEY)  # wrong key
        with pytest.raises(HandshakeFailed):
            await connect(gw, "nobody@in.provider.com", LIGHT1_KEY)  # unknown identity (told as a wrong key)
        garbage = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_closed_by_server(garbage)
        garbage.close()
        await until(port, "m2msec_gateway_handshake_failures_total", 1, transport="tls", reason="protocol")
        idle = [await raw(gw.port), await raw(gw.port)]  # the 2 handshakes one source may have at once
        refused = await raw(gw.port)  # the third: refused by the per-source cap
        await wait_closed_by_server(refused)
        refused.close()
        for sock in idle:  # both time out (0.5 s)
            await wait_closed_by_server(sock)
            sock.close()
        gone = await raw(gw.port)
        gone.close()  # the peer went away before any ClientHello
        found = await until(port, "m2msec_gateway_handshake_failures_total", 1, transport="tls", reason="closed")
        await until(port, "m2msec_gateway_open_connections", 0, transport="tls")
    finally:
        await gw.close()
        await obs.close()  # type: ignore[attr-defined]

    want = {"unknown_identity": 1, "bad_key": 1, "protocol": 1, "timeout": 2, "refused_by_limit": 1, "closed": 1}
    for reason in FAILURE_REASONS:
        assert value(found, "m2msec_gateway_handshake_failures_total", transport="tls",
                     reason=reason) == want.get(reason, 0), reason
    assert value(found, "m2msec_gateway_handshakes_total", transport="tls", authentication="psk") == 3
    assert value(found, "m2msec_gateway_handshakes_total", transport="tls", authentication="certificate") == 0
    assert value(found, "m2msec_gateway_handshake_duration_seconds_count", transport="tls") == 3
    assert value(found, "m2msec_gateway_requests_total", transport="http") == 3
    assert value(found, "m2msec_gateway_refusals_total", transport="http", rsc="4106") == 1
    assert value(found, "m2msec_gateway_refusals_total", transport="http", rsc="4107") == 1
    assert value(found, "m2msec_gateway_backend_latency_seconds_count") == 1
    assert not any(name == "m2msec_gateway_backend_errors_total" for name, _ in found)
    assert len(backend.requests) == 1
    labels = {v for _, ls in found for _, v in ls}
    assert not any(i in v for v in labels for i in (LIGHT1_ID, LIGHT2_ID, TD_ID, "nobody", LIGHT1_AE))


async def test_failed_handshake_limit_and_backend_errors(backend: RecordingBackend, tmp_path: Path) -> None:
    """A source over --max-failed-handshakes-per-source (D220, D229) is refused_by_limit; a CSE that is gone is a
    backend error, answered 5103 by the gateway."""
    gw, port, obs = await observed(backend, tmp_path)
    gw.limiter.failures = FailureRate(1)
    try:
        with pytest.raises(HandshakeFailed):
            await connect(gw, LIGHT1_ID, LIGHT2_KEY)
        probe = await raw(gw.port)  # the source used up its failures: every connection is refused at once
        with pytest.raises((HandshakeFailed, OSError)):
            await connect(gw)
        probe.close()
        assert backend.server is not None
        backend.server.close()
        await backend.server.wait_closed()
        gw.limiter.failures = None
        sa = await connect(gw)
        resp = await sa.request(onem2m(LIGHT1_AE))
        await sa.close()
        found = await until(port, "m2msec_gateway_open_connections", 0, transport="tls")
    finally:
        await gw.close()
        await obs.close()  # type: ignore[attr-defined]
    assert resp.header("x-m2m-rsc") == "5103"
    assert value(found, "m2msec_gateway_handshake_failures_total", transport="tls", reason="bad_key") == 1
    assert value(found, "m2msec_gateway_handshake_failures_total", transport="tls", reason="refused_by_limit") == 2
    assert value(found, "m2msec_gateway_handshake_failures_total", transport="tls", reason="closed") == 0
    assert value(found, "m2msec_gateway_backend_errors_total", kind="unreachable") == 1
    assert value(found, "m2msec_gateway_refusals_total", transport="http", rsc="5103") == 1
    assert value(found, "m2msec_gateway_backend_latency_seconds_count") == 0


async def test_reload_counted_and_table_size_follows(backend: RecordingBackend, tmp_path: Path) -> None:
    gw, port, obs = await observed(backend, tmp_path)
    try:
        await until(port, "m2msec_gateway_psk_table_identities", 3)
        (tmp_path / "psk.toml").write_text(TABLE + '[[psk]]\nidentity = "new@x.com"\nkey = "00112233445566778899"\n')
        found = await until(port, "m2msec_gateway_reloads_total", 1, source="psk_table")
        found = await until(port, "m2msec_gateway_psk_table_identities", 4)
        (tmp_path / "psk.toml").write_text("[[psk]]\nbroken")  # refused: the old table keeps serving
        await asyncio.sleep(0.5)
        found = await samples(port)
    finally:
        await gw.close()
        await obs.close()  # type: ignore[attr-defined]
    assert value(found, "m2msec_gateway_reloads_total", source="psk_table") == 1
    assert value(found, "m2msec_gateway_psk_table_identities") == 4


async def test_identity_labels_only_when_asked(backend: RecordingBackend, tmp_path: Path) -> None:
    gw, port, obs = await observed(backend, tmp_path, identity_labels=True)
    try:
        for identity, key, origin in [(LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE), (LIGHT2_ID, LIGHT2_KEY, "Clight-AE2")]:
            sa = await connect(gw, identity, key)
            await sa.request(onem2m(origin))
            await sa.request(onem2m(origin, ri="r2"))
            await sa.close()
        found = await until(port, "m2msec_gateway_open_connections", 0, transport="tls")
    finally:
        await gw.close()
        await obs.close()  # type: ignore[attr-defined]
    assert value(found, "m2msec_gateway_identity_handshakes_total", identity=LIGHT1_ID) == 1
    assert value(found, "m2msec_gateway_identity_requests_total", identity=LIGHT2_ID) == 2


def test_identity_labels_are_bounded() -> None:
    metrics = GatewayMetrics(identity_labels=True)
    for n in range(MAX_IDENTITY_LABELS + 50):
        metrics.request("http", f"scan{n}@x.com")
    identities = {s.labels["identity"]: s.value for m in metrics.registry.collect()
                  if m.name == "m2msec_gateway_identity_requests" for s in m.samples if s.name.endswith("_total")}
    assert len(identities) == MAX_IDENTITY_LABELS + 1
    assert identities[OTHER_IDENTITIES] == 50 and identities["scan0@x.com"] == 1


async def test_metrics_address_in_use_is_one_line_error(backend: RecordingBackend, tmp_path: Path) -> None:
    from m2msec.errors import ConfigurationError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend.port), port=0), make_table())
        args = argparse.Namespace(metrics=f"127.0.0.1:{busy.getsockname()[1]}", metrics_identity_labels=False)
        with pytest.raises(ConfigurationError, match="--metrics: cannot listen"):
            start_observability(args, gw, None)
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        start_observability(argparse.Namespace(metrics="127.0.0.1:x", metrics_identity_labels=False), gw, None)

