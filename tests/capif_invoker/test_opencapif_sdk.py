"""opencapif-sdk (the ETSI OpenCAPIF Python SDK) onboards and discovers against our CCF (issue 19).

The SDK pins cryptography < 46 and pyOpenSSL < 26 while m2msec pins cryptography 50 and pyOpenSSL 26
(docs/capif-invoker.md): it cannot live in m2msec's environment, so it runs as a process of another Python that has
it: the ``.venv-opencapif`` scripts/install.sh makes (opencapif_sdk 0.1.24 from PyPI), or the one named by
``M2MSEC_OPENCAPIF_PYTHON``; without either the test is skipped. The SDK first asks an OpenCAPIF *register* service
(not 3GPP: ``GET /getauth`` with a user name and password) for the CA, an access token and the CCF's URLs; the test
plays that service, handing out our CCF's CA and one of its onboarding credentials as the token. The SDK then talks
to our CCF only: ``POST /onboardedInvokers`` (an RSA-2048 CSR) and ``GET /allServiceAPIs`` with the certificate it
got."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import subprocess
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ccf.ccf_env import CCF_HOST, World, publish, register_provider, world

__all__ = ["world"]

#: the Python that has the SDK: scripts/install.sh makes .venv-opencapif; M2MSEC_OPENCAPIF_PYTHON names another
_INSTALLED = Path(__file__).resolve().parents[2] / ".venv-opencapif" / "bin" / "python"
SDK_PYTHON = os.environ.get("M2MSEC_OPENCAPIF_PYTHON") or (str(_INSTALLED) if _INSTALLED.exists() else None)

DRIVER = textwrap.dedent("""
    import json, socket, sys
    real = socket.getaddrinfo
    def resolve(host, *rest, **kw):  # the CCF's host name is not in DNS: loopback, as /etc/hosts would
        return real("127.0.0.1" if host == sys.argv[2] else host, *rest, **kw)
    socket.getaddrinfo = resolve
    from opencapif_sdk import capif_invoker_connector, service_discoverer
    if sys.argv[3] == "p256":  # the SDK's one key type, RSA-2048, swapped for P-256 (our CCF's TLS needs it)
        import os
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        def p256_keys(self):
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(
                NameOID.COMMON_NAME, self.csr_common_name)])).sign(key, hashes.SHA256()))
            pem = csr.public_bytes(serialization.Encoding.PEM)
            with open(os.path.join(self.invoker_folder, "cert_req.csr"), "wb") as f:
                f.write(pem)
            with open(os.path.join(self.invoker_folder, "private.key"), "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            return pem
        capif_invoker_connector._capif_invoker_connector__create_private_and_public_keys = p256_keys
    capif_invoker_connector(sys.argv[1]).onboard_invoker()
    print(json.dumps(service_discoverer(sys.argv[1]).discover_service_apis()))
""")


def sdk_available() -> bool:
    if not SDK_PYTHON:
        return False
    probe = subprocess.run([SDK_PYTHON, "-c", "import opencapif_sdk"], capture_output=True, timeout=60)
    return probe.returncode == 0


def self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "register.test.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    (tmp / "reg.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "reg.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "reg.crt", tmp / "reg.key")
    return ctx


@asynccontextmanager
async def register_service(tmp: Path, answer: dict[str, str]) -> AsyncIterator[tuple[int, list[str]]]:
    """OpenCAPIF's register service, its ``GET /getauth`` only: ``answer`` as JSON."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0].decode())
        body = json.dumps(answer).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self_signed(tmp))
    async with server:
        yield server.sockets[0].getsockname()[1], seen


async def run_sdk(world: World, tmp_path: Path, key: str) -> None:
    if not sdk_available():
        pytest.skip("opencapif_sdk cannot be installed beside m2msec (its cryptography/pyOpenSSL pins conflict); "
                    "set M2MSEC_OPENCAPIF_PYTHON to a Python that has it")
    assert SDK_PYTHON is not None
    provider = await register_provider(world)
    published = await publish(world, provider.apf, provider.aef, name="sdk-api")
    work = tmp_path / "sdk"
    work.mkdir()
    auth = {"ca_root": world.ca_pem.decode(), "access_token": world.credential(),
            "ccf_onboarding_url": "api-invoker-management/v1/onboardedInvokers",
            "ccf_discover_url": "service-apis/v1/allServiceAPIs?api-invoker-id="}
    async with register_service(work, auth) as (reg_port, seen):
        config = {"capif_host": CCF_HOST, "register_host": "127.0.0.1", "capif_https_port": str(world.ccf.port),
                  "capif_register_port": str(reg_port), "capif_username": "sdkuser", "capif_password": "x",
                  "debug_mode": "False",
                  "invoker": {"invoker_folder": str(work / "invoker"), "capif_callback_url": "https://sdk.test.example/cb",
                              "supported_features": "0", "check_authentication_data": {"ip": "", "port": ""},
                              "cert_generation": {"csr_common_name": "sdk", "csr_organizational_unit": "test",
                                                  "csr_organization": "m2msec", "csr_locality": "here",
                                                  "csr_state_or_province_name": "here", "csr_country_name": "FR",
                                                  "csr_email_address": "sdk@test.example"},
                              "discover_filter": {"api-name": "sdk-api"}}}
        (work / "config.json").write_text(json.dumps(config))
        (work / "driver.py").write_text(DRIVER)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REQUESTS_", "CURL_", "SSL_CERT"))}
        proc = await asyncio.create_subprocess_exec(SDK_PYTHON, str(work / "driver.py"), str(work / "config.json"),
                                                    CCF_HOST, key, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env, cwd=work)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert seen == ["GET /getauth HTTP/1.1"]
    found = json.loads(out.decode().strip().splitlines()[-1])
    assert [d["apiId"] for d in found["serviceAPIDescriptions"]] == [published["apiId"]]
    details = json.loads((work / "invoker" / "sdkuser" / "capif_api_security_context_details-sdkuser.json")
                         .read_text())
    assert details["api_invoker_id"].startswith("INV")
    # the invoker the SDK onboarded is the CCF's: its certificate names it (D119: CN = the invoker ID)
    cert = x509.load_pem_x509_certificate((work / "invoker" / "sdkuser" / "sdkuser.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == details["api_invoker_id"]


@pytest.mark.interop
async def test_opencapif_sdk_with_a_p256_key_onboards_and_discovers(world: World, tmp_path: Path) -> None:
    """The SDK as published but for its key generation (P-256 instead of RSA-2048, see below)."""
    await run_sdk(world, tmp_path, "p256")


@pytest.mark.interop
async def test_opencapif_sdk_as_published_onboards_and_discovers(world: World, tmp_path: Path) -> None:
    """The SDK as published (RSA-2048 keys): the CCF certifies them (D119) and its TLS accepts them (D164)."""
    await run_sdk(world, tmp_path, "rsa")
