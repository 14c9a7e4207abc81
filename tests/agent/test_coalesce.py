"""Joined backlog envelopes: byte for byte the Envelope they stand for, every seq kept."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldmon.agent.coalesce import build, join, samples_text
from fieldmon.agent.outbox import Outbox, StoredEnvelope
from fieldmon.core.wire.codec import decode_envelope, encode
from fieldmon.core.wire.models import Envelope, Sample

SITE, AGENT = "pavilion-2", "pavilion-2-pi1"
# Rows with any tag and field text and every field type (escapes, unicode, big integers).
samples = st.builds(
    Sample,
    measurement=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    tags=st.dictionaries(
        st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=12), max_size=6
    ),
    fields=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=12),
        ),
        min_size=1,
        max_size=4,
    ),
    time=st.integers(0, 2**63 - 1),
)


def _stored(seq: int, rows: list[Sample]) -> StoredEnvelope:
    envelope = Envelope(site=SITE, agent=AGENT, seq=seq, sent_at=seq + 1, samples=rows)
    return StoredEnvelope(seq, encode(envelope), 1, len(rows))


@given(
    st.lists(st.lists(samples, max_size=4), min_size=1, max_size=8),
    st.lists(st.integers(1, 1000), min_size=8, max_size=8),
    st.integers(0, 2**62),
)
def test_joined_is_byte_for_byte_the_envelope_with_parts(
    batches: list[list[Sample]], steps: list[int], first: int
) -> None:
    seqs = [first + sum(steps[:index]) for index in range(len(batches))]
    stored = [_stored(seq, rows) for seq, rows in zip(seqs, batches, strict=False)]
    joined = join(stored, site=SITE, agent=AGENT, sent_at=123)
    expected = Envelope(
        site=SITE,
        agent=AGENT,
        seq=seqs[0],
        sent_at=123,
        parts=[(seq, len(rows)) for seq, rows in zip(seqs, batches, strict=False)],
        samples=[row for rows in batches for row in rows],
    )
    assert joined == encode(expected)
    decoded = decode_envelope(joined)
    assert isinstance(decoded, Envelope)
    assert decoded.carried_seqs() == seqs


def test_a_day_of_outbox_envelopes_joins_without_being_decoded(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site=SITE, agent=AGENT)
    rows = [
        Sample(measurement="link", tags={"target": f"t{i}"}, fields={"rtt_ms": i / 7}, time=i)
        for i in range(30)
    ]
    for start in range(0, 30, 3):
        outbox.append(rows[start : start + 3])
    outbox.append([])  # an envelope of no samples still has its seq carried
    taken = outbox.take_backlog(live_from=100, max_envelopes=100, max_bytes=10**6)
    message = build(taken, site=SITE, agent=AGENT, parts=True, compress=True)
    assert message.payload[0] == 0x78
    assert message.seqs == list(range(11))
    assert message.stored_bytes == sum(len(e.payload) for e in taken)
    assert message.raw_bytes == len(zlib.decompress(message.payload))
    decoded = decode_envelope(message.payload)
    assert isinstance(decoded, Envelope)
    assert decoded.samples == rows
    assert decoded.parts == [(seq, 3) for seq in range(10)] + [(10, 0)]


def test_one_envelope_travels_as_stored_and_several_need_a_collector_that_reads_parts() -> None:
    one = _stored(5, [Sample(measurement="link", fields={"up": True}, time=1)])
    plain = build([one], site=SITE, agent=AGENT, parts=False, compress=False)
    assert (plain.payload, plain.seqs, plain.raw_bytes) == (one.payload, [5], len(one.payload))
    packed = build([one], site=SITE, agent=AGENT, parts=True, compress=True)
    assert zlib.decompress(packed.payload) == one.payload
    with pytest.raises(ValueError, match="reads no parts"):
        build([one, _stored(6, [])], site=SITE, agent=AGENT, parts=False, compress=False)


@pytest.mark.parametrize("payload", [b"", b"{}", b'{"samples":[1]', b'{"seq":1,"samples":{}}'])
def test_a_payload_that_is_not_an_encoded_envelope_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not an encoded Envelope"):
        samples_text(payload)
