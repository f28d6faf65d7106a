"""API Invoker Management over real TLS: onboarding with an onboarding credential and a CSR, then mutual TLS with
the certificate the CCF issued; update, offboarding, and one invoker never reaching another's enrolment."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.capif.certificates import CAPIFRole
from m2msec.errors import HandshakeFailed

from .ccf_env import INVOKERS, World, enrolment, new_key, onboard, world

__all__ = ["world"]


async def test_onboarding_issues_a_certificate_naming_the_invoker(world: World) -> None:
    inv = await onboard(world)
    cert = x509.load_pem_x509_certificate(inv.certificate_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == inv.identity
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == CAPIFRole.INVOKER.value
    assert inv.identity.startswith("INV")


async def test_location_names_the_new_resource(world: World) -> None:
    key = new_key()
    answer = await world.call(None, "POST", INVOKERS, enrolment(key),
                              headers={"authorization": f"Bearer {world.credential()}"})
    assert answer.status == 201
    body = answer.json()
    assert answer.header("location") == f"https://ccf.test.example:{world.ccf.port}{INVOKERS}/{body['apiInvokerId']}"


async def test_a_credential_onboards_once(world: World) -> None:
    token = world.credential()
    auth = {"authorization": f"Bearer {token}"}
    first = await world.call(None, "POST", INVOKERS, enrolment(new_key()), headers=auth)
    again = await world.call(None, "POST", INVOKERS, enrolment(new_key()), headers=auth)
    assert first.status == 201
    assert again.status == 401 and again.json()["cause"] == "INVALID_ONBOARDING_CREDENTIAL"


async def test_no_credential_or_a_foreign_one_is_refused(world: World) -> None:
    none = await world.call(None, "POST", INVOKERS, enrolment(new_key()))
    assert none.status == 401
    assert none.header("content-type") == "application/problem+json"
    from m2msec.capif.tokens import issue_onboarding_credential

    foreign = issue_onboarding_credential(new_key(), issuer="ccf.test.example", subject="x", lifetime=600,
                                          now=int(world.ccf.ccf.clock()), jti="foreign")
    bad = await world.call(None, "POST", INVOKERS, enrolment(new_key()),
                           headers={"authorization": f"Bearer {foreign}"})
    assert bad.status == 401


async def test_an_expired_credential_is_refused(world: World) -> None:
    stale = world.credential(now=int(world.ccf.ccf.clock()) - 7200, lifetime=600)
    answer = await world.call(None, "POST", INVOKERS, enrolment(new_key()),
                              headers={"authorization": f"Bearer {stale}"})
    assert answer.status == 401


async def test_schema_violations_are_problem_details(world: World) -> None:
    answer = await world.call(None, "POST", INVOKERS, {"onboardingInformation": {}},
                              headers={"authorization": f"Bearer {world.credential()}"})
    assert answer.status == 400
    assert answer.json()["cause"] == "INVALID_MSG_FORMAT"


async def test_update_offboard_and_no_cross_invoker_access(world: World) -> None:
    a = await onboard(world)
    b = await onboard(world)
    # b cannot touch a's enrolment
    put = await world.call(b, "PUT", f"{INVOKERS}/{a.identity}", a.answer)
    assert put.status == 403
    delete = await world.call(b, "DELETE", f"{INVOKERS}/{a.identity}")
    assert delete.status == 403
    # a updates its own
    changed = dict(a.answer, apiInvokerInformation="renamed")
    ok = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", changed)
    assert ok.status == 200 and ok.json()["apiInvokerInformation"] == "renamed"
    # without a certificate, nothing but onboarding
    anon = await world.call(None, "DELETE", f"{INVOKERS}/{a.identity}")
    assert anon.status == 401
    gone = await world.call(a, "DELETE", f"{INVOKERS}/{a.identity}")
    assert gone.status == 204
    # its certificate still chains to the CCF's CA, but the CCF no longer knows it
    after = await world.call(a, "PUT", f"{INVOKERS}/{a.identity}", changed)
    assert after.status == 403


async def test_a_certificate_of_another_ca_fails_the_handshake(world: World) -> None:
    from m2msec.pki import CertificateFlavour, create_ca, issue

    ca = create_ca("other", permitted_dns=["ccf.test.example"])
    stranger = issue(ca, CertificateFlavour.FQDN, "ccf.test.example")
    from .ccf_env import Identity

    who = Identity("x", stranger.certificate_pem(), stranger.private_key_pem())
    try:
        await world.call(who, "GET", "/service-apis/v1/allServiceAPIs")
    except HandshakeFailed:
        return
    raise AssertionError("a foreign certificate was accepted")


async def test_rsa_and_p384_invokers_call_with_the_certificate_they_got(world: World) -> None:
    """D119 certifies P-384 and RSA >= 2048 CSRs (opencapif-sdk sends RSA-2048); D164: the CCF's TLS then accepts
    those certificates too (the engine's default is TS-0003's P-256 only)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from .ccf_env import Identity, csr_pem, key_pem

    keys = (rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP384R1()))
    for key in keys:
        body = dict(enrolment(new_key()), onboardingInformation={"apiInvokerPublicKey": csr_pem(key)})  # type: ignore[arg-type]
        answer = await world.call(None, "POST", INVOKERS, body,
                                  headers={"authorization": f"Bearer {world.credential()}"})
        assert answer.status == 201, answer.body
        got = answer.json()
        who = Identity(got["apiInvokerId"], got["onboardingInformation"]["apiInvokerCertificate"].encode(),
                       key_pem(key), got)  # type: ignore[arg-type]
        again = await world.call(who, "PUT", f"{INVOKERS}/{who.identity}", dict(got, apiInvokerInformation="x"))
        assert again.status == 200, again.body
