"""API Provider Management (TS 29.222 §8.9, ``/api-provider-management/v1``): register, update, deregister API
provider domains and their functions (AEF/APF/AMF), each function's CSR signed.

Registration (TS 33.122 §6.1 for providers) comes over server-authenticated TLS with an onboarding credential as
``Authorization: Bearer``, spent exactly as at invoker onboarding (D121, :func:`.invokers.spend_credential`). Each
``apiProvFuncs[i].regInfo.apiProvPubKey`` is a CSR the CCF signs for the function's role (D119: OU ``aef``/``apf``/
``amf``, CN the assigned ``apiProvFuncId``) and returns as ``regInfo.apiProvCert``. The domain is then managed only by
one of its own AMFs with its certificate (D123): PUT and PATCH may add functions (no ``apiProvFuncId``), re-key one
(a new ``apiProvPubKey``: a new certificate, the old one refused from then on) or remove one (left out of the list);
removing a function, or the whole domain, withdraws the service APIs it published or exposes (:mod:`.publish`).
"""

from __future__ import annotations

import copy
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from m2msec.capif.ccf.context import CCF, ConcurrentChange, certificate_digest, delete_quietly
from m2msec.capif.ccf.http import MERGE_PATCH, CCFRequest, Reply, operation
from m2msec.capif.ccf.invokers import check_provider_credential, merge_patch, spend_credential, unspend_credential
from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate, load_csr
from m2msec.capif.tokens import OnboardingCredential
from m2msec.errors import CAPIFError
from m2msec.store import Document

__all__ = ["API", "DOMAIN_ID_PREFIX", "FUNCTION_ROLES", "PROVIDER_KIND", "REG_SEC_ANSWER", "delete_quietly",
           "domain_functions",
           "function_record", "registration_location"]

API: Final = "api-provider-management"
PROVIDER_KIND: Final = "capif-provider"
FUNC_PREFIX: Final = "func:"
#: D123: apiProvDomId = this + ccf.new_id(); each apiProvFuncId = its role (``AEF``/``APF``/``AMF``) + ccf.new_id()
DOMAIN_ID_PREFIX: Final = "DOM"
#: the ``apiProvFuncRole`` values the CCF registers, and the role its certificates are issued for (D119)
FUNCTION_ROLES: Final = {"AEF": CAPIFRole.AEF, "APF": CAPIFRole.APF, "AMF": CAPIFRole.AMF}
#: D123: ``regSec`` is required by the schema in requests and answers but authenticates nothing here (the Bearer
#: credential does): what was sent is neither stored nor echoed (clients put their token there); answers carry this
REG_SEC_ANSWER: Final = "not-echoed"


def registration_location(ccf: CCF, domain_id: str) -> str:
    return f"{ccf.policy.api_root}/{API}/v1/registrations/{domain_id}"


async def function_record(ccf: CCF, func_id: str) -> Document | None:
    """The ``func:<apiProvFuncId>`` record: ``{"domain", "role", "certificate"}``."""
    return await ccf.store.get_document(PROVIDER_KIND, FUNC_PREFIX + func_id)


async def domain_functions(ccf: CCF, domain_id: str) -> dict[str, Document]:
    """The function records of a domain, by apiProvFuncId."""
    return {doc.record_id[len(FUNC_PREFIX):]: doc for doc in await ccf.store.documents(PROVIDER_KIND)
            if doc.record_id.startswith(FUNC_PREFIX) and doc.body.get("domain") == domain_id}


def _certify(ccf: CCF, csr_pem: object, role: CAPIFRole, identity: str) -> tuple[str, str]:
    if not isinstance(csr_pem, str):
        raise CAPIFError("regInfo.apiProvPubKey must be a PEM certificate signing request", status=400)
    cert = issue_capif_certificate(ccf.ca, load_csr(csr_pem), role, identity, now=ccf.now(),
                                   days=ccf.policy.certificate_days)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), certificate_digest(cert)


def _role(func: dict[str, Any]) -> str:
    role = func["apiProvFuncRole"]
    if role not in FUNCTION_ROLES:
        raise CAPIFError(f"apiProvFuncRole {str(role)[:32]!r} is not one this CCF registers (AEF, APF, AMF)",
                         status=400)
    return str(role)


def _functions(enrolment: dict[str, Any]) -> list[dict[str, Any]]:
    funcs = enrolment.get("apiProvFuncs")
    if not isinstance(funcs, list) or not any(isinstance(f, dict) and f.get("apiProvFuncRole") == "AMF"
                                              for f in funcs):
        raise CAPIFError("an API provider domain needs at least one AMF in apiProvFuncs (it alone manages the "
                         "registration)", status=400)
    return funcs


def _answer(enrolment: dict[str, Any], domain_id: str, funcs: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(enrolment)
    out["apiProvDomId"] = domain_id
    out["regSec"] = REG_SEC_ANSWER
    out["apiProvFuncs"] = funcs
    out.pop("failReason", None)
    return out


@operation(API, "POST", "/registrations", precheck=check_provider_credential)
async def register(request: CCFRequest) -> Reply:
    ccf = request.ccf
    credential: OnboardingCredential = request.checked  # D147: a provider's credential, unspent (checked first)
    body: dict[str, Any] = request.body
    if "apiProvDomId" in body:
        raise CAPIFError("apiProvDomId is assigned by the CCF: it must not be sent at registration", status=400)
    domain_id = DOMAIN_ID_PREFIX + ccf.new_id()
    funcs, records = [], []
    for func in _functions(body):
        if "apiProvFuncId" in func:
            raise CAPIFError("apiProvFuncId is assigned by the CCF: it must not be sent at registration", status=400)
        role = _role(func)
        func_id = role + ccf.new_id()
        cert_pem, digest = _certify(ccf, func["regInfo"].get("apiProvPubKey"), FUNCTION_ROLES[role], func_id)
        out = copy.deepcopy(func)
        out["apiProvFuncId"] = func_id
        out["regInfo"] = dict(out["regInfo"], apiProvCert=cert_pem)
        funcs.append(out)
        records.append(Document(PROVIDER_KIND, FUNC_PREFIX + func_id,
                                {"domain": domain_id, "role": role, "certificate": digest}))
    answer = _answer(body, domain_id, funcs)
    await spend_credential(ccf, credential, domain_id)  # D121: spent once all else succeeded, atomically
    try:
        for record in records:
            await ccf.store.put_document(record)
        await ccf.store.put_document(Document(PROVIDER_KIND, domain_id, {
            "enrolment": answer, "jti": credential.jti, "subject": credential.subject}))
    except BaseException:
        for record in records:
            await delete_quietly(ccf, PROVIDER_KIND, record.record_id)
        await unspend_credential(ccf, credential)
        raise
    return Reply(201, answer, {"Location": registration_location(ccf, domain_id)})


async def _own(request: CCFRequest) -> Document:
    """The domain record the URL names, which the caller (an AMF with its current certificate) must belong to."""
    ccf = request.ccf
    amf = await ccf.authenticate(request.caller, CAPIFRole.AMF)
    domain_id = request.params["registrationId"]
    if amf.body.get("domain") != domain_id:
        raise CAPIFError("an AMF manages only the registration of its own API provider domain", status=403)
    record = await ccf.store.get_document(PROVIDER_KIND, domain_id)
    if record is None:
        raise CAPIFError("no such API provider domain", status=404)
    return record


async def _replace(request: CCFRequest, record: Document, enrolment: dict[str, Any]) -> Reply:
    """D123: the domain's functions become those of ``enrolment``: new ones registered, re-keyed ones certified
    again, the others removed (with the service APIs they publish or expose)."""
    ccf, domain_id = request.ccf, record.record_id
    if enrolment.get("apiProvDomId", domain_id) != domain_id:
        raise CAPIFError("apiProvDomId does not match the resource", status=400)
    current = await domain_functions(ccf, domain_id)
    stored = {f["apiProvFuncId"]: f for f in record.body["enrolment"].get("apiProvFuncs", [])}
    funcs: list[dict[str, Any]] = []
    writes: list[tuple[Document, bool]] = []  # (record, whether it replaces one)
    kept: set[str] = set()
    for func in _functions(enrolment):
        role = _role(func)
        out = copy.deepcopy(func)
        func_id = func.get("apiProvFuncId")
        key = func["regInfo"].get("apiProvPubKey")
        if func_id is None:  # a new function
            func_id = role + ccf.new_id()
            old = None
        else:
            if func_id not in current or func_id not in stored:
                raise CAPIFError(f"apiProvFuncId {str(func_id)[:80]!r} is not a function of this API provider "
                                 "domain", status=400)
            if func_id in kept:
                raise CAPIFError(f"apiProvFuncId {func_id!r} is listed twice", status=400)
            if current[func_id].body.get("role") != role:
                raise CAPIFError(f"the role of function {func_id} cannot change", status=400)
            old = stored[func_id]
        kept.add(func_id)
        if old is not None and key == old["regInfo"].get("apiProvPubKey"):
            cert_pem = old["regInfo"]["apiProvCert"]
        else:  # new, or re-keyed: the old certificate's digest is replaced, so it stops working
            cert_pem, digest = _certify(ccf, key, FUNCTION_ROLES[role], func_id)
            writes.append((Document(PROVIDER_KIND, FUNC_PREFIX + func_id,
                                    {"domain": domain_id, "role": role, "certificate": digest}), old is not None))
        out["apiProvFuncId"] = func_id
        out["regInfo"] = dict(out["regInfo"], apiProvCert=cert_pem)
        funcs.append(out)
    answer = _answer(enrolment, domain_id, funcs)
    # D152: the domain record first, over exactly the version this request was authorized against: an update
    # authorized before a concurrent one (e.g. one removing this very AMF) changed the domain gets 503 (D152) and writes
    # nothing; a domain deregistered meanwhile, 404
    written = Document(PROVIDER_KIND, domain_id, dict(record.body, enrolment=answer))
    await ccf.store.put_document(written, expect=record)
    for doc, existing in writes:
        await ccf.store.put_document(doc, replace=existing)
    removed = set(current) - kept
    await _remove_functions(ccf, removed)
    # D152: the domain is still the one written and the caller still its AMF (a concurrent removal of this AMF, or a
    # deregistration, lands between the domain write and the function writes); else the functions this request
    # wrote are undone and nothing it created survives
    now = await ccf.store.get_document(PROVIDER_KIND, domain_id)
    confirmed = now is not None and now.body == written.body
    caller = request.caller
    if confirmed and caller.identity is not None and caller.certificate is not None and caller.identity not in removed:
        mine = await function_record(ccf, caller.identity)
        ours = {doc.record_id: doc for doc, _ in writes}.get(FUNC_PREFIX + caller.identity)
        confirmed = mine is not None and (mine.body == ours.body if ours is not None else
                                          mine.body.get("certificate") == certificate_digest(caller.certificate))
    if not confirmed:
        for doc, existing in writes:
            if existing:
                await ccf.store.put_document(current[doc.record_id.removeprefix(FUNC_PREFIX)], replace=True)
            else:
                await delete_quietly(ccf, PROVIDER_KIND, doc.record_id)
        raise ConcurrentChange("the API provider domain changed while this request was served")
    return Reply(200, answer)


async def _remove_functions(ccf: CCF, func_ids: set[str]) -> None:
    if not func_ids:
        return
    from m2msec.capif.ccf import events, security  # they import what imports this module
    from m2msec.capif.ccf.publish import withdraw_services

    for func_id in sorted(func_ids):  # certificates refused from here on, subscriptions gone at once
        await delete_quietly(ccf, PROVIDER_KIND, FUNC_PREFIX + func_id)
        await events.drop_subscriptions(ccf, func_id)
    await withdraw_services(ccf, func_ids)  # security contexts lose them (security.withdraw, a publish hook)
    await security.forget_aefs(ccf, func_ids)


@operation(API, "PUT", "/registrations/{registrationId}")
async def update(request: CCFRequest) -> Reply:
    record = await _own(request)
    return await _replace(request, record, request.body)


@operation(API, "PATCH", "/registrations/{registrationId}", media=MERGE_PATCH)
async def modify(request: CCFRequest) -> Reply:
    record = await _own(request)
    merged = merge_patch(record.body["enrolment"], request.body)
    if not isinstance(merged, dict):
        raise CAPIFError("the patch must be a JSON object", status=400)
    return await _replace(request, record, merged)


@operation(API, "DELETE", "/registrations/{registrationId}", media=None)
async def deregister(request: CCFRequest) -> Reply:
    record = await _own(request)
    ccf = request.ccf
    await delete_quietly(ccf, PROVIDER_KIND, record.record_id)  # first: an update in flight then writes nothing
    await _remove_functions(ccf, set(await domain_functions(ccf, record.record_id)))
    return Reply(204)
