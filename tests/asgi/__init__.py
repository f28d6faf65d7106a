"""The ASGI server over m2msec TLS (docs/asgi.md).

A package, like tests/interop: its conftest.py is imported as ``asgi.conftest`` and does not shadow the top-level
one (``from conftest import ...`` still names tests/conftest.py).
"""
