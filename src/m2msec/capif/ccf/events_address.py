"""Where the CCF may send an API invoker's notifications (D149; docs/ccf.md "Events").

An API invoker is a third party: by default the CCF does not POST its notifications (event notifications, its
SecurityNotification) to loopback, link-local, private, shared, reserved, multicast or unspecified addresses, whatever
form the address takes (IPv4 numeric forms such as ``2130706433`` or ``0x7f.1``, IPv4-mapped, 6to4 and NAT64 IPv6).
A literal address, and a ``localhost`` name, is refused at subscription time (:func:`refuse_internal_literal`); a host
name is resolved at delivery time, every address it resolves to must be public, and the CCF connects to the address it
checked (:func:`resolve_public`): a name cannot be re-resolved to an internal address between check and connect.
AEF, APF and AMF subscribers (operator-credentialed) are not restricted (D136).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Final

from m2msec.errors import CAPIFError

__all__ = ["INTERNAL_NAMES", "NAT64_NETWORKS", "InternalAddress", "is_public_address", "literal_address",
           "refuse_internal_literal", "resolve_public"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: D149: host names refused for invokers whatever they resolve to (RFC 6761 §6.3)
INTERNAL_NAMES: Final = ("localhost",)
#: D149: NAT64 prefixes (RFC 6052, RFC 8215): the IPv4 address in their last 32 bits is what is reached
NAT64_NETWORKS: Final = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_NUMERIC_PART: Final = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
_NUMERIC_LOOKING: Final = re.compile(r"[0-9][0-9a-fA-FxX]*")


class InternalAddress(OSError):
    """An API invoker's destination resolves to an address that is not public (D149)."""


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as inet_aton(3) reads it (1 to 4 parts, each decimal, octal ``0..`` or hex ``0x..``); None if
    it is not such a form."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.fullmatch(p) for p in parts):
        return None
    values = [int(p[2:] or "0", 16) if p[:2].lower() == "0x" else int(p, 8) if p.startswith("0") else int(p)
              for p in parts]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally (IPv6 without brackets, any IPv4 form a resolver accepts), or None
    for a host name. Raises ValueError for a host that looks numeric but is no address (``999.1.1.1``)."""
    host = host.removesuffix(".")
    if ":" in host:
        return ipaddress.IPv6Address(host)
    numeric = _numeric_ipv4(host)
    if numeric is not None:
        return numeric
    if all(_NUMERIC_LOOKING.fullmatch(p) for p in host.split(".")):  # only digits and hex: meant as an address
        raise ValueError("not an IP address")
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address (neither loopback, link-local, private, shared, reserved,
    multicast nor unspecified), including what an IPv4-mapped, 6to4 or NAT64 IPv6 address carries."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        embedded: list[ipaddress.IPv4Address] = []
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if any(address in net for net in NAT64_NETWORKS):
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if not all(is_public_address(e) for e in embedded):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (address.is_private or address.is_loopback or address.is_link_local
                                      or address.is_multicast or address.is_reserved or address.is_unspecified)


def _internal_name(host: str) -> bool:
    name = host.removesuffix(".").lower()
    return any(name == n or name.endswith("." + n) for n in INTERNAL_NAMES)


def refuse_internal_literal(host: str) -> None:
    """Refuse (CAPIFError 400) a destination host an invoker may not use, as far as the URL alone tells: a literal
    address that is not public, a ``localhost`` name. A host name is checked when resolved (:func:`resolve_public`)."""
    refusal = CAPIFError("notificationDestination must be a public address for an API invoker", status=400,
                         cause="MANDATORY_IE_INCORRECT")
    if _internal_name(host):
        raise refusal
    try:
        address = literal_address(host)
    except ValueError:
        raise refusal from None
    if address is not None and not is_public_address(address):
        raise refusal


async def resolve_public(host: str, port: int) -> str:
    """The address to connect to for ``host``: resolved now, every address it resolves to public (else OSError:
    one internal address is enough to refuse, whichever a resolver would pick). Raises InternalAddress, OSError."""
    refuse_internal = InternalAddress("the destination is not a public address")
    try:
        refuse_internal_literal(host)
    except CAPIFError:
        raise refuse_internal from None
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise refuse_internal
    return str(addresses[0])
