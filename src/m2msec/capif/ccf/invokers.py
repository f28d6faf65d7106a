"""API Invoker Management (TS 29.222 §8.4, ``/api-invoker-management/v1``): onboard, update, offboard.

Onboarding (TS 33.122 §6.1) comes over server-authenticated TLS with an onboarding credential, a JWT issued by
``m2msec ccf onboarding-credential`` (:mod:`m2msec.capif.tokens`) as ``Authorization: Bearer``. Each credential
onboards one invoker (D121: its ``jti`` is spent by an atomic insert before the invoker is created, so two requests
with one credential cannot both succeed). The CCF signs the CSR in ``onboardingInformation.apiInvokerPublicKey`` and
returns the certificate in ``apiInvokerCertificate``; the ``onboardingId`` of the resource is the API invoker ID.
Every later call is made with that certificate, and only for the invoker it names (403 otherwise).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.capif.ccf.context import CCF, certificate_digest
from m2msec.capif.ccf.http import INVALID_MSG_FORMAT, JSON, MERGE_PATCH, CCFRequest, Reply, operation
from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate, load_csr
from m2msec.capif.schema import SchemaViolation, validate_request
from m2msec.capif.tokens import INVALID_CREDENTIAL_CAUSE, OnboardingCredential, verify_onboarding_credential
from m2msec.errors import CAPIFError, Conflict, StorageError
from m2msec.store import Document

__all__ = ["API", "INVOKER_KIND", "REVOKED_KIND", "check_credential", "check_provider_credential", "invoker_location",
           "merge_patch",
           "offboard_invoker", "onboarding_credential", "purge_hooks", "rekey_hooks", "spend_credential",
           "unspend_credential"]

log = logging.getLogger("m2msec.ccf")

API: Final = "api-invoker-management"
INVOKER_KIND: Final = "capif-invoker"
#: the store kind of spent and revoked onboarding credentials (record id `jti:<jti>`)
REVOKED_KIND: Final = "capif-revoked"
#: the prefix of API invoker IDs the CCF assigns (D121)
INVOKER_ID_PREFIX: Final = "INV"

#: called with (ccf, api_invoker_id) after an invoker is offboarded (the security module drops its context)
purge_hooks: list[Any] = []
#: called with (ccf, api_invoker_id) after an invoker replaced its key (D153: the security module drops what was
#: negotiated under the old one)
rekey_hooks: list[Any] = []


def invoker_location(ccf: CCF, invoker_id: str) -> str:
    return f"{ccf.policy.api_root}/{API}/v1/onboardedInvokers/{invoker_id}"


def _bearer(request: CCFRequest) -> str:
    value = request.header("authorization")
    if value is None:
        raise CAPIFError("onboarding needs an onboarding credential (Authorization: Bearer)", status=401,
                         cause=INVALID_CREDENTIAL_CAUSE)
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise CAPIFError("the onboarding credential goes in Authorization: Bearer", status=401,
                         cause=INVALID_CREDENTIAL_CAUSE)
    return token.strip()


def onboarding_credential(request: CCFRequest, purpose: str = "invoker") -> OnboardingCredential:
    """The verified onboarding credential of the request's ``Authorization: Bearer`` (invoker onboarding, API
    provider registration); not yet spent: :func:`spend_credential` once the request is known to be good.
    Raises CAPIFError (401, cause INVALID_ONBOARDING_CREDENTIAL)."""
    ccf = request.ccf
    credential = verify_onboarding_credential(_bearer(request), ccf.verification_keys, issuer=ccf.policy.issuer,
                                              audience=ccf.policy.onboarding_audience, now=int(ccf.clock()),
                                              revoked=lambda _: False)
    if credential.purpose != purpose:  # D147: an invoker's credential never registers a provider domain
        raise CAPIFError(f"this onboarding credential is not for onboarding an API {purpose}", status=403,
                         cause=INVALID_CREDENTIAL_CAUSE)
    return credential


async def spend_credential(ccf: CCF, credential: OnboardingCredential, by: str) -> None:
    """D121: spend the credential (an atomic insert of its ``jti``) before ``by`` (the identity it creates) is
    stored, so that one credential never creates two. Raises CAPIFError (401): already used or revoked."""
    try:
        await ccf.store.put_document(Document(REVOKED_KIND, "jti:" + credential.jti,
                                              {"reason": "used", "at": ccf.clock(), "by": by}))
    except Conflict:
        raise CAPIFError("the onboarding credential was already used or is revoked", status=401,
                         cause=INVALID_CREDENTIAL_CAUSE) from None


def _certify(ccf: CCF, csr_pem: object, identity: str) -> tuple[str, str]:
    """Sign the invoker's CSR: (certificate PEM, its digest)."""
    if not isinstance(csr_pem, str):
        raise CAPIFError("onboardingInformation.apiInvokerPublicKey must be a PEM certificate signing request",
                         status=400)
    cert = issue_capif_certificate(ccf.ca, load_csr(csr_pem), CAPIFRole.INVOKER, identity, now=ccf.now(),
                                   days=ccf.policy.certificate_days)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), certificate_digest(cert)


def _answer(enrolment: dict[str, Any], invoker_id: str, cert_pem: str) -> dict[str, Any]:
    out = copy.deepcopy(enrolment)
    out["apiInvokerId"] = invoker_id
    info = dict(out.get("onboardingInformation") or {})
    info["apiInvokerCertificate"] = cert_pem
    info.pop("onboardingSecret", None)  # never echoed
    out["onboardingInformation"] = info
    return out


async def _unspent(request: CCFRequest, purpose: str) -> OnboardingCredential:
    credential = onboarding_credential(request, purpose)
    if await request.ccf.store.get_document(REVOKED_KIND, "jti:" + credential.jti) is not None:
        raise CAPIFError("the onboarding credential was already used or is revoked", status=401,
                         cause=INVALID_CREDENTIAL_CAUSE)
    return credential


async def check_credential(request: CCFRequest) -> OnboardingCredential:
    """The ``precheck`` of onboarding: an invoker's credential verified and not yet spent or revoked, before the
    body is read (an anonymous client gets no further without one)."""
    return await _unspent(request, "invoker")


async def check_provider_credential(request: CCFRequest) -> OnboardingCredential:
    """The ``precheck`` of API provider registration (:func:`check_credential` for a provider's credential)."""
    return await _unspent(request, "provider")


async def unspend_credential(ccf: CCF, credential: OnboardingCredential) -> None:
    """Undo :func:`spend_credential` after the identity could not be stored (best effort: the store failed once)."""
    try:
        await ccf.store.delete_document(REVOKED_KIND, "jti:" + credential.jti)
    except StorageError:
        log.error("a spent onboarding credential could not be restored after a store failure")


@operation(API, "POST", "/onboardedInvokers", precheck=check_credential)
async def onboard(request: CCFRequest) -> Reply:
    ccf = request.ccf
    credential: OnboardingCredential = request.checked
    body: dict[str, Any] = request.body
    invoker_id = INVOKER_ID_PREFIX + ccf.new_id()
    # everything that can fail on this request's account comes before the credential is spent
    cert_pem, digest = _certify(ccf, body["onboardingInformation"].get("apiInvokerPublicKey"), invoker_id)
    answer = _answer(body, invoker_id, cert_pem)
    await spend_credential(ccf, credential, invoker_id)  # D121: spent first, atomically
    try:
        await ccf.store.put_document(Document(INVOKER_KIND, invoker_id, {
            "enrolment": answer, "certificate": digest, "jti": credential.jti, "subject": credential.subject}))
    except BaseException:
        await unspend_credential(ccf, credential)
        raise
    await ccf.events.emit("API_INVOKER_ONBOARDED", {"apiInvokerIds": [invoker_id]})
    return Reply(201, answer, {"Location": invoker_location(ccf, invoker_id)})


async def _own(request: CCFRequest) -> Document:
    """The caller's invoker record, which must be the one the URL names."""
    record = await request.ccf.authenticate(request.caller, CAPIFRole.INVOKER)
    if record.record_id != request.params["onboardingId"]:
        raise CAPIFError("an API invoker manages only its own enrolment", status=403)
    return record


def _same_key(csr_pem: str, cert_pem: str) -> bool:
    """Whether the CSR is over the key the current certificate certifies (its text may differ: line ends...)."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    current = x509.load_pem_x509_certificate(cert_pem.encode("ascii")).public_key().public_bytes(*spki)
    return load_csr(csr_pem).public_key().public_bytes(*spki) == current


async def _replace(request: CCFRequest, record: Document, enrolment: dict[str, Any]) -> Reply:
    ccf, invoker_id = request.ccf, record.record_id
    old = record.body["enrolment"]
    cert_pem = old["onboardingInformation"]["apiInvokerCertificate"]
    new_key = (enrolment.get("onboardingInformation") or {}).get("apiInvokerPublicKey")
    body = dict(record.body)
    rekeyed = isinstance(new_key, str) and not _same_key(new_key, cert_pem)
    if rekeyed:
        cert_pem, body["certificate"] = _certify(ccf, new_key, invoker_id)  # the old certificate stops working
    answer = _answer(enrolment, invoker_id, cert_pem)
    body["enrolment"] = answer
    # compare-and-swap over the record this request was authenticated with (D144): an update authenticated with a
    # certificate that a concurrent re-key retires never lands
    await ccf.store.put_document(Document(INVOKER_KIND, invoker_id, body), expect=record)
    if rekeyed:
        for hook in rekey_hooks:
            await hook(ccf, invoker_id)
    return Reply(200, answer)


@operation(API, "PUT", "/onboardedInvokers/{onboardingId}")
async def update(request: CCFRequest) -> Reply:
    record = await _own(request)
    body: dict[str, Any] = request.body
    if body.get("apiInvokerId", record.record_id) != record.record_id:
        raise CAPIFError("apiInvokerId does not match the resource", status=400)
    return await _replace(request, record, body)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@operation(API, "PATCH", "/onboardedInvokers/{onboardingId}", media=MERGE_PATCH)
async def modify(request: CCFRequest) -> Reply:
    record = await _own(request)
    merged = merge_patch(copy.deepcopy(record.body["enrolment"]), request.body)  # the record must stay as read
    merged.pop("apiInvokerId", None)
    if isinstance(merged.get("onboardingInformation"), dict):
        merged["onboardingInformation"].pop("apiInvokerCertificate", None)
    try:  # the result must be an enrolment the official schema admits, as a PUT body would be
        validate_request(API, "PUT /onboardedInvokers/{onboardingId}", merged, JSON)
    except SchemaViolation as exc:
        raise CAPIFError(f"the patched enrolment breaks the schema: {str(exc).partition(': ')[2]}"[:512],
                         status=400, cause=INVALID_MSG_FORMAT) from None
    return await _replace(request, record, merged)


async def offboard_invoker(ccf: CCF, invoker_id: str) -> None:
    """Offboard ``invoker_id``: its record (its certificate stops working), what the purge hooks hold for it
    (security context, AEFPSKs, subscriptions), then the event. Raises NotFound when there is no such invoker."""
    await ccf.store.delete_document(INVOKER_KIND, invoker_id)
    for hook in purge_hooks:
        await hook(ccf, invoker_id)
    await ccf.events.emit("API_INVOKER_OFFBOARDED", {"apiInvokerIds": [invoker_id]})


@operation(API, "DELETE", "/onboardedInvokers/{onboardingId}", media=None)
async def offboard(request: CCFRequest) -> Reply:
    record = await _own(request)
    await offboard_invoker(request.ccf, record.record_id)
    return Reply(204)
