"""MQTT topic names under fieldmon/v1 and their parser."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fieldmon.core.wire.models import is_valid_id

TOPIC_ROOT = "fieldmon/v1"


class TopicKind(StrEnum):
    """The last level of an agent's topic."""

    SAMPLES = "samples"
    STATUS = "status"
    EVENTS = "events"
    ACK = "ack"


@dataclass(frozen=True)
class Topic:
    """A parsed fieldmon topic: site, agent (None for the site's alerts topic) and kind."""

    site: str
    agent: str | None
    kind: str


def _checked_id(role: str, value: str) -> str:
    # An id with '/', '+' or '#' would publish to, or subscribe to, someone else's topic.
    if not is_valid_id(value):
        raise ValueError(f"{role} id {value!r} is not a valid id ([a-z0-9-]+, not 'alerts')")
    return value


def agent_topic(site: str, agent: str, kind: TopicKind) -> str:
    """`fieldmon/v1/{site}/{agent}/{kind}`; ValueError for an invalid or reserved id."""
    return f"{TOPIC_ROOT}/{_checked_id('site', site)}/{_checked_id('agent', agent)}/{kind}"


def samples_topic(site: str, agent: str) -> str:
    """Where an agent publishes its Envelopes."""
    return agent_topic(site, agent, TopicKind.SAMPLES)


def status_topic(site: str, agent: str) -> str:
    """Retained birth / last will of an agent."""
    return agent_topic(site, agent, TopicKind.STATUS)


def events_topic(site: str, agent: str) -> str:
    """Hook results and state changes seen by the agent."""
    return agent_topic(site, agent, TopicKind.EVENTS)


def ack_topic(site: str, agent: str) -> str:
    """Where the collector tells an agent which seqs it has durably written."""
    return agent_topic(site, agent, TopicKind.ACK)


def alerts_topic(site: str) -> str:
    """The site's retained current alerts, published by the collector."""
    return f"{TOPIC_ROOT}/{_checked_id('site', site)}/alerts"


def subscription(kind: TopicKind, shared_group: str | None = None) -> str:
    """Wildcard filter for one kind across all sites and agents, optionally shared."""
    topic = f"{TOPIC_ROOT}/+/+/{kind}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def parse_topic(topic: str) -> Topic | None:
    """Parse a fieldmon topic; None when it is not one of ours or names an invalid id."""
    parts = topic.split("/")
    root = TOPIC_ROOT.split("/")
    if parts[: len(root)] != root:
        return None
    rest = parts[len(root) :]
    if len(rest) == 2 and rest[1] == "alerts" and is_valid_id(rest[0]):
        return Topic(site=rest[0], agent=None, kind="alerts")
    if len(rest) == 3 and rest[2] in TopicKind.__members__.values():
        site, agent, kind = rest
        if is_valid_id(site) and is_valid_id(agent):
            return Topic(site=site, agent=agent, kind=kind)
    return None
