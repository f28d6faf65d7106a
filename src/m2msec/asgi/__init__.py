"""A small ASGI server over m2msec's own TLS engine (docs/asgi.md; why: docs/decisions.md D95).

The MAF service (and later the CAPIF services) are ASGI applications that must see the TLS session that carries
each request: who authenticated, and the RFC 5705 exporter of that very connection. No maintained ASGI server runs
over m2msec's engine (they take Python's ``ssl``), so this one does, on h11 and
:func:`m2msec.transport.tls.start_server`::

    server = await serve(app, TLSContext.server(config), "127.0.0.1", 8443, max_body=64 * 1024)
    ...
    await server.aclose()

Each request's ``scope["extensions"]["m2msec.tls"]`` (also :func:`tls_extension(scope) <tls_extension>`) is a
:class:`TLSExtension`: ``session`` (the :class:`~m2msec.tls.engine.SessionInfo`) and
``export_keying_material(label, length, context=None)``.
"""

from m2msec.asgi.lifespan import LifespanFailed, LifespanMode
from m2msec.asgi.limits import (
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEAD,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Limits,
)
from m2msec.asgi.protocol import ASGIApp
from m2msec.asgi.scope import EXTENSION, TLSExtension, tls_extension
from m2msec.asgi.server import Server, serve

__all__ = [
    "DEFAULT_KEEP_ALIVE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEAD",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "EXTENSION",
    "ASGIApp",
    "LifespanFailed",
    "LifespanMode",
    "Limits",
    "Server",
    "TLSExtension",
    "serve",
    "tls_extension",
]
