"""Attacks on the broker from a stolen Pi's login, against Mosquitto run from the shipped
deploy/mosquitto.conf with the ACL and password files `broker-acl` generates.

Mosquitto drops a PUBLISH its ACL denies; an MQTT v5 client is told so in the PUBACK (reason
"Not authorized"), which is what these tests read. What a subscriber receives is checked with a
marker sent afterwards on an allowed topic: messages from one connection arrive in order, so
once the marker is in, anything denied before it would have arrived already.
"""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fieldmon.core.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES

from .security_support import (
    AGENTS_PORT,
    COLLECTOR_CLIENT_ID,
    COLLECTOR_PORT,
    LONG_AGENT,
    LONG_SITE,
    SHIPPED_CONF,
    Broker,
    Client,
    start_broker,
)

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = "Not authorized"
A, B = ("site-a", "a-pi"), ("site-b", "b-pi")


def topic(owner: tuple[str, str], kind: str) -> str:
    return f"fieldmon/v1/{owner[0]}/{owner[1]}/{kind}"


def _granted(reason: object) -> bool:
    # 0x00 Success, or 0x10 No matching subscribers: both mean the broker took the message.
    return reason is not None and not reason.is_failure  # type: ignore[attr-defined]


def test_anonymous_clients_are_refused_on_both_listeners(broker: Broker) -> None:
    agents = broker.raw(broker.agents_port, ca=broker.deployment.pki.ca)
    assert agents.connect_reason is not None
    assert agents.connect_reason.getName() == NOT_AUTHORIZED
    local = broker.raw(broker.collector_port)
    assert not local.accepted


def test_a_wrong_password_and_an_agent_on_the_collectors_listener_are_refused(
    broker: Broker,
) -> None:
    wrong = broker.agent("a-pi", password="guessed")
    assert not wrong.accepted
    # The collector's listener knows only the collector: an agent's own login fails there.
    on_local = broker.raw(
        broker.collector_port, username="a-pi", password=broker.deployment.passwords["a-pi"]
    )
    assert not on_local.accepted


def test_an_agent_cannot_take_over_the_collectors_session(broker: Broker) -> None:
    # The collector's persistent session exists, with samples queued for it while it is away.
    collector = broker.collector(
        client_id=COLLECTOR_CLIENT_ID, clean_start=False, session_expiry=3600
    )
    assert collector.subscribe("fieldmon/v1/+/+/samples")[0].value == 1
    collector.close()
    b = broker.agent("b-pi")
    assert _granted(b.publish(topic(B, "samples"), b"queued for the collector"))

    thief = broker.agent("a-pi", client_id=COLLECTOR_CLIENT_ID, clean_start=False)
    assert thief.accepted
    assert thief.session_present is False, "the agent got the collector's session"
    # The collector comes back to its own session and gets what was queued for it.
    back = broker.collector(client_id=COLLECTOR_CLIENT_ID, clean_start=False, session_expiry=3600)
    assert back.session_present is True
    assert back.wait_message(topic(B, "samples")) == b"queued for the collector"


def test_an_agent_cannot_disconnect_another_by_reusing_its_client_id(broker: Broker) -> None:
    b = broker.agent("b-pi", client_id="b-pi")
    thief = broker.agent("a-pi", client_id="b-pi")
    assert thief.accepted
    # B still holds its connection: a round trip on it succeeds, and it was never dropped.
    assert _granted(b.publish(topic(B, "events"), b"still here"))
    assert not b.disconnected.is_set(), b.disconnect_reason
    # The thief got its own identity: its own topics are allowed, B's are not.
    assert _granted(thief.publish(topic(A, "events"), b"mine"))
    assert thief.publish(topic(B, "events"), b"b's").getName() == NOT_AUTHORIZED  # type: ignore[union-attr]


def test_an_agent_writes_its_own_topics(broker: Broker) -> None:
    collector = broker.collector()
    collector.subscribe("fieldmon/v1/#")
    a = broker.agent("a-pi")
    for kind in ("samples", "status", "events"):
        assert _granted(a.publish(topic(A, kind), kind.encode())), kind
    assert collector.wait_message(topic(A, "events")) == b"events"
    assert collector.topics() == [topic(A, "samples"), topic(A, "status"), topic(A, "events")]


@pytest.mark.parametrize(
    "target",
    [
        topic(B, "samples"),  # impersonation: B's own topic
        topic(("site-b", "a-pi"), "samples"),  # A's id under B's site
        topic(("invented-site", "a-pi"), "samples"),
        topic(("invented-site", "invented-pi"), "events"),
        topic(A, "ack"),  # only the collector acknowledges
        "fieldmon/v1/site-a/alerts",  # only the collector publishes alerts
        "fieldmon/v1/site-a/a-pi/samples/extra",
        "elsewhere/entirely",
    ],
)
def test_an_agent_cannot_publish_anywhere_else(broker: Broker, target: str) -> None:
    collector = broker.collector()
    collector.subscribe("#")
    a = broker.agent("a-pi")
    reason = a.publish(target, b"forged")
    assert reason is not None and reason.getName() == NOT_AUTHORIZED
    assert _granted(a.publish(topic(A, "events"), b"marker"))
    collector.wait_message(topic(A, "events"))
    assert collector.topics() == [topic(A, "events")]


def test_no_retained_message_under_an_invented_site(broker: Broker) -> None:
    a = broker.agent("a-pi")
    offline = json.dumps({"state": "offline", "site": "ghost-site", "agent": "a-pi"}).encode()
    forged = a.publish(topic(("ghost-site", "a-pi"), "status"), offline, retain=True)
    assert forged is not None and forged.getName() == NOT_AUTHORIZED
    assert _granted(a.publish(topic(A, "status"), b"own status", retain=True))
    # A subscriber that comes later gets the retained messages first, then live ones.
    reader = broker.collector()
    reader.subscribe("fieldmon/v1/+/+/status", "fieldmon/v1/+/+/events")
    assert _granted(a.publish(topic(A, "events"), b"marker"))
    reader.wait_message(topic(A, "events"))
    assert reader.topics() == [topic(A, "status"), topic(A, "events")]


def test_an_agent_reads_only_its_own_acks(broker: Broker) -> None:
    a = broker.agent("a-pi")
    # acl_file grants every SUBSCRIBE; the ACL withholds at delivery what the agent may not read.
    a.subscribe(topic(B, "ack"), "fieldmon/v1/#", topic(A, "ack"))
    collector = broker.collector()
    assert _granted(collector.publish(topic(B, "ack"), b'{"ranges": [[1, 9]]}'))
    assert _granted(collector.publish("fieldmon/v1/site-b/alerts", b"[]"))
    assert _granted(collector.publish(topic(A, "ack"), b'{"ranges": [[5, 5]]}'))
    assert a.wait_message(topic(A, "ack")) == b'{"ranges": [[5, 5]]}'
    assert set(a.topics()) == {topic(A, "ack")}


def test_an_oversized_packet_is_refused_and_the_largest_envelope_is_not(broker: Broker) -> None:
    # The longest topic (64-character site and agent ids) carrying the collector's largest
    # payload fits under max_packet_size ...
    longest = broker.agent(LONG_AGENT)
    assert longest.accepted
    reason = longest.publish(
        f"fieldmon/v1/{LONG_SITE}/{LONG_AGENT}/samples", b"x" * DEFAULT_MAX_PAYLOAD_BYTES
    )
    assert _granted(reason)
    assert not longest.disconnected.is_set()
    # ... and 10 MB does not: the broker disconnects the client. MQTT 3.1.1, so that paho does
    # not refuse it first (it obeys the maximum packet size a v5 CONNACK announces).
    thief = broker.agent("a-pi", protocol=mqtt.MQTTv311)
    assert thief.accepted
    thief.publish_and_wait_gone(topic(A, "samples"), b"x" * (10 * 1024 * 1024))
    assert thief.disconnected.is_set()


def test_mutual_tls_variant_makes_the_certificates_cn_the_identity(
    broker: Broker, tmp_path: Path
) -> None:
    mtls = start_broker(
        broker.deployment,
        tmp_path / "mtls",
        SHIPPED_CONF.read_text(),
        uncomment=("require_certificate", "use_identity_as_username"),
    )
    try:
        pki = broker.deployment.pki
        port = mtls.agents_port
        no_cert = Client(port, username="a-pi", password="x", ca=pki.ca).connect()
        assert not no_cert.accepted
        # CN a-pi, asking for the collector's client id: it is a-pi, and may write only A's.
        a = Client(port, ca=pki.ca, cert=pki.client("a-pi"), client_id=COLLECTOR_CLIENT_ID)
        mtls.clients += [no_cert, a]
        a.connect()
        assert a.accepted
        assert a.session_present is False
        assert _granted(a.publish(topic(A, "samples"), b"mine"))
        forged = a.publish(topic(B, "samples"), b"b's")
        assert forged is not None and forged.getName() == NOT_AUTHORIZED
    finally:
        for client in mtls.clients:
            client.close()
        mtls.server.stop()


def test_the_shipped_conf_has_the_listeners_the_suite_relies_on(broker: Broker) -> None:
    assert set(broker.server.ports) == {AGENTS_PORT, COLLECTOR_PORT}
