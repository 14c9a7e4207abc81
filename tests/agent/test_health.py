"""The agent's progress, judged for the watchdog: stuck probes, a disk that stopped answering,
a background task that died; never a target or a broker that does not answer."""

from __future__ import annotations

import pytest

from fieldmon.agent.health import OUTBOX_STALL_S, RunClocks, judge, status_line


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Probe:
    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval


def test_a_probe_is_overdue_after_three_of_its_intervals_and_slack() -> None:
    clock = _Clock()
    clocks = RunClocks(clock)
    fast, slow = _Probe("gw", 10.0), _Probe("ap-hall-a", 60.0)
    clocks.watch([fast, slow])
    clock.now += 39.0  # 3 x 10 s + 10 s slack, not yet past
    assert clocks.overdue() == []
    clock.now += 2.0
    assert clocks.overdue() == [("gw", 41.0)]
    clocks.finished(fast)
    assert clocks.overdue() == []
    clock.now += 140.0  # the slow one is allowed 3 x 60 s + 10 s = 190 s: 181 s so far
    assert [name for name, _ in clocks.overdue()] == ["gw"]
    clock.now += 10.0
    assert [name for name, _ in clocks.overdue()] == ["gw", "ap-hall-a"]


def test_watching_anew_forgets_the_old_probes_and_their_clocks() -> None:
    clock = _Clock()
    clocks = RunClocks(clock)
    old = _Probe("gw", 10.0)
    clocks.watch([old])
    clock.now += 100.0
    new = _Probe("gw", 10.0)  # the same name after a reload: a new probe, a new clock
    clocks.watch([new])
    assert clocks.overdue() == []
    clocks.finished(old)  # a run of the old set ending late changes nothing
    assert len(clocks) == 1


@pytest.mark.parametrize(
    ("overdue", "writing_for", "ended", "expected"),
    [
        ([], None, [], None),
        ([], 3.0, [], None),  # a commit under way, normally milliseconds
        ([], OUTBOX_STALL_S - 1, [], None),
        (
            [],
            OUTBOX_STALL_S + 1,
            [],
            "an outbox write has not returned for 121 s - is the disk failing?",
        ),
        ([("gw", 41.0)], None, [], "no finished probe run lately: gw (41 s)"),
        (
            [(f"ap-{n}", 200.0) for n in range(7)],
            None,
            [],
            "no finished probe run lately: ap-0 (200 s), ap-1 (200 s), ap-2 (200 s), "
            "ap-3 (200 s), ap-4 (200 s) and 2 more",
        ),
        (
            [("gw", 41.0)],
            None,
            ["the sender task ended (RuntimeError: boom)"],
            "the sender task ended (RuntimeError: boom); no finished probe run lately: gw (41 s)",
        ),
    ],
)
def test_judge(
    overdue: list[tuple[str, float]],
    writing_for: float | None,
    ended: list[str],
    expected: str | None,
) -> None:
    assert judge(overdue, writing_for, ended) == expected


@pytest.mark.parametrize(
    ("connected", "error", "expected"),
    [
        (True, None, "probing 12 targets; 40 samples waiting in the outbox; broker connected"),
        (
            False,
            "cannot reach the broker; retrying",
            "probing 12 targets; 40 samples waiting in the outbox; broker not connected "
            "(cannot reach the broker; retrying)",
        ),
        (False, None, "probing 12 targets; 40 samples waiting in the outbox; broker not connected"),
    ],
)
def test_status_line(connected: bool, error: str | None, expected: str) -> None:
    assert status_line(12, 40, connected, error) == expected
