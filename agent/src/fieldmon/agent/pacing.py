"""How much backlog may be on its way to the broker: a window that keeps the uplink's queue short.

Live envelopes share the uplink with the backlog and wait behind whatever was written before
them, so the backlog must never queue more than a moment's worth of the link: at 1 Mbit/s 1 MB
ahead of a live round is 8 s of lag. The link's rate is not known (a thin LTE uplink, a
10 Mbit/s VSAT, a LAN) and changes, so the window is found the way LEDBAT (RFC 6817) finds one:
from delays. The broker's PUBACK for each message marks when the message got through; its delay
minus the smallest delay seen lately (the path's base, the queue empty) is the queueing the
sender caused. Below `target` the window grows (doubling per round trip at first, then by at
most `UNIT` per round trip), above it shrinks in proportion, and past twice `target` it halves
at once. The link stays busy (some bytes always wait) while the queue ahead of a live envelope
stays near `target`: the backlog uses what the link has left and nothing more.

Only backlog is held back: live envelopes go at once and count in what is outstanding. The
window covers bytes published and not yet PUBACKed (wire bytes, after compression); the
collector's own acknowledgements are the sender's business (its message and byte windows).
Pure logic with an injected clock; the sender feeds it publishes and PUBACKs.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

# Queueing delay the backlog may cause ahead of a live envelope (bench/outbox: live lag p95 during
# a drain stays within 0.6 s of the lag without one).
TARGET_S = 0.25
UNIT = 16 * 1024  # growth per round trip once out of slow start, like LEDBAT's MSS
INITIAL_WINDOW = 32 * 1024
# LEDBAT keeps two segments; a message larger than the window still goes, alone.
MIN_WINDOW = 4 * 1024
MAX_WINDOW = 4 * 1024 * 1024
# The base delay is the least of the last BASE_MINUTES per-minute minima, so that a route that
# changed (a longer path) is learnt within minutes (RFC 6817's BASE_HISTORY).
BASE_MINUTES = 10


class DelayWindow:
    """Bytes the backlog may have outstanding (published, no PUBACK yet), from PUBACK delays."""

    def __init__(
        self,
        *,
        target: float = TARGET_S,
        initial: int = INITIAL_WINDOW,
        minimum: int = MIN_WINDOW,
        maximum: int = MAX_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._initial, self._minimum, self._maximum = initial, minimum, maximum
        self._clock = clock
        self.window = float(initial)
        self.outstanding = 0
        self.slow_start = True
        self.last_delay: float | None = None
        self._sent: dict[int, tuple[float, int]] = {}  # message id -> (sent at, wire bytes)
        self._minima: deque[tuple[int, float]] = deque()  # (minute, least delay in it)
        self._halved_until = 0.0

    def reset(self) -> None:
        """A new connection: nothing outstanding, the path and its rate to be learnt again."""
        self.window = float(self._initial)
        self.outstanding = 0
        self.slow_start = True
        self._sent.clear()
        self._minima.clear()
        self._halved_until = 0.0

    def room(self) -> int:
        """Bytes of backlog that may be published now (may be negative: wait for PUBACKs)."""
        return int(self.window) - self.outstanding

    def sent(self, mid: int, size: int) -> None:
        """A message of `size` wire bytes was handed to the client as `mid`."""
        self._sent[mid] = (self._clock(), size)
        self.outstanding += size

    def acked(self, mid: int) -> None:
        """The broker's PUBACK for `mid` arrived: adjust the window to the delay it took."""
        entry = self._sent.pop(mid, None)
        if entry is None:
            return  # an earlier connection's message
        sent_at, size = entry
        now = self._clock()
        self.outstanding -= size
        delay = now - sent_at
        self.last_delay = delay
        queueing = delay - self._base(delay, now)
        if self.slow_start:
            if queueing <= self.target / 2:
                self._resize(self.window + size)
                return
            self.slow_start = False
        if queueing > 2 * self.target:
            if now >= self._halved_until:  # once per round trip, like a loss
                self._resize(self.window / 2)
                self._halved_until = now + delay
            return
        off_target = max(-1.0, (self.target - queueing) / self.target)
        self._resize(self.window + off_target * size * UNIT / self.window)

    def _base(self, delay: float, now: float) -> float:
        minute = math.floor(now / 60)
        if self._minima and self._minima[-1][0] == minute:
            if delay < self._minima[-1][1]:
                self._minima[-1] = (minute, delay)
        else:
            self._minima.append((minute, delay))
        while self._minima and self._minima[0][0] <= minute - BASE_MINUTES:
            self._minima.popleft()
        return min(least for _minute, least in self._minima)

    def _resize(self, window: float) -> None:
        self.window = min(float(self._maximum), max(float(self._minimum), window))
