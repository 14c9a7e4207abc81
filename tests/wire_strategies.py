"""Hypothesis strategies for wire messages, shared by the wire and collector tests."""

from __future__ import annotations

from hypothesis import strategies as st

from fieldmon.core.wire.models import Envelope, Sample, StatusMessage

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# The newest instant InfluxDB stores (and the wire model accepts) is 2**63 - 2.
TIMESTAMPS = st.integers(min_value=0, max_value=2**63 - 1)
IDS = st.from_regex(r"[a-z0-9-]{1,24}", fullmatch=True).filter(lambda value: value != "alerts")
FIELD_VALUES = st.one_of(
    st.booleans(), INT64, st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40)
)

samples = st.builds(
    Sample,
    measurement=st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True),
    tags=st.dictionaries(
        st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=40), max_size=8
    ),
    fields=st.dictionaries(st.text(min_size=1, max_size=20), FIELD_VALUES, min_size=1, max_size=6),
    time=TIMESTAMPS,
)

envelopes = st.builds(
    Envelope,
    site=IDS,
    agent=IDS,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    sent_at=TIMESTAMPS,
    samples=st.lists(samples, max_size=5),
)

statuses = st.builds(
    StatusMessage,
    state=st.sampled_from(["online", "offline"]),
    site=IDS,
    agent=IDS,
    at=st.none() | TIMESTAMPS,
    version=st.none() | st.text(max_size=10),
    reason=st.none() | st.text(max_size=30),
)


@st.composite
def coalesced_envelopes(draw: st.DrawFn) -> Envelope:
    """Envelopes carrying parts: ascending seqs, each with its share of the samples."""
    counts = draw(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=6))
    first = draw(st.integers(min_value=0, max_value=2**62))
    steps = draw(st.lists(st.integers(1, 5), min_size=len(counts), max_size=len(counts)))
    seqs = [first + sum(steps[:index]) for index in range(len(counts))]
    return Envelope(
        site=draw(IDS),
        agent=draw(IDS),
        seq=seqs[0],
        sent_at=draw(TIMESTAMPS),
        parts=list(zip(seqs, counts, strict=True)),
        samples=draw(st.lists(samples, min_size=sum(counts), max_size=sum(counts))),
    )
