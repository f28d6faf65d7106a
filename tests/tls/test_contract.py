"""Contract test: the private pyOpenSSL/cryptography names the PSK shim uses must still exist.

If this fails after an upgrade, the shim in m2msec/tls/_shim.py must be ported before anything else
(docs/tls-stack.md gotcha 5; pyOpenSSL and cryptography are pinned in pyproject.toml for this reason).
"""

from __future__ import annotations

import importlib

import pytest
from OpenSSL import SSL

from m2msec.errors import ConfigurationError
from m2msec.tls import _shim, engine


@pytest.mark.parametrize("path", engine.PRIVATE_BINDINGS)
def test_private_binding_present(path: str) -> None:
    owner, _, attr = path.rpartition(".")
    module_name = ".".join(owner.split(".")[:2])
    obj: object = importlib.import_module(module_name)
    for part in owner.split(".")[2:]:
        obj = getattr(obj, part)
    if attr in {"_context", "_ssl", "_from_ssl"}:
        ctx = SSL.Context(SSL.TLS_METHOD)
        obj = ctx if attr == "_context" else SSL.Connection(ctx, None)
    assert hasattr(obj, attr), f"{path} disappeared: port the PSK shim"


def test_psk_bindings_compiled_in() -> None:
    from OpenSSL._util import lib

    assert lib.Cryptography_HAS_PSK == 1
    assert lib.Cryptography_HAS_PSK_TLSv1_3 == 1


def test_check_bindings_reports_missing_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shim, "PRIVATE_BINDINGS", (*engine.PRIVATE_BINDINGS, "OpenSSL._util.lib.NoSuchThing"))
    with pytest.raises(ConfigurationError, match="NoSuchThing"):
        engine.check_bindings()


def test_reverse_mapping_is_keyed_by_ssl_pointer() -> None:
    # the server callback finds our connection through Connection._reverse_mapping[SSL*]
    conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    assert SSL.Connection._reverse_mapping[conn._ssl] is conn


def test_engine_runs_on_openssl_3_or_later() -> None:
    assert engine.openssl_version().startswith("OpenSSL ")
    assert int(engine.openssl_version().split()[1].split(".")[0]) >= 3
