"""``--metrics`` with certificate clients (ecdhe-ecdsa): completed handshakes counted as ``certificate``, and the
refusals by their certificate reason (untrusted, expired, revoked); counts exact, scraped and parsed."""

from __future__ import annotations

import argparse
import datetime

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from test_gateway import RecordingBackend, backend  # noqa: F401  (fixture re-used)
from test_gateway_certificates import GATEWAY_CSE, SP, ca, connect, server_cert  # noqa: F401  (fixtures)
from test_metrics import samples, until, value

from conftest import make_table
from m2msec.errors import HandshakeFailed
from m2msec.gateway.http_gateway import Backend, Gateway, GatewayConfig
from m2msec.metrics import FAILURE_REASONS, start_observability
from m2msec.pki import CertificateFlavour, Issued, create_ca, create_crl, issue
from m2msec.tls.engine import CertificateConfig
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_PSK

F = CertificateFlavour


async def test_certificate_failures_by_reason(backend: RecordingBackend, ca: Issued,  # noqa: F811
                                              server_cert: Issued) -> None:  # noqa: F811
    revoked = issue(ca, F.CSE_ID, "mn-cse-2", sp_domain=SP)
    crl = create_crl(ca, [revoked.certificate.serial_number]).public_bytes(Encoding.PEM)
    cert = CertificateConfig(server_cert.certificate_pem(), server_cert.private_key_pem(),
                             trust_anchors_pem=ca.certificate_pem(), crl_pem=crl)
    gw = Gateway(GatewayConfig(backend=Backend("127.0.0.1", backend.port), port=0, profiles=(ONEM2M_PSK, ECDHE_ECDSA),
                               certificate=cert, cse_id=GATEWAY_CSE, sp_id=f"//{SP}"), make_table())
    obs = start_observability(argparse.Namespace(metrics="127.0.0.1:0", metrics_identity_labels=True), gw, None)
    assert obs is not None
    await gw.start()
    port = obs.server.port
    try:
        good = await connect(gw, issue(ca, F.CSE_ID, "mn-cse-4", sp_domain=SP), ca)
        await good.close()
        stranger = issue(create_ca("another root", permitted_dns=[SP]), F.CSE_ID, "mn-cse-1", sp_domain=SP)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
        expired = issue(ca, F.CSE_ID, "mn-cse-1", sp_domain=SP, now=past, days=1)
        for client in (stranger, expired, revoked):
            with pytest.raises(HandshakeFailed):
                await connect(gw, client, ca)
        found = await until(port, "m2msec_gateway_open_connections", 0, transport="tls")
        found = await samples(port)
    finally:
        await gw.close()
        await obs.close()
    want = {"certificate_untrusted": 1, "certificate_expired": 1, "certificate_revoked": 1}
    for reason in FAILURE_REASONS:
        assert value(found, "m2msec_gateway_handshake_failures_total", transport="tls",
                     reason=reason) == want.get(reason, 0), reason
    assert value(found, "m2msec_gateway_handshakes_total", transport="tls", authentication="certificate") == 1
    assert value(found, "m2msec_gateway_handshakes_total", transport="tls", authentication="psk") == 0
    named = [dict(labels)["identity"] for name, labels in found if name == "m2msec_gateway_identity_handshakes_total"]
    assert named == ["mn-cse-4"]  # the certificate's CSE-ID, with the flag on
