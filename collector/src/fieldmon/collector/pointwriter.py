"""Writes line-protocol points until the database has them; bad points go to the dead-letter file.

Shared by ingest (sample rows) and the alert role (`alert` and `outage` rows): retryable errors
are retried with jittered backoff honouring Retry-After; a refused batch is bisected so one bad
point never blocks the good ones around it. Ingest writes through a DurableStore, which moves a
batch the database will not take within a retry budget to the disk spool and drains it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.spool import Spool, SpoolError
from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError, Writer

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# A server may ask for a long pause; past this we try again anyway rather than sit idle.
MAX_RETRY_AFTER_S = 300.0
# After the spool could not be read (a disk error), wait this long before reading it again.
SPOOL_ERROR_PAUSE_S = 5.0
# While neither the database nor the spool takes a batch, try again at least this often.
HOLD_RETRY_S = 1.0


class PointWriter:
    """Stores lines through a Writer, retrying until stored; tracks health for /healthz."""

    def __init__(
        self, writer: Writer, metrics: CollectorMetrics, dead_letter: DeadLetterFile
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._dead_letter = dead_letter
        self.last_ok: float | None = None
        self.last_error: str | None = None
        # Signs of life for the watchdog (time.monotonic): when the last write attempt ended,
        # however it ended, and until when a retry waits on purpose (backoff, Retry-After).
        self.last_attempt = time.monotonic()
        self.resting_until = 0.0

    async def store(self, lines: list[str]) -> None:
        """Write until stored; refused points are split out to the dead-letter file."""
        await self._store(lines, deadline=None)

    async def store_within(self, lines: list[str], budget: float) -> list[str]:
        """Write, retrying for at most `budget` seconds; returns the lines still not stored.

        Refused points go to the dead-letter file and count as handled.
        """
        return await self._store(lines, deadline=time.monotonic() + budget)

    async def _store(self, lines: list[str], deadline: float | None) -> list[str]:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                await self._writer.write("\n".join(lines).encode(), len(lines))
            except RetryableWriteError as exc:
                self.last_attempt = time.monotonic()
                attempt += 1
                self._metrics.write_errors.labels(kind="retryable").inc()
                self.last_error = str(exc)
                delay = self._delay(exc, attempt)
                if deadline is not None and time.monotonic() + delay > deadline:
                    logger.warning(
                        "database write failed; retry budget spent",
                        extra={"error": str(exc), "attempt": attempt},
                    )
                    return lines
                logger.warning(
                    "database write failed; retrying",
                    extra={"error": str(exc), "attempt": attempt, "retry_in_s": round(delay, 2)},
                )
                self.resting_until = time.monotonic() + delay
                await asyncio.sleep(delay)
                continue
            except RejectedWriteError as exc:
                self.last_attempt = time.monotonic()
                self._metrics.write_errors.labels(kind="rejected").inc()
                return await self._split_rejected(lines, str(exc), deadline)
            self.last_attempt = time.monotonic()
            self._metrics.write_latency.observe(time.perf_counter() - started)
            self._metrics.points_written.inc(len(lines))
            self.last_ok = time.time()
            self.last_error = None
            return []

    @staticmethod
    def _delay(exc: RetryableWriteError, attempt: int) -> float:
        if exc.retry_after is not None:
            delay = min(MAX_RETRY_AFTER_S, exc.retry_after)
        else:
            delay = min(MAX_BACKOFF_S, 0.5 * 2**attempt)
        return delay * random.uniform(0.8, 1.2)  # jitter, so HA collectors do not retry in step

    async def dead_letter(self, lines: list[str], reason: str) -> None:
        """Keep points that must not be stored in the dead-letter file, with the reason."""
        try:
            await asyncio.to_thread(self._dead_letter.append, lines, reason)
        except OSError as exc:
            # The log keeps the points then; a full disk must not stop the stream behind them.
            logger.error(
                "points refused and the dead-letter file cannot take them",
                extra={"reason": reason, "lines": lines[:10], "error": str(exc)},
            )
        else:
            logger.error(
                "points refused; dead-lettered", extra={"reason": reason, "points": len(lines)}
            )
        self._metrics.points_dead_lettered.inc(len(lines))

    async def _split_rejected(
        self, lines: list[str], reason: str, deadline: float | None
    ) -> list[str]:
        if not lines:  # nothing to split (and splitting it again would never end)
            return []
        if len(lines) == 1:
            await self.dead_letter(lines, reason)
            return []
        middle = len(lines) // 2
        left = await self._store(lines[:middle], deadline)
        return left + await self._store(lines[middle:], deadline)


class DurableStore:
    """Puts each batch where it is durable: the database, or the disk spool when it is down.

    A batch gets `retry_budget` seconds of in-memory retries; if the database still does not take
    it, it is spooled, and while the spool's drainer has not yet written to the database again,
    later batches go straight to the spool rather than each spending the budget. The drainer
    writes spooled batches oldest first, alongside new batches once the database answers:
    InfluxDB keys a point by measurement, tags and time, so the order of writes does not change
    what it stores, and a key written twice (an agent's re-send) carries the same values.
    Without a spool, `put` retries until the database takes the batch, as before.
    """

    def __init__(
        self,
        points: PointWriter,
        metrics: CollectorMetrics,
        spool: Spool | None = None,
        *,
        retry_budget: float = 5.0,
    ) -> None:
        self._points = points
        self._metrics = metrics
        self._spool = spool
        self._retry_budget = retry_budget
        self._database_down = False
        self._full = False
        self._drained_since_empty = 0
        self._wake = asyncio.Event()  # set when a batch is spooled
        self._room = asyncio.Event()  # set when a drained batch freed spool space
        if spool is not None:
            metrics.spool_bytes.set(spool.bytes)

    async def put(self, lines: list[str]) -> bool:
        """True once `lines` are in the database or the spool; False: the spool is full.

        On False nothing of the batch is durable yet: hold its acknowledgements and try again.
        """
        if self._spool is None:
            await self._points.store(lines)
            return True
        if not self._database_down:
            lines = await self._points.store_within(lines, self._retry_budget)
            if not lines:
                self._set_full(False)  # nothing is held any more
                return True
            self._database_down = True
            logger.warning(
                "database not taking writes: spooling batches to disk until it answers",
                extra={"spool": str(self._spool.directory), "spool_bytes": self._spool.bytes},
            )
        return await self._append(self._spool, lines)

    async def refuse(self, lines: list[str], reason: str) -> None:
        """Points that must not be stored: into the dead-letter file (durable on return)."""
        await self._points.dead_letter(lines, reason)

    async def keep(self, lines: list[str]) -> None:
        """Return once `lines` are in the database or the spool (however long that takes)."""
        while not await self.put(lines):
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), timeout=HOLD_RETRY_S)

    async def _append(self, spool: Spool, lines: list[str]) -> bool:
        stored = await asyncio.to_thread(spool.append, lines)
        self._set_full(not stored)
        if not stored:
            # The next try probes the database first: it may be back before the spool drains.
            self._database_down = False
        else:
            self._metrics.spool_batches_spooled.inc()
            self._metrics.spool_points_spooled.inc(len(lines))
            self._metrics.spool_bytes.set(spool.bytes)
            self._wake.set()
        return stored

    @property
    def holding(self) -> bool:
        """True while the spool is full and batches wait unacknowledged for room."""
        return self._full

    def _set_full(self, full: bool) -> None:
        if full == self._full:
            return
        if full:
            logger.error(
                "spool full (or its disk failing): holding acknowledgements; the broker and "
                "the agents keep the data until the database takes writes again",
                extra={"spool_bytes": self._spool.bytes if self._spool else 0},
            )
        else:
            logger.info("batches are taken again; acknowledging")
        self._full = full
        self._metrics.spool_full.set(1 if full else 0)

    async def drain(self) -> None:
        """Write spooled batches to the database, oldest first, until cancelled."""
        spool = self._spool
        if spool is None:
            return
        while True:
            self._wake.clear()  # before reading, so an append meanwhile is never missed
            try:
                await self._drain_one(spool)
            except (OSError, SpoolError) as exc:
                # The batch stays in the spool (written again later, which changes nothing).
                logger.error("spool disk error; trying again", extra={"error": str(exc)})
                await asyncio.sleep(SPOOL_ERROR_PAUSE_S)

    async def _drain_one(self, spool: Spool) -> None:
        batch = await asyncio.to_thread(spool.peek)
        self._metrics.spool_torn_records.set(spool.torn_records)
        if batch is None:
            self._metrics.spool_bytes.set(spool.bytes)
            if self._drained_since_empty:
                logger.info("spool drained", extra={"batches": self._drained_since_empty})
                self._drained_since_empty = 0
            await self._wake.wait()
            return
        await self._points.store(batch.lines)
        self._database_down = False
        await asyncio.to_thread(spool.release, batch)
        self._metrics.spool_batches_drained.inc()
        self._drained_since_empty += 1
        self._metrics.spool_bytes.set(spool.bytes)
        self._room.set()
