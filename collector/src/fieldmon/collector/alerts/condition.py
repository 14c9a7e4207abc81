"""A debounced yes/no condition judged by sample time: the core of device and agent alerts.

Each sample is BAD (the condition holds), GOOD (clearly does not hold) or HOVER (between the
threshold and its hysteresis level: it neither fires nor clears, and breaks both streaks, so a
value hovering at a threshold never flaps). The condition fires once `fire_samples` BAD samples
in a row span at least `fire_s` of sample time, and clears once `clear_samples` GOOD samples in
a row span `clear_s`. Firing is dated at the first BAD sample, clearing at the first GOOD one.

Paging follows the link alerts (fieldmon.collector.alerts.linktrack): a firing judged from a late
(history) sample does not page; the next live sample that still shows the condition pages it; a
resolve pages exactly when its firing was paged. The machine knows nothing of labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from fieldmon.collector.alerts.model import AlertState
from fieldmon.core.linkstate import Streak

NS = 10**9
HYSTERESIS = 0.8  # a numeric condition clears only under this fraction of its threshold


class Verdict(StrEnum):
    """How one sample compares with the condition."""

    BAD = "bad"
    HOVER = "hover"
    GOOD = "good"


def numeric_verdict(value: float, threshold: float) -> Verdict:
    """BAD at or over `threshold`, GOOD under HYSTERESIS times it, HOVER in between."""
    if value >= threshold:
        return Verdict.BAD
    if value < HYSTERESIS * threshold:
        return Verdict.GOOD
    return Verdict.HOVER


def floor_verdict(value: float, floor: float) -> Verdict:
    """For a value that is bad when low (days of certificate left): BAD under `floor`, GOOD at or
    over `floor` / HYSTERESIS, HOVER in between."""
    if value < floor:
        return Verdict.BAD
    if value >= floor / HYSTERESIS:
        return Verdict.GOOD
    return Verdict.HOVER


@dataclass(frozen=True)
class Debounce:
    """How long a condition must hold to fire, and be gone to clear (samples and sample time)."""

    fire_samples: int = 1
    fire_s: float = 0.0
    clear_samples: int = 1
    clear_s: float = 0.0


@dataclass
class Firing:
    """The condition's open alert."""

    starts_at: int  # ns, the first BAD sample of the streak that fired
    value: float  # the value when it fired
    peak: float  # the worst value seen while firing
    paged: bool
    cause: str = ""  # what made it fire, for the text ("down", "missing", ...)


@dataclass(frozen=True)
class Change:
    """The condition firing, being paged late, or resolving (times ns, sample time)."""

    state: AlertState
    firing: Firing
    at: int
    page: bool


@dataclass
class ConditionTrack:
    """One condition's streaks and open alert; feed it samples in sample-time order."""

    newest: int | None = None  # the newest sample judged
    bad: Streak = field(default_factory=Streak)
    good: Streak = field(default_factory=Streak)
    firing: Firing | None = None
    # Whether BAD samples count yet: device alerts arm once the thing was seen working.
    armed: bool = True

    def judge(
        self,
        at: int,
        verdict: Verdict,
        value: float,
        debounce: Debounce,
        *,
        late: bool,
        cause: str = "",
    ) -> list[Change]:
        """Take one sample newer than any judged; return what changed."""
        self.newest = at
        self.bad.extend(at, verdict is Verdict.BAD)
        self.good.extend(at, verdict is Verdict.GOOD)
        firing = self.firing
        if firing is None:
            if self._holds(self.bad, at, debounce.fire_samples, debounce.fire_s):
                since = self.bad.since if self.bad.since is not None else at
                self.firing = Firing(since, value, value, paged=not late, cause=cause)
                return [Change(AlertState.FIRING, self.firing, since, page=not late)]
            return []
        if verdict is Verdict.BAD:
            firing.peak = max(firing.peak, value)
        if self._holds(self.good, at, debounce.clear_samples, debounce.clear_s):
            self.firing = None
            end = max(self.good.since or at, firing.starts_at)
            return [Change(AlertState.RESOLVED, firing, end, page=firing.paged)]
        if not firing.paged and not late and verdict is not Verdict.GOOD:
            # Began in history and still holds now: on-call must hear of it.
            firing.paged = True
            return [Change(AlertState.FIRING, firing, firing.starts_at, page=True)]
        return []

    def force_fire(self, since: int, value: float, cause: str) -> list[Change]:
        """Fire now (live) without a BAD sample, e.g. for a radio that stopped reporting."""
        if self.firing is not None:
            return []
        self.good = Streak()
        self.firing = Firing(since, value, value, paged=True, cause=cause)
        return [Change(AlertState.FIRING, self.firing, since, page=True)]

    @staticmethod
    def _holds(streak: Streak, at: int, samples: int, seconds: float) -> bool:
        if streak.count < samples or streak.since is None:
            return False
        return at - streak.since >= seconds * NS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionTrack:
        """Rebuild from `to_dict` output."""
        firing = Firing(**data["firing"]) if data.get("firing") else None
        return cls(
            newest=data["newest"],
            bad=Streak(**data["bad"]),
            good=Streak(**data["good"]),
            firing=firing,
            armed=data.get("armed", True),
        )
