"""SIGHUP to a real ``m2msec gateway --config`` process: a good new configuration is applied to new handshakes
(certificate, PSK table, limits), a broken one is refused with one ERROR line, and an SA that is live throughout
keeps working across both reloads. Real processes, real TLS over loopback."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from test_coaps_relay import Client, Inbox, client_context
from test_workers import (  # noqa: F401  (fixtures re-used)
    TABLE_ENTRY,
    GatewayProcess,
    SlowCoapBackend,
    StubCSE,
    coap_cse,
    cse,
    gateway,
    private,
    request,
)

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_AE, LIGHT2_ID, LIGHT2_KEY
from m2msec.errors import M2MSecError
from m2msec.gateway import coap
from m2msec.keys.secret import SecretKey
from m2msec.saef import EstablishedSA, PSKCredentials, establish_sa
from m2msec.transport.dtls import create_dtls_endpoint

ONE = TABLE_ENTRY.format(LIGHT1_ID, LIGHT1_KEY, LIGHT1_AE)
BOTH = ONE + TABLE_ENTRY.format(LIGHT2_ID, LIGHT2_KEY, LIGHT2_AE)


def rsa_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed RSA certificate (for the rsa-psk profile) whose common name is ``name``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    stem = name.split(".")[0]
    cert_path = folder / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / f"{stem}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def write_config(path: Path, stub: StubCSE, cert: str, per_source: int, extra: str = "") -> None:
    path.write_text(f'listen = "127.0.0.1:0"\nbackend = "{stub.url}"\npsk-table = "psk.toml"\n'
                    f'profiles = "onem2m,rsa-psk"\ncert = "{cert}.pem"\nkey = "{cert}.key"\n'
                    f"max-connections-per-source = {per_source}\n{extra}")


async def connect(port: int, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> EstablishedSA:
    return await establish_sa("127.0.0.1", port, PSKCredentials(identity, SecretKey.from_hex(key),
                                                                HOME_GATEWAY_CSE_ID))


async def status(sa: EstablishedSA, origin: str = LIGHT1_AE) -> int:
    msg = request()
    msg.headers[-1] = ("x-m2m-origin", origin)
    return (await sa.request(msg)).status


async def served_certificate(port: int) -> str:
    """The common name of the certificate the gateway sends an RSA_PSK client (openssl s_client, a real peer)."""
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cipher", "RSA-PSK-AES128-GCM-SHA256",
        "-psk_identity", LIGHT1_ID, "-psk", LIGHT1_KEY, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    names = re.findall(r"subject=.*?CN ?= ?([\w.-]+)", out.decode())
    assert names, out.decode()[-2000:]
    return names[0]


async def wait_for_log(gw: GatewayProcess, what: str, count: int = 1) -> None:
    async with asyncio.timeout(20):
        while gw.log.count(what) < count:
            await asyncio.sleep(0.05)


async def refused(port: int, identity: str = LIGHT1_ID, key: str = LIGHT1_KEY) -> bool:
    try:
        sa = await connect(port, identity, key)
    except (M2MSecError, OSError):
        return True
    try:
        await status(sa, LIGHT2_AE if identity == LIGHT2_ID else LIGHT1_AE)
    except (M2MSecError, OSError):
        return True
    finally:
        await sa.close()
    return False


async def test_sighup_good_then_broken_config_while_an_sa_stays_live(tmp_path: Path, cse: StubCSE) -> None:  # noqa: F811
    private(tmp_path / "psk.toml", ONE)
    rsa_certificate(tmp_path, "old.example")
    rsa_certificate(tmp_path, "new.example")
    config = tmp_path / "gateway.toml"
    write_config(config, cse, "old", per_source=1)
    async with gateway(tmp_path, "--config", str(config), workers="1") as gw:
        live = await connect(gw.port)
        assert await status(live) == 200
        assert await refused(gw.port)  # its one connection per source is the live SA's
        assert await refused(gw.port, LIGHT2_ID, LIGHT2_KEY)

        # a good new configuration: new certificate, a second key, a raised limit
        private(tmp_path / "psk.toml", BOTH)
        write_config(config, cse, "new", per_source=4)
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "configuration reloaded")
        assert await status(live) == 200  # the SA made before the reload works on
        assert await served_certificate(gw.port) == "new.example"
        second = await connect(gw.port, LIGHT2_ID, LIGHT2_KEY)
        assert await status(second, LIGHT2_AE) == 200
        await second.close()

        # broken new configurations: each refused with one ERROR line, the running one stays
        errors = 0
        for broken, reason in ((f'listen = "127.0.0.1:0"\nbackend = "{cse.url}"\nmax-connections = "many"\n',
                                "'max-connections': expected an integer"),
                               ("this is not TOML", "not a valid TOML file")):
            config.write_text(broken)
            os.kill(gw.proc.pid, signal.SIGHUP)
            errors += 1
            await wait_for_log(gw, "ERROR", errors)
            lines = [line for line in gw.log.splitlines() if "ERROR" in line]
            assert len(lines) == errors and str(config) in lines[-1] and reason in lines[-1], lines
        write_config(config, cse, "new", per_source=4)
        config.write_text(config.read_text().replace('key = "new.key"', 'key = "old.key"'))  # not its key
        os.kill(gw.proc.pid, signal.SIGHUP)
        errors += 1
        await wait_for_log(gw, "ERROR", errors)
        assert "'key': --key " in gw.log and "is not the private key of the first certificate" in gw.log
        (tmp_path / "new.pem").write_text("not a certificate")  # an unreadable certificate
        write_config(config, cse, "new", per_source=4)
        os.kill(gw.proc.pid, signal.SIGHUP)
        errors += 1
        await wait_for_log(gw, "ERROR", errors)
        assert "'cert': --cert " in gw.log.splitlines()[-1] and "not a PEM certificate chain" in gw.log
        assert len([line for line in gw.log.splitlines() if "ERROR" in line]) == errors
        assert gw.log.count("configuration reloaded") == 1
        assert await status(live) == 200
        assert await served_certificate(gw.port) == "new.example"  # the one loaded before
        assert not await refused(gw.port, LIGHT2_ID, LIGHT2_KEY)
        assert "Traceback" not in gw.log and LIGHT1_KEY not in gw.log and LIGHT2_KEY not in gw.log
        await live.close()
        assert await gw.stop() == 0


async def test_sighup_reaches_every_worker(tmp_path: Path, cse: StubCSE) -> None:  # noqa: F811
    private(tmp_path / "psk.toml", ONE)
    rsa_certificate(tmp_path, "old.example")
    rsa_certificate(tmp_path, "new.example")
    config = tmp_path / "gateway.toml"
    write_config(config, cse, "old", per_source=8)
    async with gateway(tmp_path, "--config", str(config), workers="2") as gw:
        live = await connect(gw.port)
        write_config(config, cse, "new", per_source=8, extra='sp-id = "//other.example"\n')
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "configuration reloaded", 2)
        assert gw.workers_serving("configuration reloaded") == {"0", "1"}
        assert "needing a restart" in gw.log and "sp-id" in gw.log
        assert {await served_certificate(gw.port) for _ in range(6)} == {"new.example"}
        assert await status(live) == 200
        config.write_text("max-connections = 0\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "ERROR")
        await asyncio.sleep(0.5)
        errors = [line for line in gw.log.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "'max-connections'" in errors[0], errors  # the supervisor's, not forwarded
        assert await status(live) == 200
        await live.close()
        assert await gw.stop() == 0


@pytest.mark.parametrize("workers", ["1"])
async def test_sighup_without_config_file_reads_the_files_again(tmp_path: Path, cse: StubCSE,  # noqa: F811
                                                                workers: str) -> None:
    cert, key = rsa_certificate(tmp_path, "old.example")
    table = private(tmp_path / "psk.toml", ONE)
    async with gateway(tmp_path, "--listen", "127.0.0.1:0", "--backend", cse.url, "--psk-table", str(table),
                       "--profiles", "onem2m,rsa-psk", "--cert", str(cert), "--key", str(key), workers=workers) as gw:
        assert await served_certificate(gw.port) == "old.example"
        new_cert, new_key = rsa_certificate(tmp_path, "new.example")
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "configuration reloaded")
        assert await served_certificate(gw.port) == "new.example"
        assert await gw.stop() == 0


async def test_sighup_on_the_coaps_side_keeps_a_dtls_peer(tmp_path: Path,
                                                           coap_cse: tuple[SlowCoapBackend, int]) -> None:  # noqa: F811
    """The DTLS side too: a raised per-source cap applies to the next peer, the live peer keeps its association."""
    backend, bport = coap_cse
    backend.body = b"from the CSE"
    private(tmp_path / "psk.toml", ONE)
    config = tmp_path / "gateway.toml"
    base = f'coap-backend = "127.0.0.1:{bport}"\ncoaps-listen = "127.0.0.1:0"\npsk-table = "psk.toml"\n'
    config.write_text(base + "max-connections-per-source = 1\n")
    async with gateway(tmp_path, "--config", str(config), workers="1") as gw:
        transport, inbox, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client_context())
        live = Client(transport, inbox)  # type: ignore[arg-type]
        assert coap.format_code((await live.send(live.request(coap.GET))).code) == "2.05"
        with pytest.raises(M2MSecError):  # the source's one peer is taken
            await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client_context(), handshake_timeout=1.5)
        config.write_text(base + "max-connections-per-source = 4\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "configuration reloaded")
        second, inbox2, _ = await create_dtls_endpoint(Inbox, "127.0.0.1", gw.port, client_context())
        other = Client(second, inbox2)  # type: ignore[arg-type]
        assert coap.format_code((await other.send(other.request(coap.GET))).code) == "2.05"
        config.write_text(base + 'coaps-profiles = "no-such-profile"\n')
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "ERROR")
        assert coap.format_code((await live.send(live.request(coap.GET))).code) == "2.05"  # across both reloads
        assert "--coaps-profiles: unknown cipher profile" in gw.log
        assert gw.log.count("coaps SA with") == 2  # no association was made again
        second.close()
        transport.close()
        assert await gw.stop() == 0


async def test_sighup_with_registration_rules(tmp_path: Path, cse: StubCSE) -> None:  # noqa: F811
    """--app-rules / --registrations: the reload checks the rules file again (a broken one is refused) and keeps
    the running registrar and its SQLite bindings."""
    private(tmp_path / "psk.toml", ONE)
    rules = tmp_path / "rules.toml"
    rules.write_text('[[app_rule]]\napci = ["*"]\naai = ["Nlight"]\naae = ["C*"]\n')
    config = tmp_path / "gateway.toml"
    base = (f'listen = "127.0.0.1:0"\nbackend = "{cse.url}"\npsk-table = "psk.toml"\napp-rules = "rules.toml"\n'
            'registrations = "bindings.db"\n')
    config.write_text(base)
    async with gateway(tmp_path, "--config", str(config), workers="1") as gw:
        live = await connect(gw.port)
        assert await status(live) == 200
        config.write_text(base + "max-sa-lifetime = 600\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "configuration reloaded")
        rules.write_text('[[app_rule]]\napci = "x"\n')
        os.kill(gw.proc.pid, signal.SIGHUP)
        await wait_for_log(gw, "ERROR")
        assert "app_rule 0" in gw.log and "Traceback" not in gw.log
        assert await status(live) == 200
        await live.close()
        assert await gw.stop() == 0
