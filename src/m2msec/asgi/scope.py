"""The ASGI ``http`` scope of one request, and the ``m2msec.tls`` extension that carries the TLS session into it.

Pure: built from an h11 ``Request`` and what the connection knows, no I/O (docs/asgi.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import h11

from m2msec.errors import ConfigurationError, TLSProtocolError
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import SessionInfo, TLSConnection

__all__ = [
    "ASGI_VERSION",
    "EXTENSION",
    "TLSExtension",
    "address",
    "ambiguous",
    "build_scope",
    "declared_length",
    "head_size",
    "tls_extension",
]

#: the ASGI version and HTTP spec version this server implements
ASGI_VERSION: dict[str, str] = {"version": "3.0", "spec_version": "2.3"}
#: the key of :class:`TLSExtension` in ``scope["extensions"]``
EXTENSION = "m2msec.tls"


class TLSExtension:
    """What an application learns of the TLS connection that carries its request.

    ``session`` is the :class:`~m2msec.tls.engine.SessionInfo` (who authenticated: PSK identity or peer
    certificate, the associated entity, the cipher; no key material). :meth:`export_keying_material` is the
    RFC 5705 exporter of *this* connection. Nothing else of the connection is reachable from here, and once the
    connection is gone the exporter refuses (the connection is no longer referenced). :meth:`close` lets the
    application end the connection (e.g. its peer's authorization was revoked). Weak references to it are allowed.
    """

    __slots__ = ("__closer", "__connection", "__weakref__", "session")

    def __init__(self, session: SessionInfo, connection: TLSConnection,
                 closer: Callable[[], None] | None = None) -> None:
        self.session = session
        self.__connection: TLSConnection | None = connection
        self.__closer = closer

    def __repr__(self) -> str:
        who = self.session.psk_identity if self.session.psk_identity is not None else self.session.entity
        return f"<TLSExtension {self.session.authentication} {who!r} {self.session.cipher}>"

    def export_keying_material(self, label: str, length: int, context: bytes | None = None) -> SecretKey:
        """RFC 5705 keying material of this connection (``context=None``: no context, TS-0003 §10.3.1).

        Raises:
            TLSProtocolError: the connection is closed.
            ConfigurationError: a reserved or non-ASCII label, or a length outside 1..16384."""
        connection = self.__connection
        if connection is None:
            raise TLSProtocolError("the TLS connection of this request is closed")
        return connection.export_keying_material(label, length, context)

    def master_secret(self) -> SecretKey:
        """The TLS 1.2 master secret of this connection (CAPIF AEFPSK input, TS 33.122 §6.5.2.1; with
        ``session.session_id``, P1 of the derivation).

        Raises:
            TLSProtocolError: the connection is closed, or its session is not TLS 1.2."""
        connection = self.__connection
        if connection is None:
            raise TLSProtocolError("the TLS connection of this request is closed")
        return connection.master_secret()

    def close(self) -> None:
        """Close this connection: at once when it is idle (TLS close_notify, then the transport), else once the
        response in flight is sent (it carries ``connection: close``). Nothing when it is already closed."""
        closer = self.__closer
        if closer is not None:
            closer()

    def _forget(self) -> None:
        """The connection is closed: drop it (called by the server)."""
        self.__connection = None
        self.__closer = None


def tls_extension(scope: Mapping[str, Any]) -> TLSExtension:
    """The :class:`TLSExtension` of a request scope (``request.scope`` in FastAPI/Starlette).

    Raises:
        ConfigurationError: the request did not arrive through :func:`m2msec.asgi.serve` (another ASGI server,
            a test client): there is no authenticated TLS session to trust."""
    extension = (scope.get("extensions") or {}).get(EXTENSION)
    if not isinstance(extension, TLSExtension):
        raise ConfigurationError("this request did not arrive over m2msec TLS (no m2msec.tls extension in its "
                                 "scope): serve the application with m2msec.asgi.serve")
    return extension


def address(value: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a socket address (an IPv6 4-tuple too); None for anything else."""
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str) and isinstance(value[1], int):
        return (value[0], value[1])
    return None


def declared_length(request: h11.Request) -> int | None:
    """The request's Content-Length (h11 has checked it is one well-formed number), None when there is none."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


def head_size(request: h11.Request) -> int:
    """Bytes of the request line and header fields, as sent without optional whitespace."""
    size = len(request.method) + len(request.target) + 12  # "M T HTTP/1.1\r\n"
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


def ambiguous(request: h11.Request) -> bool:
    """Both Transfer-Encoding and Content-Length, or Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1, §6.3): h11 would
    read such a body as chunked, while another parser on the path might not (request smuggling); or more than one
    Host (RFC 9112 §3.2: answered with 400)."""
    names = [name for name, _ in request.headers]
    if names.count(b"host") > 1:
        return True
    if b"transfer-encoding" not in names:
        return False
    return b"content-length" in names or request.http_version == b"1.0"


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """``(raw_path, query_string)`` of an origin-form, absolute-form or asterisk-form request target."""
    if not target.startswith(b"/") and target != b"*":
        scheme_end = target.find(b"://")
        if scheme_end > 0:  # absolute-form (RFC 9112 §3.2.2): the path starts after the authority
            slash = target.find(b"/", scheme_end + 3)
            mark = target.find(b"?", scheme_end + 3)
            if slash < 0 or 0 <= mark < slash:
                target = b"/" + (target[mark:] if mark >= 0 else b"")
            else:
                target = target[slash:]
    path, _, query = target.partition(b"?")
    return path, query


def build_scope(
    request: h11.Request,
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    extension: TLSExtension,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ASGI 3 ``http`` scope of ``request`` (HTTP spec 2.3)."""
    raw_path, query = _split_target(request.target)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "https",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name, value) for name, value in request.headers],  # h11 lowercases the names
        "client": client,
        "server": server,
        "extensions": {EXTENSION: extension},
    }
    if state is not None:
        scope["state"] = dict(state)  # each request gets a shallow copy of the lifespan state
    return scope
