"""The scheduler runs each probe on its interval, never overlapping, surviving failures."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from fieldmon.agent.scheduler import run_probe_forever
from fieldmon.core.wire.models import Sample


class _Probe:
    def __init__(self, name: str, interval: float, behaviour: list[str]) -> None:
        self.name = name
        self.interval = interval
        self._behaviour = behaviour
        self.runs = 0
        self.running = 0
        self.max_concurrent = 0

    async def collect(self) -> list[Sample]:
        action = self._behaviour[self.runs % len(self._behaviour)]
        self.runs += 1
        self.running += 1
        self.max_concurrent = max(self.max_concurrent, self.running)
        try:
            if action == "hang":
                await asyncio.sleep(3600)
            if action == "fail":
                raise RuntimeError("probe bug")
            return [Sample(measurement="link", tags={"target": self.name}, fields={"x": 1}, time=1)]
        finally:
            self.running -= 1


async def _run_for(probe: _Probe, seconds: float) -> list[list[Sample]]:
    delivered: list[list[Sample]] = []
    task = asyncio.create_task(run_probe_forever(probe, delivered.append, rng=random.Random(1)))
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return delivered


def test_a_failing_or_hanging_run_does_not_stop_later_runs() -> None:
    probe = _Probe("flaky", 0.05, ["ok", "fail", "hang", "ok"])
    delivered = asyncio.run(_run_for(probe, 0.6))
    # Runs 3 and 4 of each cycle of four (fail, hang) deliver nothing, yet runs go on after them.
    assert probe.runs >= 6
    ok_runs_finished = sum(1 for i in range(probe.runs - 1) if i % 4 in (0, 3))
    assert ok_runs_finished <= len(delivered) <= ok_runs_finished + 1
    assert probe.max_concurrent == 1


def test_a_hanging_probe_does_not_delay_another() -> None:
    stuck = _Probe("stuck", 0.05, ["hang"])
    healthy = _Probe("healthy", 0.05, ["ok"])

    async def both() -> list[list[Sample]]:
        delivered: list[list[Sample]] = []
        tasks = [
            asyncio.create_task(run_probe_forever(p, delivered.append, rng=random.Random(2)))
            for p in (stuck, healthy)
        ]
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return delivered

    delivered = asyncio.run(both())
    assert len(delivered) >= 5
    assert all(batch[0].tags["target"] == "healthy" for batch in delivered)


class _NoPhase(random.Random):
    """The first run starts at once."""

    def uniform(self, a: float, b: float) -> float:
        return a


class _Gate:
    """A probe whose run waits for the test to open a gate; `inner_wait_for` waits through
    asyncio.wait_for, as the ICMP round does."""

    def __init__(self, *, inner_wait_for: bool) -> None:
        self.name = "gate"
        self.interval = 60.0
        self.inner_wait_for = inner_wait_for
        self.entered = asyncio.Event()
        self.gate: asyncio.Future[None] | None = None

    async def collect(self) -> list[Sample]:
        self.gate = asyncio.get_running_loop().create_future()
        self.entered.set()
        if self.inner_wait_for:
            await asyncio.wait_for(self.gate, timeout=30)
        else:
            await self.gate
        return [Sample(measurement="link", tags={"target": "gate"}, fields={"x": 1}, time=1)]


@pytest.mark.parametrize("inner_wait_for", [False, True], ids=["plain-run", "run-with-wait_for"])
def test_a_cancel_that_arrives_as_a_run_completes_stops_the_scheduler(
    inner_wait_for: bool,
) -> None:
    """The agent once hung after "stopping: flushing the outbox": Python 3.11's wait_for
    returns the result when its task is cancelled in the loop turn the awaited run completes,
    so the scheduler carried on and the stop waited for it forever."""
    probe = _Gate(inner_wait_for=inner_wait_for)

    async def main() -> tuple[bool, int]:
        delivered: list[list[Sample]] = []
        task = asyncio.create_task(run_probe_forever(probe, delivered.append, rng=_NoPhase()))
        await asyncio.wait_for(probe.entered.wait(), 5)
        assert probe.gate is not None
        # The run completes and the stop's cancel arrive in the same turn of the loop.
        probe.gate.set_result(None)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        stopped = task in done
        if not stopped:
            task.cancel()  # let the test end either way
            await asyncio.gather(task, return_exceptions=True)
        return stopped, len(delivered)

    stopped, delivered = asyncio.run(main())
    assert stopped, "the scheduler swallowed the cancellation and kept running"
    assert delivered <= 1


class _JustAfterATick(random.Random):
    """A phase that lands 1 ms after a tick of `grid` on the loop's clock."""

    def __init__(self, grid: float) -> None:
        super().__init__()
        self.grid = grid
        self.tick = 0.0

    def uniform(self, a: float, b: float) -> float:
        now = asyncio.get_running_loop().time()
        self.tick = math.ceil(now / self.grid) * self.grid
        return self.tick - now + 0.001


def test_a_probe_with_a_start_grid_starts_on_its_grid() -> None:
    """Aligned ICMP rounds start on their send clock's ticks (one wakeup for both)."""
    probe = _Probe("gridded", 5.0, ["ok"])
    probe.start_grid = 0.25  # type: ignore[attr-defined]
    rng = _JustAfterATick(0.25)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        collect = probe.collect

        async def timed() -> list[Sample]:
            if not started.done():
                started.set_result(loop.time())
            return await collect()

        probe.collect = timed  # type: ignore[method-assign]
        task = asyncio.create_task(run_probe_forever(probe, lambda _s: None, rng=rng))
        try:
            return await asyncio.wait_for(started, 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    start = asyncio.run(main())
    # Not 1 ms after the tick the phase fell on: the next tick (a timer never fires early).
    assert start >= rng.tick + 0.25 - 1e-6
