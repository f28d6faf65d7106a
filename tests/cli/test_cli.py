"""The m2msec command line: real processes for gateway/request/demo, main() for the key store."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec.cli.main import main

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*M2MSEC, *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def private(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_keys_add_list_remove_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "keys.db")
    keyfile = private(tmp_path / "light1.key", LIGHT1_KEY + "\n")
    assert main(["keys", "--db", db, "add", "--identity", LIGHT1_ID, "--entity", LIGHT1_AE, "--key-file", keyfile]) == 0
    os.environ["LIGHT2_KEY"] = LIGHT2_KEY
    try:
        assert main(["keys", "--db", db, "add", "--identity", LIGHT2_ID, "--key-env", "LIGHT2_KEY"]) == 0
    finally:
        del os.environ["LIGHT2_KEY"]
    assert main(["keys", "--db", db, "add", "--identity", "new@x.com", "--generate", "32",
                 "--out", str(tmp_path / "new.key")]) == 0
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert main(["keys", "--db", db, "list"]) == 0
    out = capsys.readouterr().out
    assert LIGHT1_ID in out and LIGHT1_AE in out and "3 identities" in out
    assert LIGHT1_KEY not in out and LIGHT2_KEY not in out
    assert (tmp_path / "new.key").read_text().strip() not in out
    assert main(["keys", "--db", db, "remove", "--identity", LIGHT2_ID]) == 0
    toml = private(tmp_path / "t.toml", f'[[psk]]\nidentity = "{LIGHT2_ID}"\nkey = "{LIGHT2_KEY}"\n')
    assert main(["keys", "--db", db, "import", toml]) == 0
    assert main(["keys", "--db", db, "import", toml]) == 1  # conflict: nothing imported
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("m2msec: error:") and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "--db", "{db}", "remove", "--identity", "nobody@x.com"], "no entry"),
        (["keys", "--db", "{db}", "add", "--identity", "a@b.c", "--key-env", "M2MSEC_TEST_UNSET"], "not set"),
        (["keys", "--db", "{db}", "add", "--identity", "a@b.c", "--key-file", "{tmp}/none"], "cannot read"),
        (["keys", "--db", "{db}", "add", "--identity", "a@b.c", "--generate", "32"], "--out"),
        (["keys", "--db", "{db}", "import", "{tmp}/none.toml"], "cannot read"),
        (["gateway", "--psk-table", "{tmp}/none.toml", "--backend", "http://127.0.0.1:1"], "cannot read"),
        (["gateway", "--db", "{db}", "--backend", "ftp://x"], "backend must be"),
        (["gateway", "--db", "{tmp}/absent.db", "--backend", "http://127.0.0.1:1"], "no such key store"),
        (["gateway", "--db", "{db}", "--backend", "http://127.0.0.1:1", "--profiles", "rsa-psk"], "certificate"),
        (["gateway", "--db", "{db}", "--backend", "http://127.0.0.1:1", "--listen", "x:y"], "HOST:PORT"),
        (["gateway", "--db", "{db}", "--backend", "http://127.0.0.1:1", "--profiles", "onem2m,ecdhe-ecdsa"],
         "need --sp-id"),
        (["gateway", "--db", "{db}", "--coap-backend", "127.0.0.1:1", "--coaps-profiles", "ecdhe-ecdsa-dtls"],
         "need --sp-id"),
        (["gateway", "--db", "{db}", "--backend", "http://127.0.0.1:1", "--sp-id", "//not a domain"], "--sp-id: "),
        (["request", "--connect", "127.0.0.1:1", "--identity", "a@b.c", "--key-env", "M2MSEC_T", "--entity-id",
          "mn-cse-1", "/"], "cannot connect"),
        (["request", "--connect", "127.0.0.1:1", "--identity", "a@b.c", "--key-env", "M2MSEC_T", "/"],
         "give --entity-id"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "keys.db"
    main(["keys", "--db", str(db), "add", "--identity", "x@y.z", "--key-file",
          private(tmp_path / "k", "00112233")])
    capsys.readouterr()
    os.environ["M2MSEC_T"] = "001122"
    try:
        code = main([a.replace("{db}", str(db)).replace("{tmp}", str(tmp_path)) for a in argv])
    finally:
        del os.environ["M2MSEC_T"]
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_world_readable_key_file_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "k"
    keyfile.write_text(LIGHT1_KEY)
    keyfile.chmod(0o644)
    assert main(["keys", "--db", str(tmp_path / "db"), "add", "--identity", "a@b.c", "--key-file", str(keyfile)]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_demo_without_acme_names_the_install_command(tmp_path: Path) -> None:
    """The demo itself runs in tests/e2e/test_demo.py (it needs ACME); without ACME it says how to get it."""
    result = run(["demo"], cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path),
                                                "M2MSEC_ACME": str(tmp_path / "no-acmecse")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "m2msec: error: ACME (the oneM2M CSE the demo runs) is not installed: run bash scripts/install.sh"]
    assert result.stdout == ""


def test_demo_keep_needs_a_new_directory(tmp_path: Path) -> None:
    result = run(["demo", "--keep", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"m2msec: error: --keep {tmp_path}: exists already (give a new directory)"]
    missing = tmp_path / "missing" / "run"
    result = run(["demo", "--keep", str(missing)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"m2msec: error: --keep {missing}: its parent directory does not exist"]


@contextlib.contextmanager
def gateway_with_backend(tmp_path: Path, page: str, *extra: str) -> Iterator[int]:
    """`m2msec gateway` as a real process (PSK table with Light 1, plus ``extra`` options) in front of a real
    HTTP server (python -m http.server) that serves ``/<page>``; yields the gateway's port."""
    import socket

    table = private(tmp_path / "psk.toml",
                    f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n')
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / page).write_text("hello from the backend\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bport = s.getsockname()[1]
    backend = subprocess.Popen([sys.executable, "-m", "http.server", str(bport), "--bind", "127.0.0.1",
                                "-d", str(tmp_path / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen([*M2MSEC, "gateway", "--listen", "127.0.0.1:0", "--psk-table", table,
                           "--backend", f"http://127.0.0.1:{bport}", *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert gw.stdout is not None
        line = gw.stdout.readline()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), line + (gw.stderr.read() if gw.stderr else "")
        yield int(line.split()[3].rsplit(":", 1)[1])
    finally:
        gw.terminate()
        backend.terminate()
        _, err = gw.communicate(timeout=10)
        backend.wait(timeout=10)
        assert LIGHT1_KEY not in err  # no key in the gateway's log
    assert gw.returncode == 0  # SIGTERM is a clean shutdown


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with gateway_with_backend(tmp_path, "mn-cse-123456") as port:
        yield port, tmp_path


def test_request_through_gateway_process(gateway_process: tuple[int, Path]) -> None:
    port, tmp = gateway_process
    keyfile = private(tmp / "light1.key", LIGHT1_KEY)
    base = ["request", "--connect", f"127.0.0.1:{port}", "--identity", LIGHT1_ID, "--key-file", keyfile,
            "--entity-id", "mn-cse-123456"]
    ok = run([*base, "--origin", LIGHT1_AE, "/mn-cse-123456"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("HTTP 200") and "hello from the backend" in ok.stdout
    assert "PSK-AES128-CBC-SHA256" in ok.stderr
    anyone = run([*base[:-2], "--insecure-any-entity", "--origin", LIGHT1_AE, "/mn-cse-123456"])
    assert anyone.stdout.startswith("HTTP 200") and "IdB check disabled" in anyone.stderr  # the opt-out is loud
    refused = run([*base, "--origin", "Clight-AE2", "/mn-cse-123456"])
    assert refused.stdout.startswith("HTTP 403") and "x-m2m-rsc: 4106" in refused.stdout
    wrong = private(tmp / "wrong.key", "00" * 8)
    bad = run([*base[:-4], "--key-file", wrong, "--entity-id", "mn-cse-123456", "/mn-cse-123456"])
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "handshake failed" in bad.stderr
    assert "bad record mac" in bad.stderr  # the wrong key, not some other failure


def test_certificate_saef_with_pki_gateway_and_request_processes(tmp_path: Path) -> None:
    """A user's path: `m2msec pki` makes the CA and certificates, `m2msec gateway` serves PSK and certificate
    clients on one port, `m2msec request --cert` talks through it (TS-0003 §8.2.2.2)."""

    def ok(args: list[str]) -> None:
        result = run(args)
        assert result.returncode == 0, result.stderr

    ca, srv, cli = tmp_path / "ca", tmp_path / "gw", tmp_path / "mn"
    ok(["pki", "ca", "--out", str(ca), "--name", "provider root", "--permit-dns", "m2m.provider.com"])
    ok(["pki", "issue", "--ca", str(ca), "--flavour", "cse-id", "--id", "in-cse", "--sp-domain", "m2m.provider.com",
        "--out", str(srv)])
    ok(["pki", "issue", "--ca", str(ca), "--flavour", "cse-id", "--id", "mn-cse-123456",
        "--sp-domain", "m2m.provider.com", "--out", str(cli)])
    extra = ["--profiles", "onem2m,ecdhe-ecdsa", "--cert", f"{srv}.crt", "--key", f"{srv}.key",
             "--client-ca", f"{ca}.crt", "--cse-id", "in-cse", "--sp-id", "//m2m.provider.com"]
    with gateway_with_backend(tmp_path, "in-cse", *extra) as port:
        base = ["request", "--connect", f"127.0.0.1:{port}", "--cert", f"{cli}.crt", "--cert-key", f"{cli}.key",
                "--ca", f"{ca}.crt", "--entity-id", "in-cse"]
        good = run([*base, "--origin", "/mn-cse-123456", "/in-cse"])
        assert good.returncode == 0, good.stderr
        assert good.stdout.startswith("HTTP 200") and "hello from the backend" in good.stdout
        assert "ECDHE-ECDSA-AES128-SHA256" in good.stderr
        bad = run([*base, "--origin", "/another-cse", "/in-cse"])
        assert bad.stdout.startswith("HTTP 403") and "x-m2m-rsc: 4106" in bad.stdout
        wrong_idb = run([*base[:-2], "--entity-id", "not-this-cse", "--origin", "/mn-cse-123456", "/in-cse"])
        assert wrong_idb.returncode == 1 and "not IdB" in wrong_idb.stderr and wrong_idb.stderr.count("\n") == 1
        keyfile = private(tmp_path / "light1.key", LIGHT1_KEY)
        psk = run(["request", "--connect", f"127.0.0.1:{port}", "--identity", LIGHT1_ID, "--key-file", keyfile,
                   "--entity-id", "in-cse", "--origin", LIGHT1_AE, "/in-cse"])
        assert psk.stdout.startswith("HTTP 200"), psk.stderr

