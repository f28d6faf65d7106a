"""`m2msec ccf` as real processes: the CCF served on embedded defaults, an invoker onboarded with a credential from
`m2msec ccf onboarding-credential`, trusting the CA from `m2msec ccf ca-certificate`; revocation; one-line errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from m2msec.capif.ccf.config import DEFAULT_CCF_HOST
from m2msec.capif.client import CCFConnection
from m2msec.keys.sqlite_store import MASTER_KEY_ENV

from .ccf_env import INVOKERS, enrolment, new_key

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_CCF_STORE", "M2MSEC_DB")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def ccf(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*M2MSEC, "ccf", *args], capture_output=True, text=True, timeout=60, env=_env(tmp_path))


def one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stderr.startswith("m2msec: error: ") and result.stderr.count("\n") == 1, result.stderr
    for part in parts:
        assert part in result.stderr


async def _onboard(port: int, ca: bytes, credential: str) -> int:
    async with await CCFConnection.open("127.0.0.1", port, ccf_host=DEFAULT_CCF_HOST, ca_pem=ca) as conn:
        answer = await conn.request("POST", INVOKERS, json_body=enrolment(new_key()),
                                    headers={"authorization": f"Bearer {credential}"})
    return answer.status


async def test_serve_onboard_revoke(tmp_path: Path) -> None:
    issued = ccf(tmp_path, "onboarding-credential", "--for", "invoker", "--subject", "alice", "--out",
                 str(tmp_path / "alice.jwt"))
    assert issued.returncode == 0, issued.stderr
    assert (tmp_path / "alice.jwt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data" / "m2msec" / "ccf.db").exists()
    second = ccf(tmp_path, "onboarding-credential", "--for", "invoker", "--subject", "bob")
    assert second.returncode == 0, second.stderr
    bob, bob_jti = second.stdout.strip(), second.stderr.split("jti ")[1].split(",")[0]
    assert ccf(tmp_path, "revoke-credential", bob_jti).returncode == 0
    ca = ccf(tmp_path, "ca-certificate")
    assert ca.returncode == 0 and ca.stdout.startswith("-----BEGIN CERTIFICATE-----")

    proc = await asyncio.create_subprocess_exec(*M2MSEC, "ccf", "serve", "--listen", "127.0.0.1:0",
                                                env=_env(tmp_path), stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert f"CCF {DEFAULT_CCF_HOST} listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        alice = (tmp_path / "alice.jwt").read_text().strip()
        assert await _onboard(port, ca.stdout.encode(), alice) == 201
        assert await _onboard(port, ca.stdout.encode(), alice) == 401  # used once
        assert await _onboard(port, ca.stdout.encode(), bob) == 401  # revoked before use
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = (await proc.stderr.read()).decode()
        assert "Traceback" not in rest and alice not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # revoking a used credential offboards what it onboarded; a jti never issued is an error
    used = ccf(tmp_path, "revoke-credential", alice_jti(issued.stderr))
    assert used.returncode == 0 and "offboarded" in used.stdout, used.stdout + used.stderr
    one_line_error(ccf(tmp_path, "revoke-credential", "never-issued"), "no onboarding credential")


def alice_jti(stderr: str) -> str:
    return stderr.split("jti ")[1].split(",")[0]


@pytest.mark.parametrize(("args", "message"), [
    (["onboarding-credential", "--for", "invoker", "--subject", "x", "--lifetime", "0"], "--lifetime"),
    (["onboarding-credential", "--for", "invoker", "--subject", "x\n"], "--subject"),
    (["revoke-credential", ""], "jti"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    one_line_error(ccf(tmp_path, *args), message)


def test_bad_config_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "ccf.toml").write_text('ccf_host = "not a host"\n')
    one_line_error(ccf(tmp_path, "--config", str(tmp_path / "ccf.toml"), "ca-certificate"), "ccf.toml")
    (tmp_path / "ccf.toml").write_text('access_token_lifetime = 99999\n')
    one_line_error(ccf(tmp_path, "--config", str(tmp_path / "ccf.toml"), "ca-certificate"), "access_token_lifetime")
    (tmp_path / "ccf.toml").write_text('colour = "blue"\n')
    one_line_error(ccf(tmp_path, "--config", str(tmp_path / "ccf.toml"), "ca-certificate"), "colour")
