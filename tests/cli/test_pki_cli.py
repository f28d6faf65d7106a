"""``m2msec pki`` through main(): CA, intermediate, every flavour, CSR, show, CRL, and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from m2msec.cli.main import main

SP = "m2m.myoperator.org"
HW = "1.3.6.1.4.1.99999.1"
FLAVOURS = [
    ("cse-id", ["--id", "MN-CSE1", "--sp-domain", SP], "MN-CSE1", "-"),
    ("ae-id", ["--id", f"//{SP}/CSE3219/C9886"], f"//{SP}/CSE3219/C9886", "-"),
    ("node-id", ["--id", "1.3.6.1.4.1.99999.7.1"], "1.3.6.1.4.1.99999.7.1", "34-1.3.6.1.4.1.99999.7.1"),
    ("device", ["--id", f"{HW}/SN-1"], f"{HW}.SN-1", f"31-{HW}.SN-1"),
    ("fqdn", ["--id", "mef.m2m.myoperator.org"], "mef.m2m.myoperator.org", "-"),
]


def fields(out: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


@pytest.fixture
def cas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    root, inter = str(tmp_path / "root"), str(tmp_path / "inter")
    assert main(["pki", "ca", "--out", root, "--name", "Test Root", "--permit-dns", "myoperator.org",
                 "--permit-dns", "prov.com"]) == 0
    assert main(["pki", "ca", "--out", inter, "--name", "Test Intermediate", "--permit-dns", SP,
                 "--issuer-prefix", root, "--days", "1000"]) == 0
    capsys.readouterr()
    return root, inter


def test_ca_issue_show_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str], cas: tuple[str, str]) -> None:
    root, inter = cas
    assert Path(f"{inter}.key").stat().st_mode & 0o777 == 0o600
    assert main(["pki", "show", f"{inter}.crt"]) == 0
    shown = fields(capsys.readouterr().out)
    assert shown["flavour"] == "CA" and shown["permitted"] == f"DNSName:{SP}" and shown["issuer"] == "CN=Test Root"
    serials = {}
    for flavour, args, identity, credential in FLAVOURS:
        out = str(tmp_path / flavour)
        assert main(["pki", "issue", "--ca", inter, "--flavour", flavour, *args, "--out", out]) == 0
        assert Path(f"{out}.key").stat().st_mode & 0o777 == 0o600
        assert Path(f"{out}.crt").stat().st_mode & 0o777 == 0o644
        capsys.readouterr()
        assert main(["pki", "show", f"{out}.crt"]) == 0  # D41: the CSE-ID marker tells cse-id from fqdn
        text = capsys.readouterr().out
        shown = fields(text)
        assert (shown["flavour"], shown["identity"], shown["credential-id"]) == (flavour, identity, credential)
        assert shown["issuer"] == "CN=Test Intermediate" and len(shown["sha256"]) == 95
        assert "PRIVATE" not in text and Path(f"{out}.key").read_text().splitlines()[1][:20] not in text
        serials[flavour] = shown["serial"]
    crl = tmp_path / "inter.crl"
    assert main(["pki", "crl", "--ca", inter, "--revoke", serials["cse-id"], "--revoke", str(int(serials["fqdn"], 16)),
                 "--out", str(crl), "--days", "3"]) == 0
    assert "2 revoked" in capsys.readouterr().out
    parsed = x509.load_pem_x509_crl(crl.read_bytes())
    assert {r.serial_number for r in parsed} == {int(serials["cse-id"], 16), int(serials["fqdn"], 16)}
    if shutil.which("openssl"):
        for flavour, expect in (("cse-id", "certificate revoked"), ("device", "OK")):
            proc = subprocess.run(["openssl", "verify", "-CAfile", f"{root}.crt", "-untrusted", f"{inter}.crt",
                                   "-crl_check", "-CRLfile", str(crl), str(tmp_path / f"{flavour}.crt")],
                                  capture_output=True, text=True, timeout=30)
            assert expect in proc.stdout + proc.stderr


def test_csr_and_sign_csr(tmp_path: Path, capsys: pytest.CaptureFixture[str], cas: tuple[str, str]) -> None:
    _, inter = cas
    prefix = str(tmp_path / "gw")
    assert main(["pki", "csr", "--flavour", "cse-id", "--id", "MN-GW7", "--sp-domain", SP, "--out", prefix]) == 0
    assert Path(f"{prefix}.key").stat().st_mode & 0o777 == 0o600
    crt = tmp_path / "gw.crt"
    assert main(["pki", "sign-csr", "--ca", inter, "--csr", f"{prefix}.csr", "--flavour", "cse-id",
                 "--out", str(crt)]) == 0
    capsys.readouterr()
    assert main(["pki", "show", str(crt)]) == 0
    assert fields(capsys.readouterr().out)["identity"] == "MN-GW7"
    assert main(["pki", "sign-csr", "--ca", inter, "--csr", f"{prefix}.csr", "--flavour", "ae-id",
                 "--out", str(tmp_path / "x.crt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exactly one UniformResourceIdentifier" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["issue", "--ca", "{inter}", "--flavour", "cse", "--id", "MN-CSE1", "--out", "{tmp}/a"], "unknown flavour"),
        (["issue", "--ca", "{inter}", "--flavour", "cse-id", "--id", "MN-CSE1", "--out", "{tmp}/a"], "SP domain"),
        (["issue", "--ca", "{inter}", "--flavour", "fqdn", "--id", "mef.example.com", "--out", "{tmp}/a"],
         "outside the nameConstraints"),
        (["issue", "--ca", "{inter}", "--flavour", "fqdn", "--id", "*.m2m.myoperator.org", "--out", "{tmp}/a"],
         "wildcard"),
        (["issue", "--ca", "{inter}", "--flavour", "node-id", "--id", "1.2.3", "--out", "{inter}"],
         "refusing to overwrite"),
        (["csr", "--flavour", "fqdn", "--id", "mef.m2m.myoperator.org", "--out", "{inter}"], "refusing to overwrite"),
        (["issue", "--ca", "{tmp}/none", "--flavour", "node-id", "--id", "1.2.3", "--out", "{tmp}/a"], "cannot read"),
        (["crl", "--ca", "{inter}", "--revoke", "12x", "--out", "{tmp}/c.crl"], "not an integer"),
        (["issue", "--ca", "{inter}", "--flavour", "node-id", "--id", "1.2.3", "--out", "{tmp}/a", "--days", "0"],
         "days"),
        (["ca", "--out", "{tmp}/ca2", "--name", "unconstrained"], "nameConstraints"),
        # D40: the intermediate is bound to SP m2m.myoperator.org; the root's prov.com does not help it
        (["issue", "--ca", "{inter}", "--flavour", "ae-id", "--id", "//m2m.prov.com/in-cse/CAdmin", "--out",
          "{tmp}/a"], "SP 'm2m.prov.com' of this ae-id identity is outside the nameConstraints"),
        (["show", "{inter}.key"], "not a PEM or DER certificate"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], cas: tuple[str, str],
                             argv: list[str], message: str) -> None:
    _, inter = cas
    argv = [a.format(inter=inter, tmp=tmp_path) for a in argv]
    before = Path(f"{inter}.key").read_bytes()
    assert main(["pki", *argv]) != 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("m2msec: error:"), captured.err
    assert message in captured.err and "Traceback" not in captured.err
    assert Path(f"{inter}.key").read_bytes() == before


def test_world_readable_ca_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          cas: tuple[str, str]) -> None:
    _, inter = cas
    Path(f"{inter}.key").chmod(0o640)  # group-readable is refused too (as ssh does)
    assert main(["pki", "issue", "--ca", inter, "--flavour", "node-id", "--id", "1.2.3", "--out",
                 str(tmp_path / "n")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "group or other users have access" in err and f"chmod 600 {inter}.key" in err
    assert not (tmp_path / "n.crt").exists()
