"""Subscriptions per role, and each message routed and acknowledged exactly once."""

from __future__ import annotations

from dataclasses import dataclass, field

from fieldmon.collector.routing import (
    ALERT_SAMPLES_ID,
    INGEST_ID,
    STATUS_ID,
    Router,
    Subscription,
    plan,
)


def test_plans() -> None:
    samples, shared = "fieldmon/v1/+/+/samples", "$share/g/fieldmon/v1/+/+/samples"
    events, shared_events = "fieldmon/v1/+/+/events", "$share/g/fieldmon/v1/+/+/events"
    status = "fieldmon/v1/+/+/status"
    assert plan(True, False, None) == [
        Subscription(samples, INGEST_ID),
        Subscription(events, INGEST_ID),
    ]
    assert plan(True, True, None) == [
        Subscription(samples, INGEST_ID),
        Subscription(events, INGEST_ID),
        Subscription(status, STATUS_ID),
    ]
    # With a shared ingest group the alert role still reads the whole stream on its own.
    assert plan(True, True, "g") == [
        Subscription(shared, INGEST_ID),
        Subscription(shared_events, INGEST_ID),
        Subscription(samples, ALERT_SAMPLES_ID),
        Subscription(events, ALERT_SAMPLES_ID),
        Subscription(status, STATUS_ID),
    ]
    assert plan(False, True, None) == [
        Subscription(samples, ALERT_SAMPLES_ID),
        Subscription(events, ALERT_SAMPLES_ID),
        Subscription(status, STATUS_ID),
    ]


@dataclass
class _Properties:
    SubscriptionIdentifier: list[int]  # paho's attribute name


@dataclass
class _Message:
    ids: list[int]
    mid: int = 7
    qos: int = 1
    topic: str = "fieldmon/v1/s/a/samples"

    @property
    def properties(self) -> _Properties:
        return _Properties(self.ids)


@dataclass
class _Client:
    acked: list[int] = field(default_factory=list)

    def ack(self, mid: int, _qos: int) -> None:
        self.acked.append(mid)


def _router(client: _Client, seen: list[str]) -> Router:
    return Router(
        client,  # type: ignore[arg-type]
        ingest=lambda m: seen.append("ingest"),
        alert_samples=lambda m: seen.append("alerts"),
        status=lambda m: seen.append("status"),
    )


def test_ingest_owns_the_ack_of_its_messages() -> None:
    client, seen = _Client(), []
    _router(client, seen)(_Message([INGEST_ID]))  # type: ignore[arg-type]
    assert seen == ["ingest"]
    assert client.acked == []


def test_a_message_matching_both_subscriptions_goes_to_both_and_is_acked_by_ingest() -> None:
    client, seen = _Client(), []
    _router(client, seen)(_Message([INGEST_ID, ALERT_SAMPLES_ID]))  # type: ignore[arg-type]
    assert seen == ["ingest", "alerts"]
    assert client.acked == []


def test_messages_ingest_does_not_own_are_acked_at_once() -> None:
    client, seen = _Client(), []
    router = _router(client, seen)
    router(_Message([ALERT_SAMPLES_ID], mid=1))  # type: ignore[arg-type]
    router(_Message([STATUS_ID], mid=2))  # type: ignore[arg-type]
    router(_Message([], mid=3))  # type: ignore[arg-type]
    assert seen == ["alerts", "status"]
    assert client.acked == [1, 2, 3]
