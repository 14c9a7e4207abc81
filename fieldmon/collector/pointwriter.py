"""Writes line-protocol points until the database has them; bad points go to the dead-letter file.

Shared by ingest (sample rows) and the alert role (`alert` and `outage` rows): retryable errors
are retried with jittered backoff honouring Retry-After; a refused batch is bisected so one bad
point never blocks the good ones around it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError, Writer

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# A server may ask for a long pause; past this we try again anyway rather than sit idle.
MAX_RETRY_AFTER_S = 300.0


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

    async def store(self, lines: list[str]) -> None:
        """Write until stored; refused points are split out to the dead-letter file."""
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                await self._writer.write("\n".join(lines).encode(), len(lines))
            except RetryableWriteError as exc:
                attempt += 1
                self._metrics.write_errors.labels(kind="retryable").inc()
                self.last_error = str(exc)
                delay = await self._backoff(exc, attempt)
                logger.warning(
                    "database write failed; retrying",
                    extra={"error": str(exc), "attempt": attempt, "retry_in_s": round(delay, 2)},
                )
                continue
            except RejectedWriteError as exc:
                self._metrics.write_errors.labels(kind="rejected").inc()
                await self._split_rejected(lines, str(exc))
                return
            self._metrics.write_latency.observe(time.perf_counter() - started)
            self._metrics.points_written.inc(len(lines))
            self.last_ok = time.time()
            self.last_error = None
            return

    @staticmethod
    async def _backoff(exc: RetryableWriteError, attempt: int) -> float:
        if exc.retry_after is not None:
            delay = min(MAX_RETRY_AFTER_S, exc.retry_after)
        else:
            delay = min(MAX_BACKOFF_S, 0.5 * 2**attempt)
        delay *= random.uniform(0.8, 1.2)  # jitter, so HA collectors do not retry in step
        await asyncio.sleep(delay)
        return delay

    async def _split_rejected(self, lines: list[str], reason: str) -> None:
        if len(lines) == 1:
            logger.error("database refused a point; dead-lettered", extra={"reason": reason})
            await asyncio.to_thread(self._dead_letter.append, lines, reason)
            self._metrics.points_dead_lettered.inc()
            return
        middle = len(lines) // 2
        await self.store(lines[:middle])
        await self.store(lines[middle:])
