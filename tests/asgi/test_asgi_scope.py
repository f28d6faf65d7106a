"""The scope built from an h11 request, without sockets."""

from __future__ import annotations

import h11
import pytest

from m2msec.asgi.scope import EXTENSION, TLSExtension, build_scope, head_size, tls_extension
from m2msec.errors import ConfigurationError, TLSProtocolError
from m2msec.tls.engine import SessionInfo


def session() -> SessionInfo:
    return SessionInfo(is_server=True, version="TLSv1.2", cipher="PSK-AES128-CBC-SHA256", psk_identity="id@x",
                       entity="Cae", server_name=None, identity_hint=None, session_id=b"")


def scope_of(target: str, version: str = "1.1") -> dict[str, object]:
    headers = [("Host", "maf"), ("X-Mixed-Case", "Value")] if version == "1.1" else []
    req = h11.Request(method="GET", target=target, headers=headers, http_version=version)
    ext = TLSExtension(session(), None)  # type: ignore[arg-type]
    return build_scope(req, client=("127.0.0.1", 1), server=("127.0.0.1", 2), extension=ext, state={"a": 1})


@pytest.mark.parametrize(("target", "path", "raw_path", "query"), [
    ("/", "/", b"/", b""),
    ("/a%2Fb/%E2%82%AC?x=%20&y", "/a/b/€", b"/a%2Fb/%E2%82%AC", b"x=%20&y"),
    ("https://maf.example:8443/keys?id=1", "/keys", b"/keys", b"id=1"),  # absolute-form
    ("https://maf.example?q", "/", b"/", b"q"),
    ("*", "*", b"*", b""),
])
def test_target_is_split_and_decoded(target: str, path: str, raw_path: bytes, query: bytes) -> None:
    scope = scope_of(target)
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (path, raw_path, query)


def test_scope_fields() -> None:
    scope = scope_of("/x")
    assert scope["type"] == "http" and scope["scheme"] == "https" and scope["root_path"] == ""
    assert scope["headers"] == [(b"host", b"maf"), (b"x-mixed-case", b"Value")]
    assert scope["client"] == ("127.0.0.1", 1) and scope["server"] == ("127.0.0.1", 2)
    assert scope["state"] == {"a": 1}
    assert isinstance(scope["extensions"], dict) and isinstance(scope["extensions"][EXTENSION], TLSExtension)
    assert scope_of("/", "1.0")["http_version"] == "1.0"


def test_head_size_counts_the_request_line_and_fields() -> None:
    req = h11.Request(method="GET", target="/abc", headers=[("host", "m")])
    assert head_size(req) == len(b"GET /abc HTTP/1.1\r\nhost: m\r\n\r\n")


def test_extension_forgets_its_connection() -> None:
    ext = TLSExtension(session(), object())  # type: ignore[arg-type]
    ext._forget()
    with pytest.raises(TLSProtocolError, match="closed"):
        ext.export_keying_material("EXPORTER-test", 16)
    assert "id@x" in repr(ext) and "psk" in repr(ext)


def test_tls_extension_of_a_scope() -> None:
    scope = scope_of("/")
    assert tls_extension(scope) is scope["extensions"][EXTENSION]  # type: ignore[index]
    for foreign in ({"type": "http"}, {"extensions": None}, {"extensions": {EXTENSION: {"session": "forged"}}}):
        with pytest.raises(ConfigurationError, match="did not arrive over m2msec TLS"):
            tls_extension(foreign)
