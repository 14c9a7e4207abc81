"""The scheduler runs each probe on its interval, never overlapping, surviving failures."""

from __future__ import annotations

import asyncio
import random

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
