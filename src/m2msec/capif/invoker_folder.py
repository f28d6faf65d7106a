"""The API invoker's credential folder (D156, docs/capif-invoker.md), which :mod:`m2msec.capif.invoker` writes and
reads:

    invoker.json      apiInvokerId, the CCF's address and host name, the notification destination (no secret)
    invoker.key       the invoker's P-256 private key (PKCS#8 PEM, mode 0600)
    invoker.crt       the certificate the CCF issued at onboarding
    ccf-ca.pem        the CA the CCF's server certificate chains to
    security.json     the ServiceSecurity the CCF answered (no secret)
    aefpsk/<h>.toml   one per PSK-selected AEF interface (mode 0600): an m2msec PSK table (docs/gateway.md) with one
                      entry, identity = the invoker ID, key = AEFPSK, entity = the aefId, description = P0;
                      ``<h>`` = the SHA-256 hex of P0

The folder and ``aefpsk/`` are mode 0700. Every file is written whole under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.capif.client import Answer, CCFConnection
from m2msec.capif.kdf import interface_information_of
from m2msec.errors import CAPIFError, ConfigurationError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import check_file_permissions, parse_toml_table

__all__ = [
    "AEFPSK_DIR",
    "FOLDER_MODE",
    "Invoker",
    "PSKFile",
    "check_new_folder",
    "create_at_ccf",
    "credential_token",
    "csr_pem",
    "json_of",
    "load",
    "psk_file_name",
    "psk_interfaces",
    "psk_table",
    "read_aefpsk",
    "read_file",
    "refusal",
    "temporary_folder",
    "write_file",
]

#: D156: the credential folder and its AEFPSK subfolder are the user's only (rwx------)
FOLDER_MODE: Final = 0o700
#: D156: the subfolder of the AEFPSK files
AEFPSK_DIR: Final = "aefpsk"
INFO, KEY, CERT, CA, SECURITY_FILE = "invoker.json", "invoker.key", "invoker.crt", "ccf-ca.pem", "security.json"


@dataclass(frozen=True)
class Invoker:
    """An onboarded API invoker's credential folder, loaded."""

    folder: Path
    invoker_id: str
    ccf_address: str
    ccf_port: int
    ccf_host: str
    notification_destination: str
    certificate_pem: bytes
    ca_pem: bytes
    private_key_pem: bytes = field(repr=False)

    async def connect(self, timeout: float = 10.0) -> CCFConnection:
        """A mutually authenticated TLS 1.2 connection to the CCF with the invoker's certificate."""
        return await CCFConnection.open(self.ccf_address, self.ccf_port, ccf_host=self.ccf_host, ca_pem=self.ca_pem,
                                        certificate_pem=self.certificate_pem, private_key_pem=self.private_key_pem,
                                        timeout=timeout)


@dataclass(frozen=True)
class PSKFile:
    """One AEFPSK written: the AEF, its interface (P0) and the file (never the key)."""

    aef_id: str
    interface: str
    path: Path


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file of ``mode`` from its creation, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: {exc.strerror or exc}") from None


def load(folder: Path | str) -> Invoker:
    """Load an invoker's credential folder. Raises ConfigurationError (missing or unreadable file, a private key
    others can read: D35)."""
    folder = Path(folder)
    if not (folder / INFO).is_file():
        raise ConfigurationError(f"{folder}: not an invoker credential folder (no {INFO}; run `m2msec capif onboard`)")
    try:
        info = json.loads(read_file(folder / INFO))
        invoker_id, address, port = str(info["apiInvokerId"]), str(info["ccfAddress"]), int(info["ccfPort"])
        ccf_host, destination = str(info["ccfHost"]), str(info["notificationDestination"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ConfigurationError(f"{folder / INFO}: not a valid invoker description") from None
    check_file_permissions(folder / KEY)
    return Invoker(folder, invoker_id, address, port, ccf_host, destination, read_file(folder / CERT),
                   read_file(folder / CA), read_file(folder / KEY))


def psk_interfaces(descriptions: Sequence[Mapping[str, Any]], aef_id: str, api_id: str | None) -> set[str]:
    """D158: the P0 of every interface ``aef_id`` publishes in ``descriptions`` (of ``api_id`` only, when given),
    as the CCF resolves an ``aefId`` entry (TS 29.222 does not echo the interface of such an entry): PSK, which the
    CCF selects only for an entry covering one interface (D130), is derived for the one found here."""
    out: set[str] = set()
    for description in descriptions:
        if api_id is not None and description.get("apiId") != api_id:
            continue
        for profile in description.get("aefProfiles") or []:
            if isinstance(profile, Mapping) and profile.get("aefId") == aef_id:
                for interface in profile.get("interfaceDescriptions") or []:
                    out.add(interface_information_of(interface))
    return out


def psk_file_name(p0: str) -> str:
    return hashlib.sha256(p0.encode("utf-8")).hexdigest() + ".toml"


def psk_table(invoker_id: str, aef_id: str, p0: str, key: SecretKey) -> bytes:
    def q(text: str) -> str:
        return json.dumps(text)  # a TOML basic string: JSON's escapes are TOML's

    return (f"# AEFPSK (TS 33.122 Annex A) for {aef_id}, interface {p0}: an m2msec PSK table\n[[psk]]\n"
            f"identity = {q(invoker_id)}\nkey = \"{key.reveal().hex()}\"\nentity = {q(aef_id)}\n"
            f"description = {q(p0)}\n").encode()


def read_aefpsk(path: Path | str) -> tuple[str, SecretKey]:
    """The (psk identity, AEFPSK) of an AEFPSK file :func:`obtain_security` wrote (checked 0600, D35)."""
    path = Path(path)
    check_file_permissions(path)
    [entry] = parse_toml_table(read_file(path).decode("utf-8"), str(path)).values()
    return entry.identity, entry.key


# ------------------------------------------ creating an identity at the CCF (invoker onboarding, provider registration)

def check_new_folder(out_dir: Path | str, whose: str) -> Path:
    """``out_dir`` for a new credential folder: it must not exist and its parent must. Raises ConfigurationError."""
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise ConfigurationError(f"{out}: exists already; choose a new folder for the {whose}'s credentials")
    if not out.parent.is_dir():
        raise ConfigurationError(f"{out}: directory {out.parent} does not exist")
    return out


def credential_token(credential: str) -> str:
    """The onboarding credential as sent: one line of ASCII without spaces. Raises ConfigurationError."""
    credential = credential.strip()
    if not credential or not credential.isascii() or any(c.isspace() for c in credential):
        raise ConfigurationError("the onboarding credential is not a token (one line of ASCII without spaces)")
    return credential


def temporary_folder(out: Path, what: str) -> Path:
    """A new private folder beside ``out`` to prepare it in (renamed to ``out`` once complete)."""
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.mkdir(mode=FOLDER_MODE)
    except OSError as exc:
        raise ConfigurationError(f"{out.parent}: cannot create the {what}: {exc.strerror}") from None
    return tmp


def csr_pem(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """A PKCS#10 request over ``key`` (the CCF certifies the key only, D119)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def refusal(what: str, answer: Answer) -> CAPIFError:
    """One line for a refusal: the status and the ProblemDetails cause/title (or the OAuth error), never a body
    member that could echo a credential."""
    reason = ""
    try:
        body = answer.json()
    except (ValueError, RecursionError):  # RecursionError: deep nesting (issue 21)
        body = None
    if isinstance(body, Mapping):
        parts = [str(body[k]) for k in ("cause", "error", "title") if isinstance(body.get(k), str)]
        detail = body.get("detail")
        if isinstance(detail, str) and len(detail) <= 300 and detail.isprintable():
            parts.append(detail)
        reason = ": " + "; ".join(dict.fromkeys(parts)) if parts else ""
    return CAPIFError(f"{what} refused by the CCF: HTTP {answer.status}{reason}", status=answer.status)


def json_of(what: str, answer: Answer) -> Any:
    try:
        return answer.json()
    except (ValueError, RecursionError):
        raise CAPIFError(f"{what}: the CCF's answer is not JSON", status=502) from None


async def create_at_ccf(ccf_address: tuple[str, int], ccf_host: str, ca_pem: bytes, credential: str, path: str,
                        body: Mapping[str, Any], what: str, timeout: float) -> tuple[Answer, Any]:
    """POST ``body`` to ``path`` with the onboarding ``credential`` as Bearer over server-authenticated TLS; the
    201 answer and its JSON. Raises CAPIFError (refused, or not JSON), TransportError, HandshakeFailed."""
    async with await CCFConnection.open(ccf_address[0], ccf_address[1], ccf_host=ccf_host, ca_pem=ca_pem,
                                        timeout=timeout) as conn:
        answer = await conn.request("POST", path, json_body=body, headers={"authorization": f"Bearer {credential}"})
    if answer.status != 201:
        raise refusal(what, answer)
    return answer, json_of(what, answer)
