"""Just enough BER (X.690) for SNMPv2c messages (RFC 3416): requests out, responses in.

Also the one SNMPv3 message we send ourselves: the engine-discovery request (RFC 3414 4),
with which the SNMPv3 path tells a device that ignores its requests from one that is down.

pysnmp decodes every answer through pyasn1's generic codec, building several Python objects
per var-bind; on a Raspberry Pi that was most of the agent's SNMP CPU. SNMPv2c messages are
small and fixed in shape, so the v2c path encodes and decodes them here directly: an OID stays
the bytes of its BER encoding (an OID prefix is exactly a byte prefix, so walks test "still
in this column" on the bytes and decode only the index below it), and values become plain
ints, bytes and strings at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from fieldmon.agent.snmp.values import Value

INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
SEQUENCE = 0x30
IP_ADDRESS = 0x40
COUNTER32 = 0x41
GAUGE32 = 0x42
TIME_TICKS = 0x43
OPAQUE = 0x44
COUNTER64 = 0x46
NO_SUCH_OBJECT = 0x80
NO_SUCH_INSTANCE = 0x81
END_OF_MIB_VIEW = 0x82
GET_REQUEST = 0xA0
RESPONSE = 0xA2
GET_BULK_REQUEST = 0xA5
SNMP_V2C = 1  # the version field's value for SNMPv2c
SNMP_V3 = 3
_USM = 3  # msgSecurityModel: the User-based Security Model
_REPORTABLE = b"\x04"  # msgFlags: noAuthNoPriv, reportable

_SIGNED = frozenset({INTEGER})
_UNSIGNED = frozenset({COUNTER32, GAUGE32, TIME_TICKS, COUNTER64})
_OCTETS = frozenset({OCTET_STRING, IP_ADDRESS, OPAQUE})
_NULL_VALUE = b"\x05\x00"
_V2C_VERSION = b"\x02\x01\x01"

ERROR_STATUS = (
    "noError",
    "tooBig",
    "noSuchName",
    "badValue",
    "readOnly",
    "genErr",
    "noAccess",
    "wrongType",
    "wrongLength",
    "wrongEncoding",
    "wrongValue",
    "noCreation",
    "inconsistentValue",
    "resourceUnavailable",
    "commitFailed",
    "undoFailed",
    "authorizationError",
    "notWritable",
    "inconsistentName",
)


class BerError(ValueError):
    """A message that is not well-formed BER, or not the SNMP shape we expect."""


def error_status_name(status: int) -> str:
    """RFC 3416's name for an error-status value."""
    return ERROR_STATUS[status] if 0 <= status < len(ERROR_STATUS) else f"error {status}"


# -- encoding ---------------------------------------------------------------------------------


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(value: int) -> bytes:
    return _tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _arc(arc: int) -> bytes:
    if arc < 0x80:
        return bytes((arc,))
    groups = []
    while arc:
        groups.append(arc & 0x7F)
        arc >>= 7
    return bytes(group | 0x80 for group in reversed(groups[1:])) + bytes((groups[0],))


def encode_oid(dotted: str) -> bytes:
    """The BER content bytes of a numeric OID ("1.3.6.1.2.1.1.3.0"); ValueError names it."""
    try:
        arcs = [int(part) for part in dotted.strip(".").split(".")]
    except ValueError:
        raise ValueError(f"not a numeric OID: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise ValueError(f"not a valid OID: {dotted!r}")
    return b"".join(_arc(arc) for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]])


def decode_arcs(content: bytes) -> list[int]:
    """The sub-identifiers in BER OID content, the first two still combined (40 * X + Y)."""
    arcs = []
    value = 0
    for octet in content:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    if value or (content and content[-1] & 0x80):
        raise BerError("OID ends inside a sub-identifier")
    return arcs


def decode_oid(content: bytes) -> str:
    """Dotted form of BER OID content bytes."""
    arcs = decode_arcs(content)
    if not arcs:
        raise BerError("empty OID")
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    return ".".join(map(str, (*head, *arcs[1:])))


class Pdu(NamedTuple):
    """A request PDU: GET (first, second = 0, 0) or GETBULK (non-repeaters, max-repetitions),
    asking for `oids` (BER content bytes) with NULL values."""

    kind: int
    first: int
    second: int
    oids: list[bytes]


def encode_request(community: bytes, request_id: int, pdu: Pdu) -> bytes:
    """The SNMPv2c message carrying `pdu` under `request_id`."""
    varbinds = b"".join(
        _tlv(SEQUENCE, _tlv(OBJECT_IDENTIFIER, oid) + _NULL_VALUE) for oid in pdu.oids
    )
    body = (
        _integer(request_id) + _integer(pdu.first) + _integer(pdu.second) + _tlv(SEQUENCE, varbinds)
    )
    return _tlv(SEQUENCE, _V2C_VERSION + _tlv(OCTET_STRING, community) + _tlv(pdu.kind, body))


def encode_v3_discovery(message_id: int) -> bytes:
    """An SNMPv3 engine-discovery request (RFC 3414 4): no user, no engine ID, no keys.

    An SNMPv3 agent answers it with a REPORT (usmStatsUnknownEngineIDs) carrying the same
    msgID, whatever users it has, so an answer proves only that it is up and speaks SNMPv3.
    """
    flags = _tlv(OCTET_STRING, _REPORTABLE)
    header = _tlv(SEQUENCE, _integer(message_id) + _integer(65507) + flags + _integer(_USM))
    empty = _tlv(OCTET_STRING, b"")
    security = _tlv(SEQUENCE, empty + _integer(0) + _integer(0) + empty + empty + empty)
    pdu = _tlv(GET_REQUEST, _integer(message_id) + _integer(0) + _integer(0) + _tlv(SEQUENCE, b""))
    scoped = _tlv(SEQUENCE, empty + empty + pdu)
    return _tlv(SEQUENCE, _integer(SNMP_V3) + header + _tlv(OCTET_STRING, security) + scoped)


# -- decoding ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    """A decoded SNMPv2c Response-PDU. Var-binds are (OID content bytes, value tag, value):
    value None for NULL, noSuchObject, noSuchInstance and endOfMibView (the tag says which)."""

    community: bytes
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[bytes, int, Value | None]]


def _header(data: bytes, position: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `position`, inside `end`."""
    if position + 2 > end:
        raise BerError("message truncated")
    tag = data[position]
    if tag & 0x1F == 0x1F:
        raise BerError(f"multi-octet tag at byte {position}: not SNMP")
    size = data[position + 1]
    position += 2
    if size & 0x80:
        octets = size & 0x7F
        if not 1 <= octets <= 4 or position + octets > end:
            raise BerError(f"bad length at byte {position - 1}")
        size = int.from_bytes(data[position : position + octets], "big")
        position += octets
    stop = position + size
    if stop > end:
        raise BerError(f"length past the end of the message at byte {position}")
    return tag, position, stop


def _expect(data: bytes, position: int, end: int, tag: int, what: str) -> tuple[int, int]:
    found, start, stop = _header(data, position, end)
    if found != tag:
        raise BerError(f"expected {what} (tag 0x{tag:02x}), found tag 0x{found:02x}")
    return start, stop


def _int_at(data: bytes, position: int, end: int, what: str) -> tuple[int, int]:
    start, stop = _expect(data, position, end, INTEGER, what)
    return int.from_bytes(data[start:stop], "big", signed=True), stop


def _value(tag: int, content: bytes) -> Value | None:
    if tag in _UNSIGNED:
        # Unsigned types are BER integers with a leading zero octet when the top bit is set;
        # reading them unsigned also forgives agents that leave that octet out.
        return int.from_bytes(content, "big")
    if tag in _SIGNED:
        return int.from_bytes(content, "big", signed=True)
    if tag in _OCTETS:
        return content
    if tag == OBJECT_IDENTIFIER:
        return decode_oid(content)
    return None  # NULL, the three exceptions, and types SNMPv2 does not define


def decode_response(data: bytes) -> Response:
    """Decode an SNMPv2c Response; BerError says what is wrong with anything else."""
    end = len(data)
    start, stop = _expect(data, 0, end, SEQUENCE, "SNMP message")
    version, position = _int_at(data, start, stop, "version")
    if version != SNMP_V2C:
        raise BerError(f"SNMP version field {version}, not v2c")
    start, position = _expect(data, position, stop, OCTET_STRING, "community")
    community = data[start:position]
    start, pdu_end = _expect(data, position, stop, RESPONSE, "Response-PDU")
    request_id, position = _int_at(data, start, pdu_end, "request-id")
    error_status, position = _int_at(data, position, pdu_end, "error-status")
    error_index, position = _int_at(data, position, pdu_end, "error-index")
    position, list_end = _expect(data, position, pdu_end, SEQUENCE, "var-bind list")
    varbinds: list[tuple[bytes, int, Value | None]] = []
    while position < list_end:
        start, position = _expect(data, position, list_end, SEQUENCE, "var-bind")
        name_start, name_end = _expect(data, start, position, OBJECT_IDENTIFIER, "name")
        tag, value_start, value_end = _header(data, name_end, position)
        varbinds.append((data[name_start:name_end], tag, _value(tag, data[value_start:value_end])))
    return Response(community, request_id, error_status, error_index, varbinds)


def v3_message_id(data: bytes) -> int:
    """The msgID of an SNMPv3 message (only its header is read); BerError for anything else."""
    start, stop = _expect(data, 0, len(data), SEQUENCE, "SNMP message")
    version, position = _int_at(data, start, stop, "msgVersion")
    if version != SNMP_V3:
        raise BerError(f"SNMP version field {version}, not v3")
    start, header_end = _expect(data, position, stop, SEQUENCE, "msgGlobalData")
    message_id, _ = _int_at(data, start, header_end, "msgID")
    return message_id
