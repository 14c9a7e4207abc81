"""Is the agent making progress? Judged before every ping of systemd's watchdog.

The watchdog (fieldmon.core.systemd) runs on the event loop, so a blocked loop stops it by
itself. What a running loop can still hide: a probe whose run never ends (the scheduler cuts a
run short at its interval, but a run that ignores cancellation, or a scheduler task that died,
never comes round again), an outbox write that never returns (a failing SD card), or a
background task (batcher, sender) that ended with an exception, so nothing is committed or
sent any more. Each of those makes `judge` name the problem; the watchdog then stops pinging
and systemd restarts the agent.

What is not a stall: a target that does not answer (its probe finishes its run and says so), a
broker that cannot be reached (the outbox keeps the samples), a full outbox (it drops and counts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fieldmon.agent.probes.base import Probe

# A probe that has not finished a run for this many of its intervals is stuck. Its first run
# starts at a random phase within the first interval, so two would already be generous.
STALL_ROUNDS = 3
# Added to every probe's allowance: a busy Pi may start a round late.
STALL_SLACK_S = 10.0
# An outbox write (one SQLite commit, normally milliseconds) still running after this long means
# the disk is not answering.
OUTBOX_STALL_S = 120.0


@dataclass
class _Clock:
    name: str
    interval: float
    last: float  # monotonic time of the last finished run (or of when watching began)


class RunClocks:
    """When each running probe last finished a run; the scheduler reports every run's end."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._probes: dict[int, _Clock] = {}

    def watch(self, probes: Iterable[Probe]) -> None:
        """Watch these probes from now, and no others (a reload replaces them all)."""
        now = self._clock()
        self._probes = {id(probe): _Clock(probe.name, probe.interval, now) for probe in probes}

    def finished(self, probe: Probe) -> None:
        """`probe` finished a run (with samples, a failure or cut short: the scheduler turned)."""
        clock = self._probes.get(id(probe))
        if clock is not None:
            clock.last = self._clock()

    def overdue(
        self, *, rounds: float = STALL_ROUNDS, slack: float = STALL_SLACK_S
    ) -> list[tuple[str, float]]:
        """(name, seconds since its last finished run) of each probe past its allowance."""
        now = self._clock()
        return [
            (clock.name, now - clock.last)
            for clock in self._probes.values()
            if now - clock.last > rounds * clock.interval + slack
        ]

    def __len__(self) -> int:
        return len(self._probes)


def judge(
    overdue: list[tuple[str, float]],
    writing_for: float | None,
    ended: list[str],
    *,
    outbox_stall: float = OUTBOX_STALL_S,
) -> str | None:
    """The agent's problem in words, or None while it makes progress.

    `overdue`: probes past their allowance (RunClocks.overdue); `writing_for`: seconds the
    current outbox write has been running (None: none running); `ended`: ended_tasks().
    """
    problems = list(ended)
    if writing_for is not None and writing_for > outbox_stall:
        problems.append(
            f"an outbox write has not returned for {writing_for:.0f} s - is the disk failing?"
        )
    if overdue:
        names = ", ".join(f"{name} ({seconds:.0f} s)" for name, seconds in overdue[:5])
        more = f" and {len(overdue) - 5} more" if len(overdue) > 5 else ""
        problems.append(f"no finished probe run lately: {names}{more}")
    return "; ".join(problems) or None


def status_line(probes: int, waiting: int, connected: bool, broker_error: str | None) -> str:
    """The agent's STATUS= line for `systemctl status`."""
    if connected:
        broker = "broker connected"
    else:
        broker = "broker not connected" + (f" ({broker_error})" if broker_error else "")
    return f"probing {probes} targets; {waiting} samples waiting in the outbox; {broker}"
