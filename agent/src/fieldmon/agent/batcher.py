"""Gathers samples from probe runs into envelopes and commits them to the outbox."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fieldmon.agent.outbox import Outbox, Priority, priority_of
from fieldmon.core.wire.models import Sample

logger = logging.getLogger(__name__)


class EnvelopeBatcher:
    """Probe rounds that finish close together share one envelope (fewer MQTT messages).

    A sample waits at most `linger` seconds; an envelope carries at most `max_samples`.
    """

    def __init__(
        self,
        outbox: Outbox,
        disk: ThreadPoolExecutor,
        *,
        max_samples: int,
        linger: float,
        on_committed: Callable[[], None],
    ) -> None:
        self._outbox = outbox
        self._disk = disk
        self._max_samples = max_samples
        self._linger = linger
        self._on_committed = on_committed
        self._buffer: list[Sample] = []
        self._wake = asyncio.Event()
        self.committed_envelopes = 0
        self.committed_samples = 0
        # When the outbox write under way began (monotonic), None between writes: the watchdog's
        # sign of a disk that stopped answering.
        self.writing_since: float | None = None

    def add(self, samples: list[Sample]) -> None:
        """Queue samples for the next envelope."""
        if samples:
            self._buffer.extend(samples)
            self._wake.set()

    async def flush(self) -> None:
        """Commit everything buffered now; events and state changes in envelopes of their own."""
        while self._buffer:
            events = [s for s in self._buffer if priority_of([s]) is Priority.EVENT]
            source = events or self._buffer
            chunk = source[: self._max_samples]
            priority = Priority.EVENT if events else Priority.BULK
            taken = {id(sample) for sample in chunk}
            self._buffer = [s for s in self._buffer if id(s) not in taken]
            loop = asyncio.get_running_loop()
            self.writing_since = time.monotonic()
            try:
                await loop.run_in_executor(self._disk, self._outbox.append, chunk, priority)
            except (sqlite3.Error, OSError) as exc:
                # A full disk even after dropping the oldest: keep the samples in memory and
                # try again at the next flush rather than lose them.
                self._buffer[:0] = chunk
                logger.error("cannot write the outbox", extra={"error": str(exc)})
                return
            finally:
                self.writing_since = None
            self.committed_envelopes += 1
            self.committed_samples += len(chunk)
            self._on_committed()

    async def run(self) -> None:
        """Flush `linger` seconds after the first sample of a batch, or at once when full."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._buffer) < self._max_samples:
                await asyncio.sleep(self._linger)
            await self.flush()
