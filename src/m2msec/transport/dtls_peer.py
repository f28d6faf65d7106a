"""One DTLS peer of :mod:`m2msec.transport.dtls`: what an endpoint keeps per peer address (:class:`_Peer`) and the
transport an authenticated peer's application protocol writes to (:class:`DTLSPeerTransport`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from m2msec.errors import TLSError
from m2msec.tls.engine import DTLSConnection
from m2msec.transport.common import NOT_SESSION_INFO, Deadline, session_extra_info
from m2msec.transport.limits import Slot

__all__ = ["DTLSPeerTransport", "PeerEndpoint"]

log = logging.getLogger("m2msec.transport.dtls")

Address = Any


class PeerEndpoint(Protocol):
    """What a peer's transport needs of its endpoint (:class:`m2msec.transport.dtls._Endpoint`)."""

    def _flush(self, peer: _Peer) -> None: ...

    def _drop(self, peer: _Peer) -> None: ...


@dataclass(eq=False)
class _Peer:
    conn: DTLSConnection
    addr: Address
    started: float
    last_seen: float
    app: asyncio.DatagramProtocol | None = None
    transport: DTLSPeerTransport | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    slot: Slot | None = None  # what it holds in the server's limiter
    deadline: Deadline | None = field(default=None, repr=False)  # of its handshake (server side)
    lookup: asyncio.Task[None] | None = field(default=None, repr=False)  # its PSK resolution (server side)
    hello_random: bytes | None = field(default=None, repr=False)  # of the ClientHello it began with (server side)


class DTLSPeerTransport(asyncio.DatagramTransport):
    """One authenticated peer, as its application protocol sees it."""

    def __init__(self, endpoint: PeerEndpoint, peer: _Peer) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._peer = peer
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer.addr
        value = session_extra_info(name, self._peer.conn.session, self._peer.conn, default)
        return default if value is NOT_SESSION_INFO else value

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address = None) -> None:
        if self._closing:
            return
        try:
            self._peer.conn.send(bytes(data))
        except TLSError as exc:
            log.info("send to %s failed: %s", self._peer.addr, exc)
            self._endpoint._drop(self._peer)
            return
        self._endpoint._flush(self._peer)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._peer.conn.close()  # close_notify
            self._endpoint._flush(self._peer)
            self._endpoint._drop(self._peer)

    def abort(self) -> None:
        self._closing = True
        self._endpoint._drop(self._peer)

    def get_write_buffer_size(self) -> int:
        return 0
