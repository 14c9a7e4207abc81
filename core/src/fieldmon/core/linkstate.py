"""Per-link state machine (ok / degraded / down / flapping), judged per probe round by sample time.

One implementation for both daemons: the collector's alert engine pages from it, the agent runs
its own copy per link so that hooks act on the same judgement while the site is cut off. Data
and pure logic only, no I/O. The defaults (DEFAULT_THRESHOLDS, DEFAULT_RULES) are the
contract's; the collector's `alerting` section overrides them for the collector, a link's own
`thresholds` in the site file override them for that link in both daemons.

Each round is classified against the link's thresholds:

- LOST:  probes were sent and none came back (a LOST round is also BAD);
- BAD:   loss >= loss_pct, or rtt p95 >= rtt_ms, or jitter >= jitter_ms;
- GOOD:  every measured value under 80 % of its threshold (an absent rtt or jitter is fine);
- HOVER: anything in between. It counts neither as bad nor as clearing, and breaks both the
  bad and the good streak, so a link hovering at a threshold neither fires nor clears.

A streak is a run of consecutive rounds of one class. Transitions:

    any       2 LOST in a row                        -> down
    ok        for_rounds BAD in a row                -> degraded
    degraded  clear_rounds GOOD in a row             -> ok
    down      clear_rounds GOOD in a row             -> ok
    down      for_rounds BAD-but-answered in a row   -> degraded

A state change is dated at the first round of the streak that caused it ("down since 14:02").

Flapping: more than flap_changes state changes within flap_window (sample time) set `flapping`;
it clears once flap_window passes without a state change. The machine knows nothing about
labels, pages or lateness: it reports `Change`s and the engine turns them into alerts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from fieldmon.core.site.links import LinkThresholds
from fieldmon.core.wire.models import Sample

HYSTERESIS = 0.8  # clearing needs every value under this fraction of its threshold
DOWN_ROUNDS = 2  # all-lost rounds in a row that make a link down


class LinkState(StrEnum):
    """A link's judged health."""

    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


class Verdict(StrEnum):
    """How one round compares with the thresholds."""

    LOST = "lost"
    BAD = "bad"
    HOVER = "hover"
    GOOD = "good"


@dataclass(frozen=True)
class Thresholds:
    """When a round is bad; GOOD is under HYSTERESIS times each."""

    loss_pct: float
    rtt_ms: float
    jitter_ms: float


@dataclass(frozen=True)
class Rules:
    """Round counts and flap damping (the collector's come from its `alerting` section)."""

    for_rounds: int = 3
    clear_rounds: int = 5
    flap_changes: int = 4
    flap_window_ns: int = 600 * 10**9


# The contract's defaults (docs/contract.md, Alerts). The collector's AlertingConfig starts from
# these and may override them; the agent judges with them and each link's own thresholds.
DEFAULT_THRESHOLDS = Thresholds(loss_pct=5.0, rtt_ms=150.0, jitter_ms=30.0)
DEFAULT_RULES = Rules()


def link_thresholds(
    own: LinkThresholds | None, defaults: Thresholds = DEFAULT_THRESHOLDS
) -> Thresholds:
    """A link's thresholds: its own from the site file where set, else `defaults`."""
    if own is None:
        return defaults
    return Thresholds(
        loss_pct=defaults.loss_pct if own.loss_pct is None else own.loss_pct,
        rtt_ms=defaults.rtt_ms if own.rtt_ms is None else own.rtt_ms,
        jitter_ms=defaults.jitter_ms if own.jitter_ms is None else own.jitter_ms,
    )


@dataclass(frozen=True)
class Round:
    """The parts of a `link` sample the machine judges."""

    time: int  # ns, the round's start
    loss_pct: float
    lost: bool  # every probe lost
    rtt_p95_ms: float | None = None
    jitter_ms: float | None = None

    @classmethod
    def from_sample(cls, sample: Sample) -> Round | None:
        """None when the row carries neither loss_pct nor sent/received."""
        fields = sample.fields
        sent, received = _number(fields.get("sent")), _number(fields.get("received"))
        loss = _number(fields.get("loss_pct"))
        if loss is None and sent:
            loss = 100.0 * (sent - (received or 0.0)) / sent
        if loss is None:
            return None
        if sent is not None and received is not None:
            lost = sent > 0 and received == 0
        else:
            lost = loss >= 100.0
        return cls(
            time=sample.time,
            loss_pct=loss,
            lost=lost,
            rtt_p95_ms=_number(fields.get("rtt_p95_ms")),
            jitter_ms=_number(fields.get("jitter_ms")),
        )

    def metrics(self) -> dict[str, float | None]:
        """Measured values keyed like the thresholds."""
        return {"loss_pct": self.loss_pct, "rtt_ms": self.rtt_p95_ms, "jitter_ms": self.jitter_ms}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def classify(round_: Round, thresholds: Thresholds) -> Verdict:
    """LOST, BAD, HOVER or GOOD (see the module docstring)."""
    if round_.lost:
        return Verdict.LOST
    # The collector judges every link round it ingests: plain attribute reads, where
    # dataclasses.asdict (a deep copy) and a dict of metrics per round were most of its cost.
    values = [(round_.loss_pct, thresholds.loss_pct)]
    if round_.rtt_p95_ms is not None:
        values.append((round_.rtt_p95_ms, thresholds.rtt_ms))
    if round_.jitter_ms is not None:
        values.append((round_.jitter_ms, thresholds.jitter_ms))
    good = True
    for value, limit in values:
        if value >= limit:
            return Verdict.BAD
        if value >= HYSTERESIS * limit:
            good = False
    return Verdict.GOOD if good else Verdict.HOVER


def worst_metric(round_: Round, thresholds: Thresholds) -> tuple[str, float]:
    """The measured value closest to (or furthest over) its threshold: an alert's `value`."""
    limits = asdict(thresholds)
    present = [(name, value) for name, value in round_.metrics().items() if value is not None]
    return max(present, key=lambda item: item[1] / limits[item[0]])


@dataclass
class Streak:
    """A run of consecutive rounds of one kind: how many, and when the first began."""

    count: int = 0
    since: int | None = None

    def extend(self, time: int, matches: bool) -> None:
        """Count the round when it matches, otherwise break the run."""
        if not matches:
            self.count, self.since = 0, None
            return
        if self.count == 0:
            self.since = time
        self.count += 1


@dataclass
class Streaks:
    """The four runs the transitions look at."""

    bad: Streak = field(default_factory=Streak)
    lost: Streak = field(default_factory=Streak)
    answered_bad: Streak = field(default_factory=Streak)
    good: Streak = field(default_factory=Streak)

    def advance(self, verdict: Verdict, time: int) -> None:
        """Add one round."""
        self.bad.extend(time, verdict in (Verdict.BAD, Verdict.LOST))
        self.lost.extend(time, verdict is Verdict.LOST)
        self.answered_bad.extend(time, verdict is Verdict.BAD)
        self.good.extend(time, verdict is Verdict.GOOD)


def next_state(state: LinkState, streaks: Streaks, rules: Rules) -> tuple[LinkState, int | None]:
    """The state after this round and, when it changed, since when (the streak's start)."""
    if state is not LinkState.DOWN and streaks.lost.count >= DOWN_ROUNDS:
        return LinkState.DOWN, streaks.lost.since
    if state is LinkState.OK and streaks.bad.count >= rules.for_rounds:
        return LinkState.DEGRADED, streaks.bad.since
    if state is not LinkState.OK and streaks.good.count >= rules.clear_rounds:
        return LinkState.OK, streaks.good.since
    if state is LinkState.DOWN and streaks.answered_bad.count >= rules.for_rounds:
        return LinkState.DEGRADED, streaks.answered_bad.since
    return state, None


class ChangeKind(StrEnum):
    """What a round changed."""

    STATE = "state"
    FLAP_START = "flap_start"
    FLAP_END = "flap_end"


@dataclass(frozen=True)
class Change:
    """A state change or a flapping edge, dated in sample time."""

    kind: ChangeKind
    time: int
    old: LinkState
    new: LinkState


@dataclass
class LinkMachine:
    """One link's judged state; feed it rounds in sample-time order with `judge`."""

    state: LinkState = LinkState.OK
    since: int | None = None  # when the current state began
    newest: int | None = None  # the newest round judged
    streaks: Streaks = field(default_factory=Streaks)
    changes: list[int] = field(default_factory=list)  # recent state-change round times
    flapping: bool = False
    flapping_since: int | None = None

    def judge(self, round_: Round, thresholds: Thresholds, rules: Rules) -> list[Change]:
        """Take one round newer than any judged so far; return what changed."""
        self.newest = round_.time
        self.streaks.advance(classify(round_, thresholds), round_.time)
        changes: list[Change] = []
        new, since = next_state(self.state, self.streaks, rules)
        if new is not self.state:
            changes.append(Change(ChangeKind.STATE, since or round_.time, self.state, new))
            self.state, self.since = new, since
            self.changes.append(round_.time)
        flap = self._flap_edge(round_.time, rules, changed=bool(changes))
        if flap is not None:
            changes.append(flap)
        return changes

    def changes_in_window(self, now: int, rules: Rules) -> int:
        """State changes within flap_window before `now` (sample time)."""
        return sum(1 for time in self.changes if now - time < rules.flap_window_ns)

    def _flap_edge(self, now: int, rules: Rules, *, changed: bool) -> Change | None:
        self.changes = [time for time in self.changes if now - time < rules.flap_window_ns]
        if not self.flapping and len(self.changes) > rules.flap_changes:
            self.flapping, self.flapping_since = True, now
            return Change(ChangeKind.FLAP_START, now, self.state, self.state)
        if self.flapping and not changed and not self.changes:
            self.flapping, self.flapping_since = False, None
            return Change(ChangeKind.FLAP_END, now, self.state, self.state)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkMachine:
        """Rebuild from `to_dict` output."""
        streaks = Streaks(**{name: Streak(**run) for name, run in data["streaks"].items()})
        return cls(
            state=LinkState(data["state"]),
            since=data["since"],
            newest=data["newest"],
            streaks=streaks,
            changes=list(data["changes"]),
            flapping=data["flapping"],
            flapping_since=data["flapping_since"],
        )
