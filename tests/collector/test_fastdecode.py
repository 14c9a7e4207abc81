"""The collector's envelope decoder answers exactly as wire.codec's, only faster for good envelopes.

Whatever the fast path (msgspec) accepts must be the Envelope pydantic validates, field sets
included; whatever it passes on is judged by wire.codec, so every rejection keeps its reason and
words. Each test compares the two decoders on the same bytes.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import FIELD_VALUES, IDS, TIMESTAMPS, coalesced_envelopes, envelopes

from fieldmon.collector.fastdecode import decode_envelope, fast_envelope
from fieldmon.core.wire import codec
from fieldmon.core.wire.models import AGENT_MEASUREMENTS, Envelope, Sample

# Samples as agents send them: the fast path's own ground (other measurements go to pydantic).
agent_samples = st.builds(
    Sample,
    measurement=st.sampled_from(sorted(AGENT_MEASUREMENTS)),
    tags=st.dictionaries(
        st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=40), max_size=8
    ),
    fields=st.dictionaries(st.text(min_size=1, max_size=20), FIELD_VALUES, min_size=1, max_size=6),
    time=TIMESTAMPS,
)
agent_envelopes = st.builds(
    Envelope,
    site=IDS,
    agent=IDS,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    sent_at=TIMESTAMPS,
    samples=st.lists(agent_samples, max_size=5),
)


def _assert_same(payload: bytes) -> Envelope | codec.Rejection:
    """Both decoders' answer, asserted equal (an Envelope's field set too)."""
    fast, reference = decode_envelope(payload), codec.decode_envelope(payload)
    assert fast == reference
    if isinstance(fast, Envelope):
        assert isinstance(reference, Envelope)
        assert fast.model_fields_set == reference.model_fields_set
        assert [type(s) for s in fast.samples] == [Sample] * len(fast.samples)
        for mine, theirs in zip(fast.samples, reference.samples, strict=True):
            assert list(mine.fields.items()) == list(theirs.fields.items())  # order, types
            assert [type(v) for v in mine.fields.values()] == [
                type(v) for v in theirs.fields.values()
            ]
    return fast


@settings(max_examples=300, deadline=None)
@given(agent_envelopes)
def test_an_agents_envelope_takes_the_fast_path_to_the_same_envelope(envelope: Envelope) -> None:
    payload = codec.encode(envelope)
    assert fast_envelope(payload) is not None
    assert _assert_same(payload) == envelope


@settings(max_examples=200, deadline=None)
@given(st.one_of(envelopes, coalesced_envelopes()))
def test_any_valid_envelope_decodes_the_same(envelope: Envelope) -> None:
    payload = codec.encode(envelope)
    assert _assert_same(payload) == envelope
    assert _assert_same(zlib.compress(payload)) == envelope


def test_a_coalesced_envelope_takes_the_fast_path() -> None:
    sample = Sample(measurement="link", tags={"target": "a"}, fields={"loss_pct": 0.0}, time=1)
    envelope = Envelope(
        site="s", agent="a", seq=4, sent_at=1, parts=[(4, 1), (6, 0), (9, 2)], samples=[sample] * 3
    )
    payload = codec.encode(envelope)
    assert fast_envelope(payload) == envelope
    assert _assert_same(payload) == envelope


def _document(**changes: Any) -> dict[str, Any]:
    sample = {"measurement": "link", "tags": {"target": "a"}, "fields": {"x": 1.5}, "time": 1}
    document: dict[str, Any] = {
        "schema": 1,
        "site": "s",
        "agent": "a",
        "seq": 1,
        "sent_at": 2,
        "samples": [sample],
    }
    for key, value in changes.items():
        if key.startswith("sample_"):
            sample[key.removeprefix("sample_")] = value
        else:
            document[key] = value
    return document


# Each is something the two libraries could read differently; the answers must not differ.
EDGES = [
    _document(sample_measurement="link\n"),
    _document(sample_measurement="other"),
    _document(sample_measurement="Link"),
    _document(site="s\n"),
    _document(site="alerts"),
    _document(agent="alerts"),
    _document(site=""),
    _document(site="x" * 65),
    _document(schema=True),
    _document(schema=1.0),
    _document(schema=2),
    _document(seq=-1),
    _document(seq=2**63),
    _document(seq=2**63 - 1),
    _document(seq=1.0),
    _document(seq="1"),
    _document(sent_at=True),
    _document(sample_time=2**63 - 1),
    _document(sample_time=2**63),
    _document(sample_time=1.5),
    _document(sample_fields={}),
    _document(sample_fields={"x": 2**63}),
    _document(sample_fields={"x": -(2**63)}),
    _document(sample_fields={"x": 2**63 - 1, "y": -(2**63) - 1}),
    _document(sample_fields={"x": None}),
    _document(sample_fields={"x": [1]}),
    _document(sample_fields={"x": "y" * 4096}),
    _document(sample_fields={"x": "y" * 4097}),
    _document(sample_fields={"x": "é" * 4096}),
    _document(sample_fields={"": 1}),
    _document(sample_fields={"k" * 128: 1}),
    _document(sample_fields={"k" * 129: 1}),
    _document(sample_fields={f"f{i}": i for i in range(64)}),
    _document(sample_fields={f"f{i}": i for i in range(65)}),
    _document(sample_fields={"t": True, "f": False, "i": 0, "z": -0.0, "s": ""}),
    _document(sample_tags={"k": ""}),
    _document(sample_tags={"": "v"}),
    _document(sample_tags={"k": "v" * 256}),
    _document(sample_tags={"k": "v" * 257}),
    _document(sample_tags={f"t{i}": "v" for i in range(16)}),
    _document(sample_tags={f"t{i}": "v" for i in range(17)}),
    _document(sample_tags={"k": 1}),
    _document(sample_tags=None),
    _document(sample_extra=1),
    _document(extra=1),
    _document(parts=None),
    _document(parts=[]),
    _document(parts=[[1, 1]]),
    _document(parts=[[1, 0], [2, 1]]),
    _document(parts=[[2, 1]]),
    _document(parts=[[1, 1], [1, 0]]),
    _document(parts=[[1, 2]]),
    _document(parts=[[1, -1], [2, 2]]),
    _document(parts=[[1, 1, 1]]),
    _document(samples=[]),
    _document(samples={}),
]


@pytest.mark.parametrize("document", EDGES)
def test_edge_cases_are_answered_alike(document: dict[str, Any]) -> None:
    _assert_same(json.dumps(document).encode())


@pytest.mark.parametrize(
    "payload",
    [
        b'{"schema":1,"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[],"seq":3}',
        b'{"schema":1,"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[{"measurement":"link",'
        b'"fields":{"x":1,"x":2.5},"tags":{"k":"a","k":"b"},"time":1}]}',
        b'{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[{"measurement":"link",'
        b'"fields":{"x":"\\ud800"},"time":1}]}',
        b'{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[{"measurement":"link",'
        b'"fields":{"x":1e400},"time":1}]}',
        b'{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[{"measurement":"link",'
        b'"fields":{"x":NaN},"time":1}]}',
        b'{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[{"measurement":"link",'
        b'"fields":{"x":1E2,"y":-0,"z":0.1e-3},"time":1}]}',
        b'\xef\xbb\xbf{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[]}',
        b' {"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[]} ',
        b'{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[]}x',
        b'{"site":"s","agent":"a","seq":1,"sent_at":2,"samples":[{"measurement":"link",'
        b'"fields":{"x":"\xff"},"time":1}]}',
        b"[]",
        b"not json",
        b"",
    ],
)
def test_json_the_libraries_might_read_differently_is_answered_alike(payload: bytes) -> None:
    _assert_same(payload)


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["link", "alerts", "s", "", "a\n", "x" * 130]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.sampled_from(["x", ""]), children, max_size=3)
    ),
    max_leaves=10,
)
_KEYS = [
    "schema",
    "site",
    "agent",
    "seq",
    "sent_at",
    "samples",
    "parts",
    "sample_measurement",
    "sample_tags",
    "sample_fields",
    "sample_time",
    "sample_other",
]


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=3))
def test_fuzz_changed_envelopes_are_answered_alike(changes: dict[str, Any]) -> None:
    _assert_same(json.dumps(_document(**changes)).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_are_answered_alike(payload: bytes) -> None:
    _assert_same(payload)
