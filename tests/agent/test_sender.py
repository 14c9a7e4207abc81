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
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldmon.agent.outbox import Outbox
from fieldmon.agent.sender import ACK_REFUSED, Sender
from fieldmon.core.mqtt.link import MqttLink, SubscriptionState, SubscriptionStatus, new_client
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.wire import topics
from fieldmon.core.wire.codec import decode_envelope, encode
from fieldmon.core.wire.models import AckMessage, Envelope, Sample
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

    def recording(payload, priority):  # type: ignore[no-untyped-def]
        sent.append(json.loads(payload)["seq"])
        return original(payload, priority)

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


@dataclass
class Delivery:
    """One message as the fake collector received it."""

    topic: str
    seqs: list[int]
    compressed: bool
    samples: int


class FakeCollector:
    """Acknowledges every envelope it receives at once, as a collector does after its write;
    says it reads joined and compressed envelopes when `accepts`; never acks a message that
    carries a seq in `refuse` (as if its collector rejected it)."""

    def __init__(self, port: int, *, accepts: bool, refuse: frozenset[int] = frozenset()) -> None:
        self.deliveries: list[Delivery] = []
        self._accepts = accepts
        self._refuse = refuse
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._receive
        self._client.on_subscribe = lambda *_args: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(
            [(topics.samples_topic(SITE, AGENT), 1), (topics.events_topic(SITE, AGENT), 1)]
        )
        self._client.loop_start()
        assert subscribed.wait(5)

    def _receive(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        envelope = decode_envelope(message.payload)
        assert isinstance(envelope, Envelope), envelope
        seqs = envelope.carried_seqs()
        with self._lock:
            self.deliveries.append(
                Delivery(message.topic, seqs, message.payload[:1] == b"x", len(envelope.samples))
            )
        if self._refuse & set(seqs):
            return
        properties = Properties(PacketTypes.PUBLISH)
        if self._accepts:
            properties.UserProperty = [("accept", "parts,zlib"), ("max_payload_bytes", "4194304")]
        ack = encode(AckMessage.from_seqs(seqs))
        self._client.publish(topics.ack_topic(SITE, AGENT), ack, qos=1, properties=properties)

    def seqs_received(self) -> list[int]:
        with self._lock:
            return [seq for delivery in self.deliveries for seq in delivery.seqs]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _backlog_outbox(path: Path, backlog: int, live: int) -> Outbox:
    """`backlog` envelopes of 10 link rows held through an hour's outage, then `live` fresh."""
    outbox = Outbox(path, site=SITE, agent=AGENT)
    for seq in range(backlog + live):
        rows = [
            Sample(
                measurement="link",
                tags={"target": f"link-{seq % 10}{row}"},
                fields={"loss_pct": 0.0, "rtt_avg_ms": 10 + (seq * 7 + row) % 50 / 7},
                time=1_700_000_000_000_000_000 + seq * 10**9 + row,
            )
            for row in range(10)
        ]
        outbox.append(rows)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE envelopes SET created_ns = created_ns - 3600000000000 WHERE seq < ?", (backlog,)
        )
    return outbox


def _send_until(outbox: Outbox, port: int, done, **options: object) -> Sender:  # type: ignore[no-untyped-def]
    """Run a Sender against the broker until `done(sender)` holds (within 30 s)."""

    async def scenario() -> Sender:
        disk = ThreadPoolExecutor(max_workers=1)
        config = BrokerConfig(host="127.0.0.1", port=port)
        link = MqttLink(new_client(config, AGENT), config, asyncio.get_running_loop())
        sender = Sender(outbox, link, site=SITE, agent=AGENT, disk=disk, **options)  # type: ignore[arg-type]
        link.on_message = lambda message: asyncio.ensure_future(
            sender.handle_ack(message.payload, message.properties)
        )
        task = asyncio.create_task(sender.run())
        link.start()
        try:
            await _until(lambda: done(sender), 30)
        finally:
            task.cancel()
            link.stop()
            disk.shutdown()
        return sender

    return asyncio.run(scenario())


def test_a_joined_backlog_is_acknowledged_and_deleted_exactly(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    outbox = _backlog_outbox(tmp_path / "outbox.db", backlog=600, live=2)
    assert mosquitto.port is not None
    collector = FakeCollector(mosquitto.port, accepts=True)
    try:
        sender = _send_until(outbox, mosquitto.port, lambda _s: outbox.waiting_samples == 0)
    finally:
        collector.close()
    deliveries = collector.deliveries
    # Every seq arrived exactly once and was deleted on its ack: nothing re-sent, nothing left.
    assert sorted(collector.seqs_received()) == list(range(602))
    assert outbox.depth() == 0
    assert (sender.acknowledged, sender.in_flight(), outbox.in_flight) == (602, 0, set())
    # Fresh-first: the two live envelopes first, newest first, as plain JSON.
    assert [d.seqs for d in deliveries[:2]] == [[601], [600]]
    assert not any(d.compressed for d in deliveries[:2])
    # Behind them the backlog, oldest first; joined and compressed once the collector said so.
    backlog = [seq for d in deliveries[2:] for seq in d.seqs]
    assert backlog == list(range(600))
    joined = [d for d in deliveries if len(d.seqs) > 1]
    assert joined and all(d.compressed for d in joined)
    assert sum(len(d.seqs) for d in joined) > 500
    assert all(d.samples == 10 * len(d.seqs) for d in deliveries)
    assert len(deliveries) < 100


def test_a_collector_that_does_not_say_it_reads_parts_gets_one_plain_envelope_per_message(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    outbox = _backlog_outbox(tmp_path / "outbox.db", backlog=60, live=1)
    assert mosquitto.port is not None
    collector = FakeCollector(mosquitto.port, accepts=False)
    try:
        _send_until(outbox, mosquitto.port, lambda _s: outbox.waiting_samples == 0)
    finally:
        collector.close()
    assert [d.seqs for d in collector.deliveries] == [[60]] + [[seq] for seq in range(60)]
    assert not any(d.compressed for d in collector.deliveries)


def test_a_joined_message_never_acknowledged_is_sent_again_one_envelope_per_message(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    outbox = _backlog_outbox(tmp_path / "outbox.db", backlog=200, live=1)
    assert mosquitto.port is not None
    # The collector refuses whatever carries seq 150 (a sample it will not store, say).
    collector = FakeCollector(mosquitto.port, accepts=True, refuse=frozenset({150}))
    try:
        _send_until(
            outbox,
            mosquitto.port,
            lambda _s: outbox.waiting_samples == 10,
            ack_timeout=1.0,
        )
    finally:
        collector.close()
    assert [envelope.seq for envelope in outbox.pending(10)] == [150]
    carrying = [d.seqs for d in collector.deliveries if 150 in d.seqs]
    assert len(carrying[0]) > 1  # first joined with others,
    assert carrying[1:] and all(seqs == [150] for seqs in carrying[1:])  # then alone
    # The others it was joined with were acknowledged once sent again without it.
    assert set(collector.seqs_received()) == set(range(201))
