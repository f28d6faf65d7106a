"""Revocation at the AEF (TS 33.122 §6.8): the AEF front's receiver of the CCF's event notifications.

The front subscribes at the CCF (``POST /capif-events/v1/{aefId}/subscriptions``, CAPIF-3 with its AEF certificate)
to ``API_INVOKER_OFFBOARDED`` and ``API_INVOKER_AUTHORIZATION_REVOKED`` with a notification destination it serves
itself: a plain HTTP/1.1 listener (loopback by default, :data:`EVENTS_LISTEN`) whose path carries an unguessable token
(:data:`NOTIFICATION_PATH_BYTES`, D170). A notification is validated against the official callback schema; for each
invoker it names, ``on_revoked(invoker_id)`` is called (the front's :meth:`~m2msec.capif.aef.app.AEFFront.revoke`).
Anything else (another path, method, body, event) is answered 4xx and changes nothing. The subscription is deleted
when the receiver stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

import h11

from m2msec import http1
from m2msec.capif.client import CCFConnection
from m2msec.capif.schema import SchemaViolation, validate_request
from m2msec.errors import M2MSecError

__all__ = ["EVENTS_LISTEN", "NOTIFICATION_PATH_BYTES", "REVOCATION_EVENTS", "AEFEventsReceiver"]

log = logging.getLogger("m2msec.aef.events")

#: D170: where the receiver listens by default (host, port 0 = chosen by the system): loopback, the CCF and the AEF
#: front on one host; an operator whose CCF is elsewhere configures an address the CCF can reach
EVENTS_LISTEN: Final = ("127.0.0.1", 0)
#: D170: random bytes in the notification path (``/capif-events/<token>``): another local process or host that can
#: reach the plain-HTTP listener cannot guess where to post a forged notification
NOTIFICATION_PATH_BYTES: Final = 24
#: the events that end an invoker's state at this AEF (TS 33.122 §6.8)
REVOCATION_EVENTS: Final = ("API_INVOKER_OFFBOARDED", "API_INVOKER_AUTHORIZATION_REVOKED")
_API: Final = "capif-events"
_CALLBACK: Final = "POST /{subscriberId}/subscriptions callback notificationDestination"
#: the largest notification body read (bytes)
_MAX_BODY: Final = 64 * 1024
_TIMEOUT: Final = 5.0


class AEFEventsReceiver:
    """Listen, subscribe, call ``on_revoked`` per invoker named; ``async with`` runs it."""

    def __init__(self, aef_id: str, on_revoked: Callable[[str], None], *, ccf_address: tuple[str, int],
                 ccf_host: str, ca_pem: bytes, certificate_pem: bytes, private_key_pem: bytes,
                 listen: tuple[str, int] = EVENTS_LISTEN, advertised_host: str | None = None) -> None:
        self.aef_id, self.on_revoked, self.listen = aef_id, on_revoked, listen
        self.advertised_host = advertised_host
        self._ccf = dict(host=ccf_address[0], port=ccf_address[1], ccf_host=ccf_host, ca_pem=ca_pem,
                         certificate_pem=certificate_pem, private_key_pem=private_key_pem)
        self.path = "/capif-events/" + secrets.token_urlsafe(NOTIFICATION_PATH_BYTES)
        self._server: asyncio.Server | None = None
        self.subscription: str | None = None
        #: notifications acted on / refused (tests, monitoring)
        self.received = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<AEFEventsReceiver {self.aef_id} subscription={self.subscription}>"

    @property
    def destination(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{self.advertised_host or host}:{port}{self.path}"

    async def __aenter__(self) -> AEFEventsReceiver:
        self._server = await asyncio.start_server(self._serve, *self.listen)
        try:
            await self.subscribe()
        except BaseException:
            await self._close_server()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.unsubscribe()
        finally:
            await self._close_server()

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _connect(self) -> CCFConnection:
        return await CCFConnection.open(**self._ccf)  # type: ignore[arg-type]

    async def subscribe(self) -> None:
        """``POST /capif-events/v1/{aefId}/subscriptions``; raises M2MSecError unless answered 201."""
        body = {"events": list(REVOCATION_EVENTS), "notificationDestination": self.destination,
                "supportedFeatures": "0"}
        validate_request(_API, "POST /{subscriberId}/subscriptions", body)
        async with await self._connect() as conn:
            answer = await conn.request("POST", f"/capif-events/v1/{self.aef_id}/subscriptions", json_body=body)
        location = answer.header("location") or ""
        if answer.status != 201 or "/subscriptions/" not in location:
            raise M2MSecError(f"the CCF refused the AEF's event subscription ({answer.status})")
        self.subscription = location.rsplit("/", 1)[1]
        log.info("AEF %s: subscribed to %s (subscription %s)", self.aef_id, ", ".join(REVOCATION_EVENTS),
                 self.subscription)

    async def unsubscribe(self) -> None:
        """``DELETE`` the subscription (logged, not raised, when the CCF cannot be reached)."""
        if self.subscription is None:
            return
        path = f"/capif-events/v1/{self.aef_id}/subscriptions/{self.subscription}"
        try:
            async with asyncio.timeout(_TIMEOUT):
                async with await self._connect() as conn:
                    answer = await conn.request("DELETE", path)
            if answer.status != 204:
                log.warning("AEF %s: unsubscribing answered %d", self.aef_id, answer.status)
        except (M2MSecError, OSError, TimeoutError) as exc:
            log.warning("AEF %s: unsubscribing failed: %s", self.aef_id, type(exc).__name__)
        self.subscription = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            async with asyncio.timeout(_TIMEOUT):
                msg = await http1.read_message(conn, reader, max_body=_MAX_BODY)
                if msg is None:
                    return
                status = self.handle(msg.method or "", msg.target or "", msg.body)
                await http1.send_message(conn, writer, http1.Message(headers=[("connection", "close")], body=b"",
                                                                     status=status))
        except (TimeoutError, OSError, http1.HTTPError, h11.ProtocolError) as exc:
            log.info("AEF %s: a notification connection failed: %s", self.aef_id, type(exc).__name__)
        finally:
            writer.close()

    def handle(self, method: str, target: str, body: bytes) -> int:
        """The status answered to one request; calls ``on_revoked`` for a valid notification of this subscription."""
        if method != "POST" or not secrets.compare_digest(target.encode(), self.path.encode()):
            self.refused += 1
            return 404
        try:
            notification: Any = json.loads(body)
            validate_request(_API, _CALLBACK, notification)
        except (ValueError, RecursionError, SchemaViolation):  # RecursionError: deep nesting (issue 21)
            self.refused += 1
            log.info("AEF %s: a notification refused (not an EventNotification)", self.aef_id)
            return 400
        if notification.get("subscriptionId") != self.subscription or notification["events"] not in REVOCATION_EVENTS:
            self.refused += 1
            return 204  # not ours to act on; acknowledged so that the CCF does not retry
        ids = (notification.get("eventDetail") or {}).get("apiInvokerIds") or []
        for invoker_id in ids:
            self.on_revoked(str(invoker_id))
        self.received += 1
        log.info("AEF %s: %s for %s", self.aef_id, notification["events"], ids)
        return 204
