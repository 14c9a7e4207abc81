"""Turns one link's state machine into alerts: which alert is visible, paged or not, and episodes.

The visible alert of a link is LinkFlapping while it flaps, else LinkDegraded / LinkDown by state,
else none. When it changes, the old one resolves and the new one fires; a resolve that is a
hand-over (degraded to down, down to degraded, into or out of flapping) says what the link is
now and names the alert that replaces it (`superseded_by`), so it never reads as a recovery.
A firing made from a late (history) round has `page=False`; the first live round of the same
episode pages it then. A resolve pages exactly when its firing was paged, so a resolve is never
lost and history never pages. An episode (visible alert from none back to none) that was never
paged completes as an `OutageReport`.

Severity: a parent link down is critical, degraded or flapping warning; links of other roles
(internet, gateway, ap) are one level lower: down warning, degraded or flapping info.

A path trace the agent made of the link (an `event` row of kind `path`) is kept as the link's
`path`; every notification of the episode it belongs to (traced at or after the bad streak
began) carries its summary as the annotation `path`, and one already paged is sent again with
it (`path_found`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    OutageReport,
    Severity,
    Transition,
    alert_labels,
    clock_text,
    iso_time,
)
from fieldmon.core.linkstate import (
    LinkMachine,
    LinkState,
    Round,
    Rules,
    Thresholds,
    worst_metric,
)
from fieldmon.core.site.links import LinkRole

_LOWER = {Severity.CRITICAL: Severity.WARNING, Severity.WARNING: Severity.INFO}
_BY_STATE = {LinkState.DEGRADED: AlertName.LINK_DEGRADED, LinkState.DOWN: AlertName.LINK_DOWN}
_WHAT = {
    AlertName.LINK_DEGRADED: "degraded",
    AlertName.LINK_DOWN: "down",
    AlertName.LINK_FLAPPING: "flapping",
}


def link_severity(alertname: AlertName, role: LinkRole) -> Severity:
    """Critical for a parent link down; see the module docstring for the rest."""
    base = Severity.CRITICAL if alertname is AlertName.LINK_DOWN else Severity.WARNING
    return base if role is LinkRole.PARENT else _LOWER[base]


@dataclass(frozen=True)
class LinkContext:
    """What a link's alerts are labelled and judged with (from config, never persisted)."""

    site: str
    link: str
    role: LinkRole
    agent: str
    parent_hospital: str
    site_name: str
    thresholds: Thresholds
    rules: Rules


@dataclass
class Firing:
    """The link's visible alert."""

    alertname: AlertName
    starts_at: int
    metric: str
    value: float
    paged: bool


@dataclass
class Episode:
    """From the first visible alert back to none: what an outage report summarises."""

    start: int
    worst_loss_pct: float = 0.0
    worst_rtt_ms: float | None = None
    backfilled: int = 0
    paged: bool = False
    alertnames: list[str] = field(default_factory=list)

    def add(self, round_: Round, late: bool, transitions: list[Transition]) -> None:
        """Fold one round and its transitions in."""
        self.worst_loss_pct = max(self.worst_loss_pct, round_.loss_pct)
        if round_.rtt_p95_ms is not None:
            self.worst_rtt_ms = max(self.worst_rtt_ms or 0.0, round_.rtt_p95_ms)
        self.backfilled += int(late)
        self.paged = self.paged or any(t.page for t in transitions)
        for transition in transitions:
            if transition.alertname.value not in self.alertnames:
                self.alertnames.append(transition.alertname.value)


@dataclass
class PathNote:
    """The agent's latest path trace of a link: its one-line summary, and when it ended."""

    at: int  # ns, the `path` event row's time
    summary: str


@dataclass
class LinkTrack:
    """One link's machine, visible alert and open episode."""

    machine: LinkMachine = field(default_factory=LinkMachine)
    firing: Firing | None = None
    episode: Episode | None = None
    # The bad streak before an alert fires, so a report counts the rounds that led up to it.
    lead: Episode | None = None
    path: PathNote | None = None

    def path_found(self, note: PathNote) -> bool:
        """Keep a newer trace; True when it belongs to the firing alert's episode (which the
        caller then notifies again, with the annotation)."""
        if self.path is not None and note.at <= self.path.at:
            return False
        self.path = note
        return self.firing is not None and self._current_path() is note

    def _current_path(self) -> PathNote | None:
        """The trace that belongs to the episode under way, if any."""
        if self.path is None:
            return None
        began = [e.start for e in (self.episode, self.lead) if e is not None]
        if self.firing is not None:
            began.append(self.firing.starts_at)
        return self.path if began and self.path.at >= min(began) else None

    def judge(
        self, round_: Round, ctx: LinkContext, *, late: bool
    ) -> tuple[list[Transition], OutageReport | None]:
        """Judge a round newer than the machine's newest; `late` rounds never page."""
        changes = self.machine.judge(round_, ctx.thresholds, ctx.rules)
        at = changes[-1].time if changes else round_.time
        wanted = self._wanted()
        out: list[Transition] = []
        if self.firing is not None and self.firing.alertname is not wanted:
            out.append(self._resolve(ctx, self.firing, round_, at, successor=wanted))
            self.firing = None
        if wanted is not None and self.firing is None:
            self.firing = self._new_firing(wanted, round_, ctx, late)
            out.append(self._fire(ctx, self.firing, round_, late, self._current_path()))
        elif self.firing is not None and not self.firing.paged and not late:
            # The episode began in history and is still on now: on-call must hear of it.
            self.firing.paged = True
            out.append(self._fire(ctx, self.firing, round_, False, self._current_path()))
        return out, self._track_episode(round_, ctx, late, out, at)

    def _wanted(self) -> AlertName | None:
        if self.machine.flapping:
            return AlertName.LINK_FLAPPING
        return _BY_STATE.get(self.machine.state)

    def _new_firing(
        self, alertname: AlertName, round_: Round, ctx: LinkContext, late: bool
    ) -> Firing:
        machine = self.machine
        if alertname is AlertName.LINK_FLAPPING:
            count = machine.changes_in_window(round_.time, ctx.rules)
            starts = machine.flapping_since or round_.time
            return Firing(alertname, starts, "state_changes", float(count), paged=not late)
        if alertname is AlertName.LINK_DOWN:
            metric, value = "loss_pct", round_.loss_pct
        else:
            metric, value = worst_metric(round_, ctx.thresholds)
        return Firing(alertname, machine.since or round_.time, metric, value, paged=not late)

    @staticmethod
    def _fire(
        ctx: LinkContext, firing: Firing, round_: Round, late: bool, path: PathNote | None
    ) -> Transition:
        annotations = link_annotations(ctx, firing, round_, late=late)
        if path is not None:
            annotations["path"] = path.summary
        return Transition(
            alertname=firing.alertname,
            labels=_labels(ctx, firing.alertname),
            annotations=annotations,
            state=AlertState.FIRING,
            starts_at=firing.starts_at,
            ends_at=None,
            value=firing.value,
            page=not late,
        )

    def _resolve(
        self, ctx: LinkContext, firing: Firing, round_: Round, at: int, successor: AlertName | None
    ) -> Transition:
        if firing.metric == "state_changes":
            value = float(self.machine.changes_in_window(round_.time, ctx.rules))
        else:
            value = round_.metrics().get(firing.metric) or 0.0
        annotations = link_annotations(
            ctx, firing, round_, late=not firing.paged, ended=Ending(at, successor)
        )
        path = self._current_path()
        if path is not None:
            annotations["path"] = path.summary
        return Transition(
            alertname=firing.alertname,
            labels=_labels(ctx, firing.alertname),
            annotations=annotations,
            state=AlertState.RESOLVED,
            starts_at=firing.starts_at,
            ends_at=max(at, firing.starts_at),
            value=value,
            page=firing.paged,
        )

    def _track_episode(
        self, round_: Round, ctx: LinkContext, late: bool, out: list[Transition], at: int
    ) -> OutageReport | None:
        episode = self._open_episode(round_, late)
        if episode is None:
            return None
        episode.add(round_, late, out)
        if self.firing is not None:
            return None
        self.episode = None
        if episode.paged:
            return None
        return OutageReport(
            site=ctx.site,
            link=ctx.link,
            start=episode.start,
            end=at,
            worst_loss_pct=episode.worst_loss_pct,
            worst_rtt_ms=episode.worst_rtt_ms,
            samples_backfilled=episode.backfilled,
            alertnames=episode.alertnames,
        )

    def _open_episode(self, round_: Round, late: bool) -> Episode | None:
        """The open episode, opening one when an alert just became visible."""
        if self.episode is not None:
            return self.episode
        if self.firing is None:
            self._track_lead(round_, late)
            return None
        self.episode = self.lead or Episode(start=self.firing.starts_at)
        self.episode.start, self.lead = self.firing.starts_at, None
        return self.episode

    def _track_lead(self, round_: Round, late: bool) -> None:
        if self.machine.streaks.bad.count == 0:
            self.lead = None
            return
        if self.lead is None:
            self.lead = Episode(start=round_.time)
        self.lead.add(round_, late, [])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        return {
            "machine": self.machine.to_dict(),
            "firing": asdict(self.firing) if self.firing else None,
            "episode": asdict(self.episode) if self.episode else None,
            "lead": asdict(self.lead) if self.lead else None,
            "path": asdict(self.path) if self.path else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkTrack:
        """Rebuild from `to_dict` output."""
        firing = data["firing"]
        if firing is not None:
            firing = Firing(**{**firing, "alertname": AlertName(firing["alertname"])})
        episode = Episode(**data["episode"]) if data["episode"] else None
        lead = Episode(**data["lead"]) if data.get("lead") else None
        path = PathNote(**data["path"]) if data.get("path") else None
        return cls(LinkMachine.from_dict(data["machine"]), firing, episode, lead, path)


def _labels(ctx: LinkContext, alertname: AlertName) -> dict[str, str]:
    return alert_labels(alertname, ctx.site, ctx.link, link_severity(alertname, ctx.role))


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


@dataclass(frozen=True)
class Ending:
    """Why a link alert resolves: at `at`, into `successor` (None: the link recovered)."""

    at: int
    successor: AlertName | None


def link_annotations(
    ctx: LinkContext, firing: Firing, round_: Round, *, late: bool, ended: Ending | None = None
) -> dict[str, str]:
    """Measured values and human text; strings, as Alertmanager wants them."""
    measured = f"loss {round_.loss_pct:.0f} %"
    if round_.rtt_p95_ms is not None:
        measured += f", rtt p95 {round_.rtt_p95_ms:.0f} ms"
    extra = {"superseded_by": ended.successor.value} if ended and ended.successor else {}
    story = _story(firing, ended, measured)
    return {
        "summary": f"{ctx.site}: {ctx.role.value} link {ctx.link} {story}",
        "description": _description(ctx, firing, late=late, ended=ended),
        "loss_pct": _fmt(round_.loss_pct, ""),
        "rtt_p95_ms": _fmt(round_.rtt_p95_ms, ""),
        "jitter_ms": _fmt(round_.jitter_ms, ""),
        "since": iso_time(firing.starts_at),
        "thresholds": (
            f"loss {ctx.thresholds.loss_pct:g} %, rtt p95 {ctx.thresholds.rtt_ms:g} ms, "
            f"jitter {ctx.thresholds.jitter_ms:g} ms"
        ),
        "role": ctx.role.value,
        "agent": ctx.agent,
        "parent_hospital": ctx.parent_hospital,
        "site_name": ctx.site_name,
        "history": "true" if late else "false",
        **extra,
    }


def _story(firing: Firing, ended: Ending | None, measured: str) -> str:
    """`down since 14:02:00 UTC (loss 100 %)` and the like, after the link's name."""
    what, since = _WHAT[firing.alertname], clock_text(firing.starts_at)
    if ended is None:
        return f"{what} since {since} ({measured})"
    if ended.successor is None:
        return f"recovered at {clock_text(ended.at)} ({what} from {since}; {measured})"
    return (
        f"now {_WHAT[ended.successor]}: {what} from {since} to {clock_text(ended.at)} ({measured})"
    )


def _description(ctx: LinkContext, firing: Firing, *, late: bool, ended: Ending | None) -> str:
    if late:
        return f"replayed history from {ctx.agent}; this episode is not live"
    if ended is not None and ended.successor is not None:
        return (
            f"not a recovery: {ctx.link} is now {_WHAT[ended.successor]}, "
            f"so {ended.successor.value} replaces {firing.alertname.value}"
        )
    if ended is not None:
        return f"{ctx.link} is back under its thresholds"
    if firing.alertname is AlertName.LINK_FLAPPING:
        return (
            f"{firing.value:.0f} state changes within the flap window; "
            "further changes are not notified until it settles"
        )
    if firing.alertname is AlertName.LINK_DOWN and ctx.role is LinkRole.PARENT:
        return (
            f"agent alive, parent link down: {ctx.agent} still reports (through a backup path) "
            f"but every probe to {ctx.link} is lost"
        )
    return f"{firing.metric} {firing.value:.1f} at or over its threshold"
