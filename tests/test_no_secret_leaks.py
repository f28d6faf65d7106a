"""No key material in logs, messages, reprs or CLI output, on the real paths.

Every check searches with :func:`leaks.assert_no_secret` (raw, hex, base64 at each alignment, ...) for every
key in play: the TR-0038 test keys, a wrong key, generated keys, the SQLite master key, exported keying
material and the TLS master secret, private keys.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import (
    HOME_GATEWAY_CSE_ID,
    LIGHT1_AE,
    LIGHT1_ID,
    LIGHT1_KEY,
    LIGHT2_ID,
    LIGHT2_KEY,
    contexts,
    handshake_pair,
    make_table,
)
from leaks import assert_no_secret, secret_forms
from m2msec import http1
from m2msec.errors import ConfigurationError, CredentialsLoadError, HandshakeFailed, M2MSecError, StorageError
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV, SQLitePSKStore
from m2msec.keys.table import PSKEntry, TomlPSKTable, parse_toml_table
from m2msec.saef import CertificateCredentials, PSKCredentials, establish_sa
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_PSK, ONEM2M_DTLS_PSK, ONEM2M_PSK, TLS13_PSK
from test_dtls import client_ctx as dtls_client_ctx
from test_dtls import pump as dtls_pump
from test_dtls import server_ctx as dtls_server_ctx

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
#: published TR-0038 test keys (TS-0013's 3-byte key is left out: its hex is part of "mn-cse-123456")
TEST_KEYS = [bytes.fromhex(LIGHT1_KEY), bytes.fromhex(LIGHT2_KEY)]


def _described(*objects: object) -> str:
    """repr() and str() of each object, and the whole formatted traceback of each exception."""
    parts: list[str] = []
    for obj in objects:
        parts += [repr(obj), str(obj)]
        if isinstance(obj, BaseException):
            parts += traceback.format_exception(obj)
            parts += [repr(obj.args), repr(vars(obj))]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- the helper


@pytest.mark.parametrize("secret", [bytes.fromhex(LIGHT1_KEY), secrets.token_bytes(32), b"\x00\xff" * 5],
                         ids=["tr0038", "random32", "binary"])
def test_the_helper_finds_every_form(secret: bytes) -> None:
    """The helper itself can fail: each encoding, embedded at each offset of a longer blob, is found."""
    blobs: list[bytes] = [secret, secret.hex().encode(), secret.hex().upper().encode(), secret.hex(":").encode(),
                          repr(secret).encode(), f"key={secret!r}".encode()]
    for prefix_len in range(4):
        blob = secrets.token_bytes(prefix_len) + secret + secrets.token_bytes(5)
        blobs += [base64.b64encode(blob), base64.urlsafe_b64encode(blob), base64.b64encode(blob).rstrip(b"=")]
    blobs += [base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]
    for blob in blobs:
        with pytest.raises(AssertionError, match="found in output"):
            assert_no_secret(f"log line {blob.decode('latin-1')} tail", [secret])
        with pytest.raises(AssertionError, match="found in output"):
            assert_no_secret(b"x" + blob + b"y", [secret])
    assert_no_secret("nothing to see: " + secrets.token_hex(64), [secret])
    assert all(len(needle) >= 6 for _, needle in secret_forms(secret))


def test_the_helper_never_prints_the_secret() -> None:
    secret = bytes.fromhex(LIGHT1_KEY)
    with pytest.raises(AssertionError) as info:
        assert_no_secret(LIGHT1_KEY, [secret])
    assert_no_secret(str(info.value).split("\nassert")[0], [secret])


# ---------------------------------------------------------------------------------------------- engine


@pytest.mark.parametrize("profile", [ONEM2M_PSK, ECDHE_PSK, TLS13_PSK], ids=lambda p: p.name)
def test_engine_handshakes_and_refusals_at_debug(caplog: pytest.LogCaptureFixture, profile: object) -> None:
    caplog.set_level(logging.DEBUG)
    table = make_table()
    profiles = (profile,)  # type: ignore[var-annotated]
    server, client = contexts(table, profiles)  # type: ignore[arg-type]
    s, c = handshake_pair(server, client)
    exported = s.export_keying_material("EXPORTER-oneM2M-Connection", 48)
    assert exported == c.export_keying_material("EXPORTER-oneM2M-Connection", 48)
    found = [exported.reveal()]
    if s.session is not None and s.session.version == "TLSv1.2":
        found.append(s.master_secret().reveal())
    c.send(b"inside the SA")
    s.receive_data(c.data_to_send())

    wrong = secrets.token_bytes(16)
    wrong_server, wrong_client = contexts(table, profiles, key=wrong.hex())  # type: ignore[arg-type]
    with pytest.raises(HandshakeFailed) as bad_key:
        handshake_pair(wrong_server, wrong_client)
    unknown_server, unknown_client = contexts(table, profiles, identity="nobody@in.provider.com",  # type: ignore[arg-type]
                                              key=wrong.hex())
    with pytest.raises(HandshakeFailed) as unknown:
        handshake_pair(unknown_server, unknown_client)

    entry = table.lookup(LIGHT1_ID)
    text = "\n".join([caplog.text, _described(
        s, c, s.session, c.session, server, client, exported, entry, table, entry.key if entry else None,
        bad_key.value, unknown.value, ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)),
    )])
    assert_no_secret(text, [*TEST_KEYS, wrong, *found], where="engine output")


def test_dtls_handshake_and_refusal_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = dtls_client_ctx().dtls_connection(("127.0.0.1", 5684))
    s = dtls_pump(dtls_server_ctx(), client)
    exported = s.export_keying_material("EXPORTER-oneM2M-Connection", 32)
    wrong = secrets.token_bytes(16)
    unknown = dtls_client_ctx(identity="nobody@x.com", key=wrong.hex()).dtls_connection(("127.0.0.1", 5684))
    revealing = TLSContext.dtls_server(ServerConfig(make_table().lookup, profiles=(ONEM2M_DTLS_PSK,),
                                                    reveal_unknown_psk_identity=True))
    with pytest.raises(HandshakeFailed) as refused:  # told (debugging option): the refusal names the identity
        dtls_pump(revealing, unknown)
    hidden = dtls_client_ctx(identity="nobody@x.com", key=wrong.hex()).dtls_connection(("127.0.0.1", 5684))
    with pytest.raises(AssertionError, match="no handshake"):  # hidden (default, D34): silent as for a wrong key
        dtls_pump(dtls_server_ctx(), hidden)
    bad = dtls_client_ctx(key=wrong.hex()).dtls_connection(("127.0.0.1", 5684))
    with pytest.raises(AssertionError, match="no handshake"):  # DTLS drops the undecryptable Finished silently
        dtls_pump(dtls_server_ctx(), bad)
    text = "\n".join([caplog.text, _described(s, client, s.session, exported, refused.value, unknown, hidden, bad)])
    assert_no_secret(text, [*TEST_KEYS, wrong, exported.reveal(), s.master_secret().reveal()], where="DTLS output")


def test_certificate_configs_and_credentials_hide_the_private_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    text = _described(CertificateConfig(b"chain", pem), CertificateCredentials(b"chain", pem),
                      PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), HOME_GATEWAY_CSE_ID))
    assert_no_secret(text, [der, scalar, *TEST_KEYS], where="reprs")


# ---------------------------------------------------------------------------------------------- tables, stores


def test_tables_stores_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    generated = SecretKey.generate(32)
    toml = tmp_path / "psk.toml"
    toml.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n'
                    f'[[psk]]\nidentity = "gen@x.com"\nkey = "{generated.reveal().hex()}"\n')
    toml.chmod(0o600)
    table = TomlPSKTable(toml)
    db = tmp_path / "keys.db"
    store = SQLitePSKStore(db)
    store.add_many(table.entries())
    master = bytes.fromhex((tmp_path / "keys.db.key").read_text())
    rows = list(store.list())
    errors: list[BaseException] = []
    for bad_toml in (f'[[psk]]\nidentity = "a@b.c"\nkey = "{LIGHT2_KEY}zz"\n',   # not hex
                     f'[[psk]]\nidentity = "a@b.c"\nkey = "{LIGHT2_KEY}"\nkee = "{LIGHT2_KEY}"\n',  # unknown field
                     f'[[psk]]\nidentity = "a@b.c"\nkey = {LIGHT2_KEY[:6]}\n',  # not a string
                     f'[[psk]]\nidentity = "a@b.c"\nkey = "{"ab" * 300}"\n',  # too long
                     f'[[psk]]\nidentity = "a@b.c"\nkey = "{LIGHT2_KEY}"\n[[psk]]\nidentity = "a@b.c"\nkey = "00"\n',
                     f'[[psk]\nkey = "{LIGHT2_KEY}"\n'):  # TOML syntax
        with pytest.raises(CredentialsLoadError) as info:
            parse_toml_table(bad_toml, "bad.toml")
        errors.append(info.value)
    for bad_hex in (LIGHT2_KEY + "g", LIGHT2_KEY + "0", "0x" + LIGHT2_KEY + ":zz"):
        with pytest.raises(ConfigurationError) as info2:
            SecretKey.from_hex(bad_hex)
        errors.append(info2.value)
    with pytest.raises(StorageError) as wrong_master:
        monkeypatch.setenv(MASTER_KEY_ENV, secrets.token_hex(32))
        SQLitePSKStore(db)
    monkeypatch.delenv(MASTER_KEY_ENV)
    errors.append(wrong_master.value)
    with pytest.raises(M2MSecError) as conflict:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT2_KEY)))
    errors.append(conflict.value)
    entry = store.lookup("gen@x.com")
    store.close()
    with pytest.raises(StorageError) as closed:
        store.lookup(LIGHT1_ID)
    errors.append(closed.value)
    text = "\n".join([caplog.text, _described(table, store, entry, *rows, *table.entries(), generated, *errors)])
    assert_no_secret(text, [*TEST_KEYS, generated.reveal(), master], where="tables and stores")


# ---------------------------------------------------------------------------------------------- gateway


async def _cse(reader: object, writer: object) -> None:
    import asyncio

    assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nx-m2m-rsc: 2000\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
    await writer.drain()
    writer.close()


def _request(origin: str) -> http1.Message:
    return http1.Message(headers=[("host", HOME_GATEWAY_CSE_ID), ("x-m2m-ri", "r1"), ("x-m2m-origin", origin)],
                        method="GET", target=f"/{HOME_GATEWAY_CSE_ID}")


async def test_gateway_refusals_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    caplog.set_level(logging.DEBUG)
    cse = await asyncio.start_server(_cse, "127.0.0.1", 0)
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse.sockets[0].getsockname()[1]), port=0), make_table())
    await gw.start()
    wrong = secrets.token_bytes(8)
    outputs: list[str] = []
    try:
        sa = await establish_sa("127.0.0.1", gw.port, PSKCredentials(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                                        HOME_GATEWAY_CSE_ID))
        exported = sa.export_keying_material("EXPORTER-oneM2M-Connection", 32).reveal()
        ok = await sa.request(_request(LIGHT1_AE))
        refused = await sa.request(_request("Clight-AE2"))
        assert (ok.status, refused.status, refused.header("x-m2m-rsc")) == (200, 403, "4106")
        outputs += [repr(ok), repr(refused), refused.body.decode(), _described(sa, sa.session)]
        await sa.close()
        for identity, key in ((LIGHT1_ID, wrong), ("nobody@in.provider.com", wrong), (LIGHT2_ID, wrong)):
            with pytest.raises(HandshakeFailed) as info:
                await establish_sa("127.0.0.1", gw.port, PSKCredentials(identity, SecretKey(key), HOME_GATEWAY_CSE_ID))
            outputs.append(_described(info.value))
        await asyncio.sleep(0.1)  # let the gateway log the failures
    finally:
        await gw.close()
        cse.close()
    assert "failed" in caplog.text and "4106" in caplog.text  # the refusals were logged
    assert_no_secret("\n".join([caplog.text, *outputs]), [*TEST_KEYS, wrong, exported], where="gateway output")


# ---------------------------------------------------------------------------------------------- CLI processes


def _run(args: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run([*M2MSEC, *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@contextlib.contextmanager
def _gateway_process(tmp_path: Path, table: Path) -> Iterator[tuple[int, list[str]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bport = s.getsockname()[1]
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / HOME_GATEWAY_CSE_ID).write_text("hello\n")
    backend = subprocess.Popen([sys.executable, "-m", "http.server", str(bport), "--bind", "127.0.0.1",
                                "-d", str(tmp_path / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen([*M2MSEC, "-v", "gateway", "--listen", "127.0.0.1:0", "--psk-table", str(table),
                           "--backend", f"http://127.0.0.1:{bport}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs: list[str] = []
    try:
        assert gw.stdout is not None
        line = gw.stdout.readline()
        assert line.startswith("m2msec gateway on"), line
        yield int(line.split()[3].rsplit(":", 1)[1]), logs
    finally:
        gw.terminate()
        backend.terminate()
        out, err = gw.communicate(timeout=10)
        backend.wait(timeout=10)
        logs += [out, err]


def test_cli_processes_at_debug(tmp_path: Path) -> None:
    def private(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    wrong = secrets.token_bytes(8)
    table = private("psk.toml", f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n')
    db = str(tmp_path / "keys.db")
    outputs: list[str] = []
    with _gateway_process(tmp_path, Path(table)) as (port, logs):
        base = ["-v", "request", "--connect", f"127.0.0.1:{port}", "--entity-id", HOME_GATEWAY_CSE_ID]
        light1 = ["--identity", LIGHT1_ID, "--key-file", private("light1.key", LIGHT1_KEY)]
        outputs.append(_run([*base, *light1, "--origin", LIGHT1_AE, f"/{HOME_GATEWAY_CSE_ID}"]))
        outputs.append(_run([*base, *light1, "--origin", "Clight-AE2", f"/{HOME_GATEWAY_CSE_ID}"]))
        outputs.append(_run([*base, "--identity", LIGHT1_ID, "--key-file", private("wrong.key", wrong.hex()), "/x"]))
        outputs.append(_run([*base, "--identity", "nobody@x.com", "--key-env", "K", "/x"], env={"K": wrong.hex()}))
        outputs.append(_run([*base, "--identity", LIGHT1_ID, "--key-env", "K", "/x"], env={"K": LIGHT2_KEY + "zz"}))
    assert "HTTP 200" in outputs[0] and "4106" in outputs[1] and "handshake failed" in outputs[2]
    assert "handshake failed" in outputs[3] and "not valid hexadecimal" in outputs[4]

    keys = ["-v", "keys", "--db", db]
    outputs.append(_run([*keys, "add", "--identity", LIGHT1_ID, "--key-file", private("l1.key", LIGHT1_KEY)]))
    outputs.append(_run([*keys, "add", "--identity", "gen@x.com", "--generate", "32", "--out",
                         str(tmp_path / "gen.key")]))
    generated = bytes.fromhex((tmp_path / "gen.key").read_text())
    master = bytes.fromhex((tmp_path / "keys.db.key").read_text())
    outputs.append(_run([*keys, "add", "--identity", "gen2@x.com", "--generate", "32", "--out",
                         str(tmp_path / "gen.key")]))  # exists: refused
    outputs.append(_run([*keys, "add", "--identity", LIGHT1_ID, "--key-env", "K"], env={"K": LIGHT2_KEY}))  # conflict
    outputs.append(_run([*keys, "add", "--identity", "x@y.z", "--key-file", private("bad.key", LIGHT2_KEY + "zz")]))
    bad_toml = private("bad.toml", f'[[psk]]\nidentity = "a@b.c"\nkey = "{LIGHT2_KEY}q"\n')
    outputs.append(_run([*keys, "import", bad_toml]))
    outputs.append(_run([*keys, "list"]))
    outputs.append(_run([*keys, "list"], env={MASTER_KEY_ENV: wrong.hex() * 4}))  # wrong master key
    outputs.append(_run([*keys, "list"], env={MASTER_KEY_ENV: master.hex()[:-2]}))  # malformed master key
    loose = private("loose.key", LIGHT2_KEY)
    os.chmod(loose, 0o640)
    outputs.append(_run([*keys, "add", "--identity", "x@y.z", "--key-file", loose]))
    assert outputs[-1].startswith("exit 2") and "chmod 600" in outputs[-1]
    assert "1a2b" not in outputs[-4]  # list shows no key

    assert_no_secret("\n".join([*outputs, *logs]), [*TEST_KEYS, wrong, generated, master], where="CLI output")
    assert "handshake failed" in "".join(logs) or "failed" in "".join(logs)  # the gateway logged the refusals


# ---------------------------------------------------------------------------------------------- pki (issue 21)


def _private_key_secrets(path: Path) -> tuple[list[bytes], list[str]]:
    """The DER and the private scalar of a PEM private key file, and its PEM body lines (base64, wrapped)."""
    pem = path.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return [der, key.private_numbers().private_value.to_bytes(32, "big")], body


def test_pki_cli_at_debug(tmp_path: Path) -> None:
    """Every ``m2msec -v pki`` action and its refusals: no private key byte, PEM line or PEM armour printed."""
    ca, leaf, req, inter = (str(tmp_path / n) for n in ("ca", "leaf", "req", "inter"))
    cse = ["--flavour", "cse-id", "--id", "in-cse", "--sp-domain", "m2m.provider.com"]
    outputs = [
        _run(["-v", "pki", "ca", "--out", ca, "--name", "root", "--permit-dns", "m2m.provider.com"]),
        _run(["-v", "pki", "ca", "--out", inter, "--name", "inter", "--issuer-prefix", ca, "--permit-dns",
              "m2m.provider.com"]),
        _run(["-v", "pki", "issue", "--ca", ca, *cse, "--out", leaf]),
        _run(["-v", "pki", "csr", *cse, "--out", req]),
        _run(["-v", "pki", "sign-csr", "--ca", ca, "--csr", f"{req}.csr", "--flavour", "cse-id", "--out",
              str(tmp_path / "signed.crt")]),
        _run(["-v", "pki", "crl", "--ca", ca, "--revoke", "0x1234", "--out", str(tmp_path / "ca.crl")]),
        _run(["-v", "pki", "show", f"{leaf}.crt"]),
    ]
    assert [out.split("\n", 1)[0] for out in outputs] == ["exit 0"] * len(outputs), outputs
    keys = [Path(f"{p}.key") for p in (ca, inter, leaf, req)]
    secrets_, lines = [], []
    for path in keys:
        found, body = _private_key_secrets(path)
        secrets_ += found
        lines += body
    refusals = [
        _run(["-v", "pki", "show", f"{leaf}.key"]),  # a private key where a certificate belongs
        _run(["-v", "pki", "sign-csr", "--ca", ca, "--csr", f"{leaf}.key", "--flavour", "cse-id", "--out",
              str(tmp_path / "x.crt")]),
        _run(["-v", "pki", "issue", "--ca", ca, *cse, "--out", leaf]),  # exists
    ]
    (tmp_path / "ca.key").chmod(0o644)  # a readable CA key is refused, never shown
    refusals.append(_run(["-v", "pki", "issue", "--ca", ca, *cse, "--out", str(tmp_path / "other")]))
    (tmp_path / "ca.key").chmod(0o600)
    truncated = tmp_path / "cut"
    truncated.with_suffix(".crt").write_bytes((tmp_path / "ca.crt").read_bytes())
    cut = truncated.with_suffix(".key")
    cut.write_bytes((tmp_path / "ca.key").read_bytes()[:-40])  # a damaged PEM that still holds most of the key
    cut.chmod(0o600)
    refusals.append(_run(["-v", "pki", "crl", "--ca", str(truncated), "--out", str(tmp_path / "y.crl")]))
    assert not any(out.startswith("exit 0") for out in refusals), refusals
    text = "\n".join(outputs + refusals)
    assert_no_secret(text, secrets_, where="pki output")
    assert "PRIVATE KEY" not in text
    for line in lines:
        assert line not in text, "a line of a private key PEM was printed"


# ---------------------------------------------------------------------------------------------- coaps (issue 21)


async def test_coaps_refusals_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """The coaps relay at DEBUG: refused requests (4106, an unknown critical option, a repeated From), a wrong-key
    DTLS handshake; no log line, CoAP error payload or repr holds a key."""
    import asyncio

    from m2msec.gateway import coap
    from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
    from m2msec.transport.dtls import create_dtls_endpoint

    caplog.set_level(logging.DEBUG)

    class Inbox(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.q: asyncio.Queue[bytes] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: object) -> None:
            self.q.put_nowait(data)

    gw = CoapsGateway(CoapsConfig(backend_host="127.0.0.1", backend_port=9, port=0), make_table())
    await gw.start()
    wrong = secrets.token_bytes(8)
    outputs: list[str] = []
    try:
        ctx = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                  profiles=(ONEM2M_DTLS_PSK,), peer_entity=HOME_GATEWAY_CSE_ID))
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, ctx)
        bad = [[(coap.ONEM2M_FR, b"CAdmin")], [(coap.ONEM2M_FR, LIGHT1_AE.encode()), (2049, LIGHT1_KEY.encode())],
               [(coap.ONEM2M_FR, LIGHT1_AE.encode()), (coap.ONEM2M_FR, b"CAdmin")]]
        for n, options in enumerate(bad):
            msg = coap.Message(coap.MessageType.CON, coap.GET, 0x100 + n, bytes([n + 1]), [], b"").with_options(
                (coap.URI_PATH, b"cse"), (coap.ONEM2M_RQI, b"r"), *options)
            transport.sendto(msg.encode())  # type: ignore[union-attr]
            reply = coap.Message.decode(await asyncio.wait_for(inbox.q.get(), 5))  # type: ignore[union-attr]
            assert coap.format_code(reply.code) in ("4.00", "4.03")
            outputs += [repr(reply), reply.payload.decode("utf-8", "replace")]
        transport.close()  # type: ignore[union-attr]
        wrong_ctx = TLSContext.dtls_client(ClientConfig(LIGHT1_ID, SecretKey(wrong), profiles=(ONEM2M_DTLS_PSK,),
                                                        peer_entity=HOME_GATEWAY_CSE_ID))
        with pytest.raises((HandshakeFailed, TimeoutError)) as info:  # the server's alert may be lost: either
            await asyncio.wait_for(create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, wrong_ctx), 3)
        outputs.append(_described(info.value))
        await asyncio.sleep(0.1)
    finally:
        await gw.close()
    assert "4106" in caplog.text or "refused" in caplog.text
    # the CoAP diagnostic may name the option, never echo a value that happens to be a key
    assert_no_secret("\n".join([caplog.text, *outputs]), [*TEST_KEYS, wrong], where="coaps output")
