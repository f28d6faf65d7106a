"""The API invoker side of CAPIF (TS 29.222 §8.1, §8.4, §8.5; TS 33.122 §6.1-§6.5, Annex A): onboarding,
discovery, the security method and AEFPSK, access tokens, offboarding, over :class:`m2msec.capif.client.CCFConnection`.

The invoker's credentials live in a folder the user chooses (D156, docs/capif-invoker.md):

    invoker.json      apiInvokerId, the CCF's address and host name, the notification destination (no secret)
    invoker.key       the invoker's P-256 private key (PKCS#8 PEM, mode 0600)
    invoker.crt       the certificate the CCF issued at onboarding
    ccf-ca.pem        the CA the CCF's server certificate chains to
    security.json     the ServiceSecurity the CCF answered (no secret)
    aefpsk/<h>.toml   one per PSK-selected AEF interface (mode 0600): an m2msec PSK table with one entry, identity =
                      the invoker ID, key = AEFPSK, entity = the aefId, description = P0; ``<h>`` = SHA-256 hex of P0

Nothing here prints or logs a key, a token or a credential; errors name files, statuses and ProblemDetails causes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import urllib.parse
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
from m2msec.keys.files import SECRET_FILE_MODE
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import check_file_permissions

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
#: D156: the credential folder and its AEFPSK subfolder are the user's only (rwx------)
FOLDER_MODE: Final = 0o700
AEFPSK_DIR: Final = "aefpsk"
#: D157: the methods asked for when the user names none, most preferred first (the CCF applies its own D116 priority
#: PSK > PKI > OAUTH among those published; an invoker wanting OAuth says so)
DEFAULT_PREFERENCE: Final = ("PSK", "PKI", "OAUTH")
#: the Discover Service query parameters :func:`discover` passes on (TS 29.222 §8.1.2.2.3.1; D126 on the CCF side)
DISCOVER_FILTERS: Final = ("api-name", "api-version", "comm-type", "protocol", "aef-id", "data-format", "api-cat",
                           "preferred-aef-loc", "supported-features", "api-supported-features")
_INFO, _KEY, _CERT, _CA, _SECURITY = "invoker.json", "invoker.key", "invoker.crt", "ccf-ca.pem", "security.json"


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


@dataclass(frozen=True)
class SecurityResult:
    """The ServiceSecurity the CCF answered and the AEFPSK files derived for its PSK entries."""

    context: dict[str, Any]
    psk_files: list[PSKFile]


# ------------------------------------------------------------------------------------------------------- files

def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: {exc.strerror or exc}") from None


def load(folder: Path | str) -> Invoker:
    """Load an invoker's credential folder. Raises ConfigurationError (missing or unreadable file, a private key
    others can read: D35)."""
    folder = Path(folder)
    if not (folder / _INFO).is_file():
        raise ConfigurationError(f"{folder}: not an invoker credential folder (no {_INFO}; run `m2msec capif onboard`)")
    try:
        info = json.loads(_read(folder / _INFO))
        invoker_id, address, port = str(info["apiInvokerId"]), str(info["ccfAddress"]), int(info["ccfPort"])
        ccf_host, destination = str(info["ccfHost"]), str(info["notificationDestination"])
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(f"{folder / _INFO}: not a valid invoker description") from None
    check_file_permissions(folder / _KEY)
    return Invoker(folder, invoker_id, address, port, ccf_host, destination, _read(folder / _CERT),
                   _read(folder / _CA), _read(folder / _KEY))


def _refusal(what: str, answer: Answer) -> CAPIFError:
    """One line for a refusal: the status and the ProblemDetails cause/title (or the OAuth error), never a body
    member that could echo a credential."""
    reason = ""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        parts = [str(body[k]) for k in ("cause", "error", "title") if isinstance(body.get(k), str)]
        detail = body.get("detail")
        if isinstance(detail, str) and len(detail) <= 300 and detail.isprintable():
            parts.append(detail)
        reason = ": " + "; ".join(dict.fromkeys(parts)) if parts else ""
    return CAPIFError(f"{what} refused by the CCF: HTTP {answer.status}{reason}", status=answer.status)


def _json_of(what: str, answer: Answer) -> Any:
    try:
        return answer.json()
    except ValueError:
        raise CAPIFError(f"{what}: the CCF's answer is not JSON", status=502) from None


# ---------------------------------------------------------------------------------------------------- onboard

def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "m2msec API invoker")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


async def onboard(ccf_address: tuple[str, int], ccf_host: str, ca_pem: bytes, credential: str, out_dir: Path | str,
                  notification_destination: str, *, information: str = "m2msec API invoker",
                  timeout: float = 10.0) -> Invoker:
    """Onboard (TS 29.222 §8.4, TS 33.122 §6.1): make a P-256 key and its CSR, POST /onboardedInvokers with the
    onboarding ``credential`` as Bearer, and write the credential folder ``out_dir`` (which must not exist) at once:
    it is prepared in a temporary folder beside it and renamed when complete.

    Raises: ConfigurationError (``out_dir`` exists, its parent does not), TransportError / HandshakeFailed (the CCF
    unreachable or not the one ``ca_pem`` and ``ccf_host`` name), CAPIFError (the CCF refused)."""
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise ConfigurationError(f"{out}: exists already; choose a new folder for the invoker's credentials")
    if not out.parent.is_dir():
        raise ConfigurationError(f"{out}: directory {out.parent} does not exist")
    credential = credential.strip()
    if not credential or not credential.isascii() or any(c.isspace() for c in credential):
        raise ConfigurationError("the onboarding credential is not a token (one line of ASCII without spaces)")
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.mkdir(mode=FOLDER_MODE)
    except OSError as exc:
        raise ConfigurationError(f"{out.parent}: cannot create the credential folder: {exc.strerror}") from None
    keep = False
    try:
        _write(tmp / _KEY, key_pem, SECRET_FILE_MODE)
        body = {"notificationDestination": notification_destination, "apiInvokerInformation": information,
                "onboardingInformation": {"apiInvokerPublicKey": _csr(key)}, "supportedFeatures": "0"}
        async with await CCFConnection.open(ccf_address[0], ccf_address[1], ccf_host=ccf_host, ca_pem=ca_pem,
                                            timeout=timeout) as conn:
            answer = await conn.request("POST", INVOKERS, json_body=body,
                                        headers={"authorization": f"Bearer {credential}"})
        if answer.status != 201:
            raise _refusal("onboarding", answer)
        result = _json_of("onboarding", answer)
        try:
            invoker_id = str(result["apiInvokerId"])
            certificate = str(result["onboardingInformation"]["apiInvokerCertificate"]).encode("ascii")
        except (KeyError, TypeError, UnicodeEncodeError):
            raise CAPIFError("onboarding: the CCF's answer has no apiInvokerId or certificate", status=502) from None
        keep = True  # from here the invoker exists at the CCF: never delete what identifies it
        info = {"apiInvokerId": invoker_id, "ccfAddress": ccf_address[0], "ccfPort": ccf_address[1],
                "ccfHost": ccf_host, "notificationDestination": notification_destination,
                "location": answer.header("location")}
        _write(tmp / _CERT, certificate)
        _write(tmp / _CA, ca_pem)
        _write(tmp / _INFO, (json.dumps(info, indent=2) + "\n").encode())
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
        raise _refusal("discovery", answer)
    found = _json_of("discovery", answer)
    apis = found.get("serviceAPIDescriptions") if isinstance(found, Mapping) else None
    return [d for d in apis if isinstance(d, dict)] if isinstance(apis, list) else []


async def discover(folder: Path | str | Invoker, **filters: str) -> list[dict[str, Any]]:
    """The service APIs the CCF lets this invoker discover (TS 29.222 §8.1), ``filters`` as the query parameters
    (``api_name="x"`` is ``api-name=x``); ``[]`` when none matches."""
    invoker = folder if isinstance(folder, Invoker) else load(folder)
    async with await invoker.connect() as conn:
        return await _discover_on(conn, invoker, filters)


# ---------------------------------------------------------------------------------------------------- security

def _interfaces(descriptions: Sequence[Mapping[str, Any]], aef_id: str, api_id: str | None) -> set[str]:
    """The P0 of every interface ``aef_id`` publishes (of ``api_id`` only, when given), as the CCF resolves an
    ``aefId`` entry."""
    out: set[str] = set()
    for description in descriptions:
        if api_id is not None and description.get("apiId") != api_id:
            continue
        for profile in description.get("aefProfiles") or []:
            if isinstance(profile, Mapping) and profile.get("aefId") == aef_id:
                for interface in profile.get("interfaceDescriptions") or []:
                    out.add(interface_information_of(interface))
    return out


def _psk_name(p0: str) -> str:
    return hashlib.sha256(p0.encode("utf-8")).hexdigest() + ".toml"


def _psk_table(invoker_id: str, aef_id: str, p0: str, key: SecretKey) -> bytes:
    def q(text: str) -> str:
        return json.dumps(text)  # a TOML basic string: JSON's escapes are TOML's

    return (f"# AEFPSK (TS 33.122 Annex A) for {aef_id}, interface {p0}: an m2msec PSK table\n[[psk]]\n"
            f"identity = {q(invoker_id)}\nkey = \"{key.reveal().hex()}\"\nentity = {q(aef_id)}\n"
            f"description = {q(p0)}\n").encode()


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
            raise _refusal("the security method request", answer)
        context = _json_of("security", answer)
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
                p0s = _interfaces(discovered, aef, sent.get("apiId"))
            if len(p0s) != 1:
                raise CAPIFError(f"security: PSK was selected for {aef}, but discovery shows {len(p0s)} interfaces "
                                 "for it (one is needed to derive AEFPSK)", status=502)
            p0 = p0s.pop()
            key = conn.aefpsk(p0)  # THIS connection's master secret and session ID: the CCF derived on it too
            psk_dir.mkdir(mode=FOLDER_MODE, exist_ok=True)
            path = psk_dir / _psk_name(p0)
            _write(path, _psk_table(invoker.invoker_id, aef or "unknown", p0, key), SECRET_FILE_MODE)
            written.append(PSKFile(aef, p0, path))
    keep = {f.path.name for f in written}
    for stale in psk_dir.glob("*.toml") if psk_dir.is_dir() else []:
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    _write(invoker.folder / _SECURITY, (json.dumps(context, indent=2) + "\n").encode())
    return SecurityResult(dict(context), written)


def read_aefpsk(path: Path | str) -> tuple[str, SecretKey]:
    """The (psk identity, AEFPSK) of an AEFPSK file :func:`obtain_security` wrote (checked 0600, D35)."""
    from m2msec.keys.table import parse_toml_table

    path = Path(path)
    check_file_permissions(path)
    [entry] = parse_toml_table(_read(path).decode("utf-8"), str(path)).values()
    return entry.identity, entry.key


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
        raise _refusal("the token request", answer)
    got = _json_of("token", answer)
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
        raise _refusal("offboarding", answer)
    psk_dir = invoker.folder / AEFPSK_DIR
    if psk_dir.is_dir():
        shutil.rmtree(psk_dir, ignore_errors=True)
    (invoker.folder / _SECURITY).unlink(missing_ok=True)
    info = json.loads(_read(invoker.folder / _INFO))
    info["offboarded"] = True
    _write(invoker.folder / _INFO, (json.dumps(info, indent=2) + "\n").encode())

