"""Fan transitions out to every notifier, each on its own queue and task, retrying with backoff.

A notifier that is slow or down only fills its own bounded queue (the oldest transitions are
dropped and counted when it overflows); the caller's `submit` never waits, so ingest and the
other notifiers carry on. Each attempt runs under a deadline; retryable failures back off
exponentially with jitter (so several collectors do not retry in step), capped at `backoff_max`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fieldmon.collector.alerts.model import Transition
from fieldmon.collector.notify.base import (
    Notifier,
    NotifyError,
    PermanentNotifyError,
    Refreshing,
    RetryableNotifyError,
)

logger = logging.getLogger(__name__)

ActiveProvider = Callable[[], list[Transition]]


@dataclass
class LaneStats:
    """Counters for one notifier, for /metrics and the status page."""

    sent: int = 0  # transitions delivered
    failed_attempts: int = 0  # attempts that raised or timed out
    dropped_overflow: int = 0  # oldest transitions dropped because the queue was full
    dropped_failed: int = 0  # transitions given up on (permanent error or attempts exhausted)
    refreshes: int = 0  # successful re-sends of the firing set
    last_error: str | None = None


class _Lane:
    """One notifier's queue, worker task and (optionally) its periodic refresh."""

    def __init__(self, notifier: Notifier, dispatcher: Dispatcher) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.stats = LaneStats()
        self._d = dispatcher
        self._queue: deque[Transition] = deque()
        self._wake = asyncio.Event()
        self._refresh_due = False
        self._closing = False
        self.worker: asyncio.Task[None] | None = None
        self.ticker: asyncio.Task[None] | None = None

    def put(self, transitions: list[Transition]) -> None:
        self._queue.extend(transitions)
        overflow = len(self._queue) - self._d.queue_size
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
            self.stats.dropped_overflow += overflow
            logger.warning(
                "notifier queue full; dropped the oldest transitions",
                extra={
                    "notifier": self.name,
                    "dropped": overflow,
                    "dropped_total": self.stats.dropped_overflow,
                },
            )
        self._wake.set()

    def start(self) -> None:
        self.worker = asyncio.create_task(self._work(), name=f"notify-{self.name}")
        if isinstance(self.notifier, Refreshing) and self._d.active_provider is not None:
            self.ticker = asyncio.create_task(
                self._tick(self.notifier.refresh_interval), name=f"notify-{self.name}-refresh"
            )

    def request_refresh(self) -> None:
        self._refresh_due = True
        self._wake.set()

    async def _tick(self, interval: float) -> None:
        # First refresh at once: after a restart the receiver learns the firing set straight away.
        while True:
            self.request_refresh()
            await asyncio.sleep(interval)

    def pending(self) -> int:
        return len(self._queue)

    async def drain(self) -> None:
        """Finish what is queued with one attempt per batch, then stop the worker."""
        self._closing = True
        self._wake.set()
        if self.worker is not None:
            await self.worker

    async def _work(self) -> None:
        while True:
            if not self._queue and not self._refresh_due:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._refresh_due and not self._closing:
                self._refresh_due = False
                await self._refresh()
                continue
            self._refresh_due = False
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._d.batch))]
            await self._deliver(batch)

    async def _refresh(self) -> None:
        assert isinstance(self.notifier, Refreshing) and self._d.active_provider is not None
        active = [t for t in self._d.active_provider() if t.page]
        try:
            async with asyncio.timeout(self._d.attempt_timeout):
                await self.notifier.refresh(active)
        except NotifyError as exc:
            self._failed(str(exc), "refresh failed; the next one retries")
        except TimeoutError:
            self._failed(f"{self.name}: refresh timed out", "refresh timed out")
        else:
            self.stats.refreshes += 1

    async def _deliver(self, batch: list[Transition]) -> None:
        attempts = 1 if self._closing else self._d.max_attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                async with asyncio.timeout(self._d.attempt_timeout):
                    await self.notifier.send(batch)
            except PermanentNotifyError as exc:
                self._failed(str(exc), "permanent failure; batch dropped")
                self.stats.dropped_failed += len(batch)
                return
            except RetryableNotifyError as exc:
                self._failed(str(exc), "delivery failed; will retry", attempt=attempt)
                retry_after = exc.retry_after
            except TimeoutError:
                message = f"{self.name}: no answer within {self._d.attempt_timeout:g} s"
                self._failed(message, "delivery timed out; will retry", attempt=attempt)
            else:
                self.stats.sent += len(batch)
                self.stats.last_error = None
                return
            if attempt < attempts and not self._closing:
                await asyncio.sleep(self._d.backoff(attempt, retry_after))
        self.stats.dropped_failed += len(batch)
        logger.error(
            "notifier gave up on a batch",
            extra={
                "notifier": self.name,
                "transitions": len(batch),
                "attempts": attempts,
                "error": self.stats.last_error,
            },
        )

    def _failed(self, error: str, message: str, *, attempt: int | None = None) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = error
        logger.warning(message, extra={"notifier": self.name, "error": error, "attempt": attempt})


class Dispatcher:
    """Hands each batch of transitions to every notifier without ever waiting for one.

    Call `start()` inside the running event loop, `submit()` from that loop's thread, and
    `await close()` on shutdown. Only transitions with `page=True` are delivered.
    """

    def __init__(
        self,
        notifiers: Iterable[Notifier],
        *,
        active_provider: ActiveProvider | None = None,
        queue_size: int = 1000,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        attempt_timeout: float = 60.0,
        batch: int = 100,
    ) -> None:
        self.active_provider = active_provider
        self.queue_size = queue_size
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.attempt_timeout = attempt_timeout
        self.batch = batch
        self._lanes = [_Lane(notifier, self) for notifier in notifiers]
        self._started = False

    @property
    def notifiers(self) -> list[Notifier]:
        """The notifiers, in the order given."""
        return [lane.notifier for lane in self._lanes]

    def start(self) -> None:
        """Launch one worker per notifier and the periodic refresh of those that re-send."""
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            lane.start()

    def submit(self, transitions: Iterable[Transition]) -> None:
        """Queue transitions for every notifier; returns at once (history that must not page
        is dropped here)."""
        paged = [t for t in transitions if t.page]
        if not paged:
            return
        for lane in self._lanes:
            lane.put(paged)

    def refresh_now(self) -> None:
        """Ask every refreshing notifier to re-send the firing set soon (e.g. after a restore)."""
        for lane in self._lanes:
            if lane.ticker is not None:
                lane.request_refresh()

    def stats(self) -> dict[str, LaneStats]:
        """Counters per notifier name."""
        return {lane.name: lane.stats for lane in self._lanes}

    def pending(self) -> dict[str, int]:
        """Transitions still queued per notifier."""
        return {lane.name: lane.pending() for lane in self._lanes}

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`: doubling, jittered in [d/2, d], capped."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    async def close(self, deadline: float = 10.0) -> None:
        """Flush queued transitions (one attempt each) for up to `deadline` s, then close all."""
        tickers = [lane.ticker for lane in self._lanes if lane.ticker is not None]
        for task in tickers:
            task.cancel()
        workers = [asyncio.create_task(lane.drain()) for lane in self._lanes if lane.worker]
        if workers:
            _, late = await asyncio.wait(workers, timeout=deadline)
            for task in late:
                task.cancel()
            for lane in self._lanes:
                if lane.worker is not None and not lane.worker.done():
                    lane.worker.cancel()
                    logger.warning(
                        "notifier did not flush before the deadline",
                        extra={"notifier": lane.name, "left": lane.pending()},
                    )
        all_tasks = [*tickers, *(lane.worker for lane in self._lanes if lane.worker)]
        for task in all_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lane in self._lanes:
            try:
                async with asyncio.timeout(deadline):
                    await lane.notifier.close()
            except (NotifyError, TimeoutError, OSError) as exc:
                logger.warning(
                    "notifier close failed", extra={"notifier": lane.name, "error": str(exc)}
                )
