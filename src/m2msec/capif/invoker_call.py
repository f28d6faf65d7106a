"""Calling an AEF's service API as an API invoker (CAPIF-2e, TS 33.122 §6.5.2) with the method the CCF selected:
TLS-PSK with the AEFPSK ``m2msec capif security`` derived, mutual TLS with the invoker's CCF certificate (PKI), or
server-authenticated TLS with an access token from the CCF's token endpoint (OAuth).

The method (D181, docs/capif-invoker.md "Calling an AEF"): the one asked for; else PSK when the folder holds an
AEFPSK for this AEF's interface (P0 = ``<aef host>:<port><apiPrefix>``, D115, the longest prefix of the path that has
one); else the one method the security context selected for every non-PSK entry. For PKI and OAuth the AEF's server
certificate must chain to ``aef_ca_pem`` and name ``aef_host``.

Nothing here prints or logs a key or a token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import h11

from m2msec import http1
from m2msec.capif.client import check_server_name
from m2msec.capif.invoker import token
from m2msec.capif.invoker_folder import AEFPSK_DIR, SECURITY_FILE, Invoker, load, psk_file_name, read_aefpsk
from m2msec.capif.kdf import interface_information
from m2msec.errors import CAPIFError, ConfigurationError, TransportError
from m2msec.idb import NOT_ONEM2M
from m2msec.tls.engine import CertificateConfig, ClientConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, parse_profiles
from m2msec.transport.tls import open_connection

__all__ = ["AEF_PSK_PROFILES", "CALL_TIMEOUT", "METHODS", "AEFAnswer", "call_aef", "choose_method", "refused"]

#: the CAPIF-2e methods (TS 33.122 §6.5.2)
METHODS: Final = ("PSK", "PKI", "OAUTH")
#: the RFC 4279 families an invoker offers with AEFPSK (the AEF front accepts each, D168)
AEF_PSK_PROFILES: Final = "ecdhe-psk,dhe-psk,psk"
#: seconds for the handshake and for the exchange, each
CALL_TIMEOUT: Final = 10.0
#: largest answer read from the AEF
MAX_ANSWER: Final = http1.DEFAULT_MAX_BODY


@dataclass(frozen=True)
class AEFAnswer:
    """The AEF's answer: status, headers (lower-case names), body; and the method the call was made with."""

    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)
    method: str = ""

    def problem(self) -> str:
        """One line of a refusal: the status and the ProblemDetails cause/title/detail (nothing else of the body)."""
        try:
            body = json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):  # RecursionError: deep nesting (issue 21)
            body = None
        parts = [f"HTTP {self.status}"]
        if isinstance(body, dict):
            parts += [str(body[k]) for k in ("cause", "title") if isinstance(body.get(k), str)]
            detail = body.get("detail")
            if isinstance(detail, str) and len(detail) <= 300 and detail.isprintable():
                parts.append(detail)
        return "; ".join(parts)


def _address(host: str) -> dict[str, str]:
    """The InterfaceDescription address member ``host`` is (D115 writes each kind its own way)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return {"fqdn": host}
    return {"ipv4_addr": str(ip)} if ip.version == 4 else {"ipv6_addr": str(ip)}


def _psk_file(invoker: Invoker, aef_host: str, port: int, path: str) -> Path | None:
    """The AEFPSK file of the interface ``aef_host:port`` + the longest prefix of ``path`` that has one."""
    segments = path.split("?", 1)[0].split("/")
    for n in range(len(segments), 0, -1):
        prefix = "/".join(segments[:n])
        try:
            p0 = interface_information(**_address(aef_host), port=port, api_prefix=prefix or None)
        except ConfigurationError:
            continue
        candidate = invoker.folder / AEFPSK_DIR / psk_file_name(p0)
        if candidate.is_file():
            return candidate
    return None


def choose_method(invoker: Invoker, aef_host: str, port: int, path: str, method: str | None = None
                  ) -> tuple[str, Path | None]:
    """The method of a call (see the module docstring) and, for PSK, the AEFPSK file. Raises ConfigurationError
    when there is none to use or the choice is ambiguous."""
    if method is not None and method not in METHODS:
        raise ConfigurationError(f"unknown security method {method!r} (one of {', '.join(METHODS)})")
    psk = _psk_file(invoker, aef_host, port, path) if method in (None, "PSK") else None
    if method == "PSK" and psk is None:
        raise ConfigurationError(f"no AEFPSK for {aef_host}:{port} and this path in {invoker.folder}; run "
                                 "`m2msec capif security` for this AEF (and give --aef-host as the AEF publishes it)")
    if method is not None:
        return method, psk
    if psk is not None:
        return "PSK", psk
    try:
        context = json.loads((invoker.folder / SECURITY_FILE).read_bytes())
        selected = {str(e["selSecurityMethod"]) for e in context["securityInfo"]} - {"PSK"}
    except FileNotFoundError:
        raise ConfigurationError(f"{invoker.folder}: no security context; run `m2msec capif security` first") from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise ConfigurationError(f"{invoker.folder / SECURITY_FILE}: not a security context") from None
    if len(selected) != 1:
        raise ConfigurationError("the security context does not tell which method this AEF takes: name it (--method "
                                 "PSK, PKI or OAUTH)")
    return selected.pop(), None


def _context(invoker: Invoker, method: str, psk: Path | None, aef_host: str, aef_ca_pem: bytes | None) -> TLSContext:
    if method == "PSK":
        assert psk is not None
        identity, key = read_aefpsk(psk)
        return TLSContext.client(ClientConfig(identity, key, profiles=parse_profiles(AEF_PSK_PROFILES)))
    if not aef_ca_pem:
        raise ConfigurationError(f"{method} needs the CA of the AEF's server certificate (--aef-ca)")
    if method == "PKI":
        certificate = CertificateConfig(invoker.certificate_pem, invoker.private_key_pem, aef_ca_pem)
        return TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=aef_host,
                                              certificate=certificate))
    return TLSContext.client(ClientConfig(None, profiles=(ECDHE_ECDSA,), server_name=aef_host,
                                          server_authentication_only=True,
                                          certificate=CertificateConfig(b"", b"", aef_ca_pem)))


async def call_aef(folder: Path | str | Invoker, aef: tuple[str, int], path: str, *, request_method: str = "GET",
                   body: bytes = b"", headers: Sequence[tuple[str, str]] = (), aef_host: str | None = None,
                   aef_ca_pem: bytes | None = None, method: str | None = None, access_token: str | None = None,
                   timeout: float = CALL_TIMEOUT) -> AEFAnswer:
    """One HTTP request to the AEF at ``aef`` (address, port) as this invoker, with the chosen CAPIF-2e method.
    ``aef_host``: the AEF's host name as published (its P0 and its certificate's name; default the address);
    ``access_token``: for OAuth (default: a new one from the CCF for every OAUTH API of the context).

    Raises: ConfigurationError (no credential for the method, a bad path), HandshakeFailed (the AEF refused the
    credential or is not who it must be), TransportError (unreachable, no answer in time), CAPIFError (the CCF
    refused a token). A refusal by the AEF is an answer (see :meth:`AEFAnswer.problem`)."""
    invoker = folder if isinstance(folder, Invoker) else load(folder)
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ConfigurationError("the path is an absolute path without spaces (/prefix/resource?query)")
    host = aef_host or aef[0]
    chosen, psk = choose_method(invoker, host, aef[1], path, method)
    sent = [(k, v) for k, v in headers if k.lower() not in ("host", "authorization", "content-length")]
    if chosen == "OAUTH":
        if access_token is None:
            access_token = str((await token(invoker))["access_token"])
        sent.append(("authorization", f"Bearer {access_token}"))
    context = _context(invoker, chosen, psk, host, aef_ca_pem)
    reader, writer, session = await open_connection(aef[0], aef[1], context, handshake_timeout=timeout,
                                                    peer_entity=NOT_ONEM2M)
    try:
        if chosen != "PSK":
            check_server_name(session, host, "the AEF")
        message = http1.Message(headers=[("host", f"{host}:{aef[1]}"), *sent], body=body, method=request_method,
                                target=path)
        try:
            answer = await asyncio.wait_for(http1.request(reader, writer, message, max_body=MAX_ANSWER), timeout)
        except TimeoutError:
            raise TransportError(f"the AEF did not answer within {timeout:g} s") from None
        except (http1.HTTPError, h11.ProtocolError, OSError) as exc:
            raise TransportError(f"the AEF's answer could not be read ({type(exc).__name__})") from None
    finally:
        writer.close()
    return AEFAnswer(answer.status, {k.lower(): v for k, v in answer.headers}, answer.body, chosen)


def refused(answer: AEFAnswer) -> CAPIFError:
    """The CAPIFError of a non-2xx answer (its :meth:`AEFAnswer.problem` line)."""
    return CAPIFError(answer.problem(), status=answer.status)
