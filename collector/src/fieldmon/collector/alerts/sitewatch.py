"""SiteUnreachable: a site silent for the silence timeout, or whose agent left a last will.

Silence is judged by arrival time (the collector's clock), unlike link alerts: it is about
whether anything reaches us now. After a collector start, every site gets a full silence
timeout before it can be called silent. Any envelope, or a birth (`online`) status, resolves it.
The alert text tells "site silent" (nothing arrives at all) apart from a last will; an agent that
still reports while its parent link is down raises LinkDown ("agent alive, parent link down"),
never SiteUnreachable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
    clock_text,
    iso_time,
)

NS = 10**9


@dataclass(frozen=True)
class SiteContext:
    """A site's identity for labels and text."""

    site: str
    agent: str
    parent_hospital: str
    site_name: str


@dataclass
class SiteWatch:
    """When a site was last heard, its last will, and its SiteUnreachable alert."""

    heard_at: float | None = None  # collector clock, seconds
    offline_at: float | None = None  # when a last will arrived (collector clock)
    offline_reason: str | None = None
    firing_since: int | None = None  # ns; None when SiteUnreachable is not firing
    firing_cause: str | None = None  # "silent" or "offline"

    def heard(self, ctx: SiteContext, now: float) -> list[Transition]:
        """An envelope (or a birth) arrived: clear the will, resolve SiteUnreachable."""
        self.heard_at, self.offline_at, self.offline_reason = now, None, None
        return self._resolve(ctx, now)

    def last_will(self, now: float, reason: str | None) -> None:
        """The broker published the agent's `offline` will; judged at the next tick."""
        if self.offline_at is None:
            self.offline_at, self.offline_reason = now, reason

    def tick(
        self, ctx: SiteContext, now: float, started: float, silence: float, grace: float
    ) -> list[Transition]:
        """Fire SiteUnreachable when silent for `silence` or offline for `grace`."""
        if self.firing_since is not None:
            return []
        reference = max(self.heard_at or started, started)
        if self.offline_at is not None and now - self.offline_at >= grace:
            return [self._fire(ctx, "offline", self.offline_at, now)]
        if now - reference >= silence:
            return [self._fire(ctx, "silent", reference, now)]
        return []

    def _fire(self, ctx: SiteContext, cause: str, since: float, now: float) -> Transition:
        self.firing_since, self.firing_cause = int(since * NS), cause
        return _transition(ctx, self, AlertState.FIRING, now, ends_at=None)

    def _resolve(self, ctx: SiteContext, now: float) -> list[Transition]:
        if self.firing_since is None:
            return []
        transition = _transition(ctx, self, AlertState.RESOLVED, now, ends_at=int(now * NS))
        self.firing_since, self.firing_cause = None, None
        return [transition]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteWatch:
        """Rebuild from `to_dict` output."""
        return cls(**data)


def _transition(
    ctx: SiteContext, watch: SiteWatch, state: AlertState, now: float, ends_at: int | None
) -> Transition:
    since = watch.firing_since or 0
    silent_s = max(0.0, now - since / NS)
    labels = alert_labels(AlertName.SITE_UNREACHABLE, ctx.site, ctx.agent, Severity.CRITICAL)
    return Transition(
        alertname=AlertName.SITE_UNREACHABLE,
        labels=labels,
        annotations=_annotations(ctx, watch, state, silent_s),
        state=state,
        starts_at=since,
        ends_at=ends_at,
        value=round(silent_s, 3),
        page=True,
    )


def _annotations(
    ctx: SiteContext, watch: SiteWatch, state: AlertState, silent_s: float
) -> dict[str, str]:
    since = watch.firing_since or 0
    if state is AlertState.RESOLVED:
        summary = f"{ctx.site}: reporting again after {silent_s:.0f} s"
        description = f"{ctx.agent} is heard again"
    elif watch.firing_cause == "offline":
        summary = f"{ctx.site}: agent {ctx.agent} offline (last will) since {clock_text(since)}"
        reason = f" ({watch.offline_reason})" if watch.offline_reason else ""
        description = (
            f"the broker published {ctx.agent}'s last will{reason}: its connection ended "
            "without a goodbye and no birth followed"
        )
    else:
        summary = f"{ctx.site}: site silent for {silent_s:.0f} s (last heard {clock_text(since)})"
        description = (
            f"site silent: nothing from {ctx.agent} on any path; the site, all its uplinks or "
            "the agent are down (an agent alive behind a down parent link would still report)"
        )
    return {
        "summary": summary,
        "description": description,
        "cause": watch.firing_cause or "",
        "silent_s": f"{silent_s:.0f}",
        "since": iso_time(since),
        "agent": ctx.agent,
        "parent_hospital": ctx.parent_hospital,
        "site_name": ctx.site_name,
        "history": "false",
    }
