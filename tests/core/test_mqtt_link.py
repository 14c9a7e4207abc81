"""MqttLink hands paho's messages to the event loop in bursts, in order, with one wake-up each,
and waits for the broker's answer to each subscription, judging every reason code."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from fieldmon.core.mqtt.link import (
    MqttLink,
    SubscriptionState,
    SubscriptionStatus,
    judge_suback,
    new_client,
)
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.lab.servers import MosquittoServer, dynamic_security


def test_a_burst_of_messages_wakes_the_loop_once_and_keeps_order() -> None:
    async def scenario() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        config = BrokerConfig(host="127.0.0.1")
        link = MqttLink(new_client(config, "t"), config, loop)
        received: list[int] = []
        link.on_message = received.append  # type: ignore[assignment]
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(callback, *args):  # type: ignore[no-untyped-def]
            nonlocal wakeups
            wakeups += 1
            return original(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        # paho's network thread delivers 1000 messages while the loop is busy elsewhere.
        thread = threading.Thread(
            target=lambda: [link._handle_message(None, None, n) for n in range(1000)]  # type: ignore[arg-type]
        )
        thread.start()
        thread.join()
        for _ in range(100):
            await asyncio.sleep(0)
        return received, wakeups

    received, wakeups = asyncio.run(scenario())
    assert received == list(range(1000))
    assert wakeups == 1


# -- subscriptions: every SUBACK awaited, each reason code judged ------------------------------


def _code(value: int) -> ReasonCode:
    return ReasonCode(PacketTypes.SUBACK, identifier=value)


@pytest.mark.parametrize(
    ("value", "state", "qos", "reason"),
    [
        (0x00, SubscriptionState.GRANTED, 0, None),
        (0x01, SubscriptionState.GRANTED, 1, None),
        (0x02, SubscriptionState.GRANTED, 2, None),
        (0x80, SubscriptionState.REFUSED, None, "Unspecified error"),  # MQTT 3.1.1's only refusal
        (0x87, SubscriptionState.REFUSED, None, "Not authorized"),
        (0x8F, SubscriptionState.REFUSED, None, "Topic filter invalid"),
        (0x97, SubscriptionState.REFUSED, None, "Quota exceeded"),
        (0x9E, SubscriptionState.REFUSED, None, "Shared subscription not supported"),
        (0xA1, SubscriptionState.REFUSED, None, "Subscription identifiers not supported"),
    ],
)
def test_each_reason_code_grants_a_qos_or_refuses_with_its_name(
    value: int, state: SubscriptionState, qos: int | None, reason: str | None
) -> None:
    [status] = judge_suback(["fieldmon/v1/+/+/status"], [_code(value)])
    assert status == SubscriptionStatus(
        "fieldmon/v1/+/+/status",
        state,
        qos=qos,
        reason=reason,
        reason_code=value if state is SubscriptionState.REFUSED else None,
    )


def test_codes_pair_with_filters_in_order_and_the_reason_string_is_kept() -> None:
    answers = judge_suback(["a/#", "b/#", "c/#"], [_code(1), _code(0x87), _code(0)], "acl: read")
    assert [(s.topic, s.state, s.qos, s.reason) for s in answers] == [
        ("a/#", SubscriptionState.GRANTED, 1, None),
        ("b/#", SubscriptionState.REFUSED, None, "Not authorized (acl: read)"),
        ("c/#", SubscriptionState.GRANTED, 0, None),
    ]


def test_a_suback_with_the_wrong_number_of_codes_grants_nothing() -> None:
    answers = judge_suback(["a/#", "b/#"], [_code(1)])
    assert [s.state for s in answers] == [SubscriptionState.REFUSED] * 2
    assert answers[0].reason == "the SUBACK carried 1 reason codes for 2 filters"


def _from_paho_thread(function, *args) -> None:  # type: ignore[no-untyped-def]
    """Call a paho callback the way paho does: from its own network thread."""
    thread = threading.Thread(target=function, args=args)
    thread.start()
    thread.join()


def test_the_link_matches_each_suback_to_its_subscribe_per_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        config = BrokerConfig(host="127.0.0.1")
        link = MqttLink(new_client(config, "t"), config, loop)
        sent: list[tuple[str, int, object]] = []

        def subscribe(topic, qos, properties):  # type: ignore[no-untyped-def]
            sent.append((topic, qos, getattr(properties, "SubscriptionIdentifier", None)))
            return mqtt.MQTT_ERR_SUCCESS, 100 + len(sent)

        link.client.subscribe = subscribe  # type: ignore[method-assign,assignment]
        answers: list[SubscriptionStatus] = []
        link.on_subscription.append(answers.append)
        link.subscribe("fieldmon/v1/+/+/samples", identifier=7)
        link.subscribe("fieldmon/v1/+/+/status", consequence="no births reach the alert role")
        assert sent == []  # not connected: nothing goes out yet
        assert {s.state for s in link.subscriptions} == {SubscriptionState.PENDING}

        connack = ReasonCode(PacketTypes.CONNACK, identifier=0)
        _from_paho_thread(link._handle_connect, None, None, mqtt.ConnectFlags(False), connack, None)
        await asyncio.wait_for(link.connected.wait(), 1)
        assert sent == [("fieldmon/v1/+/+/samples", 1, [7]), ("fieldmon/v1/+/+/status", 1, None)]
        # The answers come in any order; each is matched by its packet id.
        _from_paho_thread(link._handle_subscribe, None, None, 102, [_code(0x87)], None)
        _from_paho_thread(link._handle_subscribe, None, None, 101, [_code(1)], None)
        granted, refused = await asyncio.wait_for(link.wait_subscribed(), 1)
        assert (granted.state, granted.qos) == (SubscriptionState.GRANTED, 1)
        assert (refused.state, refused.reason) == (SubscriptionState.REFUSED, "Not authorized")
        assert answers == [refused, granted]

        # A lost connection forgets the answers; a SUBACK from it that arrives late is ignored.
        _from_paho_thread(
            link._handle_disconnect, None, None, None, ReasonCode(PacketTypes.DISCONNECT), None
        )
        _from_paho_thread(link._handle_subscribe, None, None, 101, [_code(1)], None)
        await asyncio.sleep(0.05)
        assert {s.state for s in link.subscriptions} == {SubscriptionState.PENDING}
        assert len(answers) == 2
        # The next connection subscribes to both again, under new packet ids.
        _from_paho_thread(link._handle_connect, None, None, mqtt.ConnectFlags(True), connack, None)
        await asyncio.sleep(0.05)
        assert [topic for topic, _qos, _id in sent[2:]] == [topic for topic, *_ in sent[:2]]
        assert not link._settled.is_set()  # nothing answered on this connection yet

    with caplog.at_level(logging.INFO, logger="fieldmon.core.mqtt.link"):
        asyncio.run(scenario())
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == (
        "broker refused the subscription to fieldmon/v1/+/+/status (Not authorized): "
        "no births reach the alert role"
    )
    assert (error.topic, error.reason_code) == ("fieldmon/v1/+/+/status", "0x87")  # type: ignore[attr-defined]


def test_a_broker_acl_refuses_one_subscription_and_grants_the_other(tmp_path: Path) -> None:
    """Real Mosquitto, its dynamic-security plugin refusing the status topic to everyone."""
    document = dynamic_security(deny_subscribe=["fieldmon/v1/+/+/status"])
    with MosquittoServer(tmp_path / "broker", dynamic_security=document) as broker:
        assert broker.port is not None

        async def scenario() -> tuple[list[SubscriptionStatus], list[int]]:
            config = BrokerConfig(host="127.0.0.1", port=broker.port)
            link = MqttLink(new_client(config, "acl-test"), config, asyncio.get_running_loop())
            identifiers: list[int] = []
            link.on_message = lambda message: identifiers.extend(
                message.properties.SubscriptionIdentifier  # type: ignore[union-attr]
            )
            link.subscribe("fieldmon/v1/+/+/samples", identifier=5)
            link.subscribe("fieldmon/v1/+/+/status", identifier=6)
            link.start()
            try:
                answers = await asyncio.wait_for(link.wait_subscribed(), 10)
                link.client.publish("fieldmon/v1/s/a/samples", b"{}", qos=1)
                while not identifiers:  # noqa: ASYNC110 - set by the link's message callback
                    await asyncio.sleep(0.02)
            finally:
                link.stop()
            return answers, identifiers

        answers, identifiers = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert [(s.topic, s.state, s.qos, s.reason) for s in answers] == [
        ("fieldmon/v1/+/+/samples", SubscriptionState.GRANTED, 1, None),
        ("fieldmon/v1/+/+/status", SubscriptionState.REFUSED, None, "Not authorized"),
    ]
    assert identifiers == [5]  # the granted subscription's identifier came with its message


# -- stop: bounded, whatever paho's thread is waiting for -------------------------------------


class _MuteBroker:
    """Accepts one client, answers its CONNECT with a CONNACK, then never reads again: the
    client's unsent publishes fill the socket and its DISCONNECT waits behind them."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.accepted: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="mute-broker", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._server.accept()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.recv(4096)  # the CONNECT
        connection.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK v5: no session, success, no props
        self.accepted = connection

    def close(self) -> None:
        if self.accepted is not None:
            self.accepted.close()
        self._server.close()


def test_stop_is_bounded_when_the_disconnect_is_stuck_behind_unsent_data() -> None:
    broker = _MuteBroker()

    async def scenario() -> tuple[bool, float]:
        config = BrokerConfig(host="127.0.0.1", port=broker.port, keepalive=60)
        link = MqttLink(new_client(config, "t"), config, asyncio.get_running_loop())
        link.start()
        await asyncio.wait_for(link.connected.wait(), 5)
        # paho writes at most 20 QoS 1 publishes (its in-flight limit): 20 MB, far more than
        # the two sockets' buffers hold.
        payload = b"x" * 1_000_000
        for _ in range(20):
            link.client.publish("fieldmon/v1/s/a/samples", payload, qos=1)
        await asyncio.sleep(0.5)  # paho's thread writes until the socket is full
        started = time.monotonic()
        stopped = link.stop(timeout=1.0)
        return stopped, time.monotonic() - started

    try:
        stopped, took = asyncio.run(scenario())
    finally:
        broker.close()
    # paho alone would wait for the keepalive (60 s here) to give up on the connection.
    assert not stopped
    assert took < 2.0
