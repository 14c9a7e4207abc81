"""Attacks that pass the broker (a stolen Pi on its own, allowed topic) against the real
collector and influxd: the collector trusts the topic, not the payload. And a broker that
refuses the collector's subscription shows in /healthz rather than blinding the NOC silently.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import Daemon, collector_health, http_get, script, start, wait_for
from fieldmon.lab.servers import InfluxdServer, dynamic_security, free_port

from .security_support import (
    COLLECTOR_PASSWORD,
    COLLECTOR_USER,
    SHIPPED_CONF,
    Broker,
    Deployment,
    start_broker,
)

pytestmark = pytest.mark.integration

NS = 10**9


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _refused(port: int, reason: str) -> float:
    labels = (("agent", "a-pi"), ("reason", reason), ("site", "site-a"))
    return _metrics(port).get(("fieldmon_samples_refused_total", labels), 0.0)


def _round(site: str, agent: str, at: int, loss: float, **tags: str) -> Sample:
    return Sample(
        measurement="link",
        tags={"site": site, "agent": agent, "target": "parent-gw", "role": "parent", **tags},
        fields={"sent": 10, "received": round(10 - loss / 10), "loss_pct": loss},
        time=at,
    )


def _rows(influxd: InfluxdServer, db: str, query: str) -> list[dict[str, Any]]:
    return influxd.query(query, db=db)


def test_rows_for_another_site_are_refused_and_counted(
    broker: Broker,
    collector: tuple[Daemon, int],
    influxd: InfluxdServer,
    influx_db: str,
) -> None:
    daemon, http_port = collector
    at = time.time_ns() - 60 * NS
    # Site B's own agent stores a healthy round.
    b = broker.agent("b-pi")
    honest = Envelope(
        site="site-b", agent="b-pi", seq=1, sent_at=at, samples=[_round("site-b", "b-pi", at, 0.0)]
    )
    b.publish("fieldmon/v1/site-b/b-pi/samples", encode(honest))
    wait_for(
        lambda: _rows(influxd, influx_db, "SELECT * FROM link WHERE site = 'site-b'"),
        "site B's own round in InfluxDB",
        daemons=daemon,
    )

    # A stolen Pi of site A, on its own topic, sends rows dressed as site B's.
    forged = [
        _round("site-b", "b-pi", at + NS, 100.0),  # a LinkDown for site B
        _round("site-b", "b-pi", at, 100.0),  # B's stored round, overwritten (same tags, time)
        _round("site-b", "a-pi", at + 2 * NS, 100.0),  # B's site, A's own agent tag
        Sample(
            measurement="alert",  # a forged alert row, in A's own name
            tags={"site": "site-a", "alertname": "LinkDown", "target": "parent-gw"},
            fields={"state": "firing", "value": 100.0},
            time=at,
        ),
        _round("site-a", "a-pi", at, 100.0, target="invented-link"),
        _round("site-a", "a-pi", at + 3 * NS, 0.0),  # the only row A may store
    ]
    a = broker.agent("a-pi")
    envelope = Envelope(site="site-a", agent="a-pi", seq=1, sent_at=at, samples=forged)
    a.publish("fieldmon/v1/site-a/a-pi/samples", encode(envelope))
    wait_for(
        lambda: _rows(influxd, influx_db, "SELECT * FROM link WHERE site = 'site-a'"),
        "site A's own round in InfluxDB",
        daemons=daemon,
    )

    # The events topic carries envelopes too (the same seq counter): the same screen applies.
    events = [
        Sample(
            measurement="event",
            tags={"site": "site-b", "agent": "b-pi", "kind": "hook"},
            fields={"message": "forged hook run at site B"},
            time=at,
        ),
        Sample(measurement="event", tags={"kind": "hook"}, fields={"message": "mine"}, time=at),
    ]
    envelope = Envelope(site="site-a", agent="a-pi", seq=2, sent_at=at, samples=events)
    a.publish("fieldmon/v1/site-a/a-pi/events", encode(envelope))
    wait_for(
        lambda: _rows(influxd, influx_db, "SELECT * FROM event"),
        "site A's own event row in InfluxDB",
        daemons=daemon,
    )
    stored_events = _rows(influxd, influx_db, "SELECT * FROM event")
    assert [(row["site"], row["agent"], row["message"]) for row in stored_events] == [
        ("site-a", "a-pi", "mine")
    ]

    site_b = _rows(influxd, influx_db, "SELECT * FROM link WHERE site = 'site-b'")
    assert [(row["time"], row["loss_pct"], row["agent"]) for row in site_b] == [(at, 0.0, "b-pi")]
    site_a = _rows(influxd, influx_db, "SELECT * FROM link WHERE site = 'site-a'")
    assert [(row["time"], row["target"]) for row in site_a] == [(at + 3 * NS, "parent-gw")]
    assert _rows(influxd, influx_db, "SELECT * FROM alert") == []
    assert _refused(http_port, "tag_mismatch") == 4
    assert _refused(http_port, "measurement_not_allowed") == 1
    assert _refused(http_port, "unknown_target") == 1
    # The status board never heard of the invented link, and site B still looks healthy.
    _status, body = http_get(f"http://127.0.0.1:{http_port}/api/v1/sites")
    sites = {site["site"]: site for site in json.loads(body)["sites"]}
    assert [link["name"] for link in sites["site-a"]["links"]] == ["parent-gw"]
    assert sites["site-b"]["links"][0]["latest"]["loss_pct"] == 0.0


def test_a_refused_subscription_shows_in_healthz(
    deployment: Deployment, influxd: InfluxdServer, influx_db: str, tmp_path: Path
) -> None:
    # Mosquitto's acl_file never refuses a SUBSCRIBE; its dynamic-security plugin does. The
    # collector's listener gets it instead of its password and ACL files (one listener only,
    # per_listener_settings); everything else is the shipped conf.
    shipped = SHIPPED_CONF.read_text()
    files = (
        "password_file /etc/mosquitto/fieldmon/collector.passwd\n"
        "acl_file /etc/mosquitto/fieldmon/collector.acl\n"
    )
    assert files in shipped
    document = dynamic_security(
        deny_subscribe=["fieldmon/v1/+/+/samples"], users={COLLECTOR_USER: COLLECTOR_PASSWORD}
    )
    directory = tmp_path / "dynsec-broker"
    directory.mkdir()
    (directory / "dynsec.json").write_text(json.dumps(document), encoding="utf-8")
    plugin = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))[0]
    conf = shipped.replace(
        files,
        f"plugin {plugin}\nplugin_opt_config_file /etc/mosquitto/fieldmon-test/dynsec.json\n",
    )
    refusing = start_broker(
        deployment,
        directory,
        conf,
        extra_paths={str(plugin): plugin, "/etc/mosquitto/fieldmon-test/": directory},
    )
    http_port = free_port()
    config = deployment.collector_config(
        refusing.collector_port, influxd, influx_db, http_port, tmp_path / "collector-data"
    )
    daemon = start(
        [script("fieldmon-collector"), "run", "--config", config],
        tmp_path / "collector.log",
        cwd=deployment.directory,
    )
    try:

        def answered() -> tuple[int, dict[str, Any]] | None:
            status, health = collector_health(http_port)
            subscriptions = health["subscriptions"]
            if subscriptions and all(sub["state"] != "pending" for sub in subscriptions):
                return status, health
            return None

        status, health = wait_for(answered, "the broker's SUBACKs", daemons=daemon)
    finally:
        daemon.stop()
        refusing.server.stop()
    assert status == 503
    states = {sub["topic"]: sub["state"] for sub in health["subscriptions"]}
    assert states == {
        "fieldmon/v1/+/+/samples": "refused",
        "fieldmon/v1/+/+/events": "granted",
        "fieldmon/v1/+/+/status": "granted",
    }
    assert health["problems"] == [
        "mqtt: the broker refused the subscription to fieldmon/v1/+/+/samples (Not authorized)"
    ]
