"""Prometheus metrics of the gateway (``m2msec gateway --metrics HOST:PORT``, docs/gateway.md "Metrics").

One :class:`GatewayMetrics` per gateway process holds its own ``CollectorRegistry`` (never the library's global
one), so several gateways can run in one process (the tests do). The transport and gateway code call its few
event methods through an ``observer`` attribute that is None when metrics are off: no cost then but one test.

:class:`MetricsServer` serves the registry in Prometheus text format on ``/metrics`` and answers ``/healthz``
with 200 (container health checks), in a thread of its own: a scrape never waits for the event loop. The PSK
table size is read on the event loop (an SQLite store's connection belongs to it) every
:data:`TABLE_SIZE_INTERVAL` seconds.

Label values are fixed words (transport, reason, rsc, kind, source), never an identity or a key, unless
``--metrics-identity-labels`` is given: then handshakes and requests are also counted per PSK identity /
certificate subject, for at most :data:`MAX_IDENTITY_LABELS` distinct identities (the rest under
:data:`OTHER_IDENTITIES`), so a scan of made-up identities cannot grow the registry without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sized
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from m2msec.errors import ConfigurationError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from cryptography import x509

    from m2msec.gateway.coaps_gateway import CoapsGateway
    from m2msec.gateway.http_gateway import Gateway
    from m2msec.gateway.workers import WorkerSockets
    from m2msec.tls.engine import SessionInfo

__all__ = [
    "FAILURE_REASONS",
    "GatewayMetrics",
    "MetricsServer",
    "Observability",
    "add_observability_options",
    "check_metrics_workers",
    "start_observability",
]

log = logging.getLogger("m2msec.metrics")

#: D250: the host a bare ``--metrics PORT`` listens on: loopback, as the metrics tell who connects how often
DEFAULT_METRICS_HOST = "127.0.0.1"
#: D251: distinct identities ``--metrics-identity-labels`` counts by name; beyond, under :data:`OTHER_IDENTITIES`
MAX_IDENTITY_LABELS = 1000
#: the identity label of the identities beyond :data:`MAX_IDENTITY_LABELS` (and of handshakes without one)
OTHER_IDENTITIES = "_other"
#: D252: seconds between two reads of the PSK table size (a count on the event loop; SQLite: ``count(*)``)
TABLE_SIZE_INTERVAL = 5.0
#: D253: seconds a metrics client has to send its request and read the answer (a stuck scraper holds one thread)
METRICS_CLIENT_TIMEOUT = 10.0
#: handshake failure reasons (the ``reason`` label): each is always exported, 0 until it happens
FAILURE_REASONS = ("unknown_identity", "bad_key", "lookup_failed", "certificate_expired", "certificate_revoked",
                   "certificate_untrusted", "timeout", "protocol", "closed", "refused_by_limit")
#: handshake durations (seconds): loopback handshakes take ~1-5 ms, remote key lookups up to the timeout
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: CSE answer times (seconds)
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """The gateway's metrics in a registry of their own; the methods are the events the gateway reports."""

    def __init__(self, *, identity_labels: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handshakes = Counter("m2msec_gateway_handshakes", "Handshakes completed",
                                  ["transport", "authentication"], registry=r)
        self.handshake_failures = Counter("m2msec_gateway_handshake_failures", "Handshakes failed, by reason",
                                          ["transport", "reason"], registry=r)
        self.handshake_seconds = Histogram("m2msec_gateway_handshake_duration_seconds",
                                           "Time from connection (first datagram) to handshake completed",
                                           ["transport"], buckets=HANDSHAKE_BUCKETS, registry=r)
        self.requests = Counter("m2msec_gateway_requests", "Requests answered (forwarded or refused)",
                                ["transport"], registry=r)
        self.refusals = Counter("m2msec_gateway_refusals", "Responses the gateway generated itself, by rsc",
                                ["transport", "rsc"], registry=r)
        self.open = Gauge("m2msec_gateway_open_connections",
                          "Established TLS connections (transport=tls) and DTLS peers (transport=dtls)",
                          ["transport"], registry=r)
        self.backend_errors = Counter("m2msec_gateway_backend_errors", "Requests the CSE did not answer, by kind",
                                      ["kind"], registry=r)
        self.backend_seconds = Histogram("m2msec_gateway_backend_latency_seconds",
                                         "Time the CSE took to answer a forwarded request",
                                         buckets=BACKEND_BUCKETS, registry=r)
        self.table_size = Gauge("m2msec_gateway_psk_table_identities",
                                "PSK identities in the TOML table or SQLite store", registry=r)
        self.reloads = Counter("m2msec_gateway_reloads", "Successful reloads of a source", ["source"], registry=r)
        for transport in ("tls", "dtls"):
            for auth in ("psk", "certificate"):
                self.handshakes.labels(transport, auth)
            for reason in FAILURE_REASONS:
                self.handshake_failures.labels(transport, reason)
            self.open.labels(transport)
        for source in ("psk_table", "crl"):
            self.reloads.labels(source)
        # the children of the hot paths, looked up once (``labels()`` costs ~1 us a call: bench/metrics_cost.py)
        self._completed = {(t, c): (self.handshakes.labels(t, "certificate" if c else "psk"),
                                    self.handshake_seconds.labels(t), self.open.labels(t))
                           for t in ("tls", "dtls") for c in (False, True)}
        self._requests = {t: self.requests.labels(t) for t in ("http", "coap")}
        #: the coaps side's count of ClientHellos (after the cookie) dropped by a cap, read at each scrape
        self.dtls_dropped: Callable[[], int] | None = None
        self._dropped_seen = 0
        self._sync_lock = threading.Lock()
        self._identities: Counter | None = None
        self._identity_requests: Counter | None = None
        self._named: set[str] = set()
        if identity_labels:
            self._identities = Counter("m2msec_gateway_identity_handshakes",
                                       "Handshakes completed per client identity (--metrics-identity-labels)",
                                       ["identity"], registry=r)
            self._identity_requests = Counter("m2msec_gateway_identity_requests",
                                              "Requests per client identity (--metrics-identity-labels)",
                                              ["identity"], registry=r)

    def _identity(self, identity: str | None) -> str:
        if identity is None:
            return OTHER_IDENTITIES
        if identity in self._named:
            return identity
        if len(self._named) >= MAX_IDENTITY_LABELS:
            return OTHER_IDENTITIES
        self._named.add(identity)
        return identity

    def sync(self) -> None:
        """Before a scrape: what is counted elsewhere (DTLS refusals by a cap: ``DTLSServerProtocol.dropped``)."""
        if self.dtls_dropped is not None:
            with self._sync_lock:
                dropped = self.dtls_dropped()
                if dropped > self._dropped_seen:
                    self.handshake_failures.labels("dtls", "refused_by_limit").inc(dropped - self._dropped_seen)
                    self._dropped_seen = dropped

    # -- events
    def handshake_completed(self, transport: str, session: SessionInfo, seconds: float) -> None:
        certificate = session.peer_certificate
        completed, duration, open_now = self._completed[transport, certificate is not None]
        completed.inc()
        duration.observe(seconds)
        open_now.inc()
        if self._identities is not None:
            identity = session.psk_identity if certificate is None else _certificate_identity(certificate)
            self._identities.labels(self._identity(identity)).inc()

    def dtls_established(self, session: SessionInfo, seconds: float) -> None:
        self.handshake_completed("dtls", session, seconds)

    def handshake_failed(self, transport: str, reason: str) -> None:
        self.handshake_failures.labels(transport, reason if reason in FAILURE_REASONS else "protocol").inc()

    def closed(self, transport: str) -> None:
        """An established connection / peer (counted by :meth:`handshake_completed`) ended."""
        self._completed[transport, False][2].dec()

    def request(self, transport: str, identity: str | None) -> None:
        self._requests[transport].inc()
        if self._identity_requests is not None:
            self._identity_requests.labels(self._identity(identity)).inc()

    def refused(self, transport: str, rsc: int) -> None:
        self.refusals.labels(transport, str(rsc)).inc()

    def backend_answered(self, seconds: float) -> None:
        self.backend_seconds.observe(seconds)

    def backend_failed(self, kind: str) -> None:
        self.backend_errors.labels(kind).inc()

    def reloaded(self, source: object) -> None:
        name = type(source).__name__
        self.reloads.labels("crl" if name == "CRLFile" else "psk_table" if "PSK" in name else name.lower()).inc()


def _certificate_identity(certificate: x509.Certificate) -> str | None:
    """A certificate client's oneM2M identity (its AE-ID, CSE-ID, ... as the gateway reads it), else its subject."""
    from m2msec.errors import IdentifierError
    from m2msec.pki import identity_from_certificate

    try:
        return identity_from_certificate(certificate).value
    except IdentifierError:
        return certificate.subject.rfc4514_string() or None


#: metrics clients served at once; one more is closed at accept (a scraper needs one: the rest is someone's flood)
METRICS_MAX_CLIENTS = 8


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    _slots: threading.BoundedSemaphore | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per client, at most :data:`METRICS_MAX_CLIENTS` of them (slow clients cannot pile up threads)."""
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(METRICS_MAX_CLIENTS)
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            assert self._slots is not None
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A metrics client that times out or goes away: one DEBUG line, not socketserver's traceback (O5)."""
        log.debug("metrics client %s: %s", client_address, type(sys.exc_info()[1]).__name__)


class _QuietHandler(WSGIRequestHandler):
    timeout = METRICS_CLIENT_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a scraper every 15 s would fill the gateway's log."""


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` on ``host:port``, in a daemon thread."""

    def __init__(self, metrics: GatewayMetrics, host: str, port: int,
                 healthy: Callable[[], bool] = lambda: True) -> None:
        prometheus = make_wsgi_app(metrics.registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                metrics.sync()
                answer: Iterable[bytes] = prometheus(environ, start_response)
                return answer
            if path == "/healthz":
                if not healthy():
                    start_response("503 Service Unavailable", [("Content-Type", "text/plain"),
                                                               ("Content-Length", "12")])
                    return [b"not serving\n"]
                start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
                return [b"ok\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"not found\n"]

        server_class: type[_Server] = _Server
        if ":" in host:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self.server = make_server(host, port, app, server_class, _QuietHandler)
        except OSError as exc:
            raise ConfigurationError(f"--metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="m2msec-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=METRICS_CLIENT_TIMEOUT)


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on :data:`DEFAULT_METRICS_HOST`)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_METRICS_HOST, text
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"--metrics must be HOST:PORT or PORT, not {text!r}") from None
    if not 0 <= port <= 65535 or not host:
        raise ConfigurationError(f"--metrics must be HOST:PORT or PORT, not {text!r}")
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_observability_options(p: argparse.ArgumentParser) -> None:
    """``--metrics``, ``--metrics-identity-labels`` and ``--log-format`` of ``m2msec gateway``."""
    g = p.add_argument_group("observability (docs/gateway.md: Metrics, Logs)")
    g.add_argument("--metrics", metavar="[HOST:]PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (and /healthz); plain HTTP, default "
                   f"host {DEFAULT_METRICS_HOST}: an address other than loopback shows the metrics to the network")
    g.add_argument("--metrics-identity-labels", action="store_true",
                   help=f"also count handshakes and requests per client identity (at most {MAX_IDENTITY_LABELS} "
                   "identities by name)")
    g.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text (default) or json: one JSON object per line")


def check_metrics_workers(args: argparse.Namespace, workers: int) -> None:
    """D254: ``--metrics`` is refused with ``--workers`` > 1, before any worker starts: each worker's counters are
    its own, and a scrape on a shared port would see one worker at random."""
    if getattr(args, "metrics", None) is not None and workers > 1:
        raise ConfigurationError("--metrics works with --workers 1 only (each worker would count for itself)")


class Observability:
    """What :func:`start_observability` started: the metrics, their listener and the table-size task."""

    def __init__(self, metrics: GatewayMetrics, server: MetricsServer, refresh: Callable[[], None]) -> None:
        self.metrics = metrics
        self.server = server
        self._refresh = refresh
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self._refresh()
            except Exception as exc:  # a store that cannot count now is retried; the gateway goes on
                log.warning("reading the PSK table size failed: %s", type(exc).__name__)
            await asyncio.sleep(TABLE_SIZE_INTERVAL)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.to_thread(self.server.close)


#: seconds /healthz waits for the event loop to answer before it says 503 (a stalled loop serves nobody)
HEALTH_LOOP_TIMEOUT = 2.0


def _health_check(sides: list[Gateway | CoapsGateway]) -> Callable[[], bool]:
    """/healthz (O6): from the metrics thread, ask the event loop whether every side still listens; a loop that does
    not answer within :data:`HEALTH_LOOP_TIMEOUT` is unhealthy too."""
    loop = asyncio.get_running_loop()

    async def serving() -> bool:
        return all(side.serving for side in sides)

    def healthy() -> bool:
        try:
            return asyncio.run_coroutine_threadsafe(serving(), loop).result(HEALTH_LOOP_TIMEOUT)
        except Exception:  # timeout, or the loop is closed
            return False

    return healthy


def start_observability(args: argparse.Namespace, http: Gateway | None, coaps: CoapsGateway | None,
                        sockets: WorkerSockets | None = None) -> Observability | None:
    """With ``--metrics``: the metrics of ``http`` and ``coaps`` (given to them before they start) and their
    listener; None without. Refused in a worker of ``--workers`` > 1 (D254, :func:`check_metrics_workers`)."""
    if getattr(args, "metrics", None) is None:
        return None
    if sockets is not None:
        check_metrics_workers(args, 2)
    host, port = parse_metrics_address(args.metrics)
    if not _is_loopback(host):
        log.warning("metrics on %s:%d are served to the network, without authentication", host, port)
    metrics = GatewayMetrics(identity_labels=args.metrics_identity_labels)
    server = MetricsServer(metrics, host, port, _health_check([s for s in (http, coaps) if s is not None]))
    log.info("metrics on http://%s:%d/metrics", host, server.port, extra={"event": "metrics_started"})
    tables = []
    for side in (http, coaps):
        if side is not None:
            side.observer = metrics
            tables.append(side.table)
    if coaps is not None:
        side = coaps
        metrics.dtls_dropped = lambda: side.protocol.dropped if side.protocol is not None else 0
    main = http if http is not None else coaps
    assert main is not None
    # one side's reloader is enough: both sides poll the same sources, which reload once (gateway/reload.py)
    table = next((t for t in tables if t is not None), None)

    def refresh() -> None:
        if isinstance(table, Sized):  # the TOML table and the SQLite store count their identities
            metrics.table_size.set(len(table))

    def reloaded(source: object) -> None:
        metrics.reloaded(source)
        refresh()

    main._reloader.on_reload = reloaded

    return Observability(metrics, server, refresh)
