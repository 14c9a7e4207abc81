"""The alert engine: samples and statuses in, alert transitions and outage reports out (no I/O).

Link rounds are judged by sample time (fieldmon.core.linkstate). Per (site, link):

- a round newer than the newest judged goes to the live track; it is `late` (history, never
  pages) when it arrives more than the link's interval plus `late_after` after its sample time;
- a round at or before the newest judged (out of order, replayed after an outage) goes to a
  separate history track, judged in its own order: its transitions never page but still give
  `alert` rows at their own timestamps, and an episode it completes becomes an OutageReport;
- an exact duplicate of a recently judged round (an agent's resend) is ignored;
- a sample dated more than `max_time_ahead` after the engine's clock is ignored and counted
  (`ignored_ahead`): the agent's clock is wrong, and judging it would make every real round
  after it look older than the newest, i.e. history that never pages.

SiteUnreachable is time-based (fieldmon.collector.alerts.sitewatch), evaluated by `tick`.
An `event` row of kind `path` (the agent's trace of a link) gives the link's alerts the
annotation `path`; a paged alert of the episode it belongs to is sent again with it
(fieldmon.collector.alerts.linktrack).
`ap`, `snmp_if` and `host` rows feed the device and agent alerts (fieldmon.collector.alerts.kinds)
by the same live / history rules; envelope seqs and outbox drops feed AgentDataLoss
(fieldmon.collector.alerts.dataloss).
The engine keeps `active_alerts()` (paged and firing) for notifiers that re-send, and marks
itself `dirty` whenever something worth persisting changed (see fieldmon.collector.alerts.store).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fieldmon.collector.alerts.dataloss import DataLossWatch
from fieldmon.collector.alerts.kinds import ConditionAlerts
from fieldmon.collector.alerts.linktrack import LinkContext, LinkTrack, PathNote
from fieldmon.collector.alerts.model import AlertName, AlertState, OutageReport, Transition
from fieldmon.collector.alerts.sitewatch import SiteContext, SiteWatch
from fieldmon.collector.config import DEFAULT_MAX_TIME_AHEAD_S, AlertingConfig
from fieldmon.core.linkstate import Round, Rules, Thresholds, link_thresholds
from fieldmon.core.site.links import IcmpLinkConfig, LinkRole
from fieldmon.core.wire.models import Envelope, Sample

if TYPE_CHECKING:
    # A type only: the collector's alert role never needs the agent's probe machinery.
    from fieldmon.core.site.config import SiteConfig

NS = 10**9
SNAPSHOT_VERSION = 1
RECENT_ROUNDS = 512  # per link: how far back an exact resend is recognised
DEFAULT_INTERVAL = 10.0  # seconds, for a link the site file does not list
_LINK_ALERTS = frozenset(
    {AlertName.LINK_DEGRADED.value, AlertName.LINK_DOWN.value, AlertName.LINK_FLAPPING.value}
)


class RecentTimes:
    """A bounded set of recently judged round times, to drop exact resends."""

    def __init__(self, size: int = RECENT_ROUNDS) -> None:
        self._order: deque[int] = deque()
        self._members: set[int] = set()
        self._size = size

    def add(self, value: int) -> bool:
        """Remember `value`; False when it was already there."""
        if value in self._members:
            return False
        self._order.append(value)
        self._members.add(value)
        if len(self._order) > self._size:
            self._members.discard(self._order.popleft())
        return True


class AlertEngine:
    """Per-site and per-link alert state; every method returns the transitions it caused."""

    def __init__(
        self,
        sites: dict[str, SiteConfig],
        config: AlertingConfig,
        clock: Callable[[], float] = time.time,
        *,
        max_time_ahead: float = DEFAULT_MAX_TIME_AHEAD_S,
    ) -> None:
        self._sites = sites
        self._config = config
        self._clock = clock
        self._max_time_ahead = max_time_ahead
        self.ignored_ahead = 0
        self._started = clock()
        self._rules = Rules(
            for_rounds=config.for_rounds,
            clear_rounds=config.clear_rounds,
            flap_changes=config.flap_changes,
            flap_window_ns=int(config.flap_window * NS),
        )
        self._live: dict[tuple[str, str], LinkTrack] = {}
        self._history: dict[tuple[str, str], LinkTrack] = {}
        self._recent: dict[tuple[str, str], RecentTimes] = {}
        self._contexts: dict[tuple[str, str], tuple[LinkContext, float]] = {}
        self._watches = {site: SiteWatch() for site in sites}
        # The links each site file names: only they get alert state (ingest refuses the rest;
        # this holds even for a sample that reached the engine some other way).
        self._links = {site: {link.name for link in config.links} for site, config in sites.items()}
        self._active: dict[tuple[str, ...], Transition] = {}
        self._reports: list[OutageReport] = []
        self._conditions = ConditionAlerts(sites, config, clock, self._started)
        self._data_loss = DataLossWatch(
            self._conditions.views, config.data_loss_grace, config.data_loss_clear
        )
        self.dirty = False

    # --- inputs -------------------------------------------------------------------------------

    def observe_envelope(self, envelope: Envelope) -> list[Transition]:
        """Every sample of an envelope (the site is heard even when it carries none)."""
        out = self._heard(envelope.site)
        now = self._clock()
        self._conditions.heard(envelope.site, now)
        out.extend(
            self._data_loss.observe(envelope.site, envelope.agent, envelope.carried_seqs(), now)
        )
        for sample in envelope.samples:
            out.extend(self._judge_sample(envelope.site, sample, now))
        return self._record(out)

    def observe(self, sample: Sample) -> list[Transition]:
        """One sample: its site is heard; link, device and agent rows are judged."""
        site = sample.tags.get("site", "")
        out = self._heard(site)
        out.extend(self._judge_sample(site, sample, self._clock()))
        return self._record(out)

    def observe_status(
        self, site: str, agent: str, state: str, at: int | None = None, reason: str | None = None
    ) -> list[Transition]:
        """A birth (`online`) or last will (`offline`) from the status topic.

        Judged by arrival: a will's payload (and its `at`) is written when the agent connects,
        not when it dies, so `at` is accepted for the caller's convenience but not trusted.
        """
        config = self._sites.get(site)
        if config is None or config.agent.id != agent:
            return []
        if state == "online":
            return self._record(self._heard(site))
        self._watches[site].last_will(self._clock(), reason)
        self.dirty = True
        return []

    def tick(self, now: float | None = None) -> list[Transition]:
        """Time-based alerts (SiteUnreachable, missing radios, data loss); call every second."""
        now = self._clock() if now is None else now
        out: list[Transition] = []
        for site, watch in self._watches.items():
            out.extend(
                watch.tick(
                    self._site_context(site),
                    now,
                    self._started,
                    self._config.silence_timeout,
                    self._config.offline_grace,
                )
            )
        out.extend(self._conditions.tick(now))
        out.extend(self._data_loss.tick(now))
        return self._record(out)

    # --- outputs ------------------------------------------------------------------------------

    def take_reports(self) -> list[OutageReport]:
        """Outage reports completed since the last call."""
        reports, self._reports = self._reports, []
        return reports

    def active_alerts(self) -> list[Transition]:
        """Alerts firing now that were paged: what a notifier re-sends."""
        return list(self._active.values())

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume without re-paging or losing a resolve; clears `dirty`."""
        self.dirty = False
        return {
            "version": SNAPSHOT_VERSION,
            "live": {_key_text(key): track.to_dict() for key, track in self._live.items()},
            "history": {_key_text(key): track.to_dict() for key, track in self._history.items()},
            "sites": {site: watch.to_dict() for site, watch in self._watches.items()},
            "active": [transition.to_dict() for transition in self._active.values()],
            "conditions": self._conditions.to_dict(),
            "data_loss": self._data_loss.to_dict(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Resume from `snapshot()` output; sites no longer in the inventory are dropped."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"alert state version {data.get('version')!r} is not supported")
        self._live = self._tracks(data["live"])
        self._history = self._tracks(data["history"])
        for site, watch in data["sites"].items():
            if site in self._watches:
                self._watches[site] = SiteWatch.from_dict(watch)
        active = (Transition.from_dict(item) for item in data["active"])
        self._active = {t.key: t for t in active if t.labels["site"] in self._sites}
        # Absent from state files written before these alerts existed.
        self._conditions.restore(data.get("conditions", {}))
        self._data_loss.restore(data.get("data_loss", {}))
        self.dirty = False

    # --- internals ----------------------------------------------------------------------------

    def _tracks(self, data: dict[str, Any]) -> dict[tuple[str, str], LinkTrack]:
        tracks = {}
        for text, track in data.items():
            site, _, link = text.partition("/")
            if link in self._links.get(site, ()):
                tracks[(site, link)] = LinkTrack.from_dict(track)
        return tracks

    def _heard(self, site: str) -> list[Transition]:
        if site not in self._watches:
            return []
        return self._watches[site].heard(self._site_context(site), self._clock())

    def _judge_sample(self, site: str, sample: Sample, now: float) -> list[Transition]:
        """One sample, at `now` (the clock read once per envelope: this runs per sample)."""
        if site not in self._sites:
            return []
        if sample.time > (now + self._max_time_ahead) * NS:
            self.ignored_ahead += 1
            return []
        if sample.measurement != "link":
            return self._judge_other(site, sample)
        link = sample.tags.get("target", "")
        # A link the site file does not name gets no state (ingest refuses its rows anyway).
        round_ = Round.from_sample(sample) if link in self._links[site] else None
        if round_ is None:
            return []
        key = (site, link)
        # get, then create: setdefault would build a new (unused) state object every round.
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = RecentTimes()
        if not recent.add(round_.time):
            return []
        ctx, interval = self._link_context(site, link, sample.tags.get("role"))
        live = self._live.get(key)
        if live is None:
            live = self._live[key] = LinkTrack()
        if live.machine.newest is None or round_.time > live.machine.newest:
            late = self._late(round_.time, interval, now)
            transitions, report = live.judge(round_, ctx, late=late)
        else:
            transitions, report = self._backfill(key, round_, ctx)
        if report is not None:
            self._reports.append(report)
            self.dirty = True
        return transitions

    def _judge_other(self, site: str, sample: Sample) -> list[Transition]:
        """Device and agent rows, and the agent's path traces."""
        if sample.measurement == "event":
            return self._path(site, sample) if sample.tags.get("kind") == "path" else []
        out = self._conditions.judge(site, sample, self._late)
        if sample.measurement == "host":
            out.extend(self._data_loss.observe_host(site, sample, self._clock()))
        return out

    def _path(self, site: str, sample: Sample) -> list[Transition]:
        """A path trace of a link: kept, and the link's paged alert notified again with it."""
        link = sample.fields.get("target")
        summary = sample.fields.get("summary", sample.fields.get("message"))
        if not isinstance(summary, str) or link not in self._links[site]:
            return []  # a trace of a link the site file does not name opens no state
        track = self._live.setdefault((site, link), LinkTrack())
        self.dirty = True
        if not track.path_found(PathNote(sample.time, summary)) or track.firing is None:
            return []
        if not track.firing.paged:
            return []  # history: its page (if it ever comes live) will carry the path
        updated = []
        for key, transition in list(self._active.items()):
            labels = transition.labels
            if labels["site"] == site and labels["target"] == link and key[0] in _LINK_ALERTS:
                notes = {**transition.annotations, "path": summary}
                updated.append(dataclasses.replace(transition, annotations=notes))
        return updated

    def _backfill(
        self, key: tuple[str, str], round_: Round, ctx: LinkContext
    ) -> tuple[list[Transition], OutageReport | None]:
        track = self._history.get(key)
        if track is None or _restarts_backfill(track, round_):
            track = self._history[key] = LinkTrack()
        if track.machine.newest is not None and round_.time <= track.machine.newest:
            # Out of order even within the backfill: stored by ingest, not judged.
            return [], None
        return track.judge(round_, ctx, late=True)

    def _late(self, time_ns: int, interval: float, now: float | None = None) -> bool:
        age = (self._clock() if now is None else now) - time_ns / NS
        return age > interval + self._config.late_after

    def _record(self, transitions: list[Transition]) -> list[Transition]:
        if self._data_loss.changed:
            self.dirty = True
        for transition in transitions:
            self.dirty = True
            if transition.state is AlertState.RESOLVED:
                self._active.pop(transition.key, None)
            elif transition.page:
                self._active[transition.key] = transition
        return transitions

    def _site_context(self, site: str) -> SiteContext:
        config = self._sites[site]
        return SiteContext(site, config.agent.id, config.parent_hospital, config.name)

    def _link_context(self, site: str, link: str, role: str | None) -> tuple[LinkContext, float]:
        cached = self._contexts.get((site, link))
        if cached is None:
            config = self._sites[site]
            link_config = _find_link(config.links, link)
            cached = self._contexts[(site, link)] = (
                LinkContext(
                    site=site,
                    link=link,
                    role=_role(link_config, role),
                    agent=config.agent.id,
                    parent_hospital=config.parent_hospital,
                    site_name=config.name,
                    thresholds=self._thresholds(link_config),
                    rules=self._rules,
                ),
                link_config.interval if link_config else DEFAULT_INTERVAL,
            )
        return cached

    def _thresholds(self, link: IcmpLinkConfig | None) -> Thresholds:
        config = self._config
        defaults = Thresholds(
            loss_pct=config.loss_pct, rtt_ms=config.rtt_ms, jitter_ms=config.jitter_ms
        )
        return link_thresholds(link.thresholds if link is not None else None, defaults)


def _restarts_backfill(track: LinkTrack, round_: Round) -> bool:
    """A new backfill batch that starts before an idle previous one is judged afresh."""
    idle = track.firing is None and track.episode is None
    return idle and round_.time < (track.machine.newest or 0)


def _find_link(links: Iterable[IcmpLinkConfig], name: str) -> IcmpLinkConfig | None:
    return next((link for link in links if link.name == name), None)


def _role(link: IcmpLinkConfig | None, tag: str | None) -> LinkRole:
    if link is not None:
        return link.role
    try:
        return LinkRole(tag or "")
    except ValueError:
        return LinkRole.INTERNET  # unknown role: treat as a non-parent link (lower severity)


def _key_text(key: tuple[str, str]) -> str:
    # Site and link names are [a-z0-9-]+, so "/" cannot occur inside either.
    return f"{key[0]}/{key[1]}"
