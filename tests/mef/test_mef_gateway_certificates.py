"""`m2msec gateway --mef` with the gateway's FQDN certificate as its target credential (`--mef-cert`,
`--mef-cert-key`, `--mef-ca`): the options as the CLI parses them, a real certificate MEF, a PSK Enrolee."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

from m2msec.cli.gateway import _remote_keys
from m2msec.cli.main import build_parser
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.gateway.mef_resolver import MEFKeyResolver
from m2msec.keys.secret import SecretKey
from m2msec.mef.client import MEFCredentials, enrol
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import EnrolmentTarget, add_enrolee, add_target
from m2msec.mef.server import running_mef
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import create_ca, issue
from m2msec.saef import PSKCredentials, establish_sa
from m2msec.store import open_store

from .test_mef_gateway import CSE, IDB, request
from .world import ENROLEE_ID, KPM, KPMID, MEF_FQDN, SP

LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
CERT_GW = "cert-gw.sp.example.com"


def _write(path: Path, data: bytes, secret: bool = False) -> str:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)
    return str(path)


async def test_gateway_authenticates_to_the_mef_with_its_fqdn_certificate(tmp_path: Path) -> None:
    ca = create_ca("provider root", permitted_dns=[SP])
    mef, gw = issue(ca, F.FQDN, MEF_FQDN), issue(ca, F.FQDN, CERT_GW)
    ca_pem = _write(tmp_path / "ca.pem", ca.certificate_pem())
    config = MEFConfig(listen="127.0.0.1:0", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/mef.db",
                       certificate=_write(tmp_path / "mef.pem", mef.certificate_pem()),
                       private_key=_write(tmp_path / "mef.key", mef.private_key_pem(), secret=True),
                       client_trust_anchors=ca_pem)
    store = open_store(config.store)
    add_enrolee(store, KPMID, enrolee_id=ENROLEE_ID, kpm=KPM, targets=[EnrolmentTarget(CERT_GW, (22,))])
    add_target(store, CERT_GW, "cse", None)  # known by its FQDN certificate
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    try:
        async with running_mef(config, store=store) as running:
            address = f"127.0.0.1:{running.port}"
            args = build_parser().parse_args([
                "gateway", "--backend", "http://127.0.0.1:9", "--mef", address, "--mef-fqdn", MEF_FQDN,
                "--mef-cert", _write(tmp_path / "gw.pem", gw.certificate_pem()),
                "--mef-cert-key", _write(tmp_path / "gw.key", gw.private_key_pem(), secret=True), "--mef-ca", ca_pem])
            resolver = _remote_keys(args, None)
            assert isinstance(resolver, MEFKeyResolver)
            gateway = Gateway(GatewayConfig(backend=Backend("127.0.0.1", cse.server.sockets[0].getsockname()[1]),
                                            port=0), None, maf=resolver)
            await gateway.start()
            try:
                e = await enrol(address, MEFCredentials(KPMID, KPM), mef_fqdn=MEF_FQDN)
                key = SecretKey(hmac.new(e.ke.reveal(), LABEL + b"22" + CERT_GW.encode(), hashlib.sha256).digest())
                sa = await establish_sa("127.0.0.1", gateway.port, PSKCredentials(str(e.keid), key, peer_entity=IDB))
                assert (await sa.request(request(ENROLEE_ID))).status == 200
                await sa.close()
                [seen] = cse.requests
                assert seen.header("x-m2msec-sa-identity") == ENROLEE_ID
            finally:
                await gateway.close()
                await resolver.close()
    finally:
        store.close()
        cse.server.close()
