"""Counter rates: wraps, reboots, resets and first polls give the right rate or none."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldmon.agent.snmp.counters import CounterWindow, Rate, Reading, counter_rate, util_pct

M32 = 2**32
M64 = 2**64

CASES = [
    # id, previous, current, width, max_per_second, expected
    ("first poll", None, Reading(100, 10.0), 32, None, Rate(None, False)),
    ("steady", Reading(1000, 0.0), Reading(4000, 10.0), 64, None, Rate(300.0, increase=3000)),
    ("no traffic", Reading(7, 0.0, 5), Reading(7, 30.0, 3005), 32, None, Rate(0.0, increase=0)),
    (
        "32-bit wrap",
        Reading(M32 - 100, 0.0),
        Reading(900, 10.0),
        32,
        None,
        Rate(100.0, increase=1000),
    ),
    (
        "32-bit wrap to zero",
        Reading(M32 - 50, 0.0),
        Reading(0, 5.0),
        32,
        None,
        Rate(10.0, increase=50),
    ),
    (
        "64-bit near top",
        Reading(M64 - 1000, 0.0),
        Reading(M64 - 1, 1.0),
        64,
        None,
        Rate(999.0, increase=999),
    ),
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
        Rate(10.0, increase=100),
    ),
    (
        "wrap faster than the line: reset",
        Reading(M32 - 10, 0.0),
        Reading(M32 - 20, 1.0),
        32,
        1e6,
        Rate(None, True),
    ),
    (
        "increase beyond the limit",
        Reading(0, 0.0),
        Reading(10**9, 1.0),
        32,
        1e6,
        Rate(1e9, increase=10**9),
    ),
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


# --- windows: the counter's increase across the last N seconds -------------------------------


class CachedCounter:
    """A device counting `rate` a second that answers from a cache refreshed on a request
    once the cached value is `cache_s` old, as net-snmp's interface table does (3 s in 5.9)."""

    def __init__(self, rate: float, cache_s: float, width: int = 64) -> None:
        self.rate, self.cache_s, self.modulus = rate, cache_s, 2**width
        self.start = 2**32 - 5000 if width == 32 else 0  # a 32-bit one wraps soon
        self.cached_at: float | None = None

    def read(self, at: float) -> int:
        if self.cached_at is None or at - self.cached_at >= self.cache_s:
            self.cached_at = at
        return int(self.start + self.rate * self.cached_at) % self.modulus


def _poll(
    device: CachedCounter, times: list[float], window_s: float, width: int = 64
) -> tuple[list[float], list[tuple[float, float]]]:
    """Per-poll rates and (windowed rate, span) at each poll after the first."""
    window = CounterWindow(window_s)
    previous: Reading | None = None
    per_poll: list[float] = []
    windowed: list[tuple[float, float]] = []
    for at in times:
        reading = Reading(device.read(at), at)
        rate = counter_rate(previous, reading, width=width)
        previous = reading
        if rate.increase is None:
            window.restart(at)
            continue
        assert rate.per_second is not None
        per_poll.append(rate.per_second)
        window.add(at, rate.increase)
        result = window.rate()
        assert result is not None
        windowed.append(result)
    return per_poll, windowed


def test_polled_faster_than_the_cache_per_poll_saw_tooths_the_window_holds() -> None:
    truth = 125_000.0  # octets/s: 1 Mbit/s
    times = [1.0 * poll for poll in range(200)]  # every second; the cache is 3 s
    per_poll, windowed = _poll(CachedCounter(truth, cache_s=3.0), times, window_s=60.0)
    # Two polls in three read the cached value again (0), the third catches up (3x).
    assert sum(1 for rate in per_poll if rate == 0) >= len(per_poll) // 2
    assert max(per_poll) == pytest.approx(3 * truth)
    full = [(rate, span) for rate, span in windowed if span >= 60.0]
    assert len(full) > 100
    for rate, span in full:
        assert 60.0 <= span < 61.0
        assert rate == pytest.approx(truth, rel=3.0 / 60.0)  # at most one cache period off


def test_window_grows_from_the_first_poll_then_keeps_its_length() -> None:
    times = [10.0 * poll for poll in range(20)]
    _, windowed = _poll(CachedCounter(1000.0, cache_s=0.0), times, window_s=45.0)
    spans = [span for _, span in windowed]
    assert spans[:5] == [10.0, 20.0, 30.0, 40.0, 50.0]  # the oldest reading kept is >= 45 s old
    assert set(spans[5:]) == {50.0}
    assert all(rate == pytest.approx(1000.0) for rate, _ in windowed)


def test_a_32_bit_wrap_inside_the_window_is_undone() -> None:
    device = CachedCounter(1000.0, cache_s=0.0, width=32)  # wraps after about 5 s
    _, windowed = _poll(device, [float(at) for at in range(30)], window_s=20.0, width=32)
    assert all(rate == pytest.approx(1000.0) for rate, _ in windowed)


def test_restart_forgets_what_came_before() -> None:
    window = CounterWindow(60.0)
    window.restart(0.0)
    window.add(10.0, 10_000)
    window.restart(20.0)  # a reboot: the counters start again
    assert window.rate() is None
    window.add(30.0, 50)
    assert window.rate() == (5.0, 10.0)


def test_a_window_shorter_than_the_interval_is_the_last_poll() -> None:
    window = CounterWindow(5.0)
    window.restart(0.0)
    for at, increase in ((30.0, 300), (60.0, 900)):
        window.add(at, increase)
    assert window.rate() == (30.0, 30.0)


@given(
    cache_s=st.floats(min_value=0.5, max_value=12.0),
    interval=st.floats(min_value=0.5, max_value=30.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_window_error_is_at_most_one_cache_period(
    cache_s: float, interval: float, seed: int
) -> None:
    rng = random.Random(seed)
    window_s = 120.0
    at, times = 0.0, []
    while at < 600.0:
        times.append(at)
        at += interval * rng.uniform(0.9, 1.1)  # the scheduler's jitter
    truth = 1e6
    _, windowed = _poll(CachedCounter(truth, cache_s=cache_s), times, window_s=window_s)
    for rate, span in windowed:
        if span >= window_s:
            # The two ends are each at most one cache period stale: that much of the span.
            assert abs(rate - truth) <= truth * cache_s / span + 1e-6
