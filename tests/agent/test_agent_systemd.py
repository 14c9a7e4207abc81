"""The agent under systemd: READY once serving, STATUS, STOPPING, and a watchdog fed only while
its event loop and its probes make progress."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from fieldmon.agent.health import RunClocks, judge
from fieldmon.agent.scheduler import run_probe_forever
from fieldmon.core.systemd import Health, Notifier, Watchdog
from fieldmon.core.wire.models import Sample
from fieldmon.lab.process import script, start, wait_for
from fieldmon.lab.sitefiles import loopback_site
from fieldmon.lab.systemd import (
    NotifyListener,
    notify_command,
    stall_hook,
    stall_marks,
)

WATCHDOG_S = 1.5  # pings every 0.5 s
STALL_S = 4.0


def _site(directory: Path) -> Path:
    # Nothing listens on its broker port: the agent is serving without a broker (a site offline).
    return loopback_site(directory, outbox=directory / "outbox.db", echoes=3)


def test_a_stalled_event_loop_stops_the_watchdog_pings_while_the_agent_lives(
    tmp_path: Path,
) -> None:
    listener = NotifyListener()
    hook = tmp_path / "hook"
    env = {
        **os.environ,
        **listener.environment(watchdog_s=WATCHDOG_S),
        **stall_hook(hook, STALL_S),
    }
    command = notify_command([script("fieldmon-agent"), "run", "--config", _site(tmp_path)])
    agent = start(command, tmp_path / "agent.log", env=env)
    try:
        [ready] = wait_for(lambda: listener.with_field("READY", "1"), "READY=1", 60, daemons=agent)
        assert ready.fields["STATUS"].startswith("probing 2 targets;"), ready.fields
        # Fed while it makes progress (the first probe runs start within one interval).
        wait_for(lambda: len(listener.pings()) >= 6, "six watchdog pings", 10, daemons=agent)

        agent.send_signal(signal.SIGUSR1)  # the hook blocks the event loop's thread
        [begin] = wait_for(lambda: stall_marks(hook)["begin"], "the stall to begin", 5)
        [end] = wait_for(lambda: stall_marks(hook)["end"], "the stall to end", STALL_S + 5)
        assert agent.running(), agent.tail()  # alive through the stall, just not progressing
        wait_for(lambda: max(listener.pings()) > end, "pings after the stall", 5, daemons=agent)

        pings = listener.pings()
        # A ping sent just before the stall may arrive a moment after it began.
        during = [at for at in pings if begin + 0.3 < at < end]
        assert during == [], f"pinged while the loop was blocked: {during}"
        before = max(at for at in pings if at <= begin + 0.3)
        after = min(at for at in pings if at > end)
        assert after - before >= STALL_S - 0.5
        # Once the loop runs again, so do the probes: the pings resume at their pace.
        wait_for(
            lambda: len([at for at in listener.pings() if at > end]) >= 4,
            "steady pings after the stall",
            5,
            daemons=agent,
        )
        assert agent.stop() == 0, agent.tail()
        stopping = listener.with_field("STOPPING", "1")
        assert len(stopping) == 1
        assert stopping[0].fields["STATUS"] == "stopping: flushing the outbox"
    finally:
        agent.stop()
        listener.close()


class _Stubborn:
    """A probe whose run, once `hang` is set, cannot be cut short: it swallows cancellation
    (a run stuck in code that catches CancelledError) until `release()`."""

    def __init__(self) -> None:
        self.name = "stubborn"
        self.interval = 0.1
        self.hang = False
        self._released = asyncio.Event()

    async def collect(self) -> list[Sample]:
        while self.hang and not self._released.is_set():
            try:
                await self._released.wait()
            except asyncio.CancelledError:
                continue
        return [Sample(measurement="link", tags={"target": "x"}, fields={"up": True}, time=1)]

    def release(self) -> None:
        self._released.set()


def test_a_probe_that_never_finishes_stops_the_pings_and_they_resume_when_it_does() -> None:
    """The event loop runs (the watchdog task ticks) but the scheduler no longer turns: the
    watchdog must go unfed, say which probe, and be fed again once the probe finishes."""
    listener = NotifyListener()
    notifier = Notifier.from_environment(listener.environment(watchdog_s=0.3))
    probe = _Stubborn()
    clocks = RunClocks()
    clocks.watch([probe])

    def check() -> Health:
        problem = judge(clocks.overdue(rounds=3, slack=0.0), None, [])
        return Health("probing", problem)

    watchdog = Watchdog(notifier, check, period=0.05)

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(
                run_probe_forever(probe, lambda _s: None, finished=clocks.finished)
            ),
            asyncio.create_task(watchdog.run()),
        ]
        await asyncio.sleep(0.6)  # runs finishing every 0.1 s: fed
        probe.hang = True
        hung_at = loop.time()
        await asyncio.sleep(1.2)  # the run hangs: overdue after 3 intervals
        assert watchdog.stalled is not None
        probe.release()
        released_at = loop.time()
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return hung_at, released_at

    try:
        hung_at, released_at = asyncio.run(scenario())
        wait_for(lambda: listener.pings() and listener.pings()[-1] > released_at, "pings", 2)
    finally:
        listener.close()
    pings = listener.pings()
    assert [at for at in pings if at < hung_at]  # fed before
    # Overdue from 0.3 s after the last finished run: nothing from then until the release.
    assert [at for at in pings if hung_at + 0.45 < at < released_at] == []
    assert [at for at in pings if at > released_at]  # fed again once the run finished
    stalled = [
        n.fields["STATUS"] for n in listener.with_field("STATUS") if "stalled" in n.fields["STATUS"]
    ]
    assert stalled
    assert stalled[0].startswith("stalled: no finished probe run lately: stubborn (")
    assert watchdog.stalled is None
