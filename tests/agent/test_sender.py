"""The sender replays fresh-first through a real Mosquitto: newest round, then the backlog; a
broker that refuses its ack subscription is an error that says what it means."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.agent.outbox import Outbox
from fieldmon.agent.sender import ACK_REFUSED, Sender
from fieldmon.core.mqtt.link import MqttLink, SubscriptionState, SubscriptionStatus, new_client
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.wire import topics
from fieldmon.core.wire.models import Sample
from fieldmon.lab.servers import MosquittoServer, dynamic_security

SITE, AGENT = "sender-site", "sender-pi"


def _sample(n: int) -> Sample:
    return Sample(
        measurement="link", tags={"target": "gw"}, fields={"loss_pct": 0.0}, time=1_700_000_000 + n
    )


class Observer:
    """A second MQTT client that records the seq of every envelope on the samples topic."""

    def __init__(self, port: int) -> None:
        self.seqs: list[int] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = lambda _c, _u, m: self.seqs.append(json.loads(m.payload)["seq"])
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(topics.samples_topic(SITE, AGENT), qos=1)
        self._client.loop_start()
        assert self._subscribed.wait(5)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


async def _until(predicate, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_replay_sends_the_newest_first_then_backlog_oldest_first_with_live_ahead(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, site=SITE, agent=AGENT)
    for i in range(20):
        outbox.append([_sample(i)])
    # The first 18 waited through an outage an hour long; the newest two are this round's.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE envelopes SET created_ns = created_ns - 3600000000000 WHERE seq < 18")
    assert mosquitto.port is not None
    observer = Observer(mosquitto.port)
    try:
        asyncio.run(_replay(outbox, mosquitto.port, observer))
    finally:
        observer.close()
    seqs = observer.seqs
    assert seqs[:2] == [19, 18]
    backlog = [s for s in seqs if s < 18]
    assert backlog == list(range(18))
    # A live envelope appended mid-replay overtakes the rest of the backlog.
    assert seqs.index(20) < seqs.index(17)


async def _replay(outbox: Outbox, port: int, observer: Observer) -> None:
    loop = asyncio.get_running_loop()
    disk = ThreadPoolExecutor(max_workers=1)
    config = BrokerConfig(host="127.0.0.1", port=port)
    link = MqttLink(new_client(config, client_id=AGENT), config, loop)
    sent: list[int] = []
    sender = Sender(outbox, link, site=SITE, agent=AGENT, disk=disk, window=64, replay_rate=5.0)
    original = sender._publish

    def recording(envelope):  # type: ignore[no-untyped-def]
        sent.append(envelope.seq)
        return original(envelope)

    sender._publish = recording  # type: ignore[method-assign]
    task = asyncio.create_task(sender.run())
    link.start()
    try:
        [ack] = await asyncio.wait_for(link.wait_subscribed(), 10)
        assert (ack.topic, ack.state) == (topics.ack_topic(SITE, AGENT), SubscriptionState.GRANTED)
        await _until(lambda: len(sent) >= 6, 10)
        await loop.run_in_executor(disk, outbox.append, [_sample(20)])
        sender.notify()
        await _until(lambda: len(sent) >= 21, 20)
        await _until(lambda: len(observer.seqs) >= 21, 10)  # the broker delivered them all
    finally:
        task.cancel()
        link.stop()
        disk.shutdown()


def test_a_refused_ack_subscription_is_an_error_that_says_what_it_means(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ack_topic = topics.ack_topic(SITE, AGENT)
    document = dynamic_security(deny_subscribe=[ack_topic])
    with MosquittoServer(tmp_path / "broker", dynamic_security=document) as broker:
        assert broker.port is not None
        config = BrokerConfig(host="127.0.0.1", port=broker.port)

        async def scenario() -> list[SubscriptionStatus]:
            disk = ThreadPoolExecutor(max_workers=1)
            outbox = Outbox(tmp_path / "outbox.db", site=SITE, agent=AGENT)
            link = MqttLink(new_client(config, AGENT), config, asyncio.get_running_loop())
            Sender(outbox, link, site=SITE, agent=AGENT, disk=disk)
            link.start()
            try:
                return await asyncio.wait_for(link.wait_subscribed(), 10)
            finally:
                link.stop()
                disk.shutdown()
                outbox.close()

        with caplog.at_level(logging.ERROR, logger="fieldmon.core.mqtt.link"):
            [ack] = asyncio.run(scenario())
    assert (ack.topic, ack.state, ack.reason) == (
        ack_topic,
        SubscriptionState.REFUSED,
        "Not authorized",
    )
    [error] = [record.getMessage() for record in caplog.records]
    assert (
        error == f"broker refused the subscription to {ack_topic} (Not authorized): {ACK_REFUSED}"
    )
    assert "nothing it sends will ever be deleted from the outbox" in error


def test_event_rows_go_to_the_events_topic_and_measurements_to_samples(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", site=SITE, agent=AGENT)
    event = Sample(
        measurement="event",
        tags={"site": SITE, "agent": AGENT, "kind": "hook"},
        fields={"message": "ran"},
        time=1_700_000_000,
    )
    outbox.append([_sample(1)])
    outbox.append([event])
    arrived: list[tuple[str, int]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: arrived.append((m.topic, json.loads(m.payload)["seq"]))
    client.on_subscribe = lambda *_args: subscribed.set()
    assert mosquitto.port is not None
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(f"fieldmon/v1/{SITE}/{AGENT}/+", qos=1)
    client.loop_start()
    assert subscribed.wait(5)

    async def scenario() -> None:
        disk = ThreadPoolExecutor(max_workers=1)
        config = BrokerConfig(host="127.0.0.1", port=mosquitto.port)
        link = MqttLink(new_client(config, AGENT), config, asyncio.get_running_loop())
        sender = Sender(outbox, link, site=SITE, agent=AGENT, disk=disk)
        task = asyncio.create_task(sender.run())
        link.start()
        try:
            await _until(lambda: len(arrived) >= 2, 10)
        finally:
            task.cancel()
            link.stop()
            disk.shutdown()

    try:
        asyncio.run(scenario())
    finally:
        client.loop_stop()
        client.disconnect()
        outbox.close()
    assert sorted(arrived) == [
        (topics.events_topic(SITE, AGENT), 1),
        (topics.samples_topic(SITE, AGENT), 0),
    ]
