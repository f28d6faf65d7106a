"""RFC 4108 §5 ``HardwareModuleName`` DER, the otherName of device certificates (TS-0003 §8.1.2.1, D14)."""

from __future__ import annotations

import re

from m2msec.errors import IdentifierError
from m2msec.pki.profile import _OID, _show


def _der_error(problem: str) -> IdentifierError:
    return IdentifierError(f"malformed HardwareModuleName: {problem}")


def _check_oid(text: str, what: str) -> str:
    if not isinstance(text, str) or not _OID.fullmatch(text):
        raise IdentifierError(f"malformed {what} {_show(str(text))}: not a dotted OID (e.g. 1.3.6.1.4.1.99.1)")
    first, second = (int(a) for a in text.split(".")[:2])
    if first > 2 or (first < 2 and second >= 40):
        raise IdentifierError(f"malformed {what} {_show(text)}: first arc must be 0..2, second < 40 under 0 and 1")
    return text


def _tlv(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    raw = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _read_tlv(data: bytes, pos: int, tag: int, what: str) -> tuple[bytes, int]:
    if pos + 1 >= len(data) or data[pos] != tag:
        raise _der_error(f"expected {what}")
    length, pos = data[pos + 1], pos + 2
    if length >= 0x80:
        raw, count = data[pos:pos + (length & 0x7F)], length & 0x7F
        if not 1 <= count <= 4 or len(raw) != count:
            raise _der_error(f"{what}: unsupported or truncated length")
        length, pos = int.from_bytes(raw, "big"), pos + count
        if raw[0] == 0 or length < 0x80:
            raise _der_error(f"{what}: non-minimal length (not DER)")
    if pos + length > len(data):
        raise _der_error(f"{what}: truncated")
    return data[pos:pos + length], pos + length


def encode_hardware_module_name(hw_type: str, serial: bytes) -> bytes:
    """DER of ``HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }``.

    Args: hw_type: dotted OID; serial: the hwSerialNum octets.
    Returns: the DER encoding (the otherName value of id-on-hardwareModuleName).
    Raises: IdentifierError: *hw_type* is not a dotted OID.
    """
    arcs = [int(a) for a in _check_oid(hw_type, "hwType").split(".")]
    body = bytearray()
    for arc in (arcs[0] * 40 + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(0x30, _tlv(0x06, bytes(body)) + _tlv(0x04, bytes(serial)))


def decode_hardware_module_name(der: bytes) -> tuple[str, bytes]:
    """Decode a strict DER ``HardwareModuleName``.

    Args: der: the otherName value.
    Returns: (hwType as dotted OID, hwSerialNum octets).
    Raises: IdentifierError: not exactly one well-formed DER HardwareModuleName.
    """
    if not isinstance(der, bytes | bytearray):
        raise _der_error(f"expected bytes, got {type(der).__name__}")
    body, end = _read_tlv(bytes(der), 0, 0x30, "SEQUENCE")
    oid, pos = _read_tlv(body, 0, 0x06, "hwType OBJECT IDENTIFIER")
    serial, pos = _read_tlv(body, pos, 0x04, "hwSerialNum OCTET STRING")
    if end != len(der) or pos != len(body):
        raise _der_error("trailing bytes or extra elements")
    if not oid or oid[-1] & 0x80 or re.search(rb"(?:^|[\x00-\x7f])\x80", oid) or re.search(rb"[\x80-\xff]{19}", oid):
        raise _der_error("truncated, non-minimal (not DER) or oversized hwType arc")
    arcs, value = [], 0
    for byte in oid:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    try:
        return _check_oid(".".join(map(str, (first, arcs[0] - 40 * first, *arcs[1:]))), "hwType"), serial
    except IdentifierError:
        raise _der_error("hwType arc out of range") from None


