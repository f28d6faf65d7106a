"""Contract test: the private pyOpenSSL/cryptography names the PSK shim uses must still exist.

If this fails after an upgrade, the shim in m2msec/tls/_shim.py must be ported before anything else
(docs/tls-stack.md gotcha 5; pyOpenSSL and cryptography are pinned in pyproject.toml for this reason).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

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
    if attr in {"_context", "_ssl", "_from_ssl", "_into_ssl"}:
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


SRC = Path(__file__).resolve().parents[2] / "src" / "m2msec"
TLS = SRC / "tls"
SHIM = TLS / "_shim.py"
RAW_NAMES = {"_lib", "_ffi"}


def _raw_binding_uses(tree: ast.AST) -> list[str]:
    """Every mention of the raw cffi bindings in a module: the names _lib/_ffi, and OpenSSL._util."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in RAW_NAMES:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in RAW_NAMES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.alias) and (node.name in RAW_NAMES or (node.asname or "") in RAW_NAMES):
            found.append(f"line {node.lineno}: import {node.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("OpenSSL._util"):
            found.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import) and any(a.name.startswith("OpenSSL._util") for a in node.names):
            found.append(f"line {node.lineno}: import OpenSSL._util")
    return found


def _imports_openssl(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "OpenSSL" or a.name.startswith("cryptography.hazmat.bindings")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] == "OpenSSL" or node.module.startswith("cryptography.hazmat.bindings"):
                found.append(f"line {node.lineno}: from {node.module}")
    return found


def _modules() -> list[Path]:
    paths = sorted(SRC.rglob("*.py"))
    assert SHIM in paths and len(paths) > 20
    return paths


def test_only_the_shim_touches_the_raw_bindings() -> None:
    offenders = {
        str(path.relative_to(SRC)): uses
        for path in _modules()
        if path != SHIM and (uses := _raw_binding_uses(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}, "only m2msec/tls/_shim.py may touch _lib, _ffi or OpenSSL._util"
    assert _raw_binding_uses(ast.parse(SHIM.read_text())), "the scan found nothing in the shim itself"
    assert "OpenSSL._util" in SHIM.read_text()


def test_only_the_tls_package_imports_openssl() -> None:
    offenders = {
        str(path.relative_to(SRC)): uses
        for path in _modules()
        if TLS not in path.parents and (uses := _imports_openssl(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}, "only m2msec/tls/ may import OpenSSL or cryptography.hazmat.bindings"
    assert _imports_openssl(ast.parse((TLS / "connection.py").read_text())), "the scan found nothing in tls/"


def test_every_module_imports_and_the_facade_exports_its_api() -> None:
    # every module imports (no cycle left by the split), and the façade still exports the public API
    for path in _modules():
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)
    for name in engine.__all__:
        assert hasattr(engine, name), name
