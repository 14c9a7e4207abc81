"""The v2c codec agrees with pyasn1/pysnmp byte for byte and value for value, and fails cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto.api import v2c
from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters

from fieldmon.agent.snmp import ber

arcs = st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=14)
oids = st.builds(
    lambda head, rest: ".".join(map(str, (*head, *rest))),
    st.one_of(
        st.tuples(st.integers(0, 1), st.integers(0, 39)), st.tuples(st.just(2), st.integers(0, 999))
    ),
    arcs,
)


def _oid_key(dotted: str) -> tuple[int, ...]:
    return tuple(int(part) for part in dotted.split("."))


@given(oids)
def test_oid_encoding_matches_pyasn1_and_round_trips(oid: str) -> None:
    expected = encoder.encode(v2c.ObjectIdentifier(oid))
    encoded = ber.encode_oid(oid)
    assert expected.endswith(encoded)
    assert ber.decode_oid(encoded) == oid


@given(oids, oids)
def test_an_oid_prefix_is_exactly_a_byte_prefix(a: str, b: str) -> None:
    # Walks test "still inside this column" on the bytes. (Byte order is NOT OID order:
    # 0x82 0x00 is arc 256, 0x81 0x80 0x80 0x80 0x00 arc 2**28; walks compare decoded arcs.)
    ea, eb = ber.encode_oid(a), ber.encode_oid(b)
    assert eb.startswith(ea) == (_oid_key(b)[: len(_oid_key(a))] == _oid_key(a))
    if eb.startswith(ea):
        assert tuple(ber.decode_arcs(eb[len(ea) :])) == _oid_key(b)[len(_oid_key(a)) :]


@pytest.mark.parametrize("bad", ["", "1", "a.b", "3.1", "1.40", "1.3.-6"])
def test_bad_oids_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad)):
        ber.encode_oid(bad)


@given(
    request_id=st.integers(0, 2**31 - 1),
    repetitions=st.integers(0, 2**31 - 1),
    names=st.lists(oids, min_size=1, max_size=20),
)
def test_getbulk_request_matches_pysnmp(
    request_id: int, repetitions: int, names: list[str]
) -> None:
    pdu = v2c.GetBulkRequestPDU()
    v2c.apiBulkPDU.set_defaults(pdu)
    v2c.apiBulkPDU.set_request_id(pdu, request_id)
    v2c.apiBulkPDU.set_non_repeaters(pdu, 0)
    v2c.apiBulkPDU.set_max_repetitions(pdu, repetitions)
    v2c.apiBulkPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(name), v2c.null) for name in names])
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, b"public-\xff")
    v2c.apiMessage.set_pdu(message, pdu)
    ours = ber.encode_request(
        b"public-\xff",
        request_id,
        ber.Pdu(ber.GET_BULK_REQUEST, 0, repetitions, [ber.encode_oid(name) for name in names]),
    )
    assert ours == encoder.encode(message)
    # And pysnmp reads ours back as the same request.
    decoded, rest = decoder.decode(ours, asn1Spec=v2c.Message())
    assert not rest
    assert int(v2c.apiBulkPDU.get_request_id(v2c.apiMessage.get_pdu(decoded))) == request_id


VALUES = [
    (v2c.Integer(-5), ber.INTEGER, -5),
    (v2c.Integer(2**31 - 1), ber.INTEGER, 2**31 - 1),
    (v2c.Integer(-(2**31)), ber.INTEGER, -(2**31)),
    (v2c.OctetString(b"wlan0\x00\xff"), ber.OCTET_STRING, b"wlan0\x00\xff"),
    (v2c.OctetString(b"x" * 300), ber.OCTET_STRING, b"x" * 300),  # long-form length
    (v2c.IpAddress("198.18.0.1"), ber.IP_ADDRESS, bytes([198, 18, 0, 1])),
    (v2c.Counter32(2**32 - 1), ber.COUNTER32, 2**32 - 1),  # needs the leading zero octet
    (v2c.Gauge32(10_000), ber.GAUGE32, 10_000),
    (v2c.TimeTicks(2**31 + 7), ber.TIME_TICKS, 2**31 + 7),
    (v2c.Counter64(2**64 - 1), ber.COUNTER64, 2**64 - 1),
    (v2c.Counter64(0), ber.COUNTER64, 0),
    (v2c.ObjectIdentifier("1.3.6.1.4.1.41112"), ber.OBJECT_IDENTIFIER, "1.3.6.1.4.1.41112"),
    (v2c.Opaque(b"\x9f\x78\x04"), ber.OPAQUE, b"\x9f\x78\x04"),
    (v2c.null, ber.NULL, None),
    (v2c.NoSuchObject(""), ber.NO_SUCH_OBJECT, None),
    (v2c.NoSuchInstance(""), ber.NO_SUCH_INSTANCE, None),
    (v2c.EndOfMibView(""), ber.END_OF_MIB_VIEW, None),
]


def _response(
    varbinds: list[tuple[str, object]], *, request_id: int = 77, status: int = 0, index: int = 0
) -> bytes:
    pdu = v2c.ResponsePDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_request_id(pdu, request_id)
    v2c.apiPDU.set_error_status(pdu, status)
    v2c.apiPDU.set_error_index(pdu, index)
    v2c.apiPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(name), value) for name, value in varbinds])
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, b"fieldmon")
    v2c.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


def test_response_values_of_every_type_decode_like_pysnmp() -> None:
    names = [f"1.3.6.1.2.1.2.2.1.{n}.1" for n in range(len(VALUES))]
    message = _response(
        [(name, value) for name, (value, _tag, _python) in zip(names, VALUES, strict=True)]
    )
    response = ber.decode_response(message)
    assert (response.community, response.request_id, response.error_status) == (
        b"fieldmon",
        77,
        0,
    )
    assert [(ber.decode_oid(name), tag, value) for name, tag, value in response.varbinds] == [
        (name, tag, python) for name, (_value, tag, python) in zip(names, VALUES, strict=True)
    ]


def test_error_status_and_index_are_read_and_named() -> None:
    response = ber.decode_response(_response([("1.3.6.1.2.1.1.3.0", v2c.null)], status=5, index=1))
    assert (response.error_status, response.error_index) == (5, 1)
    assert ber.error_status_name(response.error_status) == "genErr"
    assert ber.error_status_name(99) == "error 99"


def test_every_truncation_of_a_response_is_a_ber_error() -> None:
    counters = [(f"1.3.6.1.2.1.31.1.1.1.6.{i}", v2c.Counter64(2**40 + i)) for i in range(5)]
    message = _response(counters)
    for size in range(len(message)):
        with pytest.raises(ber.BerError):
            ber.decode_response(message[:size])


def test_requests_and_other_versions_are_not_responses() -> None:
    request = ber.encode_request(b"c", 1, ber.Pdu(ber.GET_REQUEST, 0, 0, [ber.encode_oid("1.3")]))
    with pytest.raises(ber.BerError, match="Response-PDU"):
        ber.decode_response(request)
    v1 = bytearray(_response([("1.3.6.1.2.1.1.3.0", v2c.null)]))
    v1[4] = 0  # the version INTEGER's value octet: SNMPv1
    with pytest.raises(ber.BerError, match="version"):
        ber.decode_response(bytes(v1))


@given(st.binary(max_size=200))
def test_garbage_raises_only_ber_error(data: bytes) -> None:
    # Any other exception escapes and fails the test.
    try:
        response = ber.decode_response(data)
    except ber.BerError as exc:
        assert str(exc), "a BerError says what is wrong"
    else:
        # Garbage that happens to decode: what came out was in the bytes.
        assert response.community in data
        assert all(name in data for name, _tag, _value in response.varbinds)


@given(st.integers(0, 2**31 - 1))
def test_v3_discovery_request_is_what_pysnmp_reads_as_one(message_id: int) -> None:
    message = ber.encode_v3_discovery(message_id)
    decoded, rest = decoder.decode(message, asn1Spec=SNMPv3Message())
    assert rest == b""
    header = decoded["msgGlobalData"]
    assert (int(decoded["msgVersion"]), int(header["msgID"])) == (3, message_id)
    assert (bytes(header["msgFlags"]), int(header["msgSecurityModel"])) == (b"\x04", 3)
    security, _ = decoder.decode(
        bytes(decoded["msgSecurityParameters"]), asn1Spec=UsmSecurityParameters()
    )
    assert bytes(security["msgAuthoritativeEngineId"]) == b""
    assert bytes(security["msgUserName"]) == b""
    pdu = decoded["msgData"]["plaintext"]["data"]["get-request"]
    assert int(pdu["request-id"]) == message_id
    assert len(pdu["variable-bindings"]) == 0
    assert ber.v3_message_id(message) == message_id


def test_v3_message_id_refuses_a_v2c_message() -> None:
    request = ber.encode_request(b"c", 1, ber.Pdu(ber.GET_REQUEST, 0, 0, [ber.encode_oid("1.3")]))
    with pytest.raises(ber.BerError, match="not v3"):
        ber.v3_message_id(request)
