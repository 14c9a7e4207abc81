"""AgentDataLoss: envelopes that never arrived, or samples the agent's outbox had to drop.

Two inputs, one alert per (site, agent):

- seq gaps, counted as the ingest role counts them (fieldmon.collector.seqtrack, the same
  `data_loss_grace`): a gap counts as lost once it has stayed open that long, because agents
  replay fresh-first and a young gap is usually a backlog still draining. The alert role keeps
  its own count from the whole stream it reads, so it needs nothing from ingest. Gap ages are on
  the collector's clock (arrival): how long we waited is the point.
- `outbox_dropped` in `host` rows (a counter of samples the agent dropped at its `max_mb` cap or
  on a full disk), judged in sample-time order: any increase is loss at the source.

A loss is found after the fact by nature, so it pages when found even though the data was older;
there is no "episode that already ended" to protect. It resolves once `data_loss_clear` passes
without another loss. The count state is persisted with the engine's; after a restart the
envelopes we did not hear while down are not called lost (ingest may have stored them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
    clock_text,
    iso_time,
)
from fieldmon.collector.seqtrack import MAX_GAP, AgentSeqs, SeqTracker
from fieldmon.core.wire.models import Sample

if TYPE_CHECKING:
    from fieldmon.collector.alerts.kinds import SiteView

NS = 10**9
SEVERITY = Severity.WARNING


@dataclass
class LossEpisode:
    """An open AgentDataLoss alert."""

    starts_at: int  # ns, collector clock when the first loss was found
    last_loss_at: float  # collector clock (s) of the latest loss
    envelopes_lost: int = 0
    samples_dropped: int = 0


@dataclass
class DroppedCounter:
    """The newest `outbox_dropped` reading judged for an agent."""

    time: int  # ns, sample time
    value: int


class DataLossWatch:
    """Seq accounting and outbox drops for every agent, and their AgentDataLoss alerts."""

    def __init__(self, views: dict[str, SiteView], grace: float, clear: float) -> None:
        self._views = views
        self._clear = clear
        self.seqs = SeqTracker(grace)
        self.episodes: dict[tuple[str, str], LossEpisode] = {}
        self.dropped: dict[tuple[str, str], DroppedCounter] = {}
        self._rebase: set[tuple[str, str]] = set()
        self.changed = False  # gaps opened, closed or given up: worth persisting

    def observe(self, site: str, agent: str, seqs: Sequence[int], now: float) -> list[Transition]:
        """The seqs one envelope stands for (ascending; several when coalesced), on arrival,
        from the site's registered agent only."""
        view = self._views.get(site)
        if view is None or agent != view.agent:
            return []
        key = (site, agent)
        if key in self._rebase:
            self._rebase.discard(key)
            self._skip_unheard(key, seqs[0])
        state = self.seqs.agents.get(key)
        open_before = state.missing if state is not None else 0
        verdict = self.seqs.observe_seqs(site, agent, seqs, now)
        if self.seqs.agents[key].missing != open_before or verdict.newly_lost:
            self.changed = True
        return self._lost(site, agent, now, envelopes=verdict.newly_lost)

    def observe_host(self, site: str, sample: Sample, now: float) -> list[Transition]:
        """A `host` row: an `outbox_dropped` increase is loss at the source."""
        value = sample.fields.get("outbox_dropped")
        agent = sample.tags.get("agent", "")
        view = self._views.get(site)
        if view is None or agent != view.agent or type(value) is not int:
            return []  # the site's own agent's counter only (type: a bool is not a count)
        key = (site, agent)
        previous = self.dropped.get(key)
        if previous is not None and sample.time <= previous.time:
            return []  # older than the newest judged: the counter only tells newest-last
        self.dropped[key] = DroppedCounter(sample.time, value)
        self.changed = True
        if previous is None or value <= previous.value:
            return []  # a first reading, or a new outbox file whose count began again
        return self._lost(site, agent, now, samples=value - previous.value)

    def tick(self, now: float) -> list[Transition]:
        """Give up old gaps; resolve episodes quiet for `data_loss_clear`."""
        out: list[Transition] = []
        for (site, agent), state in list(self.seqs.agents.items()):
            if site not in self._views:
                continue
            lost = self.seqs.expire_agent(state, now)
            if lost:
                self.changed = True
                out.extend(self._lost(site, agent, now, envelopes=lost))
        for key, episode in list(self.episodes.items()):
            if now - episode.last_loss_at >= self._clear:
                del self.episodes[key]
                self.changed = True
                out.append(self._transition(*key, episode, AlertState.RESOLVED, now))
        return out

    def _lost(
        self, site: str, agent: str, now: float, *, envelopes: int = 0, samples: int = 0
    ) -> list[Transition]:
        if not envelopes and not samples:
            return []
        key = (site, agent)
        episode = self.episodes.get(key)
        fresh = episode is None
        if episode is None:
            episode = self.episodes[key] = LossEpisode(int(now * NS), now)
        episode.last_loss_at = now
        episode.envelopes_lost += envelopes
        episode.samples_dropped += samples
        self.changed = True
        if not fresh:
            return []  # one notification per episode; the resolve carries the final counts
        return [self._transition(site, agent, episode, AlertState.FIRING, now)]

    def _transition(
        self, site: str, agent: str, episode: LossEpisode, state: AlertState, now: float
    ) -> Transition:
        view = self._views[site]
        labels = {**alert_labels(AlertName.AGENT_DATA_LOSS, site, agent, SEVERITY), "agent": agent}
        what = []
        if episode.envelopes_lost:
            what.append(f"{episode.envelopes_lost} envelopes never arrived")
        if episode.samples_dropped:
            what.append(f"{episode.samples_dropped} samples dropped by the outbox")
        lost_text = ", ".join(what)
        since = clock_text(episode.starts_at)
        if state is AlertState.RESOLVED:
            summary = f"{site}: agent {agent} data loss over (since {since}: {lost_text})"
        else:
            summary = f"{site}: agent {agent} lost data at {since}: {lost_text}"
        agent_seqs = self.seqs.agents.get((site, agent))
        annotations = {
            "summary": summary,
            "description": (
                "seq gaps still open after the data-loss grace, or outbox drops at its size cap; "
                "that history is missing from the dashboards"
            ),
            "envelopes_lost": str(episode.envelopes_lost),
            "samples_dropped": str(episode.samples_dropped),
            "envelopes_lost_total": str(agent_seqs.lost if agent_seqs else 0),
            "envelopes_missing_now": str(agent_seqs.missing if agent_seqs else 0),
            "since": iso_time(episode.starts_at),
            "agent": agent,
            "parent_hospital": view.parent_hospital,
            "site_name": view.site_name,
            "history": "false",
        }
        return Transition(
            alertname=AlertName.AGENT_DATA_LOSS,
            labels=labels,
            annotations=annotations,
            state=state,
            starts_at=episode.starts_at,
            ends_at=int(now * NS) if state is AlertState.RESOLVED else None,
            value=float(episode.envelopes_lost + episode.samples_dropped),
            page=True,
        )

    def _skip_unheard(self, key: tuple[str, str], seq: int) -> None:
        """After a restart: seqs between what we saved and what arrives now are not lost."""
        state = self.seqs.agents.get(key)
        if state is None:
            return
        highest = max(state.above, default=state.contiguous)
        if seq <= highest + 1 or seq - highest > MAX_GAP:
            return  # nothing skipped, or a restarted count that SeqTracker handles itself
        if not state.gap_since:
            state.contiguous, state.above = seq - 1, set()
        else:
            state.above.update(range(highest + 1, seq))

    # --- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot; seq sets are stored as ranges."""
        self.changed = False
        return {
            "seqs": {f"{s}/{a}": _seqs_dict(state) for (s, a), state in self.seqs.agents.items()},
            "episodes": {f"{s}/{a}": asdict(e) for (s, a), e in self.episodes.items()},
            "dropped": {f"{s}/{a}": asdict(d) for (s, a), d in self.dropped.items()},
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Resume from `to_dict` output; every agent's next seq is rebased (see _skip_unheard)."""

        def keyed(section: str) -> dict[tuple[str, str], Any]:
            out = {}
            for text, value in data.get(section, {}).items():
                site, _, agent = text.partition("/")
                if site in self._views:
                    out[(site, agent)] = value
            return out

        self.seqs.agents = {key: _seqs_from(value) for key, value in keyed("seqs").items()}
        self.episodes = {key: LossEpisode(**value) for key, value in keyed("episodes").items()}
        self.dropped = {key: DroppedCounter(**value) for key, value in keyed("dropped").items()}
        self._rebase = set(self.seqs.agents)
        self.changed = False


def _ranges(values: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for value in sorted(values):
        if out and out[-1][1] == value - 1:
            out[-1][1] = value
        else:
            out.append([value, value])
    return out


def _unrange(ranges: list[list[int]]) -> set[int]:
    return {value for first, last in ranges for value in range(first, last + 1)}


def _seqs_dict(state: AgentSeqs) -> dict[str, Any]:
    gaps: list[list[float]] = []
    for seq in sorted(state.gap_since):
        since = state.gap_since[seq]
        if gaps and gaps[-1][1] == seq - 1 and gaps[-1][2] == since:
            gaps[-1][1] = seq
        else:
            gaps.append([seq, seq, since])
    return {
        "contiguous": state.contiguous,
        "above": _ranges(state.above),
        "gaps": gaps,
        "received": state.received,
        "duplicates": state.duplicates,
        "lost": state.lost,
        "recovered": state.recovered,
        "lost_seqs": _ranges(state.lost_seqs),
    }


def _seqs_from(data: dict[str, Any]) -> AgentSeqs:
    gap_since = {
        seq: float(since)
        for first, last, since in data["gaps"]
        for seq in range(int(first), int(last) + 1)
    }
    return AgentSeqs(
        contiguous=data["contiguous"],
        above=_unrange(data["above"]),
        gap_since=gap_since,
        received=data["received"],
        duplicates=data["duplicates"],
        lost=data["lost"],
        recovered=data["recovered"],
        lost_seqs=_unrange(data["lost_seqs"]),
    )
