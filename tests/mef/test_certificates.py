"""The certificate RSPF (TS-0003 §8.3.2.1, §10.2.3 ECDHE-ECDSA): an FQDN-certified MEF, certificate enrolees and
targets, over real TLS on loopback."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from m2msec.errors import HandshakeFailed
from m2msec.mef.client import MEFCredentials, MEFFetcher, MEFRefused, enrol
from m2msec.mef.config import MEFConfig
from m2msec.mef.procedures import EnrolmentTarget, add_enrolee, add_target
from m2msec.mef.server import RunningMEF, running_mef
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import create_ca, issue
from m2msec.pki.profile import Issued
from m2msec.store import KeyStore, open_store

from .world import GW, MAF, MEF_FQDN, SP, TARGET_PSKS

LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"


@dataclass
class CertWorld:
    running: RunningMEF
    store: KeyStore
    ca: Issued

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def creds(self, cert: Issued, ca: Issued | None = None) -> MEFCredentials:
        return MEFCredentials(chain_pem=cert.certificate_pem(), private_key_pem=cert.private_key_pem(),
                              trust_anchors_pem=(ca or self.ca).certificate_pem())


@pytest.fixture
async def cworld(tmp_path: Path) -> AsyncIterator[CertWorld]:
    ca = create_ca("provider root", permitted_dns=[SP])
    mef = issue(ca, F.FQDN, MEF_FQDN)
    (tmp_path / "mef.pem").write_bytes(mef.certificate_pem())
    (tmp_path / "mef.key").write_bytes(mef.private_key_pem())
    (tmp_path / "mef.key").chmod(0o600)
    (tmp_path / "ca.pem").write_bytes(ca.certificate_pem())
    config = MEFConfig(listen="127.0.0.1:0", mef_fqdn=MEF_FQDN, sp_id=SP, store=f"sqlite://{tmp_path}/mef.db",
                       certificate=str(tmp_path / "mef.pem"), private_key=str(tmp_path / "mef.key"),
                       client_trust_anchors=str(tmp_path / "ca.pem"))
    store = open_store(config.store)
    add_enrolee(store, f"//{SP}/mn-cse-7", enrolee_id=f"//{SP}/mn-cse-7", kpm=None,
                targets=[EnrolmentTarget(MAF, (21,)), EnrolmentTarget(GW, (22,))])
    add_target(store, MAF, "maf", None)  # authenticates with its FQDN certificate
    add_target(store, GW, "cse", TARGET_PSKS[GW])  # a PSK target: a certificate for its name is not enough
    try:
        async with running_mef(config, store=store) as running:
            yield CertWorld(running, store, ca)
    finally:
        store.close()


async def test_certificate_enrolment_and_fetch(cworld: CertWorld) -> None:
    enrolee = issue(cworld.ca, F.CSE_ID, "mn-cse-7", sp_domain=SP)
    got = await enrol(cworld.address, cworld.creds(enrolee), mef_fqdn=MEF_FQDN)
    doc = cworld.store.get_document("mef-ke", got.keid.relative_ke_id.hex())
    assert doc is not None and doc.key == got.ke
    assert got.enrolee_id == f"//{SP}/mn-cse-7"
    maf = issue(cworld.ca, F.FQDN, MAF)
    async with MEFFetcher(cworld.address, cworld.creds(maf), mef_fqdn=MEF_FQDN) as fetcher:
        km = await fetcher.fetch(got.keid, 21)
    want = hmac.new(got.ke.reveal(), LABEL + b"21" + MAF.encode(), hashlib.sha256).digest()
    assert km.credential.reveal() == want
    gw_by_cert = issue(cworld.ca, F.FQDN, GW)
    async with MEFFetcher(cworld.address, cworld.creds(gw_by_cert), mef_fqdn=MEF_FQDN) as fetcher:
        with pytest.raises(MEFRefused) as caught:
            await fetcher.fetch(got.keid, 22)
    assert (caught.value.status, caught.value.problem) == (403, "not-the-target")


async def test_a_certificate_that_is_no_enrolee_or_from_another_ca_is_refused(cworld: CertWorld) -> None:
    stranger = issue(cworld.ca, F.CSE_ID, "mn-cse-8", sp_domain=SP)
    with pytest.raises(MEFRefused) as caught:
        await enrol(cworld.address, cworld.creds(stranger), mef_fqdn=MEF_FQDN)
    assert (caught.value.status, caught.value.problem) == (403, "not-an-enrolee")
    other_ca = create_ca("another root", permitted_dns=[SP])
    forged = issue(other_ca, F.CSE_ID, "mn-cse-7", sp_domain=SP)
    with pytest.raises(HandshakeFailed):
        await enrol(cworld.address, MEFCredentials(chain_pem=forged.certificate_pem(),
                                                   private_key_pem=forged.private_key_pem(),
                                                   trust_anchors_pem=cworld.ca.certificate_pem()),
                    mef_fqdn=MEF_FQDN)
    enrolee = issue(cworld.ca, F.CSE_ID, "mn-cse-7", sp_domain=SP)
    with pytest.raises(HandshakeFailed, match="FQDN certificate"):  # the MEF's certificate names another FQDN
        await enrol(cworld.address, cworld.creds(enrolee), mef_fqdn="mef2.sp.example.com")


async def test_a_certificate_issued_by_a_clock_just_ahead_of_the_mefs_is_accepted(cworld: CertWorld) -> None:
    """D235: the CA's clock 30 s ahead of the MEF's. It stands for the flaky case: OpenSSL verifies against the
    coarse wall clock, a few ms behind the clock ``issue`` dated the certificate with, so a handshake right after
    issuance failed with "tls alert bad certificate" (certificate is not yet valid) a few times in a thousand."""
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    enrolee = issue(cworld.ca, F.CSE_ID, "mn-cse-7", sp_domain=SP, now=ahead)
    got = await enrol(cworld.address, cworld.creds(enrolee), mef_fqdn=MEF_FQDN)
    assert got.enrolee_id == f"//{SP}/mn-cse-7"
    too_far = issue(cworld.ca, F.CSE_ID, "mn-cse-7", sp_domain=SP, now=datetime.now(UTC) + timedelta(minutes=6))
    with pytest.raises(HandshakeFailed, match="bad certificate"):  # the dates are still checked
        await enrol(cworld.address, cworld.creds(too_far), mef_fqdn=MEF_FQDN)
