"""Which MQTT subscriptions a collector makes for its roles, and where each message goes.

MQTT v5 subscription identifiers tell the copies apart when one process holds both the ingest
shared subscription and the alert role's ordinary one (the broker then delivers a message once
per matching subscription). Every QoS 1 message is acknowledged exactly once: by ingest after
its write, otherwise here as soon as it has been handled.

An agent's `events` topic carries envelopes like its `samples` topic (its `event` rows: hook
runs, state changes), numbered from the same seq counter: every role that reads one reads both,
under the same subscription identifier and through the same handler, so ingest stores and
acknowledges them alike and the alert role's seq accounting sees no gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from fieldmon.core.mqtt.link import MqttLink
from fieldmon.core.wire import topics
from fieldmon.core.wire.topics import TopicKind

INGEST_ID, ALERT_SAMPLES_ID, STATUS_ID = 1, 2, 3
# What the broker refusing each subscription means, in the words of the error it logs.
CONSEQUENCES = {
    INGEST_ID: "no envelope on it reaches this collector's ingest: nothing there is stored or "
    "acknowledged",
    ALERT_SAMPLES_ID: "no envelope on it reaches the alert role: nothing there is judged or paged",
    STATUS_ID: "agents' births and last wills do not reach the alert role: SiteUnreachable "
    "fires only after silence_timeout",
}

Handler = Callable[[mqtt.MQTTMessage], None]
# The topics that carry Envelopes: measurements, and the agent's events (hook runs, state changes).
ENVELOPE_KINDS = (TopicKind.SAMPLES, TopicKind.EVENTS)


@dataclass(frozen=True)
class Subscription:
    """One topic filter with its subscription identifier."""

    topic: str
    identifier: int

    def keep(self, link: MqttLink) -> None:
        """Have the link subscribe QoS 1 with the identifier attached, at every connect."""
        link.subscribe(
            self.topic, qos=1, identifier=self.identifier, consequence=CONSEQUENCES[self.identifier]
        )


def plan(ingest: bool, alerts: bool, shared_group: str | None) -> list[Subscription]:
    """The subscriptions for these roles; the alert role reads the whole stream, never shared."""
    plans = []
    if ingest:
        plans += [
            Subscription(topics.subscription(kind, shared_group), INGEST_ID)
            for kind in ENVELOPE_KINDS
        ]
    if alerts:
        if not ingest or shared_group:
            plans += [
                Subscription(topics.subscription(kind), ALERT_SAMPLES_ID) for kind in ENVELOPE_KINDS
            ]
        plans.append(Subscription(topics.subscription(TopicKind.STATUS), STATUS_ID))
    return plans


@dataclass
class Router:
    """Dispatches each message by its subscription identifiers; acks what ingest does not own."""

    client: mqtt.Client
    ingest: Handler | None
    alert_samples: Handler | None
    status: Handler | None

    def __call__(self, message: mqtt.MQTTMessage) -> None:
        ids = _identifiers(message)
        ingest_owns = self.ingest is not None and INGEST_ID in ids
        if ingest_owns:
            self.ingest(message)  # type: ignore[misc]
        if self.alert_samples is not None and ALERT_SAMPLES_ID in ids:
            self.alert_samples(message)
        if self.status is not None and STATUS_ID in ids:
            self.status(message)
        if not ingest_owns and message.qos:
            self.client.ack(message.mid, message.qos)


def _identifiers(message: mqtt.MQTTMessage) -> set[int]:
    properties = getattr(message, "properties", None)
    value = getattr(properties, "SubscriptionIdentifier", None) if properties else None
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {int(value)}
