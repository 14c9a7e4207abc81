"""The daemon's path tracer: which link events trace, the limits, the rows, route changes.

The trace subprocess is replaced through the `command` seam by a small Python process that
prints a prepared trace (the real one is tested in test_trace_probe.py and in the lab), so the
limits and rows are tested without a network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import pytest

from fieldmon.agent.events import AgentEvents
from fieldmon.agent.trace.analysis import Hop, Trace
from fieldmon.agent.trace.runner import (
    PathTracer,
    TraceFailedError,
    run_trace_process,
    trace_command,
)
from fieldmon.agent.watch import Seen
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.wire.models import Sample
from fieldmon.firmware_hooks.hooks import EventName, HookEvent

CONFIG = SiteConfig.model_validate(
    {
        "site": "pavilion-2",
        "name": "P2",
        "parent_hospital": "central",
        "agent": {"id": "p2-pi", "broker": {"host": "127.0.0.1"}},
        "links": [
            {"name": "wan", "address": "192.0.2.1", "role": "parent", "interface": "eth0",
             "trace": {"cycles": 20, "interval": "100ms", "protocol": "tcp", "port": 8443}},
            {"name": "gw", "address": "192.0.2.254", "role": "gateway"},
        ],
    }
)  # fmt: skip
WAN = CONFIG.links[0]
ROUTE = ("10.0.0.1", "10.0.1.1", "10.0.2.1", "192.0.2.1")


def _trace(route: tuple[str, ...] = ROUTE, losses: tuple[int, ...] = (0, 0, 5, 4)) -> Trace:
    hops = tuple(
        Hop(ttl + 1, address, 20, (1.0 + ttl,) * (20 - lost))
        for ttl, (address, lost) in enumerate(zip(route, losses, strict=True))
    )
    return Trace("192.0.2.1", "icmp", 20, hops, True, started_ns=1_800_000_000 * 10**9)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTraces:
    """The `command` seam: a process that prints the next prepared trace (after `delay` s)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.traces: list[dict[str, object]] = []
        self.commands = 0
        self.delay = 0.0

    def add(self, trace: Trace | dict[str, object]) -> None:
        self.traces.append(trace.to_json() if isinstance(trace, Trace) else trace)

    def __call__(self, link: IcmpLinkConfig) -> list[str]:
        data = self.traces[min(self.commands, len(self.traces) - 1)]
        self.commands += 1
        path = self.folder / f"trace-{self.commands}.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        code = "import sys, time; time.sleep(float(sys.argv[2])); print(open(sys.argv[1]).read())"
        return [sys.executable, "-c", code, str(path), str(self.delay)]


def _event(kind: EventName, target: str = "wan") -> HookEvent:
    return HookEvent(kind, CONFIG.site, CONFIG.agent.id, time.time_ns(), target)


def _kinds(rows: list[Sample]) -> list[str]:
    return [row.measurement if row.measurement != "event" else row.tags["kind"] for row in rows]


@pytest.fixture
def fake(tmp_path: Path) -> FakeTraces:
    fake = FakeTraces(tmp_path)
    fake.add(_trace())
    return fake


def test_trace_command_follows_the_site_file() -> None:
    command = trace_command(WAN)
    assert command[:4] == [sys.executable, "-m", "fieldmon.agent.trace", "192.0.2.1"]
    options = dict(zip(command[4::2], command[5::2], strict=True))
    assert options == {
        "--protocol": "tcp", "--cycles": "20", "--interval": "0.1", "--timeout": "1",
        "--max-hops": "30", "--port": "8443", "--interface": "eth0",
    }  # fmt: skip


def test_a_degraded_link_is_traced_and_its_hops_published(fake: FakeTraces) -> None:
    asyncio.run(check_a_degraded_link_is_traced_and_its_hops_published(fake))


async def check_a_degraded_link_is_traced_and_its_hops_published(fake: FakeTraces) -> None:
    rows: list[Sample] = []
    tracer = PathTracer(CONFIG, rows.extend, command=fake)
    tracer.on_event(_event(EventName.LINK_DEGRADED))
    await tracer.wait()
    assert _kinds(rows) == ["path"] * 4 + ["path"]
    hops, event = rows[:4], rows[4]
    assert [row.tags for row in hops][2] == {
        "site": "pavilion-2", "agent": "p2-pi", "target": "wan", "hop": "3"
    }  # fmt: skip
    third = hops[2].fields
    assert third["address"] == "10.0.2.1"
    assert third["loss_pct"] == pytest.approx(25.0)
    assert (third["sent"], third["received"], third["protocol"]) == (20, 15, "icmp")
    assert third["rtt_p50_ms"] == third["rtt_p95_ms"] == 3.0
    assert {row.fields["trace_id"] for row in rows} == {event.fields["trace_id"]}
    assert all(row.time == 1_800_000_000 * 10**9 for row in hops)
    assert event.fields["summary"] == (
        "loss starts at hop 3, 10.0.2.1: 25 % there, 20 % at the far end; hops 1-2 clean"
    )
    assert event.fields["message"] == f"path to wan: {event.fields['summary']}"
    assert (event.fields["target"], event.fields["trigger"]) == ("wan", "link_degraded")
    assert (event.fields["loss_hop"], event.fields["loss_address"]) == (3, "10.0.2.1")
    assert event.fields["reached"] is True and event.fields["hops"] == 4


def test_only_parent_and_internet_links_on_state_changes(fake: FakeTraces) -> None:
    asyncio.run(check_only_parent_and_internet_links_on_state_changes(fake))


async def check_only_parent_and_internet_links_on_state_changes(fake: FakeTraces) -> None:
    tracer = PathTracer(CONFIG, lambda rows: None, command=fake)
    tracer.on_event(_event(EventName.LINK_DOWN, "gw"))  # a gateway link: never traced
    tracer.on_event(HookEvent(EventName.BOOT, CONFIG.site, CONFIG.agent.id, 1))
    await tracer.wait()
    assert fake.commands == 0


def test_limits_one_at_a_time_and_a_minimum_interval(fake: FakeTraces) -> None:
    asyncio.run(check_limits_one_at_a_time_and_a_minimum_interval(fake))


async def check_limits_one_at_a_time_and_a_minimum_interval(fake: FakeTraces) -> None:
    clock = Clock()
    tracer = PathTracer(CONFIG, lambda rows: None, command=fake, monotonic=clock)
    fake.delay = 0.3
    tracer.on_event(_event(EventName.LINK_DEGRADED))
    tracer.on_event(_event(EventName.LINK_DOWN))  # the first is still running
    await tracer.wait()
    assert fake.commands == 1
    clock.now += 299
    tracer.on_event(_event(EventName.LINK_DOWN))  # a bad state traced under 5 min ago
    tracer.on_event(_event(EventName.LINK_UP))
    await tracer.wait()
    assert fake.commands == 1
    clock.now += 2
    tracer.on_event(_event(EventName.LINK_UP))
    await tracer.wait()
    assert fake.commands == 2
    # A good state's trace never holds back the trace of a bad one.
    clock.now += 300
    tracer.on_event(_event(EventName.LINK_UP))
    await tracer.wait()
    tracer.on_event(_event(EventName.LINK_DEGRADED))
    await tracer.wait()
    assert fake.commands == 4


def test_a_trace_never_stalls_the_event_loop(fake: FakeTraces) -> None:
    asyncio.run(check_a_trace_never_stalls_the_event_loop(fake))


async def check_a_trace_never_stalls_the_event_loop(fake: FakeTraces) -> None:
    fake.delay = 2.0
    tracer = PathTracer(CONFIG, lambda rows: None, command=fake)
    tracer.on_event(_event(EventName.LINK_DEGRADED))
    for _ in range(1000):  # until the trace process is started (a fork: not what is measured)
        await asyncio.sleep(0.01)
        if fake.commands:
            break
    await asyncio.sleep(0.01)
    ticks, started = 0, time.monotonic()
    while time.monotonic() - started < 0.5:
        await asyncio.sleep(0.01)  # what a probe's round does between echoes
        ticks += 1
    # The loop ran on while the trace did: a blocking wait would have allowed one tick in 2 s.
    assert tracer.finished == []
    assert ticks >= 10
    await tracer.wait()
    assert fake.commands == 1 and len(tracer.finished) == 1


def test_a_route_change_against_the_last_good_route(fake: FakeTraces, tmp_path: Path) -> None:
    asyncio.run(check_a_route_change_against_the_last_good_route(fake, tmp_path))


async def check_a_route_change_against_the_last_good_route(
    fake: FakeTraces, tmp_path: Path
) -> None:
    state = tmp_path / "outbox.db.paths.json"
    rows: list[Sample] = []
    tracer = PathTracer(CONFIG, rows.extend, command=fake, state_file=state, monotonic=Clock())
    tracer.on_event(_event(EventName.LINK_UP))  # the good route
    await tracer.wait()
    assert json.loads(state.read_text()) == {"wan": list(ROUTE)}
    assert "path_change" not in _kinds(rows)
    rerouted = ("10.0.0.1", "10.9.9.1", "10.0.2.1", "192.0.2.1")
    fake.add(_trace(rerouted))
    # A new agent (a restart) still knows the good route.
    rows.clear()
    again = PathTracer(CONFIG, rows.extend, command=fake, state_file=state, monotonic=Clock())
    again.on_event(_event(EventName.LINK_DEGRADED))
    await again.wait()
    [change] = [row for row in rows if row.tags.get("kind") == "path_change"]
    assert change.fields["message"] == (
        "route to wan changed: was 10.0.0.1 > 10.0.1.1 > 10.0.2.1 > 192.0.2.1, "
        "now 10.0.0.1 > 10.9.9.1 > 10.0.2.1 > 192.0.2.1"
    )
    assert change.fields["new_route"] == " > ".join(rerouted)
    # A degraded link's route is not the good one.
    assert json.loads(state.read_text()) == {"wan": list(ROUTE)}


def test_a_failed_trace_publishes_nothing(
    fake: FakeTraces, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(check_a_failed_trace_publishes_nothing(fake, caplog))


async def check_a_failed_trace_publishes_nothing(
    fake: FakeTraces, caplog: pytest.LogCaptureFixture
) -> None:
    fake.traces = [{"error": "ICMP traces need root or CAP_NET_RAW (raw sockets)"}]
    rows: list[Sample] = []
    tracer = PathTracer(CONFIG, rows.extend, command=fake)
    with caplog.at_level(logging.WARNING):
        tracer.on_event(_event(EventName.LINK_DOWN))
        await tracer.wait()
    assert rows == []
    assert "need root" in caplog.records[-1].error  # type: ignore[attr-defined]


def test_a_trace_that_overruns_is_killed(fake: FakeTraces) -> None:
    asyncio.run(check_a_trace_that_overruns_is_killed(fake))


async def check_a_trace_that_overruns_is_killed(fake: FakeTraces) -> None:
    fake.delay = 30.0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_trace_process(WAN, fake, limit=0.5)
    assert time.monotonic() - started < 5
    fake.traces = [{"no": "trace"}]
    fake.delay = 0.0
    with pytest.raises(TraceFailedError, match="trace of wan"):
        await run_trace_process(WAN, fake)


def test_agent_events_hand_link_events_to_the_tracer(fake: FakeTraces) -> None:
    asyncio.run(check_agent_events_hand_link_events_to_the_tracer(fake))


async def check_agent_events_hand_link_events_to_the_tracer(fake: FakeTraces) -> None:
    rows: list[Sample] = []
    events = AgentEvents(CONFIG, rows.extend)
    tracer = PathTracer(CONFIG, rows.extend, command=fake)
    events.listeners.append(tracer.on_event)
    events.emit(Seen(EventName.LINK_DEGRADED, 1, "wan", {"state": "degraded", "previous": "ok"}))
    await tracer.wait()
    assert _kinds(rows) == ["link_state", *["path"] * 5]
