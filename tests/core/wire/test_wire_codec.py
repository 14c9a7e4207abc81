"""decode_envelope: every payload becomes an Envelope or a Rejection with a fixed reason."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import coalesced_envelopes, envelopes

from fieldmon.core.wire import codec
from fieldmon.core.wire.codec import Rejection, RejectReason, decode_envelope, encode
from fieldmon.core.wire.models import Envelope


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema": 1,
        "site": "pavilion-2",
        "agent": "pavilion-2-pi1",
        "seq": 7,
        "sent_at": 1_700_000_000_000_000_000,
        "samples": [
            {
                "measurement": "link",
                "tags": {"target": "parent-gw", "role": "parent"},
                "fields": {"sent": 10, "received": 10, "loss_pct": 0.0, "up": True},
                "time": 1_700_000_000_000_000_000,
            }
        ],
    }
    document.update(changes)
    return document


def _payload(document: Any) -> bytes:
    return json.dumps(document).encode()


def _reason(payload: bytes, **kwargs: Any) -> RejectReason:
    result = decode_envelope(payload, **kwargs)
    assert isinstance(result, Rejection), f"accepted: {payload[:80]!r}"
    assert result.detail
    return result.reason


def test_valid_envelope() -> None:
    result = decode_envelope(_payload(_document()))
    assert isinstance(result, Envelope)
    assert result.seq == 7
    assert result.samples[0].fields == {"sent": 10, "received": 10, "loss_pct": 0.0, "up": True}


def test_encode_uses_the_wire_name_schema() -> None:
    result = decode_envelope(_payload(_document()))
    assert isinstance(result, Envelope)
    assert json.loads(encode(result))["schema"] == 1
    assert b"schema_" not in encode(result)


def test_oversized_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 1024
    not_even_json = b"\xff" * (limit + 1)
    assert _reason(not_even_json, max_bytes=limit) == RejectReason.OVERSIZED
    # The same junk one byte shorter is parsed (and found not to be JSON): only size decided above.
    assert _reason(not_even_json[:limit], max_bytes=limit) == RejectReason.NOT_JSON

    class _NoParsing:
        @staticmethod
        def model_validate_json(*_args: Any, **_kwargs: Any) -> Envelope:
            raise AssertionError("an oversized payload was parsed")

    monkeypatch.setattr(codec, "Envelope", _NoParsing)
    valid_but_big = _payload(_document(samples=_document()["samples"] * 50))
    assert _reason(valid_but_big, max_bytes=len(valid_but_big) - 1) == RejectReason.OVERSIZED


@given(st.one_of(envelopes, coalesced_envelopes()), st.integers(min_value=0, max_value=9))
def test_a_zlib_payload_decodes_as_the_json_it_holds(envelope: Envelope, level: int) -> None:
    compressed = zlib.compress(encode(envelope), level)
    assert compressed[0] == codec.ZLIB_FIRST_BYTE
    assert decode_envelope(compressed) == envelope
    assert codec.inflate(compressed) == encode(envelope)


def test_a_zlib_payload_is_bounded_by_what_it_inflates_to() -> None:
    document = _payload(_document(samples=_document()["samples"] * 2000))
    bomb = zlib.compress(document, 9)
    assert len(bomb) * 20 < len(document)
    assert isinstance(decode_envelope(bomb, max_bytes=len(document)), Envelope)
    result = decode_envelope(bomb, max_bytes=len(document) - 1)
    assert isinstance(result, Rejection)
    assert result.reason == RejectReason.OVERSIZED
    assert "inflates past the limit" in result.detail
    with pytest.raises(codec.InflatedTooLargeError):
        codec.inflate(bomb, max_bytes=len(document) - 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda stream: stream[:-5],  # cut short
        lambda stream: stream + b"more",  # data after its end
        lambda stream: stream[:2] + bytes(b ^ 0x55 for b in stream[2:]),  # garbled
        lambda stream: b"x",  # the first byte alone
    ],
    ids=["truncated", "trailing", "garbled", "first-byte-only"],
)
def test_a_broken_zlib_stream_is_not_json(damage: Any) -> None:
    broken = damage(zlib.compress(_payload(_document())))
    assert _reason(broken) == RejectReason.NOT_JSON


def test_a_zlib_stream_of_something_else_is_judged_like_that_something() -> None:
    assert _reason(zlib.compress(b"not json")) == RejectReason.NOT_JSON
    assert _reason(zlib.compress(_payload(_document(seq=-1)))) == RejectReason.INVALID


def test_payload_at_the_limit_is_accepted() -> None:
    payload = _payload(_document())
    assert isinstance(decode_envelope(payload, max_bytes=len(payload)), Envelope)


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"{", b'{"site": "pavilion-2",}', b"\x00\x01\x02", b"\xff\xfe{}"],
)
def test_not_json(payload: bytes) -> None:
    assert _reason(payload) == RejectReason.NOT_JSON


def test_invalid_utf8_inside_a_string() -> None:
    payload = _payload(_document()).replace(b"parent-gw", b"parent-\xff\xfe")
    assert _reason(payload) == RejectReason.NOT_JSON


def test_lone_surrogate_escape() -> None:
    payload = _payload(_document()).replace(b"parent-gw", b"parent-\\ud800")
    assert _reason(payload) == RejectReason.NOT_JSON


@pytest.mark.parametrize("document", [[], [1, 2], "envelope", 42, None, True])
def test_json_but_not_an_object(document: Any) -> None:
    assert _reason(_payload(document)) == RejectReason.INVALID


@pytest.mark.parametrize("schema", [2, 0, 99])
def test_other_schema_version(schema: int) -> None:
    # A newer agent's envelope may look nothing like ours; the version alone decides.
    document = {"schema": schema, "whatever": "a future agent sends"}
    assert _reason(_payload(document)) == RejectReason.UNSUPPORTED_SCHEMA
    assert _reason(_payload(_document(schema=schema))) == RejectReason.UNSUPPORTED_SCHEMA


@pytest.mark.parametrize("schema", [True, 1.0, "1", [1], None])
def test_schema_that_is_not_an_integer(schema: Any) -> None:
    assert _reason(_payload(_document(schema=schema))) == RejectReason.INVALID


def test_missing_schema_reads_as_version_1() -> None:
    document = _document()
    del document["schema"]
    assert isinstance(decode_envelope(_payload(document)), Envelope)


@pytest.mark.parametrize("key", ["site", "agent", "seq", "sent_at", "samples"])
def test_missing_field(key: str) -> None:
    document = _document()
    del document[key]
    result = decode_envelope(_payload(document))
    assert isinstance(result, Rejection)
    assert result.reason == RejectReason.INVALID
    assert result.detail.startswith(f"{key}:")


@pytest.mark.parametrize("key", ["measurement", "fields", "time"])
def test_missing_sample_field(key: str) -> None:
    document = _document()
    del document["samples"][0][key]
    assert _reason(_payload(document)) == RejectReason.INVALID


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_floats(literal: bytes) -> None:
    payload = _payload(_document()).replace(b'"loss_pct": 0.0', b'"loss_pct": ' + literal)
    assert literal in payload
    assert _reason(payload) == RejectReason.INVALID


@pytest.mark.parametrize(
    ("literal", "detail"),
    [
        (b"NaN", "samples.0.fields.loss_pct: Input should be a finite number"),
        (b"1e999", "samples.0.fields.loss_pct: Input should be a finite number"),
        (b"null", "samples.0.fields.loss_pct: must be a boolean, a 64-bit integer, a finite"),
        (b"[1]", "samples.0.fields.loss_pct: must be a boolean, a 64-bit integer, a finite"),
        (b"18446744073709551616", "field 'loss_pct' does not fit a 64-bit integer"),
    ],
)
def test_bad_field_value_named_once(literal: bytes, detail: str) -> None:
    # One bad value is one problem, not one per member of the value union.
    payload = _payload(_document()).replace(b'"loss_pct": 0.0', b'"loss_pct": ' + literal)
    result = decode_envelope(payload)
    assert isinstance(result, Rejection)
    assert detail in result.detail
    assert "more)" not in result.detail


@pytest.mark.parametrize(
    "document",
    [
        _document(extra=1),
        _document(schema_=1),
        _document(samples=[{**_document()["samples"][0], "extra": 1}]),
    ],
    ids=["envelope", "python-name-of-schema", "sample"],
)
def test_extra_keys(document: dict[str, Any]) -> None:
    assert _reason(_payload(document)) == RejectReason.INVALID


def test_extra_key_detail_is_bounded() -> None:
    result = decode_envelope(_payload(_document(**{"k" * 100_000: 1})))
    assert isinstance(result, Rejection)
    assert result.reason == RejectReason.INVALID
    assert len(result.detail) <= 300


@pytest.mark.parametrize(
    "changes",
    [
        {"seq": 2**63},
        {"seq": 10**30},
        {"seq": -1},
        {"sent_at": 2**64},
        {"samples": [{**_document()["samples"][0], "fields": {"v": 2**64}}]},
        {"samples": [{**_document()["samples"][0], "time": -1}]},
    ],
    ids=["seq-2^63", "seq-10^30", "seq-negative", "sent_at-2^64", "field-2^64", "time-negative"],
)
def test_numbers_out_of_range(changes: dict[str, Any]) -> None:
    assert _reason(_payload(_document(**changes))) == RejectReason.INVALID


def test_thousands_of_digits() -> None:
    payload = _payload(_document()).replace(b'"seq": 7', b'"seq": 7' + b"0" * 5000)
    assert isinstance(decode_envelope(payload), Rejection)


@pytest.mark.parametrize("opening", [b"[", b'{"a":', b'{"samples":['])
def test_deeply_nested_json(opening: bytes) -> None:
    payload = opening * 200_000
    assert isinstance(decode_envelope(payload, max_bytes=len(payload)), Rejection)


def test_deeply_nested_value_inside_an_envelope() -> None:
    nested: Any = 1
    for _ in range(150):
        nested = [nested]
    document = _document()
    document["samples"][0]["tags"]["target"] = nested
    assert _reason(_payload(document)) == RejectReason.INVALID


def test_reserved_agent_id() -> None:
    assert _reason(_payload(_document(agent="alerts"))) == RejectReason.INVALID


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_bytes(payload: bytes) -> None:
    result = decode_envelope(payload, max_bytes=1000)
    assert isinstance(result, Envelope | Rejection)
    if len(payload) > 1000:
        assert isinstance(result, Rejection) and result.reason == RejectReason.OVERSIZED


_JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["pavilion-2", "link", "alerts", "schema"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "schema",
                    "site",
                    "agent",
                    "seq",
                    "sent_at",
                    "samples",
                    "measurement",
                    "tags",
                    "fields",
                    "time",
                    "x",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(_JSON_LIKE)
def test_fuzz_json_structures(document: Any) -> None:
    result = decode_envelope(json.dumps(document).encode())
    if isinstance(result, Envelope):
        assert decode_envelope(encode(result)) == result
    elif not isinstance(document, dict):
        assert result.reason is RejectReason.INVALID
        assert result.detail.startswith("(document): ")
    elif type(document.get("schema")) is int and document["schema"] != 1:
        assert result.reason is RejectReason.UNSUPPORTED_SCHEMA  # a newer agent, not garbage
    else:
        assert result.reason is RejectReason.INVALID  # JSON, so never not_json


@settings(max_examples=300, deadline=None)
@given(
    envelopes, st.sampled_from(["site", "agent", "seq", "sent_at", "samples", "schema"]), _JSON_LIKE
)
def test_fuzz_one_field_of_a_valid_envelope(envelope: Envelope, key: str, value: Any) -> None:
    document = json.loads(encode(envelope))
    document[key] = value
    result = decode_envelope(json.dumps(document).encode())
    assert isinstance(result, Envelope | Rejection)
    if isinstance(result, Envelope):
        assert decode_envelope(encode(result)) == result
