"""What docs/deploy.md tells operators of load-balanced gateways, checked on a real gateway process: a TCP health
check on the TLS port (connect, close) is a failed handshake of the balancer's address (D220), so enough of them
lock the balancer -- every client behind it -- out until the window ends; --max-failed-handshakes-per-source 0 turns
that off. The docs page itself links where it says it is linked."""

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


def served(port: int) -> bool:
    """Whether a new connection is kept waiting for its ClientHello (served: one more failed handshake once it
    is closed) or dropped at once (refused: not counted)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(1.5)
        try:
            refused = s.recv(1) == b""  # the gateway never speaks first: any answer is a close
        except TimeoutError:
            refused = False
        except ConnectionResetError:
            refused = True
        if not refused:
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            assert s.recv(1) == b""
        return not refused


def test_tcp_health_checks_on_the_tls_port_lock_the_balancer_out(tmp_path: Path) -> None:
    with gateway(tmp_path, "--max-failed-handshakes-per-source", str(LIMIT)) as port:
        assert served(port)  # one more failure (it closes after the check): LIMIT - 1 checks left
        for _ in range(LIMIT - 1):
            tcp_check(port)
        assert not served(port)


def test_the_failure_limit_off_keeps_tcp_checks_harmless(tmp_path: Path) -> None:
    with gateway(tmp_path, "--max-failed-handshakes-per-source", "0") as port:
        for _ in range(LIMIT * 3):
            tcp_check(port)
        assert served(port)


def test_deploy_page_is_linked() -> None:
    assert "docs/deploy.md" in (ROOT / "README.md").read_text()
    assert "(deploy.md)" in (ROOT / "docs" / "gateway.md").read_text()
