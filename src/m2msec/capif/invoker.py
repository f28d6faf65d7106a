"""The API invoker side of CAPIF (TS 29.222 §8.1, §8.4, §8.5; TS 33.122 §6.1-§6.5, Annex A): onboarding,
discovery, the security method and AEFPSK, access tokens, offboarding, over :class:`m2msec.capif.client.CCFConnection`.

The invoker's credentials live in a folder the user chooses: :mod:`m2msec.capif.invoker_folder` (D156).

Nothing here prints or logs a key, a token or a credential; errors name files, statuses and ProblemDetails causes.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.capif.client import CCFConnection
from m2msec.capif.invoker_folder import (
    AEFPSK_DIR,
    CA,
    CERT,
    FOLDER_MODE,
    INFO,
    KEY,
    SECURITY_FILE,
    Invoker,
    PSKFile,
    check_new_folder,
    create_at_ccf,
    credential_token,
    csr_pem,
    json_of,
    load,
    psk_file_name,
    psk_interfaces,
    psk_table,
    read_aefpsk,
    read_file,
    refusal,
    temporary_folder,
    write_file,
)
from m2msec.capif.kdf import interface_information_of
from m2msec.errors import CAPIFError, ConfigurationError
from m2msec.keys.files import SECRET_FILE_MODE

__all__ = [
    "AEFPSK_DIR",
    "DEFAULT_PREFERENCE",
    "DISCOVER_FILTERS",
    "FOLDER_MODE",
    "Invoker",
    "PSKFile",
    "SecurityResult",
    "discover",
    "load",
    "obtain_security",
    "offboard",
    "onboard",
    "read_aefpsk",
    "token",
]

INVOKERS: Final = "/api-invoker-management/v1/onboardedInvokers"
DISCOVER: Final = "/service-apis/v1/allServiceAPIs"
SECURITY: Final = "/capif-security/v1/trustedInvokers"
#: D157: the methods asked for when the user names none, most preferred first (the CCF applies its own D116 priority
#: PSK > PKI > OAUTH among those published; an invoker wanting OAuth says so)
DEFAULT_PREFERENCE: Final = ("PSK", "PKI", "OAUTH")
#: the Discover Service query parameters :func:`discover` passes on (TS 29.222 §8.1.2.2.3.1; D126 on the CCF side)
DISCOVER_FILTERS: Final = ("api-name", "api-version", "comm-type", "protocol", "aef-id", "data-format", "api-cat",
                           "preferred-aef-loc", "supported-features", "api-supported-features")


@dataclass(frozen=True)
class SecurityResult:
    """The ServiceSecurity the CCF answered and the AEFPSK files derived for its PSK entries."""

    context: dict[str, Any]
    psk_files: list[PSKFile]


# ------------------------------------------------------------------------------------------------------- files

# ---------------------------------------------------------------------------------------------------- onboard

async def onboard(ccf_address: tuple[str, int], ccf_host: str, ca_pem: bytes, credential: str, out_dir: Path | str,
                  notification_destination: str, *, information: str = "m2msec API invoker",
                  timeout: float = 10.0) -> Invoker:
    """Onboard (TS 29.222 §8.4, TS 33.122 §6.1): make a P-256 key and its CSR, POST /onboardedInvokers with the
    onboarding ``credential`` as Bearer, and write the credential folder ``out_dir`` (which must not exist) at once:
    it is prepared in a temporary folder beside it and renamed when complete.

    Raises: ConfigurationError (``out_dir`` exists, its parent does not), TransportError / HandshakeFailed (the CCF
    unreachable or not the one ``ca_pem`` and ``ccf_host`` name), CAPIFError (the CCF refused)."""
    out = check_new_folder(out_dir, "invoker")
    credential = credential_token(credential)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = temporary_folder(out, "credential folder")
    keep = False
    try:
        write_file(tmp / KEY, key_pem, SECRET_FILE_MODE)
        body = {"notificationDestination": notification_destination, "apiInvokerInformation": information,
                "onboardingInformation": {"apiInvokerPublicKey": csr_pem(key, "m2msec API invoker")},
                "supportedFeatures": "0"}
        answer, result = await create_at_ccf(ccf_address, ccf_host, ca_pem, credential, INVOKERS, body,
                                             "onboarding", timeout)
        try:
            invoker_id = str(result["apiInvokerId"])
            certificate = str(result["onboardingInformation"]["apiInvokerCertificate"]).encode("ascii")
        except (KeyError, TypeError, UnicodeEncodeError):
            raise CAPIFError("onboarding: the CCF's answer has no apiInvokerId or certificate", status=502) from None
        keep = True  # from here the invoker exists at the CCF: never delete what identifies it
        info = {"apiInvokerId": invoker_id, "ccfAddress": ccf_address[0], "ccfPort": ccf_address[1],
                "ccfHost": ccf_host, "notificationDestination": notification_destination,
                "location": answer.header("location")}
        write_file(tmp / CERT, certificate)
        write_file(tmp / CA, ca_pem)
        write_file(tmp / INFO, (json.dumps(info, indent=2) + "\n").encode())
        try:
            os.rename(tmp, out)
        except OSError as exc:
            raise ConfigurationError(f"onboarded as {invoker_id}, but {out} could not be given its name "
                                     f"({exc.strerror}); the credentials are in {tmp}") from None
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return load(out)


# ---------------------------------------------------------------------------------------------------- discover

def _discover_path(invoker_id: str, filters: Mapping[str, str]) -> str:
    query = {"api-invoker-id": invoker_id}
    for name, value in filters.items():
        name = name.replace("_", "-")
        if name not in DISCOVER_FILTERS:
            raise ConfigurationError(f"unknown discovery filter {name!r}; known: {', '.join(DISCOVER_FILTERS)}")
        query[name] = value
    return f"{DISCOVER}?{urllib.parse.urlencode(query)}"


async def _discover_on(conn: CCFConnection, invoker: Invoker, filters: Mapping[str, str]) -> list[dict[str, Any]]:
    answer = await conn.request("GET", _discover_path(invoker.invoker_id, filters))
    if answer.status == 404:  # D127: nothing matches (the CCF's ProblemDetails says so)
        return []
    if answer.status != 200:
        raise refusal("discovery", answer)
    found = json_of("discovery", answer)
    apis = found.get("serviceAPIDescriptions") if isinstance(found, Mapping) else None
    return [d for d in apis if isinstance(d, dict)] if isinstance(apis, list) else []


async def discover(folder: Path | str | Invoker, **filters: str) -> list[dict[str, Any]]:
    """The service APIs the CCF lets this invoker discover (TS 29.222 §8.1), ``filters`` as the query parameters
    (``api_name="x"`` is ``api-name=x``); ``[]`` when none matches."""
    invoker = folder if isinstance(folder, Invoker) else load(folder)
    async with await invoker.connect() as conn:
        return await _discover_on(conn, invoker, filters)


# ---------------------------------------------------------------------------------------------------- security

async def obtain_security(folder: Path | str | Invoker, entries: Sequence[Mapping[str, Any]] | None = None, *,
                          aef_id: str | None = None, api_id: str | None = None,
                          preferred: Sequence[str] = DEFAULT_PREFERENCE,
                          notification_destination: str | None = None) -> SecurityResult:
    """Obtain the security method (TS 29.222 §8.5 ``PUT /trustedInvokers/{apiInvokerId}``, TS 33.122 §6.2-§6.5) for
    ``entries`` (SecurityInformation objects) or for one AEF (``aef_id``, optionally narrowed to ``api_id``), then,
    on the same connection, derive AEFPSK for every entry the CCF answered with PSK and write it to a 0600 file of
    the folder (D156). The PUT replaces the invoker's whole context, so AEFPSK files of an earlier one are removed.

    Raises: ConfigurationError (neither or both of ``entries`` and ``aef_id``), CAPIFError (the CCF refused, or its
    PSK selection names an interface discovery does not show exactly once)."""
    invoker = folder if isinstance(folder, Invoker) else load(folder)
    if (entries is None) == (aef_id is None):
        raise ConfigurationError("name the security entries, or one AEF (aef_id)")
    if entries is None:
        entry: dict[str, Any] = {"aefId": aef_id, "prefSecurityMethods": list(preferred)}
        if api_id is not None:
            entry["apiId"] = api_id
        entries = [entry]
    sent_entries = [dict(e) for e in entries]
    body = {"securityInfo": sent_entries,
            "notificationDestination": notification_destination or invoker.notification_destination,
            "supportedFeatures": "0"}
    psk_dir = invoker.folder / AEFPSK_DIR
    async with await invoker.connect() as conn:
        answer = await conn.request("PUT", f"{SECURITY}/{invoker.invoker_id}", json_body=body)
        if answer.status not in (200, 201):
            raise refusal("the security method request", answer)
        context = json_of("security", answer)
        answered = context.get("securityInfo") if isinstance(context, Mapping) else None
        if not isinstance(answered, list):
            raise CAPIFError("security: the CCF's answer has no securityInfo", status=502)
        written: list[PSKFile] = []
        discovered: list[dict[str, Any]] | None = None
        for index, got in enumerate(answered):
            if not isinstance(got, Mapping) or got.get("selSecurityMethod") != "PSK":
                continue
            sent = sent_entries[index] if index < len(sent_entries) else {}
            if "interfaceDetails" in sent:
                p0s = {interface_information_of(sent["interfaceDetails"])}
                aef = str(got.get("aefId") or sent.get("aefId") or "")
            else:
                aef = str(sent.get("aefId") or got.get("aefId"))
                if discovered is None:
                    discovered = await _discover_on(conn, invoker, {})
                p0s = psk_interfaces(discovered, aef, sent.get("apiId"))
            if len(p0s) != 1:
                raise CAPIFError(f"security: PSK was selected for {aef}, but discovery shows {len(p0s)} interfaces "
                                 "for it (one is needed to derive AEFPSK)", status=502)
            p0 = p0s.pop()
            key = conn.aefpsk(p0)  # THIS connection's master secret and session ID: the CCF derived on it too
            psk_dir.mkdir(mode=FOLDER_MODE, exist_ok=True)
            path = psk_dir / psk_file_name(p0)
            write_file(path, psk_table(invoker.invoker_id, aef or "unknown", p0, key), SECRET_FILE_MODE)
            written.append(PSKFile(aef, p0, path))
    keep = {f.path.name for f in written}
    for stale in psk_dir.glob("*.toml") if psk_dir.is_dir() else []:
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    write_file(invoker.folder / SECURITY_FILE, (json.dumps(context, indent=2) + "\n").encode())
    return SecurityResult(dict(context), written)


# ---------------------------------------------------------------------------------------------------- token

async def token(folder: Path | str | Invoker, scope: str | None = None) -> dict[str, Any]:
    """An access token (TS 29.222 §8.5 ``POST /securities/{securityId}/token``, OAuth 2.0 client credentials; the
    client is authenticated by its certificate): the AccessTokenRsp (``access_token``, ``token_type``,
    ``expires_in``, ``scope``)."""
    invoker = folder if isinstance(folder, Invoker) else load(folder)
    form = {"grant_type": "client_credentials", "client_id": invoker.invoker_id}
    if scope is not None:
        form["scope"] = scope
    async with await invoker.connect() as conn:
        answer = await conn.request("POST", f"/capif-security/v1/securities/{invoker.invoker_id}/token", form=form)
    if answer.status != 200:
        raise refusal("the token request", answer)
    got = json_of("token", answer)
    if not isinstance(got, dict) or not isinstance(got.get("access_token"), str):
        raise CAPIFError("token: the CCF's answer has no access_token", status=502)
    return got


# ---------------------------------------------------------------------------------------------------- offboard

async def offboard(folder: Path | str | Invoker) -> None:
    """Offboard (``DELETE /onboardedInvokers/{onboardingId}``, TS 33.122 §6.8): the CCF drops the invoker, its
    security context and AEFPSKs; here the AEFPSK files and security.json are deleted (D158). The key and the
    certificate stay (the certificate no longer works)."""
    invoker = folder if isinstance(folder, Invoker) else load(folder)
    async with await invoker.connect() as conn:
        answer = await conn.request("DELETE", f"{INVOKERS}/{invoker.invoker_id}")
    if answer.status != 204:
        raise refusal("offboarding", answer)
    psk_dir = invoker.folder / AEFPSK_DIR
    if psk_dir.is_dir():
        shutil.rmtree(psk_dir, ignore_errors=True)
    (invoker.folder / SECURITY_FILE).unlink(missing_ok=True)
    info = json.loads(read_file(invoker.folder / INFO))
    info["offboarded"] = True
    write_file(invoker.folder / INFO, (json.dumps(info, indent=2) + "\n").encode())

