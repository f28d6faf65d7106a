"""``m2msec pki``: a small name-constrained oneM2M CA (TS-0003 §8.1.2, §10.1). ``show`` never prints key material.

A CA or entity is a file PREFIX: ``PREFIX.crt`` (PEM certificate) and ``PREFIX.key`` (PEM PKCS#8, mode 0600,
never overwritten; refused when readable by others).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.keys.table import check_file_permissions
from m2msec.pki import (
    CertificateFlavour,
    Issued,
    create_ca,
    create_crl,
    identity_from_certificate,
    issue,
    load_issued,
    make_csr,
    sign_csr,
    write_issued,
    write_private_key,
)

E = TypeVar("E", bound=x509.ExtensionType)
_FLAVOURS = "{" + ",".join(f.value for f in CertificateFlavour) + "}"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("pki", help="oneM2M certificates: CA, issue, CSR, CRL, show")
    ps = p.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    ca = ps.add_parser("ca", help="create a root CA, or an intermediate CA with --issuer-prefix")
    ca.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.crt and PREFIX.key (0600)")
    ca.add_argument("--name", required=True, help="CA common name")
    ca.add_argument("--permit-dns", action="append", default=[], metavar="DOMAIN", help="permitted DNS subtree")
    ca.add_argument("--permit-uri-host", action="append", default=[], metavar="HOST",
                    help="permitted URI host (.domain: its subdomains)")
    ca.add_argument("--days", default="3650", help="validity in days (default 3650)")
    ca.add_argument("--issuer-prefix", metavar="PREFIX", help="sign with this CA: an intermediate CA")
    ca.set_defaults(func=_ca)

    iss = ps.add_parser("issue", help="issue a certificate and a new P-256 key")
    iss.add_argument("--ca", required=True, metavar="PREFIX", help="issuing CA (PREFIX.crt, PREFIX.key)")
    _identity_args(iss)
    iss.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.crt and PREFIX.key (0600)")
    iss.add_argument("--days", default="365", help="validity in days (default 365)")
    iss.set_defaults(func=_issue)

    sc = ps.add_parser("sign-csr", help="issue a certificate for a CSR (TS-0003 §10.1.4)")
    sc.add_argument("--ca", required=True, metavar="PREFIX", help="issuing CA (PREFIX.crt, PREFIX.key)")
    sc.add_argument("--csr", required=True, type=Path, metavar="FILE", help="PEM CSR")
    sc.add_argument("--flavour", required=True, metavar=_FLAVOURS, help="expected certificate flavour")
    sc.add_argument("--out", required=True, type=Path, metavar="FILE.crt")
    sc.add_argument("--days", default="365", help="validity in days (default 365)")
    sc.set_defaults(func=_sign_csr)

    csr = ps.add_parser("csr", help="make a CSR and a new P-256 key")
    _identity_args(csr)
    csr.add_argument("--out", required=True, metavar="PREFIX", help="write PREFIX.csr and PREFIX.key (0600)")
    csr.set_defaults(func=_csr)

    crl = ps.add_parser("crl", help="make a CRL")
    crl.add_argument("--ca", required=True, metavar="PREFIX", help="CA (PREFIX.crt, PREFIX.key)")
    crl.add_argument("--revoke", action="append", default=[], metavar="SERIAL", help="serial, decimal or 0x-hex")
    crl.add_argument("--out", required=True, type=Path, metavar="FILE.crl")
    crl.add_argument("--days", default="7", help="days until nextUpdate (default 7)")
    crl.set_defaults(func=_crl)

    show = ps.add_parser("show", help="show a certificate's oneM2M identity (never key material)")
    show.add_argument("file", type=Path, metavar="FILE.crt")
    show.add_argument("--fqdn", action="store_true", help="read even a dNSName marked as CSE-ID (D41) as an FQDN")
    show.set_defaults(func=_show)


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flavour", required=True, metavar=_FLAVOURS, help="certificate flavour")
    p.add_argument("--id", required=True, metavar="VALUE",
                   help="CSE-ID | Absolute AE-ID | Node-ID (OID) | HWTYPE-OID/SERIAL | FQDN")
    p.add_argument("--sp-domain", metavar="DOMAIN", help="SP domain of a cse-id certificate (<CSE-ID>.<DOMAIN>)")


def _flavour(text: str) -> CertificateFlavour:
    try:
        return CertificateFlavour(text)
    except ValueError:
        raise ConfigurationError(f"unknown flavour {text!r}: choose from {_FLAVOURS}") from None


def _int(text: str, option: str, *, base: int = 10) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise ConfigurationError(f"{option}: not an integer: {text!r}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from None


def _load(prefix: str) -> Issued:
    crt, key = Path(f"{prefix}.crt"), Path(f"{prefix}.key")
    check_file_permissions(key)
    try:
        return load_issued(_read(crt), _read(key))
    except M2MSecError as exc:
        raise ConfigurationError(f"{prefix}: {exc}") from None


def _done(issued: Issued, paths: tuple[Path, Path | None]) -> None:
    files = ", ".join(str(p) for p in paths if p is not None)
    print(f"wrote {files} (serial {issued.certificate.serial_number:#x})")


def _ca(args: argparse.Namespace) -> int:
    issuer = _load(args.issuer_prefix) if args.issuer_prefix else None
    ca = create_ca(args.name, permitted_dns=args.permit_dns, permitted_uri_hosts=args.permit_uri_host,
                   issuer=issuer, days=_int(args.days, "--days"))
    _done(ca, write_issued(ca, Path(args.out)))
    return 0


def _issue(args: argparse.Namespace) -> int:
    leaf = issue(_load(args.ca), _flavour(args.flavour), args.id, sp_domain=args.sp_domain,
                 days=_int(args.days, "--days"))
    _done(leaf, write_issued(leaf, Path(args.out)))
    return 0


def _sign_csr(args: argparse.Namespace) -> int:
    flavour, ca = _flavour(args.flavour), _load(args.ca)
    try:
        csr = x509.load_pem_x509_csr(_read(args.csr))
    except ValueError:
        raise ConfigurationError(f"{args.csr}: not a PEM certificate signing request") from None
    leaf = sign_csr(ca, csr, flavour, days=_int(args.days, "--days"))
    args.out.write_bytes(leaf.certificate_pem())
    _done(leaf, (args.out, None))
    return 0


def _csr(args: argparse.Namespace) -> int:
    csr, key = make_csr(_flavour(args.flavour), args.id, sp_domain=args.sp_domain)
    key_path = write_private_key(key, Path(f"{args.out}.key"))
    csr_path = Path(f"{args.out}.csr")
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    print(f"wrote {csr_path}, {key_path}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    serials = [_int(s, "--revoke", base=16 if s.lower().startswith("0x") else 10) for s in args.revoke]
    crl = create_crl(_load(args.ca), serials, next_update_days=_int(args.days, "--days"))
    args.out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    print(f"wrote {args.out} ({len(serials)} revoked, next update {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ})")
    return 0


def _show(args: argparse.Namespace) -> int:
    data = _read(args.file)
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigurationError(f"{args.file}: not a PEM or DER certificate") from None
    bc, nc = _get(cert, x509.BasicConstraints), _get(cert, x509.NameConstraints)
    rows = [("certificate", str(args.file))]
    if bc is not None and bc.ca:
        permitted = ", ".join(f"{type(n).__name__}:{n.value}" for n in (nc and nc.permitted_subtrees) or ()) or "-"
        rows += [("flavour", "CA" + (f" (path length {bc.path_length})" if bc.path_length is not None else "")),
                 ("permitted", permitted)]
    else:
        dns = CertificateFlavour.FQDN if args.fqdn else CertificateFlavour.CSE_ID
        ident = identity_from_certificate(cert, dns_flavour=dns)
        rows += [("flavour", ident.flavour.value), ("identity", ident.value),
                 ("credential-id", ident.credential_id or "-")]
    rows += [
        ("subject", cert.subject.rfc4514_string() or "-"),
        ("issuer", cert.issuer.rfc4514_string()),
        ("serial", f"{cert.serial_number:#x}"),
        ("not before", f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"),
        ("not after", f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"),
        ("sha256", cert.fingerprint(hashes.SHA256()).hex(":").upper()),
    ]
    for label, value in rows:
        print(f"{label + ':':<15}{value}")
    return 0


def _get(cert: x509.Certificate, cls: type[E]) -> E | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise ConfigurationError(f"certificate extensions cannot be parsed: {exc}") from None
