"""The AEF Security API on the AEF front (TS 29.222 §8.6) over real sockets: requests and answers checked against the
official file (specs/3gpp/TS29222_AEF_Security_API.yaml through m2msec.capif.schema), callers per D172."""

from __future__ import annotations

import json
from typing import Any

from ccf.ccf_env import CCF_HOST, Identity, World, onboard, world
from m2msec.capif.ccf.server import server_certificate
from m2msec.capif.schema import validate_request, validate_response
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA

from .aef_server_env import (
    AEF_HOST,
    Kept,
    Reply,
    call,
    invoker_with,
    pki_context,
    psk_context,
    psk_invoker,
    running_front,
)

__all__ = ["world"]

CHECK = "/aef-security/v1/check-authentication"
REVOKE = "/aef-security/v1/revoke-authorization"


async def post(port: int, context: TLSContext, path: str, body: Any) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await call(port, context, path, method="POST", body=raw, headers=(("content-type", "application/json"),))


def checked(reply: Reply, operation: str) -> Reply:
    """The answer is one the official file allows for ``operation`` (200 body or ProblemDetails)."""
    validate_response("aef-security", operation, reply.status, reply.json(), reply.headers["content-type"])
    return reply


def ccf_context(world: World, server_ca: bytes) -> TLSContext:
    """A client presenting the CCF's own certificate (its CA's FQDN certificate for the CCF's host)."""
    ccf = world.ccf.ccf
    cert = server_certificate(ccf.ca, CCF_HOST, ccf.now())
    return TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=AEF_HOST, certificate=
                                          CertificateConfig(cert.certificate_pem(), cert.private_key_pem(), server_ca)))


def revoke_body(invoker_id: str, aef_id: str, api_id: str) -> dict[str, Any]:
    body = {"revokeInfo": {"apiInvokerId": invoker_id, "aefId": aef_id, "apiIds": [api_id],
                           "cause": "UNEXPECTED_REASON"}, "supportedFeatures": "0"}
    validate_request("aef-security", "POST /revoke-authorization", body)
    return body


async def test_check_authentication_by_the_invoker_for_itself(world: World) -> None:
    async with running_front(world) as aef:
        psk = await psk_invoker(world, aef.iface, aef.p0)
        pki = await invoker_with(world, aef.iface, "PKI")
        op = "POST /check-authentication"
        ok = checked(await post(aef.port, psk_context(psk.id, psk.key), CHECK,
                                {"apiInvokerId": psk.id, "supportedFeatures": "0"}), op)
        assert (ok.status, ok.json()) == (200, {"supportedFeatures": "0"})
        ok = checked(await post(aef.port, pki_context(pki, aef.server_ca_pem), CHECK,
                                {"apiInvokerId": pki.identity, "supportedFeatures": "0"}), op)
        assert ok.status == 200
        other = checked(await post(aef.port, psk_context(psk.id, psk.key), CHECK,
                                   {"apiInvokerId": pki.identity, "supportedFeatures": "0"}), op)
        assert other.status == 403
        malformed = checked(await post(aef.port, psk_context(psk.id, psk.key), CHECK, {"apiInvokerId": psk.id}), op)
        assert malformed.status == 400 and "supportedFeatures" in malformed.json()["detail"]
        assert checked(await post(aef.port, psk_context(psk.id, psk.key), CHECK, b"{"), op).status == 400
        aef_cert = pki_context(aef.provider.aef, aef.server_ca_pem)  # an AEF's certificate: not an invoker
        assert checked(await post(aef.port, aef_cert, CHECK, {"apiInvokerId": aef.id,
                                                              "supportedFeatures": "0"}), op).status == 403
        assert aef.backend.seen == []  # never forwarded


async def test_check_authentication_of_an_invoker_without_a_context_is_refused(world: World) -> None:
    async with running_front(world) as aef:
        pki = await invoker_with(world, aef.iface, "PKI")
        assert (await world.call(pki, "DELETE", f"/capif-security/v1/trustedInvokers/{pki.identity}")).status == 204
        no_context: Identity = await onboard(world)
        for who in (pki, no_context):
            reply = checked(await post(aef.port, pki_context(who, aef.server_ca_pem), CHECK,
                                       {"apiInvokerId": who.identity, "supportedFeatures": "0"}),
                            "POST /check-authentication")
            assert reply.status == 403 and reply.json()["cause"] == "API_INVOKER_NOT_AUTHORIZED"


async def test_revoke_authorization_by_the_ccf_ends_the_invoker_and_others_are_refused(world: World) -> None:
    async with running_front(world, events=None) as aef:
        inv = await invoker_with(world, aef.iface, "PKI")
        other = await invoker_with(world, aef.iface, "PKI")
        kept = await Kept.open(aef.port, pki_context(inv, aef.server_ca_pem))
        kept_other = await Kept.open(aef.port, pki_context(other, aef.server_ca_pem))
        op = "POST /revoke-authorization"
        body = revoke_body(inv.identity, aef.id, aef.api["apiId"])
        try:
            assert (await kept.get()).status == 200 and (await kept_other.get()).status == 200
            # not the CCF: an invoker, the AEF itself, no certificate
            for context in (pki_context(inv, aef.server_ca_pem), pki_context(aef.provider.aef, aef.server_ca_pem)):
                assert checked(await post(aef.port, context, REVOKE, body), op).status == 403
            assert (await kept.get()).status == 200  # nothing changed
            ccf = ccf_context(world, aef.server_ca_pem)
            elsewhere = checked(await post(aef.port, ccf, REVOKE, revoke_body(inv.identity, "AEFother", "x")), op)
            assert elsewhere.status == 404
            assert checked(await post(aef.port, ccf, REVOKE, {"revokeInfo": {}}), op).status == 400
            ok = checked(await post(aef.port, ccf, REVOKE, body), op)
            assert (ok.status, ok.json()) == (200, {"supportedFeatures": "0"})
            assert await kept.closed_by_the_front()  # idle: closed at once (D179)
            assert (await kept_other.get()).status == 200
            # D173: no local deny-list; the CCF still holds the context, so a new connection is served again
            assert (await call(aef.port, pki_context(inv, aef.server_ca_pem))).status == 200
        finally:
            kept.close()
            kept_other.close()
