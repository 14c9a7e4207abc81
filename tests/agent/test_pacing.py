"""The backlog's uplink window: grows while PUBACKs come back at the path's base delay, keeps the
queue near its target on a simulated link of any rate, and starts over on a new connection."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import pytest

from fieldmon.agent.pacing import INITIAL_WINDOW, MAX_WINDOW, MIN_WINDOW, TARGET_S, DelayWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_slow_start_doubles_the_window_per_round_trip_while_nothing_queues() -> None:
    clock = Clock()
    pacer = DelayWindow(clock=clock)
    assert pacer.room() == INITIAL_WINDOW
    for _round in range(3):
        sizes = []
        while pacer.room() > 0:
            sizes.append(8192)
            pacer.sent(len(sizes) + 100 * _round, 8192)
        clock.now += 0.05  # every PUBACK at the base delay
        for mid in range(1, len(sizes) + 1):
            pacer.acked(mid + 100 * _round)
    assert pacer.slow_start
    assert pacer.window == INITIAL_WINDOW * 8
    assert pacer.outstanding == 0


def test_a_queue_past_twice_the_target_halves_the_window_once_per_round_trip() -> None:
    clock = Clock()
    pacer = DelayWindow(clock=clock, initial=1024 * 1024)
    pacer.sent(1, 1000)
    clock.now += 0.01
    pacer.acked(1)  # the base: 10 ms
    before = pacer.window
    for mid in (2, 3, 4):
        pacer.sent(mid, 1000)
    clock.now += 0.01 + 3 * TARGET_S
    pacer.acked(2)
    assert not pacer.slow_start
    assert pacer.window == before / 2
    pacer.acked(3)  # the same round trip: no second cut
    assert pacer.window == before / 2
    clock.now += 1.0
    pacer.acked(4)
    assert pacer.window == before / 4


def test_the_window_stays_within_its_bounds_and_ignores_unknown_acks() -> None:
    clock = Clock()
    pacer = DelayWindow(clock=clock)
    pacer.acked(99)  # a PUBACK from an earlier connection
    assert (pacer.window, pacer.outstanding) == (INITIAL_WINDOW, 0)
    for mid in range(200):
        pacer.sent(mid, 1 << 20)
        pacer.acked(mid)  # no delay at all: the window only grows
    assert pacer.window == MAX_WINDOW
    for mid in range(1000, 1100):
        pacer.sent(mid, 100)
        clock.now += 1.0  # a second's queue, every time: the window only shrinks
        pacer.acked(mid)
    assert pacer.window == MIN_WINDOW


def test_a_new_connection_forgets_what_was_outstanding_and_learns_again() -> None:
    clock = Clock()
    pacer = DelayWindow(clock=clock)
    pacer.sent(1, 5000)
    pacer.sent(2, 5000)
    pacer.acked(1)
    pacer.reset()
    assert (pacer.outstanding, pacer.window, pacer.slow_start) == (0, INITIAL_WINDOW, True)
    pacer.acked(2)  # the old connection's message
    assert pacer.outstanding == 0


@dataclass
class LinkRun:
    utilisation: float
    queue_p95_s: float
    queue_mean_s: float


def _simulate(rate_bps: float, base_s: float, message: int, seconds: float = 120.0) -> LinkRun:
    """A backlog that never runs out, sent through a FIFO link of `rate_bps` whose PUBACKs take
    `base_s` more: how busy the link is and how long a message waits to start transmission
    (what a live envelope published at that moment would wait), after the first 20 s."""
    clock = Clock()
    start = clock.now
    pacer = DelayWindow(clock=clock)
    link_free = clock.now  # when the link finishes what it holds
    events: list[tuple[float, int]] = []  # (PUBACK time, mid)
    mid = 0
    busy = 0.0
    waits: list[float] = []
    while clock.now - start < seconds:
        while pacer.room() > 0:
            mid += 1
            pacer.sent(mid, message)
            begins = max(clock.now, link_free)
            link_free = begins + message * 8 / rate_bps
            if clock.now - start > 20:
                waits.append(begins - clock.now)
                busy += message * 8 / rate_bps
            heapq.heappush(events, (link_free + base_s, mid))
        clock.now, done = heapq.heappop(events)
        pacer.acked(done)
    measured = seconds - 20
    waits.sort()
    return LinkRun(
        utilisation=busy / measured,
        queue_p95_s=waits[int(0.95 * (len(waits) - 1))],
        queue_mean_s=sum(waits) / len(waits),
    )


@pytest.mark.parametrize(
    ("rate_bps", "base_s", "message"),
    [
        (1e6, 0.005, 8_000),  # 1 Mbit/s, a LAN-like path, joined messages of 8 kB on the wire
        (1e6, 0.3, 8_000),  # the same over a satellite hop
        (10e6, 0.005, 25_000),  # 10 Mbit/s (bench/outbox's day-long drain)
        (10e6, 0.1, 25_000),
        (256e3, 0.05, 4_000),  # a thin LTE uplink
    ],
)
def test_on_any_link_the_backlog_keeps_it_busy_and_its_queue_near_the_target(
    rate_bps: float, base_s: float, message: int
) -> None:
    run = _simulate(rate_bps, base_s, message)
    # The link stays busy: the backlog drains at the link's rate.
    assert run.utilisation > 0.9, run
    # A live envelope waits for about the target, not for the whole backlog.
    assert run.queue_mean_s < 1.5 * TARGET_S, run
    assert run.queue_p95_s < 2.5 * TARGET_S, run
