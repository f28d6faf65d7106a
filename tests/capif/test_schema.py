"""m2msec.capif.schema: bodies checked against the official TS 29.222 schemas (valid pass, invalid fail clearly)."""

from __future__ import annotations

from typing import Any

import pytest

from m2msec.capif.openapi import APIS
from m2msec.capif.schema import SchemaViolation, UnknownOperation, operations, validate_request, validate_response
from m2msec.errors import M2MSecError

CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n"
ONBOARD: dict[str, Any] = {
    "onboardingInformation": {"apiInvokerPublicKey": CSR},
    "notificationDestination": "https://invoker.example/notify",
    "supportedFeatures": "0",
}
ONBOARDED: dict[str, Any] = {
    **ONBOARD,
    "apiInvokerId": "inv-1",
    "onboardingInformation": {"apiInvokerPublicKey": CSR, "apiInvokerCertificate": "-----BEGIN CERTIFICATE-----"},
}
PROVIDER: dict[str, Any] = {
    "regSec": "onboarding-secret",
    "apiProvFuncs": [
        {"regInfo": {"apiProvPubKey": CSR}, "apiProvFuncRole": "AEF", "apiProvFuncInfo": "aef-1"},
        {"regInfo": {"apiProvPubKey": CSR}, "apiProvFuncRole": "APF"},
    ],
}
SERVICE_API: dict[str, Any] = {
    "apiName": "thermostat",
    "aefProfiles": [
        {
            "aefId": "aef-1",
            "versions": [{"apiVersion": "v1", "resources": [
                {"resourceName": "temp", "commType": "REQUEST_RESPONSE", "uri": "/temp", "operations": ["GET"]}]}],
            "protocol": "HTTP_1_1",
            "securityMethods": ["PSK", "PKI"],
            "interfaceDescriptions": [{"ipv4Addr": "192.0.2.10", "port": 8443, "securityMethods": ["PSK"]}],
        }
    ],
    "supportedFeatures": "0",
}
SECURITY: dict[str, Any] = {
    "securityInfo": [{"aefId": "aef-1", "apiId": "api-1", "prefSecurityMethods": ["PSK", "OAUTH"]}],
    "notificationDestination": "https://invoker.example/security",
}
PROBLEM: dict[str, Any] = {"status": 404, "title": "Not Found", "detail": "no such invoker", "cause": "x"}

VALID_REQUESTS = [
    ("api-invoker-management", "POST /onboardedInvokers", ONBOARD, None),
    ("api-invoker-management", "PUT /onboardedInvokers/{onboardingId}", ONBOARDED, None),
    ("api-invoker-management", "ModifyIndApiInvokeEnrolment", {"notificationDestination": "https://x/y"},
     "application/merge-patch+json"),
    ("api-provider-management", "POST /registrations", PROVIDER, None),
    ("published-apis", "POST /{apfId}/service-apis", SERVICE_API, None),
    ("capif-security", "PUT /trustedInvokers/{apiInvokerId}", SECURITY, None),
    ("capif-security", "POST /securities/{securityId}/token",
     {"grant_type": "client_credentials", "client_id": "inv-1", "scope": "3gpp#aef-1:thermostat"},
     "application/x-www-form-urlencoded"),
    ("capif-events", "POST /{subscriberId}/subscriptions",
     {"events": ["API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED"], "notificationDestination": "https://x/ev"}, None),
    ("capif-events", "POST /{subscriberId}/subscriptions callback notificationDestination",
     {"subscriptionId": "sub-1", "events": "API_INVOKER_ONBOARDED",
      "eventDetail": {"apiInvokerIds": ["inv-1"]}}, None),
    ("aef-security", "POST /check-authentication", {"apiInvokerId": "inv-1", "supportedFeatures": "0"}, None),
    ("api-invoker-management", "DELETE /onboardedInvokers/{onboardingId}", None, None),
]

VALID_RESPONSES = [
    ("api-invoker-management", "POST /onboardedInvokers", 201, ONBOARDED, None),
    ("api-invoker-management", "DELETE /onboardedInvokers/{onboardingId}", 204, None, None),
    ("api-provider-management", "POST /registrations", 201,
     {**PROVIDER, "apiProvDomId": "dom-1"}, None),
    ("published-apis", "GET /{apfId}/service-apis", 200, [{**SERVICE_API, "apiId": "api-1"}], None),
    ("service-apis", "GET /allServiceAPIs", 200, {"serviceAPIDescriptions": [SERVICE_API]}, None),
    ("capif-security", "GET /trustedInvokers/{apiInvokerId}", 200, SECURITY, None),
    ("capif-security", "POST /securities/{securityId}/token", 200,
     {"access_token": "eyJ...", "token_type": "Bearer", "expires_in": 600, "scope": "3gpp#aef-1:thermostat"}, None),
    ("capif-security", "POST /securities/{securityId}/token", 400, {"error": "invalid_client"}, None),
    ("capif-security", "GET /trustedInvokers/{apiInvokerId}", 404, PROBLEM, "application/problem+json"),
]


@pytest.mark.parametrize(("api", "operation", "body", "content_type"), VALID_REQUESTS)
def test_a_valid_request_passes(api: str, operation: str, body: Any, content_type: str | None) -> None:
    validate_request(api, operation, body, content_type)


@pytest.mark.parametrize(("api", "operation", "status", "body", "content_type"), VALID_RESPONSES)
def test_a_valid_response_passes(api: str, operation: str, status: int, body: Any, content_type: str | None) -> None:
    validate_response(api, operation, status, body, content_type)


def _drop(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


INVALID_REQUESTS = [
    # wrong type
    ("api-invoker-management", "POST /onboardedInvokers",
     {**ONBOARD, "onboardingInformation": {"apiInvokerPublicKey": 42}}, None,
     "onboardingInformation/apiInvokerPublicKey: 42 is not of type 'string'"),
    ("capif-security", "PUT /trustedInvokers/{apiInvokerId}", {**SECURITY, "securityInfo": {}}, None,
     "securityInfo: {} is not of type 'array'"),
    # missing required member
    ("api-invoker-management", "POST /onboardedInvokers", _drop(ONBOARD, "notificationDestination"), None,
     "(body): 'notificationDestination' is a required property"),
    ("capif-security", "PUT /trustedInvokers/{apiInvokerId}",
     {**SECURITY, "securityInfo": [{"aefId": "aef-1"}]}, None,
     "securityInfo/0: 'prefSecurityMethods' is a required property"),
    ("api-provider-management", "POST /registrations",
     {**PROVIDER, "apiProvFuncs": [{"apiProvFuncRole": "AEF"}]}, None, "apiProvFuncs/0: 'regInfo' is a required"),
    # unknown value of a closed enumeration
    ("capif-security", "POST /securities/{securityId}/token", {"grant_type": "password", "client_id": "inv-1"},
     "application/x-www-form-urlencoded", "grant_type: 'password' is not one of ['client_credentials']"),
    # constraints: minItems, format
    ("published-apis", "POST /{apfId}/service-apis", {**SERVICE_API, "aefProfiles": []}, None,
     "aefProfiles: [] should be non-empty"),
    ("published-apis", "POST /{apfId}/service-apis",
     {**SERVICE_API, "aefProfiles": [{**SERVICE_API["aefProfiles"][0], "versions": [
         {"apiVersion": "v1", "expiry": "tomorrow"}]}]}, None,
     "aefProfiles/0/versions/0/expiry: 'tomorrow' is not a 'date-time'"),
    # a required body missing, a body where none is taken
    ("api-invoker-management", "POST /onboardedInvokers", None, None, "the body is required"),
    ("api-invoker-management", "DELETE /onboardedInvokers/{onboardingId}", {"x": 1}, None, "takes no body"),
]


@pytest.mark.parametrize(("api", "operation", "body", "content_type", "message"), INVALID_REQUESTS)
def test_an_invalid_request_fails_with_a_clear_message(
    api: str, operation: str, body: Any, content_type: str | None, message: str
) -> None:
    with pytest.raises(SchemaViolation) as info:
        validate_request(api, operation, body, content_type)
    assert str(info.value).startswith(f"{api} {operation} request: ")
    assert message in str(info.value)
    assert isinstance(info.value, M2MSecError) and isinstance(info.value, ValueError)


INVALID_RESPONSES = [
    ("capif-security", "POST /securities/{securityId}/token", 200,
     {"access_token": "eyJ...", "token_type": "MAC", "expires_in": 600}, None, "token_type: 'MAC' is not one of"),
    ("capif-security", "POST /securities/{securityId}/token", 400, {"error": "bad_luck"}, None,
     "error: 'bad_luck' is not one of"),
    ("api-invoker-management", "POST /onboardedInvokers", 201, {**ONBOARDED, "apiInvokerId": 7}, None,
     "apiInvokerId: 7 is not of type 'string'"),
    ("capif-security", "GET /trustedInvokers/{apiInvokerId}", 404, {**PROBLEM, "status": "404"},
     "application/problem+json", "status: '404' is not of type 'integer'"),
    ("api-invoker-management", "DELETE /onboardedInvokers/{onboardingId}", 204, {}, None, "the status has no body"),
    ("api-invoker-management", "POST /onboardedInvokers", 201, None, None, "a body is required"),
]


@pytest.mark.parametrize(("api", "operation", "status", "body", "content_type", "message"), INVALID_RESPONSES)
def test_an_invalid_response_fails_with_a_clear_message(
    api: str, operation: str, status: int, body: Any, content_type: str | None, message: str
) -> None:
    with pytest.raises(SchemaViolation, match="^" + f"{api} {operation} response {status}: ".replace("{", r"\{")) as i:
        validate_response(api, operation, status, body, content_type)
    assert message in str(i.value)


def test_an_extensible_3gpp_enumeration_accepts_a_new_value() -> None:
    # SecurityMethod is anyOf [enum PSK/PKI/OAUTH, string]: the contract lets new values through
    body = {**SECURITY, "securityInfo": [{"aefId": "a", "apiId": "b", "prefSecurityMethods": ["FUTURE"]}]}
    validate_request("capif-security", "PUT /trustedInvokers/{apiInvokerId}", body)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: validate_request("nope", "GET /", None), "unknown CAPIF API 'nope'"),
        (lambda: validate_request("capif-security", "GET /nope", None), "no operation 'GET /nope'"),
        (lambda: validate_request("capif-security", "PUT /trustedInvokers/{apiInvokerId}", SECURITY, "text/xml"),
         "media type 'text/xml' not in"),
    ],
)
def test_an_unknown_operation_is_one_clear_error(call: Any, message: str) -> None:
    with pytest.raises(UnknownOperation, match=message.replace("{", r"\{")):
        call()


def test_a_status_the_file_does_not_list_falls_under_default() -> None:
    validate_response("service-apis", "GET /allServiceAPIs", 418, None)  # "default: Generic Error", no content
    with pytest.raises(SchemaViolation, match="418: the status has no body"):
        validate_response("service-apis", "GET /allServiceAPIs", 418, {"x": 1})


def test_the_contract_s_own_defects_are_the_contract() -> None:
    # ServiceSecurity.securityInfo says "minimum: 1" (a number keyword) where "minItems: 1" was meant: the official
    # file accepts an empty list, so the validator does too (the CCF refuses it by itself)
    validate_request("capif-security", "PUT /trustedInvokers/{apiInvokerId}", {**SECURITY, "securityInfo": []})


def test_every_api_has_its_operations() -> None:
    for api in APIS:
        assert operations(api)
    assert "POST /{apfId}/service-apis" in operations("published-apis")
    assert "ModifyIndAPFPubAPI" in operations("published-apis")
