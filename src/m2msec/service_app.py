"""What the MAF's and the MEF's ASGI applications share: the ASGI types and the request body guard.

:class:`JSONBodyGuard` is the rule both services apply before the application reads a body: a request with a body
(any method but GET, HEAD, DELETE, OPTIONS) must be ``application/json`` and at most ``max_body`` bytes (413 / 415
before reading; a chunked body that grows past the cap is cut off). How a refusal is worded is the service's own
(each answers its own problem types): a subclass gives :meth:`~JSONBodyGuard.refuse` and
:meth:`~JSONBodyGuard.too_large`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["PROBLEM_JSON", "ASGIApp", "JSONBodyGuard", "Message", "Receive", "Scope", "Send", "send_problem"]

PROBLEM_JSON = "application/problem+json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_problem(send: Send, status: int, body: bytes) -> None:
    """Answer ``status`` with the problem+json ``body`` and close the connection (the body was not read)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class JSONBodyGuard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def refuse(self, send: Send, name: str) -> None:
        """Answer the refusal ``name`` ("body-too-large" or "unsupported-media-type")."""
        raise NotImplementedError

    def too_large(self) -> Exception:
        """The exception that cuts off a body grown past ``max_body`` (the application answers it)."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self.refuse(send, "body-too-large")
            return
        if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
            await self.refuse(send, "unsupported-media-type")
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self.too_large()
            return message

        await self.app(scope, limited, send)
