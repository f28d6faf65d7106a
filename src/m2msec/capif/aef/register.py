"""Before ``m2msec aef serve``: register the API provider domain with the CCF (TS 29.222 §8.9, TS 33.122 §6.3) and
publish the AEF front's API(s) (§8.2) — D168: registration is a separate step done once, not at every start.

:func:`register` makes one P-256 key per function (AMF, APF, AEF), POSTs ``/registrations`` with a
``--for provider`` onboarding credential as Bearer, and writes a new folder: ``<role>.key`` (0600), ``<role>.crt``,
``ccf-ca.pem`` and ``provider.json`` (the IDs). :func:`publish` publishes each configured API with the APF's
certificate, the AEF as ``aefId`` and the listener's interface (from its P0) as InterfaceDescription.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.capif.aef.authorize import ServedAPI
from m2msec.capif.client import CCFConnection
from m2msec.capif.invoker_folder import (
    check_new_folder,
    create_at_ccf,
    credential_token,
    csr_pem,
    json_of,
    refusal,
    temporary_folder,
    write_file,
)
from m2msec.capif.kdf import interface_information_of
from m2msec.errors import CAPIFError, ConfigurationError
from m2msec.keys.files import SECRET_FILE_MODE

__all__ = ["PROVIDER_FILE", "ROLES", "interface_description", "publish", "register"]

REGISTRATIONS: Final = "/api-provider-management/v1/registrations"
ROLES: Final = ("AMF", "APF", "AEF")
PROVIDER_FILE: Final = "provider.json"


async def register(ccf_address: tuple[str, int], ccf_host: str, ca_pem: bytes, credential: str, out_dir: Path | str,
                   *, information: str = "m2msec API provider", timeout: float = 10.0) -> dict[str, str]:
    """Register a provider domain with one AMF, APF and AEF; write ``out_dir`` (must not exist); return the IDs
    (``apiProvDomId``, ``AMF``, ``APF``, ``AEF``). Raises ConfigurationError, TransportError, CAPIFError."""
    out = check_new_folder(out_dir, "provider")
    credential = credential_token(credential)
    keys = {role: ec.generate_private_key(ec.SECP256R1()) for role in ROLES}
    body = {"regSec": secrets.token_urlsafe(24), "apiProvDomInfo": information, "suppFeat": "0",
            "apiProvFuncs": [{"apiProvFuncRole": role, "apiProvFuncInfo": f"m2msec {role}",
                              "regInfo": {"apiProvPubKey": csr_pem(keys[role], f"m2msec {role}")}}
                             for role in ROLES]}
    tmp = temporary_folder(out, "folder")
    keep = False
    try:
        for role, key in keys.items():
            write_file(tmp / f"{role.lower()}.key", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                SECRET_FILE_MODE)
        _, result = await create_at_ccf(ccf_address, ccf_host, ca_pem, credential, REGISTRATIONS, body,
                                        "provider registration", timeout)
        ids: dict[str, str] = {}
        try:
            ids["apiProvDomId"] = str(result["apiProvDomId"])
            for func in result["apiProvFuncs"]:
                role = str(func["apiProvFuncRole"])
                ids[role] = str(func["apiProvFuncId"])
                write_file(tmp / f"{role.lower()}.crt", str(func["regInfo"]["apiProvCert"]).encode("ascii"))
        except (KeyError, TypeError, UnicodeEncodeError):
            raise CAPIFError("provider registration: the CCF's answer lacks IDs or certificates", status=502) \
                from None
        keep = True  # registered at the CCF: never delete what identifies the domain
        write_file(tmp / "ccf-ca.pem", ca_pem)
        write_file(tmp / PROVIDER_FILE, (json.dumps({**ids, "ccfAddress": ccf_address[0], "ccfPort": ccf_address[1],
                                                     "ccfHost": ccf_host}, indent=2) + "\n").encode())
        tmp.rename(out)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return ids


def interface_description(p0: str) -> dict[str, Any]:
    """The InterfaceDescription whose P0 (D115) is ``p0`` = ``<host>:<port><apiPrefix>``: ``ipv4Addr`` for an IPv4
    address, else ``fqdn``; every CAPIF-2e method offered."""
    hostport, slash, rest = p0.partition("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"the interface {p0!r} is not <host>:<port><apiPrefix>")
    try:
        where = {"ipv4Addr": str(ipaddress.IPv4Address(host))}
    except ValueError:
        where = {"fqdn": host}
    iface: dict[str, Any] = {**where, "port": int(port), "securityMethods": ["PSK", "PKI", "OAUTH"]}
    if slash:
        iface["apiPrefix"] = slash + rest
    if interface_information_of(iface) != p0:
        raise ConfigurationError(f"the interface {p0!r} does not round-trip to its InterfaceDescription")
    return iface


async def publish(ccf_address: tuple[str, int], ccf_host: str, ca_pem: bytes, apf: tuple[str, bytes, bytes],
                  aef_id: str, apis: Sequence[ServedAPI], *, timeout: float = 10.0) -> list[str]:
    """Publish each API with ``apf`` = (APF ID, certificate, key); return the apiIds the CCF assigned."""
    apf_id, cert, key = apf
    ids: list[str] = []
    async with await CCFConnection.open(ccf_address[0], ccf_address[1], ccf_host=ccf_host, ca_pem=ca_pem,
                                        certificate_pem=cert, private_key_pem=key, timeout=timeout) as conn:
        for api in apis:
            body = {"apiName": api.name, "supportedFeatures": "0", "description": f"{api.name} through the m2msec AEF",
                    "aefProfiles": [{"aefId": aef_id, "versions": [{"apiVersion": "v1"}], "protocol": "HTTP_1_1",
                                     "dataFormat": "JSON", "securityMethods": ["PSK", "PKI", "OAUTH"],
                                     "interfaceDescriptions": [interface_description(api.interface)]}]}
            answer = await conn.request("POST", f"/published-apis/v1/{apf_id}/service-apis", json_body=body)
            if answer.status != 201:
                raise refusal(f"publishing {api.name}", answer)
            ids.append(str(json_of("publishing", answer).get("apiId", "")))
    return ids
