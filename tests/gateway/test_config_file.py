"""``m2msec gateway --config FILE`` and ``--check-config``: the file and the flags give the same options, flags win,
every error names the file and the key, the docs list the parser's keys, the example file is accepted."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY
from m2msec.cli.gateway import gateway_parser, resolve
from m2msec.cli.main import build_parser, main
from m2msec.errors import ConfigurationError
from m2msec.gateway.config import file_options, reference_table
from m2msec.gateway.reload import RELOADABLE

ROOT = Path(__file__).resolve().parents[2]
TABLE = f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n'
M2MSEC = [sys.executable, "-m", "m2msec"]


def parse(*argv: str) -> argparse.Namespace:
    return resolve(build_parser().parse_args(["gateway", *argv]))


def settings(args: argparse.Namespace) -> dict[str, object]:
    """The option values (the parser's dests), nothing about where they came from."""
    return {a.dest: getattr(args, a.dest) for a in file_options(gateway_parser()).values()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    table = tmp_path / "psk.toml"
    table.write_text(TABLE)
    table.chmod(0o600)
    return tmp_path


def test_file_and_flags_give_equal_settings(folder: Path) -> None:
    flags = ["--listen", "127.0.0.1:0", "--backend", "http://127.0.0.1:9/p", "--psk-table", str(folder / "psk.toml"),
             "--max-connections", "500", "--max-sa-lifetime", "60", "--unbound", "forward", "--quiet",
             "--reveal-unknown-psk-identity", "--profiles", "onem2m", "--workers", "2", "--maf-timeout", "3"]
    (folder / "g.toml").write_text(
        'listen = "127.0.0.1:0"\nbackend = "http://127.0.0.1:9/p"\npsk-table = "psk.toml"\nmax-connections = 500\n'
        'max-sa-lifetime = 60\nunbound = "forward"\nquiet = true\nreveal-unknown-psk-identity = true\n'
        'profiles = "onem2m"\nworkers = 2\nmaf-timeout = 3.0\n')
    by_flags, by_file = settings(parse(*flags)), settings(parse("--config", str(folder / "g.toml")))
    assert by_file == by_flags
    assert by_file["max_connections"] == 500 and by_file["log_level"] != settings(parse())["log_level"]
    assert by_file["psk_table"] == folder / "psk.toml"  # relative to the file's folder


def test_flags_override_the_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "g.toml").write_text('psk-table = "psk.toml"\nmax-connections = 500\nunbound = "forward"\n'
                                   "handshake-timeout = 3\n")
    monkeypatch.chdir("/")
    args = parse("--config", str(folder / "g.toml"), "--max-connections", "7", "--unbound", "reject",
                 "--db", "/x.db")
    assert (args.max_connections, args.unbound, args.handshake_timeout) == (7, "reject", 3.0)
    assert args.db == Path("/x.db") and args.psk_table is None  # --db drops the file's psk-table
    args = parse("--config", str(folder / "g.toml"), "--max-connections", "10000")  # explicit, equal to nothing
    assert args.max_connections == 10000


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("max-connection = 5\n", "max-connection", "unknown key"),
    ("max_connections = 5\n", "max_connections", "'max-connections'"),
    ('max-connections = "5"\n', "max-connections", "expected an integer, not a string"),
    ("max-connections = true\n", "max-connections", "expected an integer, not a boolean"),
    ("handshake-timeout = \"x\"\n", "handshake-timeout", "expected a number"),
    ('unbound = "maybe"\n', "unbound", "'maybe' is not one of reject, forward"),
    ('loop = "trio"\n', "loop", "not one of asyncio, uvloop"),
    ('quiet = "yes"\n', "quiet", "expected true or false"),
    ("cert = 5\n", "cert", "expected a string, not an integer"),
    ('cert = ""\n', "cert", "not an empty string"),
    ('psk-table = "a"\ndb = "b"\n', "db", "not allowed with 'psk-table'"),
    ("[maf]\nurl = 1\n", "maf", "expected a string, not a table"),
    ('config = "other.toml"\n', "config", "unknown key"),
])
def test_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as err:
        parse("--config", str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: {key!r}: ") and reason in message and "\n" not in message, message


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"none.toml: cannot read the configuration file"):
        parse("--config", str(tmp_path / "none.toml"))
    (tmp_path / "bad.toml").write_text("listen = \n")
    with pytest.raises(ConfigurationError, match=r"bad.toml: not a valid TOML file: .*line 1"):
        parse("--config", str(tmp_path / "bad.toml"))


@pytest.mark.parametrize(("text", "key"), [
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nmax-connections = 0\n', "max-connections"),
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nhandshake-timeout = -1\n', "handshake-timeout"),
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nhandshake-timeout = nan\n', "handshake-timeout"),
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nwrite-timeout = nan\n', "write-timeout"),
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\ncert = "psk.toml"\n', "cert"),
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nmaf-timeout = 3.0\nmaf-fqdn = "maf.example"\n',
     "maf-fqdn"),
    ('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nworkers = "many"\n', "workers"),
])
def test_start_checks_name_the_key_from_the_file(folder: Path, capsys: pytest.CaptureFixture[str], text: str,
                                                 key: str) -> None:
    (folder / "g.toml").write_text(text)
    assert main(["gateway", "--config", str(folder / "g.toml"), "--check-config"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"m2msec: error: {folder / 'g.toml'}: {key!r}: ") and "\n" not in err, err


def test_check_config_exit_codes(folder: Path) -> None:
    good = folder / "g.toml"
    good.write_text('backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nlisten = "127.0.0.1:1"\n')
    with subprocess.Popen([*M2MSEC, "gateway", "--config", str(good), "--check-config"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.decode(), err.decode()) == (0, "configuration OK\n", "")
    result = subprocess.run([*M2MSEC, "gateway", "--config", str(good), "--check-config", "--backend", "ftp://x"],
                            capture_output=True, timeout=60, text=True)
    assert result.returncode != 0 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "backend must be an http://HOST:PORT URL" in result.stderr
    (folder / "psk.toml").chmod(0o644)  # a key file others can read: refused as at start
    result = subprocess.run([*M2MSEC, "gateway", "--config", str(good), "--check-config"], capture_output=True,
                            timeout=60, text=True)
    assert result.returncode != 0 and "chmod 600" in result.stderr and "Traceback" not in result.stderr


def test_example_file_is_accepted(tmp_path: Path) -> None:
    for name in ("gateway.toml", "psk-table.toml"):
        shutil.copy(ROOT / "examples" / name, tmp_path / name)
    (tmp_path / "psk-table.toml").chmod(0o600)
    result = subprocess.run([*M2MSEC, "gateway", "--config", str(tmp_path / "gateway.toml"), "--check-config"],
                            capture_output=True, timeout=60, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "configuration OK\n", "")


def test_docs_list_every_key_with_the_parsers_default() -> None:
    doc = (ROOT / "docs" / "gateway.md").read_text()
    block = re.search(r"<!-- config-keys: begin -->\n(.*?)\n<!-- config-keys: end -->", doc, re.S)
    assert block is not None
    assert block.group(1).splitlines() == reference_table(gateway_parser(), RELOADABLE), (
        "docs/gateway.md's key table is not the parser's: replace it with `python -m m2msec.gateway.config`")
    keys = set(file_options(gateway_parser()))
    assert {"listen", "psk-table", "maf", "mef-timeout", "quiet", "workers", "loop"} <= keys
    assert not keys & {"help", "config", "check-config"}
    assert RELOADABLE <= {a.dest for a in file_options(gateway_parser()).values()}


@pytest.mark.parametrize(("cert", "key", "named", "reason"), [
    ("a.pem", "b.key", "key", "is not the private key of the first certificate of --cert"),
    ("psk.toml", "a.key", "cert", "not a PEM certificate chain"),
    ("a.pem", "psk.toml", "key", "not an unencrypted PEM private key"),
])
def test_certificate_errors_name_the_key(folder: Path, capsys: pytest.CaptureFixture[str], cert: str, key: str,
                                         named: str, reason: str) -> None:
    from test_sighup import rsa_certificate

    rsa_certificate(folder, "a.example")
    rsa_certificate(folder, "b.example")
    base = 'backend = "http://127.0.0.1:9"\npsk-table = "psk.toml"\nprofiles = "onem2m,rsa-psk"\n'
    (folder / "g.toml").write_text(base + 'cert = "a.pem"\nkey = "a.key"\n')
    assert main(["gateway", "--config", str(folder / "g.toml"), "--check-config"]) == 0
    assert capsys.readouterr().out == "configuration OK\n"
    (folder / "g.toml").write_text(base + f'cert = "{cert}"\nkey = "{key}"\n')
    assert main(["gateway", "--config", str(folder / "g.toml"), "--check-config"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"m2msec: error: {folder / 'g.toml'}: {named!r}: --{named} ") and reason in err, err
    assert LIGHT1_KEY not in err and "PRIVATE KEY" not in err
