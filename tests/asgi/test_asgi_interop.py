"""Third-party HTTP clients against the ASGI server: ``curl`` over a certificate profile (curl has no TLS-PSK) and
``openssl s_client`` over TLS-PSK, whose own RFC 5705 export must equal what the application exported."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from conftest import LIGHT1_ID
from interop.conftest import needs_openssl, s_client
from m2msec.asgi import serve
from m2msec.saef import EXPORTER_CONNECTION_LABEL

from .conftest import MAF_FQDN, PKI, TIMEOUT, Recorder, psk_server_context, raw_app

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not on PATH")

pytestmark = pytest.mark.interop


async def run_curl(*args: str) -> tuple[int, str]:
    assert CURL is not None
    proc = await asyncio.create_subprocess_exec(CURL, "--silent", "--show-error", "--http1.1", "--max-time",
                                                str(TIMEOUT), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(TIMEOUT + 5):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@needs_curl
async def test_curl_over_certificates(pki: PKI, rec: Recorder, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca.certificate_pem())
    (tmp_path / "client.pem").write_bytes(pki.client.certificate_pem())
    (tmp_path / "client.key").write_bytes(pki.client.private_key_pem())
    (tmp_path / "upload").write_bytes(b"u" * 200_000)
    async with await serve(raw_app(rec), pki.server_context(), "127.0.0.1", 0) as srv:
        url = f"https://{MAF_FQDN}:{srv.port}"
        tls = ["--cacert", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "client.pem"), "--key",
               str(tmp_path / "client.key"), "--resolve", f"{MAF_FQDN}:{srv.port}:127.0.0.1"]
        # two requests on one connection (keep-alive), the second a chunked upload with Expect: 100-continue
        rc, out = await run_curl(*tls, f"{url}/first?q=1", "--next", *tls, "--data-binary",
                                 f"@{tmp_path / 'upload'}", "-H", "Transfer-Encoding: chunked", "-H",
                                 "Expect: 100-continue", "-w", "\\nconnects=%{num_connects}", f"{url}/second")
        assert rc == 0, out
        first, end = json.JSONDecoder().raw_decode(out)
        second, _ = json.JSONDecoder().raw_decode(out, end)
        assert first["path"] == "/first" and first["query"] == "q=1" and first["identity"] is None
        assert second["path"] == "/second" and second["body_len"] == 200_000 and second["method"] == "POST"
        assert ["transfer-encoding", "chunked"] in second["headers"]
        assert out.rstrip().endswith("connects=0")  # the second request reused the first connection
        assert first["exported"] == second["exported"]


@needs_curl
async def test_curl_body_over_the_cap_gets_413(pki: PKI, rec: Recorder, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca.certificate_pem())
    (tmp_path / "client.pem").write_bytes(pki.client.certificate_pem())
    (tmp_path / "client.key").write_bytes(pki.client.private_key_pem())
    (tmp_path / "upload").write_bytes(b"u" * 2_000_000)
    async with await serve(raw_app(rec), pki.server_context(), "127.0.0.1", 0, max_body=1000) as srv:
        rc, out = await run_curl("--cacert", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "client.pem"),
                                 "--key", str(tmp_path / "client.key"), "--resolve",
                                 f"{MAF_FQDN}:{srv.port}:127.0.0.1", "--data-binary", f"@{tmp_path / 'upload'}",
                                 "-o", "/dev/null", "-w", "%{http_code}", f"https://{MAF_FQDN}:{srv.port}/big")
    assert rc == 0 and out == "413", out
    assert rec.scopes == []


@needs_openssl
@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_openssl_s_client_over_psk_exports_the_same_key(rec: Recorder, tls13: bool) -> None:
    args = ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256") if tls13 else (
        "-no_tls1_3", "-cipher", "PSK-AES128-CBC-SHA256")
    async with await serve(raw_app(rec), psk_server_context(tls13=tls13), "127.0.0.1", 0) as srv:
        async with s_client(srv.port, *args, "-ign_eof", "-keymatexport", EXPORTER_CONNECTION_LABEL,
                            "-keymatexportlen", "48") as peer:
            printed = await peer.expect(rb"Keying material: ([0-9A-F]+)\s")
            await peer.send(b"GET /psk HTTP/1.1\r\nHost: maf\r\nConnection: close\r\n\r\n")
            head = await peer.expect(rb"(?s)HTTP/1.1 200 OK\r\n.*?\r\n\r\n")
            await peer.wait()  # the server closes after the response (connection: close)
    seen, _ = json.JSONDecoder().raw_decode(peer.output[head.end():].decode())
    assert seen["identity"] == LIGHT1_ID and seen["path"] == "/psk"
    assert seen["exported"] == printed[1].decode().lower()
