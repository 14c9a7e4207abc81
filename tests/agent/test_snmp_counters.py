"""Counter rates: wraps, reboots, resets and first polls give the right rate or none."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldmon.agent.snmp.counters import Rate, Reading, counter_rate, util_pct

M32 = 2**32
M64 = 2**64

CASES = [
    # id, previous, current, width, max_per_second, expected
    ("first poll", None, Reading(100, 10.0), 32, None, Rate(None, False)),
    ("steady", Reading(1000, 0.0), Reading(4000, 10.0), 64, None, Rate(300.0)),
    ("no traffic", Reading(7, 0.0, 5), Reading(7, 30.0, 3005), 32, None, Rate(0.0)),
    ("32-bit wrap", Reading(M32 - 100, 0.0), Reading(900, 10.0), 32, None, Rate(100.0)),
    ("32-bit wrap to zero", Reading(M32 - 50, 0.0), Reading(0, 5.0), 32, None, Rate(10.0)),
    ("64-bit near top", Reading(M64 - 1000, 0.0), Reading(M64 - 1, 1.0), 64, None, Rate(999.0)),
    ("64-bit goes down: reset", Reading(5000, 0.0), Reading(10, 10.0), 64, None, Rate(None, True)),
    ("reboot", Reading(5000, 0.0, 900_000), Reading(9000, 30.0, 2000), 64, None, Rate(None, True)),
    (
        "reboot hides as 32-bit wrap",
        Reading(5000, 0.0, 900_000),
        Reading(10, 30.0, 2000),
        32,
        None,
        Rate(None, True),
    ),
    (
        "discontinuity time changed",
        Reading(100, 0.0, 500, discontinuity=0),
        Reading(200, 10.0, 1500, discontinuity=1200),
        64,
        None,
        Rate(None, True),
    ),
    (
        "discontinuity time unchanged",
        Reading(100, 0.0, 500, discontinuity=7),
        Reading(200, 10.0, 1500, discontinuity=7),
        64,
        None,
        Rate(10.0),
    ),
    (
        "wrap faster than the line: reset",
        Reading(M32 - 10, 0.0),
        Reading(M32 - 20, 1.0),
        32,
        1e6,
        Rate(None, True),
    ),
    ("increase beyond the limit", Reading(0, 0.0), Reading(10**9, 1.0), 32, 1e6, Rate(1e9)),
    ("clock did not advance", Reading(1, 5.0), Reading(2, 5.0), 64, None, Rate(None, True)),
]


@pytest.mark.parametrize(
    ("previous", "current", "width", "limit", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_counter_rate_table(
    previous: Reading | None, current: Reading, width: int, limit: float | None, expected: Rate
) -> None:
    assert counter_rate(previous, current, width=width, max_per_second=limit) == expected


def test_width_must_be_32_or_64() -> None:
    with pytest.raises(ValueError, match="32 or 64"):
        counter_rate(None, Reading(1, 0.0), width=16)


@given(
    width=st.sampled_from([32, 64]),
    start=st.integers(min_value=0),
    increase=st.integers(min_value=0, max_value=2**31),
    seconds=st.floats(min_value=0.01, max_value=3600),
)
def test_increase_recovered_across_any_wrap(
    width: int, start: int, increase: int, seconds: float
) -> None:
    modulus = 2**width
    start %= modulus
    previous = Reading(start, 100.0, uptime=1000)
    current = Reading(
        (start + increase) % modulus, 100.0 + seconds, uptime=1000 + int(seconds * 100)
    )
    rate = counter_rate(previous, current, width=width)
    wrapped_64 = width == 64 and start + increase >= modulus
    if wrapped_64:
        assert rate == Rate(None, True)
    else:
        assert rate.per_second == pytest.approx(increase / seconds)
        assert not rate.discontinuity


@given(
    width=st.sampled_from([32, 64]),
    before=st.integers(min_value=0, max_value=2**64 - 1),
    after=st.integers(min_value=0, max_value=2**64 - 1),
    up_before=st.integers(min_value=0, max_value=2**32 - 1),
    up_after=st.integers(min_value=0, max_value=2**32 - 1),
    seconds=st.floats(min_value=-10, max_value=3600),
)
def test_never_negative_and_no_rate_after_reboot(
    *, width: int, before: int, after: int, up_before: int, up_after: int, seconds: float
) -> None:
    modulus = 2**width
    previous = Reading(before % modulus, 0.0, uptime=up_before)
    current = Reading(after % modulus, seconds, uptime=up_after)
    rate = counter_rate(previous, current, width=width, max_per_second=1.25e9)
    if rate.per_second is None:
        assert rate.discontinuity
    else:
        assert rate.per_second >= 0
        if current.value < previous.value:  # only a 32-bit wrap gives a rate here
            assert width == 32
            assert rate.per_second <= 1.25e9
    if up_after < up_before:
        assert rate == Rate(None, True)


@pytest.mark.parametrize(
    ("bps", "speed", "expected"),
    [
        (50e6, 100, 50.0),
        (0.0, 1000, 0.0),
        (1e9, 1000, 100.0),
        (1e6, 0, None),  # ifHighSpeed 0: speed unknown (e.g. loopback, tunnels)
        (1e6, None, None),
        (None, 100, None),
        (2e6, 1, 200.0),  # wrong advertised speed shows, not hidden
    ],
)
def test_util_pct(bps: float | None, speed: int | None, expected: float | None) -> None:
    assert util_pct(bps, speed) == (pytest.approx(expected) if expected is not None else None)
