"""parse_duration / format_duration, and Duration as a model field."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fieldmon.core.config.types import Duration, StrictModel, format_duration, parse_duration


class _Timed(StrictModel):
    interval: Duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("100ms", 0.1),
        ("3ms", 0.003),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        (" 10s ", 10.0),
        ("10 s", 10.0),
        ("0s", 0.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["10 sec", "10", "s", "", "1m30s", "-5s", "10S", "1e3s", ".5s", "ten seconds", "10us"],
)
def test_parse_rejects_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration; write it like 10s, 100ms"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (True, "not a duration"),
        (None, "expected a duration"),
        ([10], "expected a duration"),
        (-1, "cannot be negative"),
        (math.nan, "not a finite duration"),
        (math.inf, "not a finite duration"),
        ("9" * 400 + "s", "not a finite duration"),
        (10**400, "too long a duration"),
    ],
)
def test_parse_rejects_values(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.1, "100ms"),
        (1.5, "1500ms"),
        (10.0, "10s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (86400.0, "1d"),
        (172800.0, "2d"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_round_trip_from_milliseconds(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.integers(min_value=1, max_value=10**6),
    st.sampled_from(["ms", "s", "m", "h", "d"]),
)
def test_round_trip_from_text(number: int, unit: str) -> None:
    seconds = parse_duration(f"{number}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(seconds) == format_duration(parse_duration(format_duration(seconds)))


def test_field_parses_and_serializes() -> None:
    model = _Timed.model_validate({"interval": "5m"})
    assert model.interval == 300.0
    assert model.model_dump() == {"interval": "5m"}
    assert _Timed.model_validate(model.model_dump()) == model


@pytest.mark.parametrize("value", ["10 sec", True, None, math.nan, "-1s"])
def test_field_rejects(value: object) -> None:
    with pytest.raises(ValidationError):
        _Timed.model_validate({"interval": value})
