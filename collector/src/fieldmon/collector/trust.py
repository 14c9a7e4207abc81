"""The collector trusts the topic, never the payload: what an agent may store, and the log of it.

An envelope that reaches `screen` already matches its topic and comes from the agent the site
file registers (ingest.check_identity), and the broker lets that agent write only its own
topics. Each of its samples is then kept only when:
- its `site` and `agent` tags are the envelope's (missing ones are set from it; different ones
  are refused: `tag_mismatch`), so no agent can write or overwrite another site's rows;
- its measurement is an agent measurement (wire.AGENT_MEASUREMENTS; `measurement_not_allowed`),
  so no agent can forge `alert`, `outage` or `agent` rows;
- the target it names is one the site file names (core.site.targets; `unknown_target`), so an
  invented link or device gets no row, no status-board entry and no alert state.

Refused samples are counted per (site, agent, reason), a bounded label set since site and agent
are the inventory's, and logged once per episode (`EpisodeLog`): a Pi flooding the collector
must not flood its log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from fieldmon.core.site.targets import TargetRule, target_rules
from fieldmon.core.wire.models import Envelope, Sample

if TYPE_CHECKING:
    from fieldmon.core.site.config import SiteConfig


class Refusal(StrEnum):
    """Why one sample of an accepted envelope is not stored; a metric label, so a fixed set."""

    TAG_MISMATCH = "tag_mismatch"
    MEASUREMENT_NOT_ALLOWED = "measurement_not_allowed"
    UNKNOWN_TARGET = "unknown_target"


@dataclass(frozen=True, slots=True)
class SiteTrust:
    """What one site's agent may send, precomputed from its site file (rebuilt on SIGHUP)."""

    site: str
    agent: str
    rules: dict[str, TargetRule | None]

    @classmethod
    def build(cls, config: SiteConfig) -> SiteTrust:
        """From a site file."""
        return cls(config.site, config.agent.id, target_rules(config))


@dataclass
class Screened:
    """An envelope cut down to the samples it may store, and what was refused and why."""

    envelope: Envelope
    refused: dict[Refusal, int] = field(default_factory=dict)
    # The first refused sample's problem in words, for the log (one line per episode).
    detail: dict[Refusal, str] = field(default_factory=dict)

    @property
    def refused_count(self) -> int:
        """Samples refused in all."""
        return sum(self.refused.values())


_NOT_AN_AGENT_MEASUREMENT = TargetRule("", frozenset())  # a sentinel: no rule at all


def _identity_problem(tags: dict[str, str], trust: SiteTrust) -> tuple[Refusal, str] | None:
    """A `site` or `agent` tag other than the envelope's; sets a missing one (see `screen`)."""
    for key, own in (("site", trust.site), ("agent", trust.agent)):
        value = tags.get(key)
        if value is None:
            # The decoder built this dict for this sample alone, and nothing has seen it yet:
            # filling it in place costs nothing, where a copy would validate the sample again.
            tags[key] = own
        elif value != own:
            return Refusal.TAG_MISMATCH, f"tag {key}={value[:64]!r} in an envelope from {own!r}"
    return None


def _problem(sample: Sample, trust: SiteTrust) -> tuple[Refusal, str] | None:
    """Why `sample` may not be stored, or None; sets missing site / agent tags (see `screen`)."""
    tags = sample.tags
    rule = trust.rules.get(sample.measurement, _NOT_AN_AGENT_MEASUREMENT)
    if rule is _NOT_AN_AGENT_MEASUREMENT:
        return (
            Refusal.MEASUREMENT_NOT_ALLOWED,
            f"measurement {sample.measurement!r} is not one agents send",
        )
    if tags.get("site") != trust.site or tags.get("agent") != trust.agent:
        problem = _identity_problem(tags, trust)
        if problem is not None:
            return problem
    if rule is not None and tags.get(rule.tag) not in rule.allowed:
        named = tags.get(rule.tag)
        what = f"{rule.tag}={named[:64]!r}" if named is not None else f"no {rule.tag} tag"
        return (
            Refusal.UNKNOWN_TARGET,
            f"{sample.measurement} row with {what}, which the site file of {trust.site!r} "
            "does not name",
        )
    return None


def screen(envelope: Envelope, trust: SiteTrust) -> Screened:
    """`envelope` with only the samples its agent may store (the same object when all may).

    On the ingest hot path: one pass, a few dictionary look-ups per sample, and a new envelope
    only when something is refused.
    """
    kept: list[Sample] | None = None
    screened = Screened(envelope)
    rules, site, agent = trust.rules, trust.site, trust.agent
    for index, sample in enumerate(envelope.samples):
        # The common case inline (a function call per sample costs as much as the checks).
        tags = sample.tags
        rule = rules.get(sample.measurement, _NOT_AN_AGENT_MEASUREMENT)
        if (
            rule is not _NOT_AN_AGENT_MEASUREMENT
            and tags.get("site") == site
            and tags.get("agent") == agent
            and (rule is None or tags.get(rule.tag) in rule.allowed)
        ):
            problem = None
        else:
            problem = _problem(sample, trust)
        if problem is None:
            if kept is not None:
                kept.append(sample)
            continue
        if kept is None:
            kept = list(envelope.samples[:index])
        reason, detail = problem
        screened.refused[reason] = screened.refused.get(reason, 0) + 1
        screened.detail.setdefault(reason, detail)
    if kept is not None:
        screened.envelope = envelope.model_copy(update={"samples": kept})
    return screened


@dataclass
class _Episode:
    message: str
    first: float
    last: float
    count: int
    fields: dict[str, object]


class EpisodeLog:
    """Logs a recurring problem once when it starts and once when it ends, never per event.

    An episode of `key` starts at its first occurrence (a warning with the message and its
    details) and ends after `quiet` seconds without one (`sweep` logs how many there were and
    for how long). `key` must come from a bounded set (reason, site, agent of the inventory);
    past `max_open` open episodes, new keys share one catch-all episode.
    """

    _OVERFLOW: tuple[str] = ("(more problems than the log tracks)",)

    def __init__(
        self,
        logger: logging.Logger,
        *,
        quiet: float = 300.0,
        max_open: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._quiet = quiet
        self._max_open = max_open
        self._clock = clock
        self._open: dict[Hashable, _Episode] = {}

    def note(self, key: Hashable, message: str, *, count: int = 1, **fields: object) -> bool:
        """One or more occurrences of `key`; True when this started an episode (and logged)."""
        now = self._clock()
        episode = self._open.get(key)
        if episode is not None and now - episode.last > self._quiet:
            self._end(key, episode)
            episode = None
        if episode is not None:
            episode.last = now
            episode.count += count
            return False
        if len(self._open) >= self._max_open:
            key = self._OVERFLOW
            if key in self._open:
                self._open[key].count += count
                self._open[key].last = now
                return False
        self._open[key] = _Episode(message, now, now, count, fields)
        self._logger.warning(
            f"{message} (logged once until it stops for {self._quiet:g} s)", extra=fields
        )
        return True

    def sweep(self) -> None:
        """End (and log) every episode quiet for longer than `quiet`; call it now and then."""
        now = self._clock()
        for key, episode in list(self._open.items()):
            if now - episode.last > self._quiet:
                self._end(key, episode)

    @property
    def open_episodes(self) -> int:
        """Episodes not ended yet."""
        return len(self._open)

    def _end(self, key: Hashable, episode: _Episode) -> None:
        del self._open[key]
        self._logger.info(
            f"{episode.message}: stopped; {episode.count} in {episode.last - episode.first:.0f} s",
            extra={**episode.fields, "count": episode.count},
        )
