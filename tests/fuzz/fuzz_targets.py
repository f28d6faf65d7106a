"""The parsers m2msec runs on untrusted bytes, as fuzz targets (issue 21 part 2, docs/security.md section 2).

Each :class:`Target` takes one input (bytes), runs it through the same calls the package makes on such input, and
may raise only its ``allowed`` classes: the package's own errors (:class:`m2msec.errors.M2MSecError`) and the
documented ValueError subclasses the parser names. Seeds are valid inputs built with the package's own encoders.
Shared by scripts/fuzz_parsers.py (100,000 inputs per parser) and tests/fuzz/test_fuzz_parsers.py (CI).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h11
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fuzz_targets_base import ALLOWED, LibraryRefusal, Target, text_of
from fuzz_targets_services import SERVICE_TARGETS

from m2msec import http1

__all__ = ["TARGETS", "LibraryRefusal", "Target"]


# --- CoAP ----------------------------------------------------------------------------------------------------------

def _coap_sa() -> Any:
    from m2msec.gateway.rules import SecurityAssociation

    return SecurityAssociation("psk 'fuzz'", "fuzz", "10-fuzz", "//sp.example/in-cse/Cfuzz",
                               frozenset({"//sp.example/in-cse/Cfuzz", "/in-cse/Cfuzz", "Cfuzz"}))


def _coap_seeds() -> list[bytes]:
    from m2msec.gateway import coap
    from m2msec.gateway.coap import Message, MessageType

    opts = [(coap.URI_PATH, b"in-cse"), (coap.URI_PATH, b"Cfuzz"), (coap.ONEM2M_FR, b"Cfuzz"),
            (coap.ONEM2M_RQI, b"req-1"), (coap.ONEM2M_RVI, b"3"), (coap.ONEM2M_TY, coap.encode_uint(2)),
            (12, coap.encode_uint(50))]
    return [
        Message(MessageType.CON, coap.GET, 1, b"tk", opts[:5]).encode(),
        Message(MessageType.CON, coap.POST, 2, b"\x01\x02\x03\x04", opts, b'{"m2m:ae":{"api":"Nfuzz","rr":false}}')
        .encode(),
        Message(MessageType.NON, coap.PUT, 0xFFFF, b"", [(coap.BLOCK1, b"\x0e"), (coap.SIZE1, b"\x04\x00"),
                                                       (coap.URI_PATH, b"x" * 300)], b"p" * 64).encode(),
        Message(MessageType.ACK, coap.make_code(2, 5), 3, b"t", [(coap.ONEM2M_RSC, coap.encode_uint(2000)),
                                                               (coap.BLOCK2, b"\x1a")], b"answer").encode(),
        Message(MessageType.RST, coap.EMPTY, 4).encode(),
        bytes([0x40, 0x01, 0, 5, 0xD0 | 1, 200, 0x61, 0xE1, 0xFF, 0xFF, 0x62]),  # extended delta forms
    ]


def _coap_run(data: bytes) -> None:
    from m2msec.gateway import coap
    from m2msec.gateway.rules import UnboundPolicy

    msg = coap.Message.decode(data)
    if msg.encode() != data:  # the codec promises byte-exact round trips (module docstring)
        raise AssertionError("decode/encode is not byte-exact")
    coap.decide(msg, _coap_sa(), UnboundPolicy.REJECT, 7, cse_id="/in-cse", sp_id="sp.example")
    coap.prepare_response(data)


def _blockwise_run(data: bytes) -> None:
    from m2msec.gateway import coap
    from m2msec.gateway.blockwise_budget import ByteBudget
    from m2msec.gateway.coap_blockwise import BlockwiseLimits, PeerBlockwise

    # up to three datagrams of one peer (split at 0xFA 0xFA) through one block-wise state: a transfer's later blocks
    # meet the state its first ones left
    limits = BlockwiseLimits.for_max_body(4096)
    mids = iter(range(1, 1 << 16))
    peer = PeerBlockwise(limits, ByteBudget(limits.max_total_bytes), lambda: next(mids), "fuzz")
    try:
        for n, part in enumerate(data.split(b"\xfa\xfa")[:3]):
            msg = coap.Message.decode(part)
            actions = peer.from_client(msg, float(n)) if coap.is_request(msg.code) else peer.from_cse(msg, float(n))
            for action in actions:
                encoded = getattr(action, "datagram", None) or getattr(action, "message", None)
                if isinstance(encoded, coap.Message):
                    encoded.encode()
    finally:
        peer.close()


# --- HTTP (gateway request path) -----------------------------------------------------------------------------------

_HTTP_SEEDS = [
    b"GET /in-cse/Cfuzz HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: Cfuzz\r\nX-M2M-RI: r1\r\nX-M2M-RVI: 3\r\n"
    b"Accept: application/json\r\n\r\n",
    b"POST /in-cse?rcn=1 HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: Cfuzz\r\nX-M2M-RI: r2\r\n"
    b"Content-Type: application/json;ty=2\r\nContent-Length: 37\r\n\r\n{\"m2m:ae\":{\"api\":\"Nfuzz\",\"rr\":false}}",
    b"PUT /in-cse/Cfuzz HTTP/1.1\r\nHost: gw\r\nX-M2M-Origin: Cfuzz\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"DELETE /x HTTP/1.0\r\nX-M2M-Origin: /in-cse/Cfuzz\r\nAuthorization: Bearer a\r\n\r\n",
]
_HTTP_DICT = [b"\r\n", b"\r\n\r\n", b": ", b"X-M2M-Origin: ", b"X-M2M-RI: ", b"x_m2m_origin: ", b"Content-Type: ",
              b";ty=2", b"ty=2", b"application/vnd.onem2m-res+json", b"Content-Length: ", b"Transfer-Encoding: chunked",
              b"Accept: ", b"X-M2MSEC-Credential-ID: ", b" HTTP/1.1", b"?rcn=", b"&", b"{", b"}", b"\"m2m:ae\"",
              b"\"api\"", b"\"rn\"", b"\"lbl\"", b"[", b"]", b"null", b"1e999", b"\\u0000", b"\\ud800", b"\r\n "]


def _http_run(data: bytes) -> None:
    """h11, the gateway's request head and body reader (http_conn._pump), then Gateway._process's checks."""
    from m2msec.gateway.headers import check_request_headers, normalize_header_name, strip_gateway_headers
    from m2msec.gateway.registration import authorize, http_ae_create
    from m2msec.gateway.rules import UnboundPolicy

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    conn.receive_data(data)
    conn.receive_data(b"")
    request: http1.Message | None = None
    body = http1.BodyCollector(8192)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or (isinstance(event, h11.ConnectionClosed) and request is None):
                raise LibraryRefusal  # an incomplete request: http_conn waits for more, then times out
            if request is None:
                request = http1.message_head(event, 8192)
            elif body.feed(event):
                break
    except h11.RemoteProtocolError:
        raise LibraryRefusal from None  # http_conn answers 400: h11's own documented refusal
    request.body = body.take()
    check_request_headers(request.headers)
    strip_gateway_headers(request.headers)
    origin = request.header("x-m2m-origin")
    create = http_ae_create(request.method, request.header("content-type"), request.body, origin, request.target,
                            [v for k, v in request.headers if normalize_header_name(k) == "accept"])
    authorize(_coap_sa(), origin, UnboundPolicy.REJECT, create=create, cse_id="/in-cse", sp_id="sp.example")


# --- identifiers ---------------------------------------------------------------------------------------------------

_ID_SEEDS = [b"0a1b.mef.example.com", b"kpsa1@maf.example.com", b"aabbcc.kpsa.m2m.example", b"10-kpsa1@example.com",
             b"11-abc@maf.example.com", b"31-3.6.1.4.1.1.2.3.ABCDEF", b"34-1.2.3", b"040201", b"22", b"mef.example.com",
             b"//sp.example/in-cse/Cfuzz", b"/in-cse", b"Cfuzz", b"ke1@mef.example.com"]
_ID_DICT = [b"@", b".", b"-", b"10-", b"11-", b"12-", b"31-", b"34-", b"//", b"/", b"xn--", b"..", b"a" * 63,
            b"a" * 64, b"0x", b"\x00"]


def _identifiers_run(data: bytes) -> None:
    from m2msec import identifiers as ids
    from m2msec.errors import IdentifierError
    from m2msec.gateway.registration import cse_id_of
    from m2msec.gateway.rules import entity_forms, normalize_sp_id

    text = text_of(data)
    for parse in (ids.KpsaID.parse, ids.KmID.parse, ids.KeID.parse, ids.MAFKeyIdentifier.parse,
                  ids.CredentialID.parse, ids.CredentialID.for_kpsa_id, ids.SUID.parse, ids.validate_fqdn,
                  ids.validate_rel_key_id, normalize_sp_id):
        try:
            parsed = parse(text)
        except IdentifierError:
            continue
        str(parsed)
    cse_id_of(text)
    entity_forms(text, "/in-cse", "sp.example")


# --- key tables ------------------------------------------------------------------------------------------------------

_TOML_SEEDS = [
    b'[[psk]]\nidentity = "kpsa1@maf.example.com"\nkey = "00112233445566778899aabbccddeeff"\n'
    b'entity = "//sp.example/in-cse/Cfuzz"\ndescription = "a"\n\n[[psk]]\nidentity = "b"\n'
    b'key = "ffeeddccbbaa99887766554433221100"\n',
    b"psk = []\n",
    b"[[psk]]\nidentity = 'x'\nkey = '''00112233445566778899aabbccddeeff'''\n",
]
_TOML_DICT = [b"[[psk]]", b"[psk]", b"identity", b"key", b"entity", b"description", b" = ", b'"', b"'''", b'"""',
              b"\\u0000", b"\\U0010ffff", b"inf", b"nan", b"1979-05-27T07:32:00Z", b"{ }", b"[ ]", b"\n", b"#"]


def _toml_run(data: bytes) -> None:
    from m2msec.keys.table import parse_toml_table

    parse_toml_table(text_of(data), "fuzz.toml")


@functools.cache
def _import_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="m2msec-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _store() -> Any:
    from m2msec.keys.secret import SecretKey
    from m2msec.keys.sqlite_store import SQLitePSKStore

    return SQLitePSKStore(_import_dir() / "keys.db", SecretKey(b"\x01" * 32))


def _keys_import_run(data: bytes) -> None:
    """`m2msec keys import` (cli/keys.py _import): the file through TomlPSKTable, its entries into a SQLite store."""
    from m2msec.keys.table import TomlPSKTable

    path = _import_dir() / "import.toml"
    path.write_bytes(data)
    path.chmod(0o600)
    table = TomlPSKTable(path)
    _store().add_many(table.entries(), replace=True)


# --- certificates and CRLs -------------------------------------------------------------------------------------------

@functools.cache
def _pki() -> dict[str, Any]:
    from m2msec import pki
    from m2msec.pki.profile import CertificateFlavour

    ca = pki.create_ca("fuzz CA", permitted_dns=["sp.example"], permitted_uri_hosts=["sp.example"])
    leaves = [pki.issue(ca, CertificateFlavour.AE_ID, "//sp.example/in-cse/Cfuzz"),
              pki.issue(ca, CertificateFlavour.CSE_ID, "in-cse", sp_domain="sp.example"),
              pki.issue(ca, CertificateFlavour.FQDN, "gw.sp.example")]
    crl = pki.create_crl(ca, [1, 2, 0x1234567890])
    return {"ca": ca, "leaves": leaves, "crl": crl}


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cert_seeds() -> list[bytes]:
    p = _pki()
    return [_pem(i.certificate) for i in p["leaves"]] + [_pem(p["ca"].certificate)]


def _cert_der_seeds() -> list[bytes]:
    p = _pki()
    return [i.certificate.public_bytes(serialization.Encoding.DER) for i in [*p["leaves"], p["ca"]]]


def _certificate_checks(cert: x509.Certificate) -> None:
    from m2msec.errors import IdentifierError
    from m2msec.pki import identity_from_certificate, identity_service_provider
    from m2msec.pki.profile import CertificateFlavour

    for flavour in (CertificateFlavour.CSE_ID, CertificateFlavour.FQDN):
        try:
            ident = identity_from_certificate(cert, dns_flavour=flavour)
        except IdentifierError:
            continue
        identity_service_provider(cert, ident)


def _cert_pem_run(data: bytes) -> None:
    """`m2msec pki` and the gateway's --cert: pki.files.load_issued, then the identity read from the SAN."""
    from m2msec.pki.files import load_issued

    _certificate_checks(load_issued(data, None).certificate)


def _cert_der_run(data: bytes) -> None:
    """A peer certificate as the TLS stack hands it over (DER), through the gateway's identity checks."""
    try:
        cert = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):
        raise LibraryRefusal from None  # cryptography refuses it (the TLS stack refused it before)
    _certificate_checks(cert)


def _crl_seeds() -> list[bytes]:
    crl = _pki()["crl"]
    return [crl.public_bytes(serialization.Encoding.PEM), crl.public_bytes(serialization.Encoding.DER),
            crl.public_bytes(serialization.Encoding.PEM) * 2]


def _crl_run(data: bytes) -> None:
    """crl.load_crls, and what the gateway computes from the CRLs in force (CRLSet, the reload checks)."""
    from m2msec import crl as crl_mod

    crls = crl_mod.load_crls(data, "fuzz.crl")
    ca = _pki()["ca"].certificate
    crl_set = crl_mod.CRLSet(crls)
    for leaf in _pki()["leaves"]:
        crl_set.status(leaf.certificate, 1.8e9)
    crl_mod.superseded_issuers(crls, crls)
    crl_mod.unsigned_crls(crls, [ca])
    crl_mod.next_update_alerts(crls, 1.8e9, 3600.0)


TARGETS: list[Target] = [
    Target("coap", "CoAP message codec and gateway.coap.decide", _coap_run, _coap_seeds(),
           dictionary=[b"\xff", b"\xd0", b"\xe0", b"\x0d", b"\x0e"]),
    Target("coap-blockwise", "CoAP Block1/Block2 state (coap_blockwise.PeerBlockwise)", _blockwise_run,
           [b"\xfa\xfa".join(_coap_seeds()[1:3]), *_coap_seeds()], dictionary=[b"\xfa\xfa", b"\xd1\x0a", b"\xd1\x0e"]),
    Target("http-request", "gateway HTTP request path: h11, http1, headers, registration, rules", _http_run,
           _HTTP_SEEDS, allowed=(*ALLOWED, http1.HTTPError), dictionary=_HTTP_DICT, max_len=16384),
    Target("identifiers", "KpsaID/KmID/KeID/MAF key ID/Credential-ID/SUID/FQDN/SP-ID/entity forms", _identifiers_run,
           _ID_SEEDS, dictionary=_ID_DICT, max_len=1024),
    Target("psk-toml", "TOML PSK table (keys.table.parse_toml_table)", _toml_run, _TOML_SEEDS, dictionary=_TOML_DICT),
    Target("keys-import", "m2msec keys import: TomlPSKTable file -> SQLite store", _keys_import_run, _TOML_SEEDS,
           dictionary=_TOML_DICT),
    Target("cert-pem", "pki.files.load_issued + identity_from_certificate", _cert_pem_run, _cert_seeds(),
           dictionary=[b"-----BEGIN CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n", b"\n", b"="]),
    Target("cert-der", "peer certificate (DER) through the gateway identity checks", _cert_der_run,
           _cert_der_seeds(), dictionary=[b"\x30\x82", b"\x06\x03\x55\x1d\x11", b"\x86", b"\x82", b"\xa0"]),
    Target("crl", "crl.load_crls + CRLSet + reload checks", _crl_run, _crl_seeds(),
           dictionary=[b"-----BEGIN X509 CRL-----\n", b"-----END X509 CRL-----\n", b"\x30\x82", b"\x02\x01"]),
    *SERVICE_TARGETS,
]
