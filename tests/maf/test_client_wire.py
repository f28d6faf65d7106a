"""The MAF client's pure side: timestamps, answers checked against docs/maf.md, problems, the exported Kc, and the
``--maf*`` options (m2msec.maf.client_wire, m2msec.maf.client_options)."""

from __future__ import annotations

import argparse
import base64

import pytest

from m2msec.errors import ConfigurationError, MAFError
from m2msec.keys.secret import SecretKey
from m2msec.maf.client import MAFCredentials
from m2msec.maf.client_options import add_maf_options, maf_client_from_args, parse_maf_url
from m2msec.maf.client_wire import (
    decode_json,
    format_timestamp,
    parse_timestamp,
    problem_from,
    registered_key_from,
    registration_from,
    retrieved_key_from,
    split_exported,
)

KEY = SecretKey(bytes(range(32)))


def test_timestamps_round_trip_in_utc() -> None:
    assert format_timestamp(0) == "19700101T000000"
    assert format_timestamp(1764633600.9) == "20251202T000000"
    assert parse_timestamp("20251202T000000") == 1764633600.0
    assert parse_timestamp("20251202T000000,5") == 1764633600.0
    for bad in ("2025-12-02", "", 17, None, "20251302T000000"):
        with pytest.raises(MAFError) as err:
            parse_timestamp(bad)
        assert err.value.status == 0 and err.value.problem == "bad-response"


def test_problem_keeps_status_and_type_never_the_detail() -> None:
    body = b'{"type": "urn:m2msec:maf:not-registered", "title": "x", "status": 403, "detail": "SECRET-DETAIL"}'
    exc = problem_from(403, body)
    assert (exc.status, exc.problem) == (403, "not-registered")
    assert "SECRET" not in str(exc)
    assert problem_from(502, b"<html>").problem == "http-502"
    assert problem_from(400, b'{"type": "urn:m2msec:maf:a b"}').problem == "http-400"
    assert problem_from(400, b'{"type": "about:blank"}').problem == "http-400"


def test_answers_are_checked_against_the_contract() -> None:
    reg = registration_from({"mafClientRegID": "r1", "expirationTime": "20300101T000000",
                             "mafClientID": "//sp/cse-1", "adminFQDN": "admin.example.com"})
    assert reg.reg_id == "r1" and reg.maf_client_id == "//sp/cse-1" and reg.labels is None
    with pytest.raises(MAFError):
        registration_from({"mafClientRegID": "../x", "expirationTime": "20300101T000000",
                           "mafClientID": "a", "adminFQDN": "b"})
    key = {"relativeKeyID": "00" * 16, "expirationTime": "20300101T000000", "sourceMAFClientID": "11-a@maf.example",
           "adminFQDN": "maf.example", "SUID": 32, "targetIDs": ["//sp/cse-b"]}
    got = registered_key_from(key, KEY)
    assert got.suid == 32 and got.target_ids == ("//sp/cse-b",)
    assert "redacted" not in repr(got) and "kc" not in repr(got)  # the field itself is left out of repr
    for broken in ({**key, "SUID": "32"}, {**key, "SUID": True}, {**key, "targetIDs": "x"},
                   {**key, "relativeKeyID": "a/b"}):
        with pytest.raises(MAFError):
            registered_key_from(broken)
    retrieved = {"expirationTime": "20300101T000000", "sourceMAFClientID": "//sp/cse-a/CAE1", "adminFQDN": "x.y",
                 "SUID": 32, "keyValue": base64.b64encode(bytes(32)).decode()}
    r = retrieved_key_from("ab", retrieved)
    assert r.key == SecretKey(bytes(32)) and bytes(32).hex() not in repr(r)
    for value in ("not base64!", base64.b64encode(bytes(8)).decode(), base64.b64encode(bytes(65)).decode()):
        with pytest.raises(MAFError):
            retrieved_key_from("ab", {**retrieved, "keyValue": value})
    with pytest.raises(MAFError):
        decode_json(b"[1]")


def test_exported_material_splits_into_kcid_and_kc() -> None:
    material = SecretKey(bytes(range(48)))
    kc_id, kc = split_exported(material)
    assert kc_id == bytes(range(16)) and kc == SecretKey(bytes(range(16, 48)))
    with pytest.raises(ValueError):
        split_exported(SecretKey(bytes(47)))


def test_credentials_are_one_of_psk_or_certificate() -> None:
    MAFCredentials("MAF.example.com", kmid="a1@maf.example.com", km=KEY)
    with pytest.raises(ConfigurationError, match="not of the MAF"):
        MAFCredentials("maf.example.com", kmid="a1@other.example.com", km=KEY)
    with pytest.raises(ConfigurationError):
        MAFCredentials("maf.example.com")
    with pytest.raises(ConfigurationError):
        MAFCredentials("maf.example.com", kmid="a1@maf.example.com", km=KEY, chain_pem=b"x", private_key_pem=b"y")
    with pytest.raises(ConfigurationError):
        MAFCredentials("maf.example.com", chain_pem=b"x", private_key_pem=b"y")  # no trust anchors
    with pytest.raises(ConfigurationError):
        MAFCredentials("not a name", kmid="a1@maf.example.com", km=KEY)
    assert "0001" not in repr(MAFCredentials("maf.example.com", kmid="a1@maf.example.com", km=KEY))


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_maf_options(p, role="test")
    return p.parse_args(list(argv))


def test_maf_options(tmp_path: pytest.TempPathFactory) -> None:
    assert parse_maf_url("https://maf.example.com:9443") == ("maf.example.com", 9443)
    for bad in ("http://maf:1", "https://maf:1/x", "maf:1", "https://maf:99999"):
        with pytest.raises(ConfigurationError):
            parse_maf_url(bad)
    assert maf_client_from_args(_args()) is None
    with pytest.raises(ConfigurationError, match="needs --maf"):
        maf_client_from_args(_args("--maf-kmid", "a@maf.example.com"))
    with pytest.raises(ConfigurationError, match="MAF credential"):
        maf_client_from_args(_args("--maf", "https://maf.example.com:1"))
    with pytest.raises(ConfigurationError, match="--maf-fqdn"):
        maf_client_from_args(_args("--maf", "https://127.0.0.1:1", "--maf-kmid", "a@maf.example.com"))
    km = tmp_path / "km.hex"  # type: ignore[operator]
    km.write_text("00" * 32)
    km.chmod(0o600)
    client = maf_client_from_args(_args("--maf", "https://127.0.0.1:1", "--maf-fqdn", "maf.example.com",
                                        "--maf-kmid", "a@maf.example.com", "--maf-key-file", str(km)))
    assert client is not None and client.maf_fqdn == "maf.example.com"
    assert (client.host, client.port) == ("127.0.0.1", 1)
    km.chmod(0o644)
    with pytest.raises(ConfigurationError):
        maf_client_from_args(_args("--maf", "https://maf.example.com:1", "--maf-kmid", "a@maf.example.com",
                                   "--maf-key-file", str(km)))
