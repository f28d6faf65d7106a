"""``m2msec gateway --workers N``: one supervisor, N worker processes sharing the listening sockets.

The supervisor checks the options exactly as a single process does (one error line, nothing started), then
makes the sockets itself: N TCP listening sockets on ``--listen`` and, with ``--coap-backend``, N UDP sockets on
``--coaps-listen``, all with ``SO_REUSEPORT`` on the same address (port 0: the first socket's port for the rest).
Worker *i* is ``python -m m2msec.gateway.worker`` started with TCP socket *i* and UDP socket *i* passed as
inherited file descriptors (``pass_fds``) and the parsed options on its stdin; it runs the ordinary single-process
code path (:func:`m2msec.cli.gateway.run`) with ``start(sock=...)`` and reports ready on a pipe.

The supervisor keeps socket *i* open for as long as it runs, so a worker that dies is restarted on the **same**
socket: the reuseport group never changes, the hash of a datagram's source address and port keeps picking the
socket (hence the process) that holds the peer's DTLS association (:mod:`m2msec.gateway.reuseport`: sockets that
join the group later are never picked), and TCP connections queued on socket *i*
wait in its backlog for the new worker instead of being reset.

Restarts back off (:class:`RestartPolicy`, D61); a worker that keeps dying before it is ready (a key store removed,
a table edited into an invalid one) makes the supervisor stop all workers and exit with one error line instead of
looping (D62). SIGTERM / SIGINT to the supervisor sends SIGTERM to every worker (workers run with SIGINT blocked,
so that a terminal's Ctrl-C, sent to the whole process group, is the supervisor's alone), which drains
(:mod:`m2msec.gateway.worker`, D64); the supervisor exits 0 once all have exited. SIGHUP to the supervisor checks
the configuration again and, when it is valid, is forwarded to every worker, which reloads (D240). The connection
caps are per worker (:data:`PER_WORKER_LIMITS`, D63).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.gateway.reuseport import pin_group

__all__ = ["DRAIN_TIMEOUT", "MAX_WORKERS_PER_CPU", "PER_WORKER_LIMITS", "RestartPolicy", "WorkerSockets",
           "bind_group", "supervise", "worker_count"]

log = logging.getLogger("m2msec.gateway.workers")

#: first restart delay of a worker that died; doubled for each death in a row that came sooner than
#: RESTART_RESET after its start, up to MAX_RESTART_BACKOFF (D61)
RESTART_BACKOFF = 0.1
MAX_RESTART_BACKOFF = 10.0
RESTART_RESET = 30.0
#: a worker that exits this many times in a row before it is ready (serving) stops the gateway (D62)
STARTUP_FAILURES = 3
#: seconds a worker has, after SIGTERM, to let in-flight requests finish before closing what is left (D64)
DRAIN_TIMEOUT = 10.0
#: seconds a draining worker that serves coaps waits at least, for answers its CSE still owes (a CoAP exchange
#: in flight leaves no trace the worker can count; CoAP clients retransmit what is lost) (D64)
COAPS_DRAIN_GRACE = 1.0
#: seconds the supervisor waits beyond DRAIN_TIMEOUT before it kills a worker that has not exited
KILL_MARGIN = 5.0
#: the caps each worker enforces in full, on its own share of the traffic: not divided among workers, so
#: the gateway as a whole holds up to N times each (D63)
PER_WORKER_LIMITS = ("--max-connections", "--max-body-memory", "--max-handshakes-per-source",
                     "--max-connections-per-source", "--max-connections-per-sa", "coaps peers")
#: --workers is refused above this many workers per CPU the process may use: an event-loop worker beyond one per
#: CPU adds nothing but memory, and a typo such as 1000 would start a thousand interpreters (D66)
MAX_WORKERS_PER_CPU = 4
#: the signal that reloads the configuration: the supervisor checks the new one, then sends this to every worker
#: (each reads the files again itself), never to a worker when the check failed (D240)
RELOAD_SIGNAL = signal.SIGHUP
#: listen(2) backlog of each worker's TCP socket (connections wait here while their worker restarts)
LISTEN_BACKLOG = socket.SOMAXCONN


@dataclass(frozen=True)
class WorkerSockets:
    """What a worker serves: its index and its share of the listening sockets (None: that side is not served)."""

    index: int
    tcp: socket.socket | None
    udp: socket.socket | None
    ready_fd: int | None = None

    def serving(self) -> None:
        """Tell the supervisor (its pipe) that this worker serves."""
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, f"{os.getpid()}\n".encode())
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)


def worker_count(text: str, cpus: Callable[[], int] = lambda: len(os.sched_getaffinity(0))) -> int:
    """``--workers``: a positive number (at most MAX_WORKERS_PER_CPU per CPU, D66), or ``auto`` (the CPUs this
    process may run on)."""
    if text == "auto":
        return max(1, cpus())
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # isdigit alone: "²" is a digit int() refuses
        raise ConfigurationError(f"--workers must be a positive number or auto, not {text!r}")
    count, usable = int(text), max(1, cpus())
    if count > MAX_WORKERS_PER_CPU * usable:
        raise ConfigurationError(f"--workers {count} is more than {MAX_WORKERS_PER_CPU} per CPU this process may use "
                                 f"({usable}): at most {MAX_WORKERS_PER_CPU * usable}")
    return count


@dataclass
class RestartPolicy:
    """When a worker that died is started again, and when the supervisor gives up (pure: times are given)."""

    backoff: float = RESTART_BACKOFF
    max_backoff: float = MAX_RESTART_BACKOFF
    reset_after: float = RESTART_RESET
    startup_failures: int = STARTUP_FAILURES
    quick_deaths: int = 0
    failed_starts: int = 0

    def died(self, lived: float, was_ready: bool) -> float | None:
        """The delay before the restart of a worker that lived ``lived`` seconds, or None: give up."""
        self.failed_starts = 0 if was_ready else self.failed_starts + 1
        if self.failed_starts >= self.startup_failures:
            return None
        self.quick_deaths = self.quick_deaths + 1 if lived < self.reset_after else 1
        return float(min(self.max_backoff, self.backoff * 2 ** (self.quick_deaths - 1)))


def _listening_socket(kind: socket.SocketKind, host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # past TIME_WAIT; on UDP it would let anyone's socket share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(False)  # passed to its own worker only (pass_fds)
    except OSError:
        sock.close()
        raise
    return sock


def bind_group(kind: socket.SocketKind, host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets in one SO_REUSEPORT group on host:port (port 0: the first one's port for all).

    The port must be free: SO_REUSEPORT would otherwise let a second gateway (of the same user) join the group of
    a running one and silently share its traffic, where a single process gets "address already in use". A socket
    that joins the group later is never chosen (:func:`m2msec.gateway.reuseport.pin_group`)."""
    what = "" if kind == socket.SOCK_STREAM else "udp "
    group: list[socket.socket] = []
    try:
        if port != 0:  # free, not merely shared: another gateway's reuseport group would take half the traffic
            _listening_socket(kind, host, port, reuse_port=False).close()
        for _ in range(count):
            group.append(_listening_socket(kind, host, port))
            port = group[0].getsockname()[1]
    except OSError as exc:
        for sock in group:
            sock.close()
        raise ConfigurationError(f"cannot listen on {what}{host}:{port}: {exc.strerror or exc}") from None
    try:  # a socket bound later on this port with SO_REUSEPORT (same user) would join the group: never chosen
        pin_group(group)
    except OSError as exc:
        log.warning("%s%s:%d: cannot keep sockets bound later out of the reuseport group (%s): they would share "
                    "its traffic", what, host, port, exc.strerror or exc)
    return group


@dataclass
class _Worker:
    index: int
    tcp: socket.socket | None
    udp: socket.socket | None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: bool = False
    restart_at: float | None = None
    generation: int = 0  # the supervisor's reload count when this worker was started


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Starts, watches and restarts the workers; forwards SIGTERM / SIGINT (one thread, a select loop)."""

    def __init__(self, args: argparse.Namespace, workers: list[_Worker], clock: Callable[[], float] = time.monotonic):
        self.args = args
        self.workers = workers
        self.clock = clock
        self.stopping: int | None = None  # the signal that asked us to stop
        self.failure: str | None = None
        self.reloading = False  # a SIGHUP to handle
        self.generation = 0  # configurations reloaded
        self._ready_r, self._ready_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._ready_r, self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    def _start(self, w: _Worker) -> None:
        fds = [fd for fd in (w.tcp.fileno() if w.tcp else None, w.udp.fileno() if w.udp else None) if fd is not None]
        spec = {"index": w.index, "tcp": w.tcp.fileno() if w.tcp else None, "udp": w.udp.fileno() if w.udp else None,
                "ready": self._ready_w, "supervisor": os.getpid(), "args": self.args}
        # SIGINT blocked in the worker (the mask survives exec): a terminal's Ctrl-C reaches the whole foreground
        # process group, and a worker still importing would print a KeyboardInterrupt traceback; the supervisor
        # stops its workers with SIGTERM. Unblocked here at once: a Ctrl-C meanwhile is the supervisor's, pending
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc = subprocess.Popen([sys.executable, "-m", "m2msec.gateway.worker"], stdin=subprocess.PIPE,
                                    pass_fds=[*fds, self._ready_w])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
        w.process, w.started, w.ready, w.restart_at = proc, self.clock(), False, None
        w.generation = self.generation
        log.info("worker %d started (pid %d)", w.index, proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and self.stopping is None:
            self.stopping = signum
        elif signum == RELOAD_SIGNAL:
            self.reloading = True

    def _reload(self) -> None:
        """SIGHUP: check the configuration as at start (one ERROR line and nothing more when it is refused), then
        forward SIGHUP to every worker, each of which reads it again; workers restarted later start with it."""
        from m2msec.cli.common import run_async
        from m2msec.cli.gateway import prepare, release, reread
        from m2msec.gateway.config import name_file_key
        from m2msec.gateway.reload import keep_restart_options

        self.reloading = False
        new: argparse.Namespace | None = None
        try:
            new = reread(self.args)
            fresh = argparse.Namespace(**vars(new))
            run_async(release(*prepare(new)))
        except M2MSecError as exc:
            if new is not None and isinstance(exc, ConfigurationError):
                exc = name_file_key(new, exc)
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        keep_restart_options(fresh, self.args)  # the sockets and the rest stay as started (each worker logs them)
        self.args = fresh
        self.generation += 1
        for w in self.workers:
            if w.ready:  # one still starting ignores SIGHUP: it gets it once ready (_read_ready)
                self._signal(w, RELOAD_SIGNAL)

    @staticmethod
    def _signal(w: _Worker, signum: int) -> None:
        if w.process is not None:
            with contextlib.suppress(ProcessLookupError):
                w.process.send_signal(signum)

    def _read_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for line in os.read(self._ready_r, 4096).decode().split():
                for w in self.workers:
                    if w.process is not None and str(w.process.pid) == line:
                        w.ready = True
                        if w.generation != self.generation:  # started before a reload, which it ignored
                            self._signal(w, RELOAD_SIGNAL)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def _wait(self, timeout: float | None) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self._ready_r, self._wake_r], [], [], timeout)
        self._read_ready()

    def _reap(self) -> None:
        now = self.clock()
        for w in self.workers:
            code = w.process.poll() if w.process is not None else None
            if w.process is None or code is None:
                continue
            pid, w.process = w.process.pid, None
            if self.stopping is not None:
                continue
            delay = w.policy.died(now - w.started, w.ready)
            if delay is None:
                self.failure = (f"worker {w.index} exited {w.policy.startup_failures} times in a row before "
                                f"serving (last: {_status(code)}); giving up")
                return
            log.warning("worker %d (pid %d) ended: %s; restarting in %.1f s", w.index, pid, _status(code), delay)
            w.restart_at = now + delay

    def run(self) -> int:
        """Serve until SIGTERM / SIGINT (exit 0 once every worker has) or until workers cannot start (raise)."""
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, RELOAD_SIGNAL)}
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda s, f: None)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        announced = False
        try:
            for w in self.workers:
                self._start(w)
            while self.stopping is None and self.failure is None:
                if not announced and all(w.ready for w in self.workers):
                    announced = True
                    _announce(self.args, self.workers)
                if self.reloading:
                    self._reload()
                self._reap()
                now = self.clock()
                for w in self.workers:
                    if w.process is None and w.restart_at is not None and w.restart_at <= now:
                        self._start(w)
                due = [w.restart_at - now for w in self.workers if w.process is None and w.restart_at is not None]
                if self.stopping is None and self.failure is None:
                    self._wait(max(0.0, min(due)) if due else None)
            self._shut_down()
        finally:
            # a SIGHUP from now on is ignored, not the default action (death) of a supervisor that is ending (O2)
            handlers[RELOAD_SIGNAL] = signal.SIG_IGN
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            for fd in (self._ready_r, self._ready_w, self._wake_r, self._wake_w):
                os.close(fd)
        if self.failure is not None:
            raise ConfigurationError(self.failure)
        return 0

    def _shut_down(self) -> None:
        if self.stopping is None:  # giving up (D62): the workers stopped now are not restarted, nor said to be
            self.stopping = signal.SIGTERM
        for w in self.workers:  # SIGTERM for SIGINT too: a worker that is not serving yet ends without a traceback
            if w.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    w.process.send_signal(signal.SIGTERM)
        deadline = self.clock() + DRAIN_TIMEOUT + KILL_MARGIN
        while any(w.process is not None for w in self.workers):
            self._reap()
            left = deadline - self.clock()
            if left <= 0:
                for w in self.workers:
                    if w.process is not None:
                        log.warning("worker %d (pid %d) did not drain in time: killed", w.index, w.process.pid)
                        w.process.kill()
                        w.process.wait()
                        w.process = None
                break
            self._wait(min(left, 0.5))


def _announce(args: argparse.Namespace, workers: list[_Worker]) -> None:
    """The single-process start lines, with the ports the workers share, once every worker serves."""
    from m2msec.cli.common import parse_hostport
    from m2msec.gateway.http_gateway import parse_backend

    if workers[0].udp is not None:
        chost, bhost, bport = parse_hostport(args.coaps_listen)[0], *parse_hostport(args.coap_backend)
        print(f"m2msec coaps gateway on {chost}:{workers[0].udp.getsockname()[1]} -> coap://{bhost}:{bport}",
              flush=True)
    if workers[0].tcp is not None:
        host = parse_hostport(args.listen)[0]
        print(f"m2msec gateway on {host}:{workers[0].tcp.getsockname()[1]} -> {parse_backend(args.backend)}",
              flush=True)
    log.info("%d workers serving; each enforces %s in full (D63)", len(workers), ", ".join(PER_WORKER_LIMITS))


def supervise(args: argparse.Namespace, count: int) -> int:
    """Check the options as a single process would, bind the shared sockets, run ``count`` workers."""
    from m2msec.cli.common import parse_hostport
    from m2msec.cli.gateway import prepare

    original = argparse.Namespace(**vars(args))
    prepare(args)  # every option error is reported here, before a socket is bound or a worker started
    tcp: list[socket.socket | None] = [None] * count
    udp: list[socket.socket | None] = [None] * count
    try:
        if args.coap_backend is not None:
            udp = list(bind_group(socket.SOCK_DGRAM, *parse_hostport(args.coaps_listen), count))
        if args.backend is not None:
            tcp = list(bind_group(socket.SOCK_STREAM, *parse_hostport(args.listen), count))
        workers = [_Worker(i, tcp[i], udp[i]) for i in range(count)]
        return Supervisor(original, workers).run()
    finally:
        for sock in (*tcp, *udp):
            if sock is not None:
                sock.close()

