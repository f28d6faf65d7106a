"""What docs/deploy.md tells operators of load-balanced gateways, checked on a real gateway process. Behind a
balancer that hides client addresses every client has the balancer's address: a silent TCP health check on the TLS
port (connect, close without a byte) is no failed handshake (D231), but a check or client that sends something and
fails is; once the source's bucket is full every connection of it is refused until one failure has drained (D229,
D230), so every client behind the balancer is refused with the failing one. --max-failed-handshakes-per-source 0
turns that off. The docs page is linked where it says.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway_env import M2MSEC, ROOT, free_port

#: failed handshakes the test gateway allows per source and window (the default is 300 per 60 s)
LIMIT = 3
#: how long a connection kept waiting for its ClientHello is watched (the gateway waits --handshake-timeout, 30 s)
WAIT = 1.0


@contextmanager
def gateway(tmp_path: Path, *flags: str) -> Iterator[int]:
    table = tmp_path / "psk.toml"
    table.touch(mode=0o600)
    table.write_text('[[psk]]\nidentity = "lb-test"\nkey = "00112233445566778899aabbccddeeff"\n'
                     'entity = "CAE-lb"\n')
    port = free_port()
    proc = subprocess.Popen([M2MSEC, "gateway", "--listen", f"127.0.0.1:{port}", "--backend", "http://127.0.0.1:9",
                             "--psk-table", str(table), "--handshake-timeout", "30", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("m2msec gateway on"), proc.communicate(timeout=10)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def tcp_check(port: int) -> None:
    """What a balancer's TCP health check does: connect, then close without a byte (here a half-close, waiting for
    the gateway's own close, so that the gateway has seen it before the next step of the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""


def http_check(port: int) -> None:
    """A misdirected check (HTTP sent to the TLS port): bytes that are no ClientHello, answered by a close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        s.settimeout(5)
        while s.recv(4096):
            pass


def concurrent_handshakes_served(port: int, count: int) -> int:
    """How many of `count` connections opened together are kept waiting for their ClientHello."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        served_now = 0
        for c in conns:
            c.settimeout(WAIT)
            try:
                served_now += c.recv(1) != b""
            except TimeoutError:
                served_now += 1
            except ConnectionResetError:
                pass
        return served_now
    finally:
        for c in conns:
            c.close()


def test_silent_tcp_checks_are_no_failed_handshakes(tmp_path: Path) -> None:
    with gateway(tmp_path, "--max-failed-handshakes-per-source", str(LIMIT)) as port:
        for _ in range(LIMIT * 3):
            tcp_check(port)
        assert concurrent_handshakes_served(port, 3) == 3


def test_failing_checks_get_the_balancers_address_refused(tmp_path: Path) -> None:
    with gateway(tmp_path, "--max-failed-handshakes-per-source", str(LIMIT)) as port:  # one failure drains in 20 s
        assert concurrent_handshakes_served(port, 3) == 3
        for _ in range(LIMIT):
            http_check(port)
        assert concurrent_handshakes_served(port, 3) == 0


def test_the_failure_limit_off_keeps_failing_checks_harmless(tmp_path: Path) -> None:
    with gateway(tmp_path, "--max-failed-handshakes-per-source", "0") as port:
        for _ in range(LIMIT * 3):
            http_check(port)
        assert concurrent_handshakes_served(port, 3) == 3


def test_deploy_page_is_linked() -> None:
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()
    assert "(deploy.md)" in (ROOT / "docs" / "gateway.md").read_text()
