"""Rates from two readings of an SNMP counter, honest about wraps, reboots and resets."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

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
    """A per-second rate, or None with the reason: first poll, or a discontinuity.

    `increase` is what the counter counted between the two readings (a wrap undone), beside
    the rate it gives: a window adds these up.
    """

    per_second: float | None
    discontinuity: bool = False
    increase: int | None = None


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
        return Rate(delta / elapsed, increase=delta)
    wrapped = delta % 2**width
    per_second = wrapped / elapsed
    impossible = max_per_second is not None and per_second > max_per_second
    return BROKEN if width == COUNTER64 or impossible else Rate(per_second, increase=wrapped)


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


@dataclass
class CounterWindow:
    """A counter's increase across the last `seconds` of polls, as a rate.

    Devices answer from a cache of their counters (net-snmp 5.9 refreshes its interface table
    at most every 3 s; many routers every 5 to 30 s), so a poll reads a value up to one cache
    period old. Between two polls that error can be the whole delta: polled faster than the
    cache, a steady link reads 0, 0, 3x, 0, 0, 3x. Across a window the same error is at most
    one cache period out of the whole window (3 s in 120 s: 2.5 %), and it does not add up
    from poll to poll. The window is the counter's own increase across it (each poll's
    increase, wraps undone, summed), never an average of per-poll rates.

    `add` takes each poll's increase; `restart` starts again after a discontinuity (a reboot
    or a counter reset: nothing before it counts). `rate` spans the readings of at least the
    last `seconds` (the oldest reading kept is the newest one at least that old), or everything
    since the start while the agent has polled for less.
    """

    seconds: float
    _points: deque[tuple[float, int]] = field(default_factory=deque)  # (at, counted since start)

    def restart(self, at: float) -> None:
        """Count from this reading on."""
        self._points = deque([(at, 0)])

    def add(self, at: float, increase: int) -> None:
        """One more poll: what the counter counted since the previous one."""
        if not self._points:
            self.restart(at)
            return
        self._points.append((at, self._points[-1][1] + increase))
        oldest_needed = at - self.seconds
        while len(self._points) > 2 and self._points[1][0] <= oldest_needed:
            self._points.popleft()

    def rate(self) -> tuple[float, float] | None:
        """(per second, seconds spanned) across the window; None before a second reading."""
        if len(self._points) < 2:
            return None
        (first_at, first), (last_at, last) = self._points[0], self._points[-1]
        span = last_at - first_at
        if span <= 0:
            return None
        return (last - first) / span, span


def util_pct(bps: float | None, high_speed_mbps: int | None) -> float | None:
    """Link utilisation in percent from bits/s and ifHighSpeed (Mbit/s); None when unknown.

    Not clamped at 100: a value above it means the advertised speed is wrong, which the
    engineer on site should see rather than have hidden.
    """
    if bps is None or not high_speed_mbps or high_speed_mbps <= 0:
        return None
    return 100.0 * bps / (high_speed_mbps * 1_000_000)
