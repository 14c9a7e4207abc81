"""Hypothesis strategies for wire messages, shared by the wire tests."""

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
