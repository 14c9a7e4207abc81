"""AgentEvents: the rounds it sees become hook events and a few `event` rows; hook runs become rows;
a boot is told apart from a restart by the boot id."""

from __future__ import annotations

from pathlib import Path

from fieldmon.agent.events import AgentEvents, hook_row, note_boot, read_boot_id
from fieldmon.agent.watch import Seen
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import Sample
from fieldmon.firmware_hooks.hooks import EventName, HookEvent, HookRun

NS = 10**9
T0 = 1_800_000_000 * NS
NOW = 1_800_000_500 * NS
CONFIG = SiteConfig.model_validate(
    {
        "site": "pavilion-2",
        "name": "P2",
        "parent_hospital": "central",
        "agent": {"id": "p2-pi", "broker": {"host": "127.0.0.1"}},
        "links": [{"name": "parent-gw", "address": "192.0.2.1", "role": "parent"}],
        "hooks": {"dir": "/etc/fieldmon/hooks"},
    }
)


class Dispatched:
    """Stands in for the hook runner: records what it is given."""

    def __init__(self) -> None:
        self.events: list[HookEvent] = []

    def dispatch(self, event: HookEvent) -> list[str]:
        self.events.append(event)
        return []


def _round(index: int, received: int) -> Sample:
    return Sample(
        measurement="link",
        tags={"site": "pavilion-2", "agent": "p2-pi", "target": "parent-gw", "role": "parent"},
        fields={"sent": 10, "received": received, "loss_pct": 100.0 - 10 * received},
        time=T0 + index * 10 * NS,
    )


def _events() -> tuple[AgentEvents, list[Sample], Dispatched]:
    rows: list[Sample] = []
    runner = Dispatched()
    events = AgentEvents(CONFIG, rows.extend, runner, clock=lambda: NOW)  # type: ignore[arg-type]
    return events, rows, runner


def test_link_changes_run_hooks_and_only_real_changes_become_rows() -> None:
    events, rows, runner = _events()
    for index in range(5):
        events.observe([_round(index, 10)])  # established: ok
    for index in range(5, 7):
        events.observe([_round(index, 0)])  # down
    assert [(e.event, e.target) for e in runner.events] == [
        (EventName.LINK_UP, "parent-gw"),
        (EventName.LINK_DOWN, "parent-gw"),
    ]
    assert runner.events[1].at == NOW
    assert runner.events[1].details["since"] == T0 + 50 * NS
    # The first judgement after a start is news to the hooks, not a state change for the NOC.
    [row] = rows
    assert (row.measurement, row.tags) == (
        "event",
        {"site": "pavilion-2", "agent": "p2-pi", "kind": "link_state"},
    )
    assert row.fields == {
        "message": "link parent-gw down since 08:00:50 UTC (loss 100 %), seen by the agent",
        "event": "link_down",
        "target": "parent-gw",
        "state": "down",
        "previous": "ok",
        "loss_pct": 100.0,
    }
    assert row.time == NOW


def test_broker_events_become_rows_and_hooks_without_a_target() -> None:
    events, rows, runner = _events()
    events.emit(Seen(EventName.BROKER_DOWN, NOW, details={"broker": "noc:8883", "down_s": 30.0}))
    [event] = runner.events
    assert event.target is None
    assert event.document()["broker"] == "noc:8883"
    assert rows[0].tags["kind"] == "broker_state"
    assert rows[0].fields["down_s"] == 30.0


def test_outbox_and_boot_events_run_hooks_without_rows_of_their_own() -> None:
    events, rows, runner = _events()
    events.emit(Seen(EventName.OUTBOX_DROPPING, NOW, details={"dropped_samples": 3}))
    events.emit(Seen(EventName.BOOT, NOW, details={"boot_id": "x", "uptime_s": 12.0}))
    assert [e.event for e in runner.events] == [EventName.OUTBOX_DROPPING, EventName.BOOT]
    assert rows == []


def test_a_hook_run_becomes_one_event_row() -> None:
    event = HookEvent(EventName.LINK_DOWN, "pavilion-2", "p2-pi", NOW, "parent-gw")
    run = HookRun(
        hook="50-lte-failover",
        event=event,
        started_ns=NOW + 5,
        duration_s=0.0421,
        exit_status=0,
        stdout="lte-failover: parent-gw link_down: default route moved to wwan0\n",
    )
    row = hook_row("pavilion-2", "p2-pi", run)
    assert row.tags == {"site": "pavilion-2", "agent": "p2-pi", "kind": "hook"}
    assert row.time == NOW + 5
    assert row.fields == {
        "message": "hook 50-lte-failover for link_down parent-gw: exit 0 in 42 ms",
        "event": "link_down",
        "target": "parent-gw",
        "hook": "50-lte-failover",
        "exit_status": 0,
        "duration_ms": 42.1,
        "output": "lte-failover: parent-gw link_down: default route moved to wwan0",
        "timed_out": False,
    }
    refused = HookRun(
        hook="20-x",
        event=HookEvent(EventName.BOOT, "pavilion-2", "p2-pi", NOW),
        started_ns=NOW,
        duration_s=0.0,
        exit_status=None,
        refused="hook /etc/fieldmon/hooks/20-x is owned by uid 1000, not root",
        queue_dropped=2,
    )
    fields = hook_row("pavilion-2", "p2-pi", refused).fields
    assert fields["refused"] is True
    assert "exit_status" not in fields and "target" not in fields
    assert fields["queue_dropped"] == 2
    assert str(fields["message"]).endswith(
        "refused: hook /etc/fieldmon/hooks/20-x is owned by uid 1000, not root"
    )


def test_the_first_start_after_a_boot_is_told_apart_from_a_restart(tmp_path: Path) -> None:
    seen = tmp_path / "outbox.db.boot-id"
    assert note_boot(seen, "boot-1")
    assert not note_boot(seen, "boot-1")  # the agent restarted; the machine did not
    assert note_boot(seen, "boot-2")
    assert seen.read_text() == "boot-2\n"
    assert not note_boot(seen, None)  # no boot id on this kernel: never a boot
    assert read_boot_id(tmp_path / "absent") is None
    this_boot = read_boot_id()
    assert this_boot is not None and len(this_boot) == 36
