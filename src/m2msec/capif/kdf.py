"""AEFPSK (TS 33.122 Annex A.1) over the generic 3GPP KDF (TS 33.220 Annex B.2); pure, no I/O.

TS 33.220 B.2.0: ``S = FC || P0 || L0 || P1 || L1 || ... || Pn || Ln`` with each ``Li`` the length of ``Pi`` in two
octets (big-endian) and ``derived key = HMAC-SHA-256(Key, S)``; B.2.1.2: a character string parameter is encoded in
UTF-8 after Unicode Normalization Form KC.

TS 33.122 Annex A.1: AEFPSK is derived by the API invoker and the CCF with ``FC = 0x7A``, ``P0`` = the service API
interface information, ``P1`` = the CAPIF-1e TLS session's Session ID "generated as part of TLS full Handshake", and
the key = that session's Master Secret (so TLS 1.2: TLS 1.3 has neither). The spec does not say how the interface
information is written as a string; :func:`interface_information` is the one spelling both sides use (D115).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from m2msec.errors import ConfigurationError, IdentifierError
from m2msec.identifiers import validate_fqdn
from m2msec.keys.secret import SecretKey

__all__ = [
    "AEFPSK_FC",
    "DEFAULT_INTERFACE_PORT",
    "TLS12_MASTER_SECRET_LENGTH",
    "aefpsk",
    "interface_information",
    "interface_information_of",
    "kdf",
    "kdf_input",
]

#: TS 33.122 Annex A.1: the FC value of the AEFPSK derivation.
AEFPSK_FC: Final = 0x7A
#: RFC 5246 §8.1: a TLS 1.2 master secret is 48 bytes.
TLS12_MASTER_SECRET_LENGTH: Final = 48
#: docs/decisions.md D115: the port written in the interface information when an ``InterfaceDescription`` gives none
#: (TS 29.222: the port is optional; HTTPS is what CAPIF-2e runs).
DEFAULT_INTERFACE_PORT: Final = 443
#: D146: the longest P0 written (a host name of 253, a port, an apiPrefix): far below the KDF's 65,535 octets, so an
#: interface the CCF accepts always derives
MAX_INTERFACE_INFORMATION: Final = 1024
_MAX_PARAMETER: Final = 0xFFFF  # Li is two octets
_API_PREFIX: Final = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=@%-]*)+")  # RFC 3986 path segments, no ':'



def kdf_input(fc: int, *parameters: bytes) -> bytes:
    """``S`` of TS 33.220 B.2.0 for a one-octet ``FC`` (0x00..0xFE; 0xFF introduces a two-octet FC, unused here)."""
    if not 0 <= fc <= 0xFE:
        raise ConfigurationError(f"FC must be one octet below 0xFF, not {fc:#x}")
    out = bytearray([fc])
    for index, parameter in enumerate(parameters):
        if len(parameter) > _MAX_PARAMETER:
            raise ConfigurationError(f"KDF parameter P{index} is longer than {_MAX_PARAMETER} octets")
        out += parameter + len(parameter).to_bytes(2, "big")
    return bytes(out)


def kdf(key: SecretKey, fc: int, *parameters: bytes) -> SecretKey:
    """TS 33.220 B.2.0: ``HMAC-SHA-256(key, S)``, 32 octets."""
    return SecretKey(hmac.new(key.reveal(), kdf_input(fc, *parameters), hashlib.sha256).digest())


def _host(fqdn: str | None, ipv4: str | None, ipv6: str | None) -> str:
    if fqdn:  # an ASCII host name (IDNA A-labels): nothing NFKC could fold onto another AEF's (attack18a)
        try:
            return validate_fqdn(fqdn.rstrip(".").lower(), role="interface fqdn")
        except IdentifierError as exc:
            raise ConfigurationError(str(exc)) from None
    try:
        if ipv4:
            return str(ipaddress.IPv4Address(ipv4))
        if ipv6:
            return f"[{ipaddress.IPv6Address(ipv6).compressed}]"
    except ValueError as exc:
        raise ConfigurationError(f"interface address: {exc}") from None
    raise ConfigurationError("an interface description needs fqdn, ipv4Addr or ipv6Addr")


def interface_information(*, fqdn: str | None = None, ipv4_addr: str | None = None, ipv6_addr: str | None = None,
                          port: int | None = None, api_prefix: str | None = None) -> str:
    """D115: the service API interface information of a TS 29.222 ``InterfaceDescription`` as ``P0`` is written:
    ``<host>:<port><apiPrefix>`` — host the ``fqdn`` (lower case, no trailing dot), else the ``ipv4Addr``
    (dotted quad), else ``[<ipv6Addr>]`` (RFC 5952 compressed); the port always written (443 when absent); the
    ``apiPrefix`` as given (nothing when absent). No scheme: CAPIF-2e is HTTPS. Examples:
    ``aef.example.com:8443/nef``, ``192.0.2.7:443``, ``[2001:db8::1]:8443/api``."""
    chosen = port if port is not None else DEFAULT_INTERFACE_PORT
    if not 1 <= chosen <= 65535:
        raise ConfigurationError(f"interface port {chosen} out of range")
    if api_prefix and not _API_PREFIX.fullmatch(api_prefix):  # "/"-led ASCII path segments, so P0 splits one way
        raise ConfigurationError("an apiPrefix is a path of ASCII segments starting with '/'")
    p0 = f"{_host(fqdn, ipv4_addr, ipv6_addr)}:{chosen}{api_prefix or ''}"
    if len(p0) > MAX_INTERFACE_INFORMATION:  # refused where it is published, not at each derivation
        raise ConfigurationError(f"the interface information is longer than {MAX_INTERFACE_INFORMATION} characters")
    return p0


def interface_information_of(description: Mapping[str, Any]) -> str:
    """:func:`interface_information` of a TS 29.222 ``InterfaceDescription`` in its JSON form (``fqdn`` /
    ``ipv4Addr`` / ``ipv6Addr`` — exactly one, the schema's oneOf —, ``port``, ``apiPrefix``; other members, such as
    ``securityMethods``, do not enter P0)."""
    addresses = [k for k in ("fqdn", "ipv4Addr", "ipv6Addr") if description.get(k) is not None]
    if len(addresses) != 1:
        raise ConfigurationError("an InterfaceDescription names exactly one of fqdn, ipv4Addr, ipv6Addr")
    values = {k: description.get(k) for k in ("fqdn", "ipv4Addr", "ipv6Addr", "apiPrefix")}
    if any(v is not None and not isinstance(v, str) for v in values.values()):
        raise ConfigurationError("InterfaceDescription addresses and apiPrefix are strings")
    port = description.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise ConfigurationError("InterfaceDescription port is an integer")
    return interface_information(fqdn=values["fqdn"], ipv4_addr=values["ipv4Addr"], ipv6_addr=values["ipv6Addr"],
                                 port=port, api_prefix=values["apiPrefix"])


def aefpsk(master_secret: SecretKey, session_id: bytes, interface_info: str) -> SecretKey:
    """TS 33.122 Annex A.1: AEFPSK for the CAPIF-1e TLS 1.2 session (``master_secret``, ``session_id``) and one service
    API interface (``interface_info``, :func:`interface_information`).

    Raises: ConfigurationError: not a TLS 1.2 full-handshake session (a 48-octet master secret and a session ID of
    1..32 octets, RFC 5246 §7.4.1.2), or an empty interface information."""
    if len(master_secret) != TLS12_MASTER_SECRET_LENGTH:
        raise ConfigurationError("AEFPSK needs the 48-octet master secret of a TLS 1.2 session")
    if not 1 <= len(session_id) <= 32:
        raise ConfigurationError("AEFPSK needs the session ID of a TLS 1.2 full handshake (1..32 octets); the "
                                 "CAPIF-1e session has none (TLS 1.3, or a resumption with tickets)")
    if not interface_info:
        raise ConfigurationError("AEFPSK needs the service API interface information")
    p0 = unicodedata.normalize("NFKC", interface_info).encode("utf-8")  # TS 33.220 B.2.1.2
    return kdf(master_secret, AEFPSK_FC, p0, session_id)
