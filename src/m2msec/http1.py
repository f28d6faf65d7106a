"""Minimal HTTP/1.1 message exchange over asyncio streams (h11), for the gateway and the client.

Only whole messages with bounded bodies: the oneM2M HTTP binding (TS-0009) carries small
primitives, and a bound keeps a misbehaving peer from exhausting memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h11

from m2msec.gateway.limits import BodyBudget, Lease

__all__ = [
    "DEFAULT_MAX_BODY",
    "BodyBudget",
    "BodyCollector",
    "HTTPError",
    "Message",
    "encode_message",
    "message_head",
    "read_message",
    "request",
    "send_message",
]

#: largest request or response body accepted (bytes)
DEFAULT_MAX_BODY = 8 * 1024 * 1024
_READ = 65536


class HTTPError(Exception):
    """The peer sent something that is not acceptable HTTP/1.1, closed mid-message, or did not read in time.

    ``too_large``: the body exceeds ``max_body``; ``busy``: the process-wide :class:`BodyBudget` is spent."""

    def __init__(self, message: str, *, too_large: bool = False, busy: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large
        self.busy = busy


@dataclass
class Message:
    """A request (``method``/``target`` set) or a response (``status`` set), with its body."""

    headers: list[tuple[str, str]]
    body: bytes = field(default=b"", repr=False)
    method: str = ""
    target: str = ""
    status: int = 0
    reason: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HTTPError(f"malformed HTTP: {exc}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(_READ)
            conn.receive_data(data)  # b"" = EOF
            continue
        return event


def message_head(event: object, max_body: int) -> Message:
    """The message an h11 ``Request`` or ``Response`` starts (its body still empty).

    Raises:
        HTTPError: another event, or a declared body larger than ``max_body`` (``too_large``)."""
    if isinstance(event, h11.Request):
        msg = Message(
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers],
            method=event.method.decode("ascii"),
            target=event.target.decode("latin-1"),
        )
    elif isinstance(event, h11.Response):
        msg = Message(
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers],
            status=event.status_code,
            reason=event.reason.decode("latin-1"),
        )
    else:
        raise HTTPError(f"unexpected HTTP event {type(event).__name__}")
    declared = msg.header("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise HTTPError(f"body of {declared} bytes exceeds the {max_body}-byte limit", too_large=True)
    return msg


class BodyCollector:
    """The body of one message as h11 hands it over, checked against ``max_body`` and reserved in ``budget``
    (against ``lease``) as it arrives: one implementation for the gateway's two sides and the stream reader."""

    __slots__ = ("budget", "chunks", "lease", "max_body", "size")

    def __init__(self, max_body: int, budget: BodyBudget | None = None, lease: Lease | None = None) -> None:
        self.max_body = max_body
        self.budget = budget
        self.lease = lease
        self.chunks: list[bytes] = []
        self.size = 0  # bytes collected, and reserved in the budget

    def feed(self, event: object) -> bool:
        """Take one h11 event of the body; True once the message is complete.

        Raises:
            HTTPError: the body is too large (``too_large``), the budget is spent (``busy``), the peer closed
                mid-message, or the event is not part of a body."""
        if isinstance(event, h11.Data):
            data = event.data
            if self.size + len(data) > self.max_body:
                raise HTTPError(f"body exceeds the {self.max_body}-byte limit", too_large=True)
            if self.budget is not None and not self.budget.reserve(len(data), self.lease):
                raise HTTPError("the request-body memory of the gateway is in use", busy=True)
            self.size += len(data)
            self.chunks.append(data)
            return False
        if isinstance(event, h11.EndOfMessage):
            return True
        if isinstance(event, h11.ConnectionClosed):
            raise HTTPError("connection closed in the middle of a message")
        raise HTTPError(f"unexpected HTTP event {type(event).__name__}")

    def take(self) -> bytes:
        """The whole body; the caller now owns its reservation (releases ``len(body)`` when done)."""
        body = b"".join(self.chunks)
        self.chunks, self.size = [], 0
        return body

    def release(self) -> None:
        """Give back what was reserved (the message is abandoned)."""
        if self.budget is not None and self.size:
            self.budget.release(self.size, self.lease)
        self.chunks, self.size = [], 0


async def read_message(
    conn: h11.Connection, reader: asyncio.StreamReader, *, max_body: int = DEFAULT_MAX_BODY,
    budget: BodyBudget | None = None, lease: Lease | None = None,
) -> Message | None:
    """Read one whole message. Returns None when the peer closed cleanly between messages.

    With ``budget``, the body's bytes are reserved in it as they arrive (against ``lease``, if given); the
    caller releases ``len(msg.body)`` when done with the message. On any failure the reservation is released
    here."""
    event = await _next_event(conn, reader)
    if isinstance(event, h11.ConnectionClosed):
        return None
    msg = message_head(event, max_body)
    body = BodyCollector(max_body, budget, lease)
    try:
        while not body.feed(await _next_event(conn, reader)):
            pass
    except BaseException:  # a timeout or cancellation too: what this message reserved goes back
        body.release()
        raise
    msg.body = body.take()
    return msg


def _encode_headers(headers: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers if k.lower() != "content-length"]
    out.append((b"content-length", str(len(body)).encode()))
    return out


def encode_message(conn: h11.Connection, msg: Message) -> list[bytes]:
    """The bytes of one whole message (content-length set from the body), in parts: the body is not copied.

    Raises:
        HTTPError: ``conn`` cannot send it now."""
    headers = _encode_headers(msg.headers, msg.body)
    if msg.method:
        head: h11.Request | h11.Response = h11.Request(method=msg.method, target=msg.target, headers=headers)
    else:
        head = h11.Response(status_code=msg.status, headers=headers, reason=msg.reason.encode("latin-1"))
    try:
        parts = [conn.send(head) or b""]
        if msg.body:  # the body itself, not a copy (content-length framing adds nothing around it)
            parts += conn.send_with_data_passthrough(h11.Data(data=msg.body)) or []
        parts.append(conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise HTTPError(f"cannot send this message: {exc}") from None
    return parts


async def send_message(conn: h11.Connection, writer: asyncio.StreamWriter, msg: Message, *,
                       timeout: float | None = None, drop_body: bool = False) -> None:
    """Send one whole message (content-length set from the body).

    With ``drop_body``, ``msg.body`` is emptied once handed to the transport, so that the plaintext does not
    stay in memory beside the bytes waiting for the peer.

    Raises:
        HTTPError: also when the peer has not read it within ``timeout`` seconds; the connection is then
            aborted (closing it would keep the unread bytes buffered until the peer reads them)."""
    parts = encode_message(conn, msg)
    size = sum(len(part) for part in parts)
    for part in parts:  # one by one: no joined copy of the body
        writer.write(part)
    del parts
    if drop_body:
        msg.body = b""
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        writer.transport.abort()
        raise HTTPError(f"the peer did not read {size} bytes within {timeout} s") from None


async def request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    msg: Message,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    budget: BodyBudget | None = None,
    lease: Lease | None = None,
) -> Message:
    """One request/response exchange on a fresh connection; the response body is reserved in ``budget``."""
    conn = h11.Connection(h11.CLIENT)
    await send_message(conn, writer, msg)
    response = await read_message(conn, reader, max_body=max_body, budget=budget, lease=lease)
    if response is None:
        raise HTTPError("connection closed before a response")
    return response
