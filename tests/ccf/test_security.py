"""CAPIF Security API over real TLS: security contexts (method selection, AEFPSK equal to the formula computed here
from the invoker connection's own TLS 1.2 master secret and session ID), what an AEF and an invoker may read or
revoke, offboarding purge. The published services and AEFs are written straight into the store (their API is another
module's)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.capif.ccf.context import certificate_digest
from m2msec.capif.ccf.security_context import PublishedService, resolve_entry, select_for
from m2msec.capif.certificates import CAPIFRole, issue_capif_certificate
from m2msec.capif.security_method import SecurityMethod
from m2msec.errors import CAPIFError
from m2msec.store import Document

from .ccf_env import INVOKERS, NOTIFY, Identity, World, csr_pem, key_pem, new_key, onboard, world

__all__ = ["world"]

SECURITY = "/capif-security/v1/trustedInvokers"
#: the interface of AEF1's api-one, and its interface information P0 written by hand (D115)
IFACE_ONE = {"fqdn": "AEF1.Test.Example.", "port": 8443, "apiPrefix": "/one"}
P0_ONE = "aef1.test.example:8443/one"
IFACE_TWO = {"ipv4Addr": "192.0.2.7", "apiPrefix": "/two"}
P0_TWO = "192.0.2.7:443/two"
_ids = itertools.count(1)


class Recorder:
    """Stands for the events notifier: keeps what the security API emits."""

    def __init__(self) -> None:
        self.all: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, event: str, detail: dict[str, Any]) -> None:
        self.all.append((event, detail))

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The security API's events (onboarding emits its own)."""
        return [e for e in self.all if e[0] != "API_INVOKER_ONBOARDED"]


def make_aef(world: World, aef_id: str | None = None) -> Identity:
    """An AEF the CCF certified, with its provider record (what provider registration writes)."""
    aef_id = aef_id or f"AEF{next(_ids)}x"
    key = new_key()
    csr = x509.load_pem_x509_csr(csr_pem(key).encode())
    cert = issue_capif_certificate(world.ccf.ccf.ca, csr, CAPIFRole.AEF, aef_id, now=world.ccf.ccf.now(), days=30)
    world.store.put_document(Document("capif-provider", "func:" + aef_id, {
        "domain": "DOM1", "role": "AEF", "certificate": certificate_digest(cert)}))
    return Identity(aef_id, cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def publish(world: World, api_id: str, api_name: str, *profiles: dict[str, Any]) -> None:
    """A published service API (what the Publish API writes)."""
    world.store.put_document(Document("capif-service", api_id, {"apf": "APF1", "description": {
        "apiName": api_name, "apiId": api_id, "aefProfiles": list(profiles)}}))


def profile(aef_id: str, methods: list[str] | None = None, *interfaces: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"aefId": aef_id, "versions": [{"apiVersion": "v1"}],
                           "interfaceDescriptions": list(interfaces)}
    if methods is not None:
        out["securityMethods"] = methods
    return out


def security(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"securityInfo": list(entries), "notificationDestination": NOTIFY, "supportedFeatures": "0"}


def expected_aefpsk(master: bytes, session_id: bytes, p0: str) -> bytes:
    """TS 33.220 B.2 / TS 33.122 A.1 written here: HMAC-SHA-256(master, 0x7A || P0 || L0 || P1 || L1)."""
    p = p0.encode()
    s = b"\x7a" + p + len(p).to_bytes(2, "big") + session_id + len(session_id).to_bytes(2, "big")
    return hmac.new(master, s, hashlib.sha256).digest()


def one_aef(world: World, methods: list[str] | None = None, iface_methods: list[str] | None = None) -> Identity:
    aef = make_aef(world)
    iface = dict(IFACE_ONE, **({"securityMethods": iface_methods} if iface_methods else {}))
    publish(world, f"api-one-{aef.identity}", "api-one", profile(aef.identity, methods or ["PSK", "PKI", "OAUTH"],
                                                                 iface))
    return aef


async def test_psk_aefpsk_is_the_formula_on_both_sides_and_reaches_only_the_aef(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        answer = await conn.request("PUT", f"{SECURITY}/{inv.identity}",
                                    json_body=security({"aefId": aef.identity, "prefSecurityMethods": ["PSK"]}))
        master = conn.writer.get_extra_info("tls_connection").master_secret().reveal()
        session_id = conn.session.session_id
        client_side = conn.aefpsk(P0_ONE).reveal()
    assert answer.status == 201, answer.body
    assert answer.header("location") == f"https://ccf.test.example:{world.ccf.port}{SECURITY}/{inv.identity}"
    body = answer.json()
    assert body["securityInfo"][0]["selSecurityMethod"] == "PSK"
    assert len(master) == 48 and 1 <= len(session_id) <= 32
    key = expected_aefpsk(master, session_id, P0_ONE)
    assert client_side == key
    # never in the invoker's answer, in any form
    assert "authenticationInfo" not in body["securityInfo"][0]
    assert key.hex().encode() not in answer.body and key not in answer.body
    stored = world.store.get_document("capif-aefpsk", f"{inv.identity} {aef.identity} {P0_ONE}")
    assert stored is not None and stored.key is not None and stored.key.reveal() == key
    # the AEF gets it (hex, D129) when it asks for the authentication information
    got = await world.call(aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true&authorizationInfo=true")
    assert got.status == 200, got.body
    entry = got.json()["securityInfo"][0]
    assert entry["authenticationInfo"] == key.hex()
    assert entry["authorizationInfo"] == f"3gpp#{aef.identity}:api-one"
    plain = await world.call(aef, "GET", f"{SECURITY}/{inv.identity}")
    assert "authenticationInfo" not in plain.json()["securityInfo"][0]
    # the invoker reads its own context, never a key, whatever it asks
    own = await world.call(inv, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert own.status == 200 and "authenticationInfo" not in own.json()["securityInfo"][0]
    assert key.hex().encode() not in own.body


async def test_interface_details_entry_keys_that_interface(world: World) -> None:
    aef = make_aef(world)
    publish(world, "svc-two", "api-two", profile(aef.identity, ["PSK"], IFACE_ONE, IFACE_TWO))
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        answer = await conn.request("PUT", f"{SECURITY}/{inv.identity}", json_body=security(
            {"interfaceDetails": {"ipv4Addr": "192.0.2.7", "port": 443, "apiPrefix": "/two"},
             "prefSecurityMethods": ["PSK"]}))
        key = expected_aefpsk(conn.writer.get_extra_info("tls_connection").master_secret().reveal(),
                              conn.session.session_id, P0_TWO)
    assert answer.status == 201, answer.body
    got = await world.call(aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert got.json()["securityInfo"][0]["authenticationInfo"] == key.hex()


async def test_method_selection(world: World) -> None:
    inv = await onboard(world)
    # the interface's methods override the profile's; then the CCF's priority PSK > PKI > OAUTH
    over = one_aef(world, ["PSK", "PKI", "OAUTH"], iface_methods=["OAUTH", "PKI"])
    full = one_aef(world)
    answer = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}", security(
        {"aefId": over.identity, "prefSecurityMethods": ["PSK", "OAUTH"]},
        {"aefId": full.identity, "prefSecurityMethods": ["OAUTH", "PKI", "PSK"]}))
    assert answer.status == 201, answer.body
    assert [e["selSecurityMethod"] for e in answer.json()["securityInfo"]] == ["OAUTH", "PSK"]
    # nothing in common
    none = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                            security({"aefId": over.identity, "prefSecurityMethods": ["PSK"]}))
    assert none.status == 400 and none.json()["cause"] == "NO_COMMON_SECURITY_METHOD"


async def test_an_aef_entry_over_several_interfaces_never_gets_psk(world: World) -> None:
    aef = make_aef(world)
    publish(world, "svc-multi", "api-multi", profile(aef.identity, ["PSK", "PKI"], IFACE_ONE, IFACE_TWO))
    inv = await onboard(world)
    fallback = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                                security({"aefId": aef.identity, "prefSecurityMethods": ["PSK", "PKI"]}))
    assert fallback.status == 201 and fallback.json()["securityInfo"][0]["selSecurityMethod"] == "PKI"
    only = await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                            security({"aefId": aef.identity, "prefSecurityMethods": ["PSK"]}))
    assert only.status == 400 and only.json()["cause"] == "NO_COMMON_SECURITY_METHOD"
    assert "interfaceDetails" in only.json()["detail"]
    # the PKI entry gives the AEF the invoker's current certificate as its RFC 8705 x5t#S256 thumbprint (D175),
    # computed here from the certificate the invoker holds
    got = await world.call(aef, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    der = x509.load_pem_x509_certificate(inv.certificate_pem).public_bytes(serialization.Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert got.json()["securityInfo"][0]["authenticationInfo"] == expected


def test_psk_needs_a_tls12_session_with_a_session_id() -> None:
    service = PublishedService("svc", {"apiName": "api", "aefProfiles": [profile("A", ["PSK", "PKI"], IFACE_ONE)]})
    entry = {"aefId": "A", "prefSecurityMethods": ["PSK", "PKI"]}
    resolved = resolve_entry(0, entry, [service])
    assert resolved.interface == P0_ONE
    assert select_for(0, entry, resolved, "TLSv1.2", b"\x01" * 32) is SecurityMethod.PSK
    assert select_for(0, entry, resolved, "TLSv1.3", b"") is SecurityMethod.PKI
    assert select_for(0, entry, resolved, "TLSv1.2", b"") is SecurityMethod.PKI
    with pytest.raises(CAPIFError) as refused:
        select_for(0, {"aefId": "A", "prefSecurityMethods": ["PSK"]}, resolved, "TLSv1.3", b"")
    assert refused.value.status == 400 and "TLS 1.2" in refused.value.detail


async def test_bad_entries_are_refused(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    url = f"{SECURITY}/{inv.identity}"
    empty = await world.call(inv, "PUT", url, security())
    assert empty.status == 400
    unknown = await world.call(inv, "PUT", url, security({"aefId": "nobody", "prefSecurityMethods": ["PKI"]}))
    assert unknown.status == 400 and unknown.json()["cause"] == "UNKNOWN_AEF_OR_INTERFACE"
    iface = await world.call(inv, "PUT", url, security(
        {"interfaceDetails": {"fqdn": "elsewhere.example", "port": 1}, "prefSecurityMethods": ["PKI"]}))
    assert iface.status == 400 and iface.json()["cause"] == "UNKNOWN_AEF_OR_INTERFACE"
    elsewhere = await world.call(inv, "PUT", url, security(
        {"aefId": aef.identity, "apiId": "svc-of-someone-else", "prefSecurityMethods": ["PKI"]}))
    assert elsewhere.status == 400 and elsewhere.json()["cause"] == "UNKNOWN_AEF_OR_INTERFACE"
    twice = await world.call(inv, "PUT", url, security({"aefId": aef.identity, "prefSecurityMethods": ["PKI"]},
                                                       {"aefId": aef.identity, "prefSecurityMethods": ["PSK"]}))
    assert twice.status == 400
    both = await world.call(inv, "PUT", url, security(
        {"aefId": aef.identity, "interfaceDetails": IFACE_ONE, "prefSecurityMethods": ["PKI"]}))
    assert both.status == 400 and both.json()["cause"] == "INVALID_MSG_FORMAT"  # the file's oneOf
    assert world.store.get_document("capif-security", inv.identity) is None


async def test_no_cross_invoker_access_and_an_aef_not_named_gets_nothing(world: World) -> None:
    aef = one_aef(world)
    other_aef = one_aef(world)
    a, b = await onboard(world), await onboard(world)
    body = security({"aefId": aef.identity, "prefSecurityMethods": ["PSK"]})
    assert (await world.call(a, "PUT", f"{SECURITY}/{a.identity}", body)).status == 201
    for method, path, payload in (("PUT", "", body), ("GET", "", None), ("DELETE", "", None),
                                  ("POST", "/update", body)):
        answer = await world.call(b, method, f"{SECURITY}/{a.identity}{path}", payload)
        assert answer.status == 403, (method, path, answer.body)
    not_named = await world.call(other_aef, "GET", f"{SECURITY}/{a.identity}?authenticationInfo=true")
    assert not_named.status == 404 and b"authenticationInfo" not in not_named.body
    assert (await world.call(None, "GET", f"{SECURITY}/{a.identity}")).status == 401
    revoke = await world.call(other_aef, "POST", f"{SECURITY}/{a.identity}/delete", {
        "apiInvokerId": a.identity, "aefId": aef.identity, "apiIds": [f"api-one-{aef.identity}"],
        "cause": "UNEXPECTED_REASON"})
    assert revoke.status == 403
    assert (await world.call(aef, "GET", f"{SECURITY}/{a.identity}")).status == 200


async def test_replace_update_and_renegotiation_rederive(world: World) -> None:
    aef, second = one_aef(world), one_aef(world)
    inv = await onboard(world)
    url = f"{SECURITY}/{inv.identity}"
    psk_record = f"{inv.identity} {aef.identity} {P0_ONE}"
    first = await world.call(inv, "PUT", url, security({"aefId": aef.identity, "prefSecurityMethods": ["PSK"]}))
    assert first.status == 201
    old = world.store.get_document("capif-aefpsk", psk_record)
    assert old is not None and old.key is not None
    # /update adds an entry and renegotiates the first on a new session: a new AEFPSK from that session
    async with await world.connect(inv) as conn:
        updated = await conn.request("POST", f"{url}/update", json_body=security(
            {"aefId": aef.identity, "prefSecurityMethods": ["PSK"]},
            {"aefId": second.identity, "prefSecurityMethods": ["OAUTH"]}))
        key = conn.aefpsk(P0_ONE).reveal()
    assert updated.status == 200, updated.body
    assert [(e["aefId"], e["selSecurityMethod"]) for e in updated.json()["securityInfo"]] == [
        (aef.identity, "PSK"), (second.identity, "OAUTH")]
    new = world.store.get_document("capif-aefpsk", psk_record)
    assert new is not None and new.key is not None and new.key.reveal() == key != old.key.reveal()
    # an update naming only the second keeps the first
    kept = await world.call(inv, "POST", f"{url}/update",
                            security({"aefId": second.identity, "prefSecurityMethods": ["PKI"]}))
    assert [e["selSecurityMethod"] for e in kept.json()["securityInfo"]] == ["PSK", "PKI"]
    # a PUT replaces the whole context (201 again, the only success the file gives PUT): PSK gone, its key too
    again = await world.call(inv, "PUT", url, security({"aefId": aef.identity, "prefSecurityMethods": ["PKI"]}))
    assert again.status == 201 and len(again.json()["securityInfo"]) == 1
    assert world.store.get_document("capif-aefpsk", psk_record) is None
    assert (await world.call(second, "GET", url)).status == 404


async def test_update_needs_a_context(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    answer = await world.call(inv, "POST", f"{SECURITY}/{inv.identity}/update",
                              security({"aefId": aef.identity, "prefSecurityMethods": ["PKI"]}))
    assert answer.status == 404


async def test_invoker_delete_revokes_everything(world: World) -> None:
    recorder = Recorder()
    world.ccf.ccf.events = recorder
    aef = one_aef(world)
    inv = await onboard(world)
    url = f"{SECURITY}/{inv.identity}"
    assert (await world.call(inv, "PUT", url, security({"aefId": aef.identity,
                                                        "prefSecurityMethods": ["PSK"]}))).status == 201
    assert (await world.call(inv, "DELETE", url)).status == 204
    assert recorder.events == [("API_INVOKER_AUTHORIZATION_REVOKED",
                                {"apiInvokerIds": [inv.identity], "apiIds": [f"api-one-{aef.identity}"]})]
    assert (await world.call(aef, "GET", f"{url}?authenticationInfo=true")).status == 404
    assert world.store.get_document("capif-aefpsk", f"{inv.identity} {aef.identity} {P0_ONE}") is None
    assert (await world.call(inv, "DELETE", url)).status == 404


async def test_aef_revokes_some_apis(world: World) -> None:
    recorder = Recorder()
    world.ccf.ccf.events = recorder
    aef = make_aef(world)
    publish(world, "svc-a", "api-a", profile(aef.identity, ["PKI", "OAUTH"], IFACE_ONE))
    publish(world, "svc-b", "api-b", profile(aef.identity, ["PKI", "OAUTH"], IFACE_ONE))
    inv = await onboard(world)
    url = f"{SECURITY}/{inv.identity}"
    put = await world.call(inv, "PUT", url, security({"aefId": aef.identity, "prefSecurityMethods": ["PKI"]}))
    assert put.status == 201
    notice = {"apiInvokerId": inv.identity, "apiIds": ["svc-a"], "cause": "OVERLIMIT_USAGE"}
    wrong = await world.call(aef, "POST", f"{url}/delete", dict(notice, apiInvokerId="INVsomeoneelse"))
    assert wrong.status == 400
    assert (await world.call(inv, "POST", f"{url}/delete", notice)).status == 403  # an AEF's operation
    assert (await world.call(aef, "POST", f"{url}/delete", notice)).status == 204
    assert recorder.events == [("API_INVOKER_AUTHORIZATION_REVOKED",
                                {"apiInvokerIds": [inv.identity], "apiIds": ["svc-a"]})]
    left = await world.call(aef, "GET", f"{url}?authorizationInfo=true")
    assert left.status == 200
    assert [(e.get("apiId"), e["authorizationInfo"]) for e in left.json()["securityInfo"]] == [
        ("svc-b", f"3gpp#{aef.identity}:api-b")]
    assert (await world.call(aef, "POST", f"{url}/delete", notice)).status == 404  # nothing left to revoke
    assert (await world.call(aef, "POST", f"{url}/delete", dict(notice, apiIds=["svc-b"]))).status == 204
    assert (await world.call(aef, "GET", url)).status == 404
    assert world.store.get_document("capif-security", inv.identity) is None


async def test_offboarding_purges_the_context_and_aefpsks(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    url = f"{SECURITY}/{inv.identity}"
    assert (await world.call(inv, "PUT", url, security({"aefId": aef.identity,
                                                        "prefSecurityMethods": ["PSK"]}))).status == 201
    assert world.store.get_document("capif-aefpsk", f"{inv.identity} {aef.identity} {P0_ONE}") is not None
    assert (await world.call(inv, "DELETE", f"{INVOKERS}/{inv.identity}")).status == 204
    assert world.store.get_document("capif-security", inv.identity) is None
    assert [d for d in world.store.documents("capif-aefpsk") if d.body["invoker"] == inv.identity] == []
    assert (await world.call(aef, "GET", url)).status == 404


async def test_bad_query_flags(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    url = f"{SECURITY}/{inv.identity}"
    assert (await world.call(inv, "PUT", url, security({"aefId": aef.identity,
                                                        "prefSecurityMethods": ["PKI"]}))).status == 201
    answer = await world.call(aef, "GET", f"{url}?authenticationInfo=yes")
    assert answer.status == 400


async def test_aefpsk_is_sealed_at_rest(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    async with await world.connect(inv) as conn:
        answer = await conn.request("PUT", f"{SECURITY}/{inv.identity}",
                                    json_body=security({"aefId": aef.identity, "prefSecurityMethods": ["PSK"]}))
        key = conn.aefpsk(P0_ONE).reveal()
    assert answer.status == 201
    raw = b"".join(p.read_bytes() for p in world.tmp.iterdir() if p.name.startswith("ccf.db"))
    assert P0_ONE.encode() in raw  # the record is on disk (its body in clear)...
    assert key not in raw and key.hex().encode() not in raw  # ...its key sealed


async def test_other_provider_roles_read_nothing(world: World) -> None:
    aef = one_aef(world)
    inv = await onboard(world)
    assert (await world.call(inv, "PUT", f"{SECURITY}/{inv.identity}",
                             security({"aefId": aef.identity, "prefSecurityMethods": ["PSK"]}))).status == 201
    key = new_key()
    csr = x509.load_pem_x509_csr(csr_pem(key).encode())
    cert = issue_capif_certificate(world.ccf.ccf.ca, csr, CAPIFRole.APF, "APFx", now=world.ccf.ccf.now(), days=30)
    world.store.put_document(Document("capif-provider", "func:APFx", {
        "domain": "DOM1", "role": "APF", "certificate": certificate_digest(cert)}))
    apf = Identity("APFx", cert.public_bytes(serialization.Encoding.PEM), key_pem(key))
    answer = await world.call(apf, "GET", f"{SECURITY}/{inv.identity}?authenticationInfo=true")
    assert answer.status == 403 and b"authenticationInfo" not in answer.body
