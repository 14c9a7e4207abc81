"""Wire message models: JSON round trips, and the rules the collector relies on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from wire_strategies import coalesced_envelopes, envelopes, samples, statuses

from fieldmon.core.wire.codec import decode_envelope, encode
from fieldmon.core.wire.models import (
    MAX_PARTS,
    SCHEMA_VERSION,
    AckMessage,
    Envelope,
    Sample,
    StatusMessage,
)

_SAMPLE = TypeAdapter(Sample)


def _sample(**fields: object) -> dict[str, object]:
    return {"measurement": "link", "tags": {"target": "parent"}, "fields": fields, "time": 1}


@given(envelopes)
def test_envelope_round_trip(envelope: Envelope) -> None:
    payload = encode(envelope)
    document = json.loads(payload)
    assert document["schema"] == SCHEMA_VERSION
    assert "schema_" not in document
    decoded = decode_envelope(payload)
    assert decoded == envelope
    assert encode(decoded) == payload  # same bytes: true stays true, 1 stays 1, 1.0 stays 1.0


@given(envelopes)
def test_a_plain_envelope_has_no_parts_and_stands_for_its_own_seq(envelope: Envelope) -> None:
    assert b'"parts"' not in encode(envelope)
    assert envelope.carried_seqs() == [envelope.seq]


@given(coalesced_envelopes())
def test_coalesced_envelope_round_trip(envelope: Envelope) -> None:
    payload = encode(envelope)
    assert decode_envelope(payload) == envelope
    assert encode(decode_envelope(payload)) == payload  # type: ignore[arg-type]
    assert envelope.parts is not None
    assert envelope.carried_seqs() == [seq for seq, _ in envelope.parts]
    assert envelope.carried_seqs()[0] == envelope.seq
    # The parts come before the samples: a header, then every part's samples spliced together.
    assert payload.index(b'"parts"') < payload.index(b'"samples"')


def _coalesced(**changes: object) -> dict[str, object]:
    sample = _sample(v=1)
    document: dict[str, object] = {
        "site": "s",
        "agent": "a",
        "seq": 10,
        "sent_at": 0,
        "parts": [[10, 2], [12, 0], [13, 1]],
        "samples": [sample, sample, sample],
    }
    return document | changes


def test_parts_may_skip_seqs_and_carry_no_samples() -> None:
    envelope = Envelope.model_validate(_coalesced())
    assert envelope.carried_seqs() == [10, 12, 13]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seq": 11}, "first part's seq 10 is not seq 11"),
        ({"parts": [[10, 2], [10, 1]]}, "seq 10 does not follow 10"),
        ({"parts": [[10, 2], [13, 1], [12, 0]]}, "seq 12 does not follow 13"),
        ({"parts": [[10, 2], [12, 0], [13, 2]]}, "they count 4 samples, the envelope has 3"),
        ({"parts": [[10, 3], [12, -1], [13, 1]]}, "greater than or equal to 0"),
        ({"parts": []}, "at least 1 item"),
        ({"parts": [[10, 3, 1]]}, "at most 2 items"),
        ({"parts": [[2**63, 3]], "seq": 2**63}, "less than 9223372036854775808"),
    ],
    ids=["seq-not-first", "repeated", "descending", "count-mismatch", "negative-count", "empty",
         "three-numbers", "over-int64"],
)  # fmt: skip
def test_parts_that_do_not_add_up_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Envelope.model_validate(_coalesced(**changes))


def test_parts_are_bounded_whatever_an_agent_claims() -> None:
    # The collector's work per message (seq accounting, acks) stays bounded.
    parts = [[seq, 0] for seq in range(MAX_PARTS + 1)]
    with pytest.raises(ValidationError, match=f"at most {MAX_PARTS} items"):
        Envelope.model_validate(_coalesced(seq=0, parts=parts, samples=[]))
    assert len(Envelope.model_validate(_coalesced(seq=0, parts=parts[:-1], samples=[])).parts or [])


@given(samples)
def test_sample_keeps_field_types(sample: Sample) -> None:
    decoded = _SAMPLE.validate_json(encode(sample))
    assert decoded == sample
    assert {key: type(value) for key, value in decoded.fields.items()} == {
        key: type(value) for key, value in sample.fields.items()
    }


@given(statuses)
def test_status_round_trip(status: StatusMessage) -> None:
    assert StatusMessage.model_validate_json(encode(status)) == status


@given(st.sets(st.integers(min_value=0, max_value=2**63 - 1), max_size=50))
def test_ack_from_seqs_names_exactly_those_seqs(seqs: set[int]) -> None:
    ack = AckMessage.from_seqs(seqs)
    assert ack.seqs() == seqs
    assert AckMessage.model_validate_json(encode(ack)) == ack
    # The fewest ranges: sorted, and never touching (touching ranges would have been merged).
    for (_, last), (first, _) in zip(ack.ranges, ack.ranges[1:], strict=False):
        assert first > last + 1
    for seq in seqs:
        assert ack.covers(seq)


@given(st.lists(st.integers(min_value=0, max_value=500), max_size=60), st.integers(0, 500))
def test_ack_covers_matches_seqs(seqs: list[int], probe: int) -> None:
    ack = AckMessage.from_seqs(seqs)
    assert ack.covers(probe) == (probe in set(seqs))


def test_ack_of_consecutive_seqs_is_one_range() -> None:
    assert AckMessage.from_seqs([5, 3, 4, 4, 9]).ranges == [(3, 5), (9, 9)]
    assert AckMessage.from_seqs([]).ranges == []


def test_ack_covers_a_huge_range_cheaply() -> None:
    ack = AckMessage(ranges=[(0, 2**62)])
    assert ack.covers(2**61)
    assert not ack.covers(2**62 + 1)


@pytest.mark.parametrize(
    "ranges",
    [[(5, 3)], [(-1, 3)], [(0, 2**63)], [(1, 2, 3)]],
    ids=["reversed", "negative", "over-int64", "three-numbers"],
)
def test_ack_rejects(ranges: list[tuple[int, ...]]) -> None:
    with pytest.raises(ValidationError):
        AckMessage.model_validate({"ranges": ranges})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"v": 2**63},
        {"v": -(2**63) - 1},
        {"v": float("nan")},
        {"v": float("inf")},
        {"v": None},
        {"v": [1]},
        {"": 1},
    ],
    ids=["empty", "int-too-big", "int-too-small", "nan", "inf", "null", "list", "empty-key"],
)
def test_sample_rejects_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _SAMPLE.validate_python(_sample(**fields) | {"fields": fields})


def test_sample_accepts_int64_bounds() -> None:
    sample = _SAMPLE.validate_python(_sample(low=-(2**63), high=2**63 - 1))
    assert sample.fields == {"low": -(2**63), "high": 2**63 - 1}


@pytest.mark.parametrize("name", ["site", "agent"])
@pytest.mark.parametrize("value", ["alerts", "Pavilion-2", "a/b", "+", "", "a" * 65])
def test_envelope_rejects_ids(name: str, value: str) -> None:
    document = {"site": "s", "agent": "a", "seq": 0, "sent_at": 0, "samples": []}
    with pytest.raises(ValidationError):
        Envelope.model_validate(document | {name: value})


def test_status_rejects_unknown_state() -> None:
    with pytest.raises(ValidationError):
        StatusMessage.model_validate({"state": "sleeping", "site": "s", "agent": "a"})


@pytest.mark.parametrize(
    ("time", "ok"), [(0, True), (2**63 - 1, True), (-1, False), (2**63, False)]
)
def test_sample_time_is_any_non_negative_64_bit_nanosecond_count(time: int, ok: bool) -> None:
    # No storage backend's limit here: the collector judges a time against its own clock.
    document = {**_sample(v=1), "time": time}
    if ok:
        assert _SAMPLE.validate_python(document).time == time
    else:
        with pytest.raises(ValidationError, match="time"):
            _SAMPLE.validate_python(document)
