"""The invoker calls an AEF (issue 19: "call an AEF API with the selected method"): m2msec.capif.invoker_call and
`m2msec capif call`, against a real CCF (tests/ccf/ccf_env.py) and a real AEF front with a recording backend
(tests/capif_aef/aef_server_env.py), all over TLS on loopback. The invoker is onboarded and obtains its method with
the library, as `m2msec capif onboard` / `security` do."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import pytest

from capif_aef.aef_server_env import AEF_HOST, Front, running_front, server_credentials
from ccf.ccf_env import CCF_HOST, World, world
from m2msec.capif import invoker as lib
from m2msec.capif.invoker_call import call_aef, choose_method
from m2msec.errors import ConfigurationError, HandshakeFailed

__all__ = ["world"]


async def invoker_for(world: World, aef: Front, tmp: Path, method: str, name: str) -> lib.Invoker:
    inv = await lib.onboard(("127.0.0.1", world.ccf.port), CCF_HOST, world.ca_pem, world.credential(), tmp / name,
                            "https://invoker.test.example/notify")
    result = await lib.obtain_security(inv, [{"interfaceDetails": aef.iface, "prefSecurityMethods": [method]}])
    assert result.context["securityInfo"][0]["selSecurityMethod"] == method
    return inv


def seen_by_backend(aef: Front) -> tuple[str | None, str | None]:
    last = aef.backend.seen[-1]
    return last.header("x-capif-invoker-id"), last.header("x-capif-security-method")


async def test_each_method_reaches_the_backend_as_the_invoker(world: World, tmp_path: Path) -> None:
    async with running_front(world) as aef:
        psk = await invoker_for(world, aef, tmp_path, "PSK", "psk")
        answer = await call_aef(psk, ("127.0.0.1", aef.port), "/api/items?x=1")  # PSK chosen from the AEFPSK file
        assert answer.status == 200 and answer.method == "PSK", answer.problem()
        assert seen_by_backend(aef) == (psk.invoker_id, "PSK") and aef.backend.seen[-1].target == "/api/items?x=1"

        pki = await invoker_for(world, aef, tmp_path, "PKI", "pki")
        answer = await call_aef(pki, ("127.0.0.1", aef.port), "/api/items", request_method="POST", body=b'{"a":1}',
                                aef_host=AEF_HOST, aef_ca_pem=aef.server_ca_pem)
        assert answer.status == 200 and answer.method == "PKI", answer.problem()
        assert seen_by_backend(aef) == (pki.invoker_id, "PKI") and aef.backend.seen[-1].body == b'{"a":1}'

        oauth = await invoker_for(world, aef, tmp_path, "OAUTH", "oauth")
        answer = await call_aef(oauth, ("127.0.0.1", aef.port), "/api/items", aef_host=AEF_HOST,
                                aef_ca_pem=aef.server_ca_pem)  # a token obtained from the CCF on the way
        assert answer.status == 200 and answer.method == "OAUTH", answer.problem()
        assert seen_by_backend(aef) == (oauth.invoker_id, "OAUTH")


async def test_the_aef_must_be_who_it_must_be_and_refusals_are_answers(world: World, tmp_path: Path) -> None:
    async with running_front(world) as aef:
        pki = await invoker_for(world, aef, tmp_path, "PKI", "pki")
        count = len(aef.backend.seen)
        _, _, other_ca = server_credentials()
        with pytest.raises(HandshakeFailed):  # the AEF's certificate does not chain to the CA given
            await call_aef(pki, ("127.0.0.1", aef.port), "/api/items", aef_host=AEF_HOST, aef_ca_pem=other_ca)
        with pytest.raises(HandshakeFailed, match="not for"):  # it chains, but names another host
            await call_aef(pki, ("127.0.0.1", aef.port), "/api/items", aef_host="other.test.example",
                           aef_ca_pem=aef.server_ca_pem)
        with pytest.raises(ConfigurationError, match="--aef-ca"):
            await call_aef(pki, ("127.0.0.1", aef.port), "/api/items", aef_host=AEF_HOST)
        with pytest.raises(ConfigurationError, match="no AEFPSK"):
            await call_aef(pki, ("127.0.0.1", aef.port), "/api/items", method="PSK")
        # the context selects PKI: an OAuth call is the failure indication, as an answer
        answer = await call_aef(pki, ("127.0.0.1", aef.port), "/api/items", aef_host=AEF_HOST,
                                aef_ca_pem=aef.server_ca_pem, method="OAUTH", access_token="not.a.token")
        assert answer.status == 401 and answer.problem().startswith("HTTP 401")
        assert len(aef.backend.seen) == count


def test_the_method_needs_a_security_context(tmp_path: Path) -> None:
    folder = tmp_path / "inv"
    folder.mkdir()
    inv = lib.Invoker(folder, "INVx", "127.0.0.1", 1, CCF_HOST, "https://x.invalid/", b"", b"", b"")
    with pytest.raises(ConfigurationError, match="no security context"):
        choose_method(inv, "aef.example", 8443, "/api/x")
    (folder / "security.json").write_text('{"securityInfo": [{"selSecurityMethod": "PKI"}, '
                                          '{"selSecurityMethod": "OAUTH"}]}')
    with pytest.raises(ConfigurationError, match="--method"):
        choose_method(inv, "aef.example", 8443, "/api/x")
    assert choose_method(inv, "aef.example", 8443, "/api/x", "OAUTH") == ("OAUTH", None)


async def run_cli(args: list[str]) -> tuple[int, bytes, str]:
    """``m2msec`` in this process (stdout captured as bytes, stderr as text)."""
    from m2msec.cli.main import main

    out, err = io.BytesIO(), io.StringIO()

    wrapper = io.TextIOWrapper(out, encoding="utf-8")
    with contextlib.redirect_stdout(wrapper), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(main, args)
        wrapper.flush()
    return code, out.getvalue(), err.getvalue()


async def test_the_cli_calls_and_refusals_are_one_line(world: World, tmp_path: Path) -> None:
    async with running_front(world) as aef:
        inv = await invoker_for(world, aef, tmp_path, "PSK", "psk")
        code, out, err = await run_cli(["capif", "call", "--folder", str(inv.folder), "--aef",
                                        f"127.0.0.1:{aef.port}", "/api/things"])
        assert code == 0, err
        assert out.startswith(b'{"invoker": "' + inv.invoker_id.encode()) and "HTTP 200 (PSK)" in err
        (tmp_path / "ca.pem").write_bytes(aef.server_ca_pem)
        code, out, err = await run_cli(["capif", "call", "--folder", str(inv.folder), "--aef",
                                        f"127.0.0.1:{aef.port}", "--aef-host", AEF_HOST, "--aef-ca",
                                        str(tmp_path / "ca.pem"), "--method", "pki", "/api/things"])
        assert code == 1 and out == b""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "HTTP 403" in lines[0] and "SECURITY_METHOD_NOT_SELECTED" in lines[0]
        code, _, err = await run_cli(["capif", "call", "--folder", str(inv.folder), "--aef", f"127.0.0.1:{aef.port}",
                                      "-H", "no colon", "/api/things"])
        assert code == 2 and len(err.strip().splitlines()) == 1
