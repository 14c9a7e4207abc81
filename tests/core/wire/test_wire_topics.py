"""Topic names: build and parse are inverses, and nothing but valid ids gets through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import IDS

from fieldmon.core.wire.topics import (
    TOPIC_ROOT,
    Topic,
    TopicKind,
    ack_topic,
    agent_topic,
    alerts_topic,
    events_topic,
    parse_topic,
    samples_topic,
    status_topic,
    subscription,
)

# "pi1\n": a `$`-anchored re.match() would let the trailing newline through.
BAD_IDS = ["alerts", "Pavilion-2", "site_1", "a/b", "+", "#", "", "a b", "é", "pi1\n"]


@given(IDS, IDS, st.sampled_from(list(TopicKind)))
def test_agent_topic_round_trip(site: str, agent: str, kind: TopicKind) -> None:
    topic = agent_topic(site, agent, kind)
    assert topic == f"fieldmon/v1/{site}/{agent}/{kind.value}"
    assert parse_topic(topic) == Topic(site=site, agent=agent, kind=kind)


@given(IDS)
def test_alerts_topic_round_trip(site: str) -> None:
    assert parse_topic(alerts_topic(site)) == Topic(site=site, agent=None, kind="alerts")


def test_named_builders() -> None:
    assert samples_topic("pavilion-2", "pi1") == "fieldmon/v1/pavilion-2/pi1/samples"
    assert status_topic("pavilion-2", "pi1") == "fieldmon/v1/pavilion-2/pi1/status"
    assert events_topic("pavilion-2", "pi1") == "fieldmon/v1/pavilion-2/pi1/events"
    assert ack_topic("pavilion-2", "pi1") == "fieldmon/v1/pavilion-2/pi1/ack"
    assert alerts_topic("pavilion-2") == "fieldmon/v1/pavilion-2/alerts"


@pytest.mark.parametrize("bad", BAD_IDS)
def test_builders_reject_bad_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid id"):
        samples_topic("pavilion-2", bad)
    with pytest.raises(ValueError, match="is not a valid id"):
        ack_topic(bad, "pi1")
    with pytest.raises(ValueError, match="is not a valid id"):
        alerts_topic(bad)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_parse_rejects_bad_ids(bad: str) -> None:
    assert parse_topic(f"{TOPIC_ROOT}/pavilion-2/{bad}/samples") is None
    assert parse_topic(f"{TOPIC_ROOT}/{bad}/pi1/samples") is None
    assert parse_topic(f"{TOPIC_ROOT}/{bad}/alerts") is None


@pytest.mark.parametrize(
    "topic",
    [
        "fieldmon/v2/pavilion-2/pi1/samples",
        "fieldmon/pavilion-2/pi1/samples",
        "other/v1/pavilion-2/pi1/samples",
        "fieldmon/v1/pavilion-2/pi1/samples/extra",
        "fieldmon/v1/pavilion-2/pi1/alerts",
        "fieldmon/v1/pavilion-2/pi1/unknown",
        "fieldmon/v1/pavilion-2/pi1",
        "fieldmon/v1/pavilion-2/pi1/",
        "fieldmon/v1/pavilion-2",
        "fieldmon/v1",
        "/fieldmon/v1/pavilion-2/pi1/samples",
        "",
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    assert parse_topic(topic) is None


@given(st.text(max_size=80))
def test_parse_never_raises(topic: str) -> None:
    parsed = parse_topic(topic)
    if parsed is not None:
        rebuilt = (
            alerts_topic(parsed.site)
            if parsed.agent is None
            else agent_topic(parsed.site, parsed.agent, TopicKind(parsed.kind))
        )
        assert rebuilt == topic


def test_subscriptions() -> None:
    assert subscription(TopicKind.SAMPLES) == "fieldmon/v1/+/+/samples"
    assert (
        subscription(TopicKind.SAMPLES, "fieldmon-ingest")
        == "$share/fieldmon-ingest/fieldmon/v1/+/+/samples"
    )
