"""MQTT alerts notifier against a real Mosquitto: retained per-site sets, empty when resolved."""

from __future__ import annotations

import asyncio
import json
import queue
import uuid

import paho.mqtt.client as mqtt

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
)
from fieldmon.collector.notify.mqtt import MqttAlertsNotifier
from fieldmon.core.mqtt.link import new_client
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.wire.topics import alerts_topic
from fieldmon.lab.servers import MosquittoServer

WAIT = 20.0


def _transition(state: AlertState, target: str, site: str = "pavilion-2") -> Transition:
    return Transition(
        alertname=AlertName.LINK_DOWN,
        labels=alert_labels(AlertName.LINK_DOWN, site, target, Severity.CRITICAL),
        annotations={
            "summary": f"{site}: {target} down",
            "loss_pct": "100.0",
            "parent_hospital": "city-general",
            "site_name": "Pavilion 2",
        },
        state=state,
        starts_at=1_700_000_000 * 10**9,
        ends_at=None if state is AlertState.FIRING else 1_700_000_300 * 10**9,
        value=100.0,
        page=True,
    )


class Publisher:
    """The collector's side: a connected paho client whose publish the notifier is given."""

    def __init__(self, broker: MosquittoServer) -> None:
        config = BrokerConfig(host="127.0.0.1", port=broker.port)
        self.client = new_client(config, f"collector-{uuid.uuid4().hex[:6]}")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1, retain=retain))

    def flush_and_stop(self) -> None:
        for info in self.infos:
            info.wait_for_publish(timeout=WAIT)
        self.client.disconnect()
        self.client.loop_stop()


def _retained(broker: MosquittoServer, topic: str) -> tuple[bool, list[dict]]:
    """What a subscriber arriving now receives first on `topic`: (retain flag, decoded list)."""
    messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = new_client(BrokerConfig(host="127.0.0.1", port=broker.port), "late-subscriber")
    client.on_message = lambda _c, _u, message: messages.put(message)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        message = messages.get(timeout=WAIT)
    finally:
        client.disconnect()
        client.loop_stop()
    return bool(message.retain), json.loads(message.payload)


def test_new_subscriber_gets_the_current_set_and_an_empty_one_after_resolve(
    mosquitto: MosquittoServer,
) -> None:
    publisher = Publisher(mosquitto)
    notifier = MqttAlertsNotifier(publisher.publish, dashboard_url="http://dash.test/d/f")
    topic = alerts_topic("pavilion-2")

    async def fire() -> None:
        await notifier.send([_transition(AlertState.FIRING, "parent-gw")])
        await notifier.send(
            [
                _transition(AlertState.FIRING, "backup-lte"),
                _transition(AlertState.FIRING, "gw", site="tent-1"),
            ]
        )

    asyncio.run(fire())
    for info in publisher.infos:
        info.wait_for_publish(timeout=WAIT)
    retain, alerts = _retained(mosquitto, topic)
    assert retain
    assert sorted(a["link"] for a in alerts) == ["backup-lte", "parent-gw"]
    assert {a["parent_hospital"] for a in alerts} == {"city-general"}
    assert alerts[0]["dashboard"].startswith("http://dash.test/d/f?site=pavilion-2&link=")
    assert [a["link"] for a in _retained(mosquitto, alerts_topic("tent-1"))[1]] == ["gw"]

    async def resolve() -> None:
        await notifier.send([_transition(AlertState.RESOLVED, "parent-gw")])
        await notifier.send([_transition(AlertState.RESOLVED, "backup-lte")])

    asyncio.run(resolve())
    publisher.flush_and_stop()
    assert _retained(mosquitto, topic) == (True, [])
    assert [a["link"] for a in _retained(mosquitto, alerts_topic("tent-1"))[1]] == ["gw"]


def test_refresh_after_restart_republishes_only_what_changed() -> None:
    published: list[tuple[str, bytes, bool]] = []
    notifier = MqttAlertsNotifier(lambda t, p, r: published.append((t, p, r)))
    active = [_transition(AlertState.FIRING, "parent-gw")]

    async def run() -> None:
        await notifier.refresh(active)
        await notifier.refresh(active)  # unchanged: no second publish
        await notifier.refresh([])  # cleared while we were not told: publish the empty set

    asyncio.run(run())
    assert [(t, r) for t, _, r in published] == [(alerts_topic("pavilion-2"), True)] * 2
    assert [len(json.loads(p)) for _, p, _ in published] == [1, 0]
