"""A MAF that authenticates to its MEF with its own FQDN certificate (``mef_trust_anchors``) serves a certificate
Enrolee's KeID: Km fetched over the certificate MEF Handshake, ``assignedSymmKeyID``, then (KmID, Km)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from m2msec.maf.client import MAFClient, MAFCredentials
from m2msec.maf.config import MAFConfig
from m2msec.maf.server import running_maf
from m2msec.mef.client import enrol
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import issue

from .test_certificates import LABEL, CertWorld, cworld  # noqa: F401 - the certificate MEF fixture
from .world import MAF, MEF_FQDN, SP


async def test_certificate_maf_serves_a_keid(cworld: CertWorld, tmp_path: Path) -> None:  # noqa: F811
    enrolee = issue(cworld.ca, F.CSE_ID, "mn-cse-7", sp_domain=SP)
    enrolment = await enrol(cworld.address, cworld.creds(enrolee), mef_fqdn=MEF_FQDN, maf_enrolment=True)
    km = enrolment.credential(21, MAF)
    assert km.reveal() == hmac.new(enrolment.ke.reveal(), LABEL + b"21" + MAF.encode(), hashlib.sha256).digest()
    cert = issue(cworld.ca, F.FQDN, MAF)
    (tmp_path / "maf.pem").write_bytes(cert.certificate_pem())
    (tmp_path / "maf.key").write_bytes(cert.private_key_pem())
    (tmp_path / "maf.key").chmod(0o600)
    (tmp_path / "ca.pem").write_bytes(cworld.ca.certificate_pem())
    config = MAFConfig(listen="127.0.0.1:0", maf_fqdn=MAF, sp_id=SP, store=f"sqlite://{tmp_path}/maf.db",
                       certificate=str(tmp_path / "maf.pem"), private_key=str(tmp_path / "maf.key"),
                       client_trust_anchors=str(tmp_path / "ca.pem"), mef=cworld.address, mef_fqdn=MEF_FQDN,
                       mef_trust_anchors=str(tmp_path / "ca.pem"))
    async with running_maf(config) as maf:
        creds = MAFCredentials(MAF, kmid=str(enrolment.keid), km=km, mef_fqdn=MEF_FQDN)
        async with MAFClient("127.0.0.1", maf.port, creds) as client:
            reg = await client.register(lifetime=600)
            assert reg.assigned_symm_key_id is not None and reg.maf_client_id == f"//{SP}/mn-cse-7"
        async with MAFClient("127.0.0.1", maf.port, MAFCredentials(MAF, kmid=reg.assigned_symm_key_id, km=km)) as c:
            assert "mafClientRegCfg" in await c.configuration(reg.reg_id)
