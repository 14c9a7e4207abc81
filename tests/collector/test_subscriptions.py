"""A subscription the broker refuses is an error in the log, a metric and a /healthz reason.

Real Mosquitto with its dynamic-security plugin (Mosquitto's `acl_file` never refuses a
SUBSCRIBE: it grants it and withholds the messages), the collector as a subprocess logging in
with a username and password.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fieldmon.lab.process import (
    Daemon,
    collector_health,
    http_get,
    script,
    start,
    wait_for,
    wait_subscribed,
)
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, dynamic_security, free_port

SAMPLES, STATUS = "fieldmon/v1/+/+/samples", "fieldmon/v1/+/+/status"
EVENTS = "fieldmon/v1/+/+/events"
PASSWORD = "collector-secret-1"
pytestmark = pytest.mark.integration


def _broker(directory: Path, deny: list[str]) -> MosquittoServer:
    document = dynamic_security(deny_subscribe=deny, users={"collector": PASSWORD})
    return MosquittoServer(directory, allow_anonymous=False, dynamic_security=document)


def _collector(
    tmp: Path, broker: MosquittoServer, influxd: InfluxdServer, db: str
) -> tuple[Daemon, int]:
    """The collector (ingest and alerts: every subscription) and its HTTP port."""
    (tmp / "site_configs").mkdir(exist_ok=True)
    write_secret(tmp / "collector.pass", PASSWORD)
    port = free_port()
    config = tmp / "collector.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {broker.port}, client_id: acl-collector, "
        "username: collector, password_file: collector.pass}\n"
        f'influxdb: {{api: v1, url: "{influxd.url}", database: {db}}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{port}'}}\n"
        "roles: [ingest, alerts]\ndata_dir: ./data\n",
        encoding="utf-8",
    )
    command = [script("fieldmon-collector"), "run", "--config", config]
    return start(command, tmp / "collector.log"), port


def _refusals(port: int) -> dict[str, float]:
    _status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    return {
        sample.labels["topic"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "fieldmon_subscriptions_refused"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _answered(port: int) -> tuple[int, dict[str, Any]] | None:
    """/healthz once the broker has answered every subscription, whatever it said."""
    status, health = collector_health(port)
    subscriptions = health["subscriptions"]
    if subscriptions and all(sub["state"] != "pending" for sub in subscriptions):
        return status, health
    return None


def test_a_refused_subscription_is_logged_counted_and_unhealthy(
    tmp_path: Path, influxd: InfluxdServer, influx_db: str
) -> None:
    with _broker(tmp_path / "mosquitto", deny=[STATUS]) as broker:
        collector, port = _collector(tmp_path, broker, influxd, influx_db)
        try:
            status, health = wait_for(
                lambda: _answered(port),
                "the broker's answers to every SUBSCRIBE",
                daemons=collector,
            )
            refusals = _refusals(port)
        finally:
            assert collector.stop() == 0, collector.tail()
    assert status == 503
    assert health["status"] == "unhealthy"
    assert health["problems"] == [
        f"mqtt: the broker refused the subscription to {STATUS} (Not authorized)"
    ]
    assert health["subscriptions"] == [
        {"topic": SAMPLES, "state": "granted", "qos": 1, "reason": None},
        {"topic": EVENTS, "state": "granted", "qos": 1, "reason": None},
        {"topic": STATUS, "state": "refused", "qos": None, "reason": "Not authorized"},
    ]
    # No broker address, no credentials in what /healthz says.
    text = json.dumps(health)
    assert "127.0.0.1" not in text and str(broker.port) not in text and PASSWORD not in text
    assert refusals == {STATUS: 1.0}  # the granted one is not counted at all
    errors = [
        json.loads(line)
        for line in collector.output().splitlines()
        if line.startswith("{") and json.loads(line)["level"] == "error"
    ]
    assert [(e["msg"], e["topic"], e["reason"], e["reason_code"]) for e in errors] == [
        (
            f"broker refused the subscription to {STATUS} (Not authorized): agents' births and "
            "last wills do not reach the alert role: SiteUnreachable fires only after "
            "silence_timeout",
            STATUS,
            "Not authorized",
            "0x87",
        )
    ]


def test_granted_subscriptions_are_healthy_and_granted_again_after_a_broker_restart(
    tmp_path: Path, influxd: InfluxdServer, influx_db: str
) -> None:
    with _broker(tmp_path / "mosquitto", deny=[]) as broker:
        collector, port = _collector(tmp_path, broker, influxd, influx_db)
        try:
            subscriptions = wait_subscribed(port, daemons=collector)
            status, health = collector_health(port)
            refusals = _refusals(port)
            broker.stop()
            wait_for(
                lambda: collector_health(port)[1]["subscriptions"][0]["state"] == "pending",
                "the collector to notice the broker is gone",
                daemons=collector,
            )
            broker.start()  # same port; the collector reconnects and subscribes again
            again = wait_subscribed(port, daemons=collector)
        finally:
            assert collector.stop() == 0, collector.tail()
    assert [(s["topic"], s["state"], s["qos"]) for s in subscriptions] == [
        (SAMPLES, "granted", 1),
        (EVENTS, "granted", 1),
        (STATUS, "granted", 1),
    ]
    assert (status, health["problems"]) == (200, [])
    assert refusals == {}
    assert again == subscriptions
    assert collector.output().count(f"subscribed to {STATUS} (QoS 1)") == 2
