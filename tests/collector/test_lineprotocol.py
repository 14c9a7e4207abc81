"""Line protocol from Samples: exact lines, Point's escaping, and a round trip through influxd."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from fieldmon.collector.storage.lineprotocol import LineEncoder, encode_sample, encode_samples
from fieldmon.core.wire.models import Sample
from fieldmon.lab.servers import InfluxdServer

LINK = Sample(
    measurement="link",
    tags={"target": "parent-gw", "site": "pavilion-2", "role": "parent", "agent": "pavilion-2-pi1"},
    fields={
        "sent": 10,
        "received": 9,
        "loss_pct": 10.0,
        "rtt_min_ms": 12.5,
        "rtt_avg_ms": 14.125,
        "rtt_p50_ms": 13.9,
        "rtt_p95_ms": 21.0,
        "rtt_max_ms": 22.75,
        "jitter_ms": 1.3,
        "mos": 4.38,
    },
    time=1_700_000_000_123_456_789,
)


def test_a_link_row() -> None:
    assert encode_sample(LINK) == (
        "link,agent=pavilion-2-pi1,role=parent,site=pavilion-2,target=parent-gw "
        "sent=10i,received=9i,loss_pct=10.0,rtt_min_ms=12.5,rtt_avg_ms=14.125,rtt_p50_ms=13.9,"
        "rtt_p95_ms=21.0,rtt_max_ms=22.75,jitter_ms=1.3,mos=4.38 1700000000123456789"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0i"),
        (-9223372036854775808, "-9223372036854775808i"),
        (2.0, "2.0"),  # integral floats stay floats
        (-0.0, "-0.0"),
        (0.1, "0.1"),
        (1e-7, "1e-07"),
        (1.5e300, "1.5e+300"),
        (0.30000000000000004, "0.30000000000000004"),
        ("", '""'),
        ('say "hi" \\o/', r'"say \"hi\" \\o/"'),
        ("two\nlines", r'"two\nlines"'),
    ],
)
def test_field_values(value: bool | int | float | str, text: str) -> None:
    sample = Sample(measurement="m", fields={"f": value}, time=1)
    assert encode_sample(sample) == f"m f={text} 1"


@pytest.mark.parametrize(
    ("tags", "head"),
    [
        ({"b": "2", "a": "1"}, "m,a=1,b=2"),
        ({"with space": "a,b=c"}, r"m,with\ space=a\,b\=c"),
        ({"k": "line\nbreak\r\ttab"}, r"m,k=line\nbreak\r\ttab"),
        ({"k": r"C:\temp"}, r"m,k=C:\temp"),
        # A backslash InfluxDB would pair with our escape or with the delimiter after the token
        # becomes U+FF3C (see the module docs); an even run before an escape is carried as is.
        ({"k": "ends\\"}, "m,k=ends\uff3c"),
        ({"k": "a\\,b"}, "m,k=a\uff3c\\,b"),
        ({"k": "a\\\\\\,b"}, "m,k=a\\\\\uff3c\\,b"),
        ({"k": "a\\\\,b"}, "m,k=a\\\\\\,b"),
        ({"k": "ends\\\\"}, "m,k=ends\\\uff3c"),
        ({"k=": "é ü 漢字"}, "m,k\\==é\\ ü\\ 漢字"),
    ],
)
def test_tag_escaping(tags: dict[str, str], head: str) -> None:
    sample = Sample(measurement="m", tags=tags, fields={"f": 1}, time=5)
    assert encode_sample(sample) == f"{head} f=1i 5"


def test_field_key_escaping() -> None:
    sample = Sample(measurement="m", fields={"a b,c=d": 1.5}, time=5)
    assert encode_sample(sample) == r"m a\ b\,c\=d=1.5 5"


def test_samples_make_one_line_each() -> None:
    other = dataclasses.replace(LINK, time=LINK.time + 1)
    body = encode_samples([LINK, other])
    assert body.decode().split("\n") == [encode_sample(LINK), encode_sample(other)]
    assert encode_samples([]) == b""


def _point_line(sample: Sample) -> str:
    point = Point(sample.measurement)
    for key, value in sample.tags.items():
        point.tag(key, value)
    for key, value in sample.fields.items():
        point.field(key, value)
    point.time(sample.time, WritePrecision.NS)
    return str(point.to_line_protocol())


# Characters the protocol treats specially, mixed into arbitrary unicode (no lone surrogates:
# a Sample cannot hold them) so hypothesis hits them often.
_SPECIAL = st.sampled_from(
    [",", "=", " ", '"', "\\", "\\\\", "\\\\\\", "\n", "\r", "\t", "\x00", "é", "\u2028"]
)
_PIECES = st.one_of(st.characters(codec="utf-8"), _SPECIAL)
_TEXT = st.lists(_PIECES, min_size=1, max_size=12).map("".join)
_FIELD_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(_PIECES, max_size=20).map("".join),
)
# Backslashes line protocol cannot carry (the last of an odd run before a character we escape,
# or the last of a token): the encoder writes them as U+FF3C (documented difference).
_LOST_BACKSLASH = re.compile(r"(?<!\\)((?:\\\\)*)\\(?=[,= ])|\\\Z")


# InfluxDB's newest timestamp is 2**63 - 2 (the wire allows 2**63 - 1, but the collector
# refuses any time more than max_time_ahead past its clock long before either).
INFLUX_MAX_TIME = 2**63 - 2


def _samples(
    text: st.SearchStrategy[str] = _TEXT,
    max_time: int = INFLUX_MAX_TIME,
    field_keys: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[Sample]:
    return st.builds(
        Sample,
        measurement=st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z"),
        tags=st.dictionaries(text, text, max_size=4),
        fields=st.dictionaries(
            text if field_keys is None else field_keys, _FIELD_VALUES, min_size=1, max_size=4
        ),
        time=st.integers(min_value=0, max_value=max_time),
    )


def _point_is_well_formed(sample: Sample) -> bool:
    keys = [*sample.tags, *sample.tags.values(), *sample.fields]
    return not any(_LOST_BACKSLASH.search(key) for key in keys)


def _integral_float(value: object) -> bool:
    return isinstance(value, float) and repr(value).endswith(".0")


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_samples())
def test_same_bytes_as_influxdb_client_point(sample: Sample) -> None:
    assume(_point_is_well_formed(sample))
    # Point writes 2.0 as `2`; we keep `2.0` (both are floats to InfluxDB; tested above).
    assume(not any(_integral_float(v) for v in sample.fields.values()))
    # Documented difference 2: a newline in a string value stays on one line here.
    assume(not any(isinstance(v, str) and "\n" in v for v in sample.fields.values()))
    # Point sorts fields; we keep the sample's order, so hand both the same (sorted) order.
    ordered = dataclasses.replace(sample, fields=dict(sorted(sample.fields.items())))
    assert encode_sample(ordered) == _point_line(ordered)


@settings(max_examples=500)
@given(_samples())
def test_every_sample_is_exactly_one_line(sample: Sample) -> None:
    line = encode_sample(sample)
    assert "\n" not in line
    assert line.endswith(f" {sample.time}")


def _stored_as(text: str) -> str:
    """What influxd gives back for a tag key, tag value or field key we sent."""
    text = _LOST_BACKSLASH.sub("\\1\uff3c", text)
    return text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


_measurements = (f"m{n}" for n in itertools.count())
# influxd drops the key `time`, and a tag key equal to a field key makes an ambiguous row.
_ROUND_TRIP_TEXT = _TEXT.filter(lambda text: text != "time")
# influxd 1.x also unescapes `\"` in field keys (to `"`; Point does the same, so both lose that
# backslash): field keys here carry no double quotes.
_ROUND_TRIP_FIELD_KEYS = _ROUND_TRIP_TEXT.map(lambda text: text.replace('"', "'"))


@pytest.mark.integration
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sample=_samples(_ROUND_TRIP_TEXT, max_time=INFLUX_MAX_TIME, field_keys=_ROUND_TRIP_FIELD_KEYS)
)
def test_influxd_stores_exactly_what_was_sampled(
    sample: Sample, influxd: InfluxdServer, influx_db: str
) -> None:
    assume(not set(map(_stored_as, sample.tags)) & set(map(_stored_as, sample.fields)))
    assume(
        len(set(map(_stored_as, [*sample.tags, *sample.fields])))
        == len(sample.tags) + len(sample.fields)
    )
    # influxd skips NULs like blanks before the field section, so a first field key that starts
    # with NUL loses it there (a server quirk no escape avoids; the wire model could refuse it).
    assume(not any(key.startswith("\x00") for key in sample.fields))
    measurement = next(_measurements)
    sample = dataclasses.replace(sample, measurement=measurement)
    influxd.write(encode_sample(sample), db=influx_db)
    [row] = influxd.query(f'SELECT * FROM "{measurement}" GROUP BY *', db=influx_db)
    expected: dict[str, object] = {"time": sample.time}
    expected.update({_stored_as(k): _stored_as(v) for k, v in sample.tags.items()})
    for key, value in sample.fields.items():
        stored = _stored_as(key)
        if isinstance(value, str):
            value = value.replace("\n", "\\n")  # noqa: PLW2901
        elif isinstance(value, float):
            # influxd's JSON prints 3.7e16 as the integer 37275018980355010: same float.
            row[stored] = float(row[stored])
        expected[stored] = value
    assert row == expected


def test_an_encoders_caches_are_its_own_and_bounded() -> None:
    small = LineEncoder(limit=3)
    other = LineEncoder()
    samples = [
        Sample(measurement="m", tags={"target": f"t{n}"}, fields={f"f{n % 5}": n}, time=n)
        for n in range(50)
    ]
    assert [small.encode(s) for s in samples] == [encode_sample(s) for s in samples]
    assert small.cached <= 3
    assert other.cached == 0  # nothing shared between encoders (no module state)
    expected = b"m,target=t0 f0=0i 0\nm,target=t1 f1=1i 1"
    assert other.body(samples[:2]) == small.body(samples[:2]) == expected


@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False)
        | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        min_size=1,
        max_size=64,
    )
)
def test_numbers_written_in_one_call_read_as_repr_does(values: list[float | int]) -> None:
    # The numeric path takes msgspec's text; where it would differ from repr (exponents, tiny
    # numbers) the line goes the %r way. Either way: repr for floats, %di for integers.
    fields = {f"f{index}": value for index, value in enumerate(values)}
    sample = Sample(measurement="m", fields=fields, time=1)
    expected = ",".join(
        f"{key}={value}i" if type(value) is int else f"{key}={value!r}"
        for key, value in fields.items()
    )
    assert LineEncoder().encode(sample) == f"m {expected} 1"


@pytest.mark.parametrize("value", [1e16, 1e-05, 0.0001, 1.5e300, 5e-324, -0.0, 1e15, 10.00001])
def test_floats_near_reprs_exponent_switch(value: float) -> None:
    encoder = LineEncoder()
    sample = Sample(measurement="m", fields={"a": value, "b": 2}, time=1)
    assert encoder.encode(sample) == f"m a={value!r},b=2i 1"
