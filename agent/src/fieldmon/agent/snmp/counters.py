"""Rates from two readings of an SNMP counter, honest about wraps, reboots and resets."""

from __future__ import annotations

from dataclasses import dataclass

COUNTER32 = 32
COUNTER64 = 64


@dataclass(frozen=True, slots=True)
class Reading:
    """One counter value and what tells us whether it still counts from the same origin.

    `at` is the poller's monotonic clock (seconds); `uptime` is the device's sysUpTime in
    hundredths of a second; `discontinuity` is ifCounterDiscontinuityTime (None where the
    device does not have it).
    """

    value: int
    at: float
    uptime: int | None = None
    discontinuity: int | None = None


@dataclass(frozen=True, slots=True)
class Rate:
    """A per-second rate, or None with the reason: first poll, or a discontinuity."""

    per_second: float | None
    discontinuity: bool = False


FIRST = Rate(None, discontinuity=False)
BROKEN = Rate(None, discontinuity=True)


def counter_rate(
    previous: Reading | None,
    current: Reading,
    *,
    width: int,
    max_per_second: float | None = None,
) -> Rate:
    """The counter's rate between two readings, or no rate (never negative, never a spike).

    - no previous reading: no rate, no discontinuity (first poll);
    - device rebooted (sysUpTime went backwards) or ifCounterDiscontinuityTime changed:
      no rate, discontinuity;
    - the value went down: a 32-bit counter wrapped once (the delta is taken modulo 2**32); a
      64-bit counter does not wrap in a device's lifetime, so that is a reset (discontinuity);
    - a wrapped delta that implies more than `max_per_second` (e.g. beyond the line rate) is
      a reset that looked like a wrap: discontinuity. Plain increases are never judged by it
      (devices under-report speeds, e.g. net-snmp gives loopback 10 Mbit/s).
    """
    if width not in (COUNTER32, COUNTER64):
        raise ValueError(f"counter width must be 32 or 64 bits, not {width}")
    if previous is None:
        return FIRST
    elapsed = current.at - previous.at
    if _restarted(previous, current) or elapsed <= 0:
        return BROKEN
    delta = current.value - previous.value
    if delta >= 0:
        return Rate(delta / elapsed)
    per_second = (delta % 2**width) / elapsed
    impossible = max_per_second is not None and per_second > max_per_second
    return BROKEN if width == COUNTER64 or impossible else Rate(per_second)


def _restarted(previous: Reading, current: Reading) -> bool:
    if previous.uptime is not None and current.uptime is not None:
        return current.uptime < previous.uptime or _changed(previous, current)
    return _changed(previous, current)


def _changed(previous: Reading, current: Reading) -> bool:
    return (
        previous.discontinuity is not None
        and current.discontinuity is not None
        and previous.discontinuity != current.discontinuity
    )


def util_pct(bps: float | None, high_speed_mbps: int | None) -> float | None:
    """Link utilisation in percent from bits/s and ifHighSpeed (Mbit/s); None when unknown.

    Not clamped at 100: a value above it means the advertised speed is wrong, which the
    engineer on site should see rather than have hidden.
    """
    if bps is None or not high_speed_mbps or high_speed_mbps <= 0:
        return None
    return 100.0 * bps / (high_speed_mbps * 1_000_000)
