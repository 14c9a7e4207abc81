"""One site end to end on real servers: agent -> Mosquitto -> collector -> influxd."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.lab.netns import silent_host
from fieldmon.lab.process import (
    collector_health,
    http_get,
    script,
    start,
    wait_for,
    wait_subscribed,
)
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, SnmpdServer, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets and namespaces need root"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def silent_address() -> Iterator[str]:
    """An address inside a namespace of our own whose host never answers echoes."""
    with silent_host("e2e") as address:
        yield address


def test_agent_to_influxdb_through_mosquitto(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    influxd: InfluxdServer,
    influx_db: str,
    silent_address: str,
) -> None:
    sites = tmp_path / "site_configs"
    sites.mkdir()
    outbox = tmp_path / "agent" / "outbox.db"
    snmpd = SnmpdServer(tmp_path / "snmpd").start()
    write_secret(sites / "community", snmpd.community)
    site_file = _write(
        sites / "e2e-site.yaml",
        f"""
site: e2e-site
name: "End-to-end test site"
parent_hospital: test-hospital
agent:
  id: e2e-pi
  broker: {{host: 127.0.0.1, port: {mosquitto.port}}}
  outbox: {{path: {outbox}}}
  linger: 100ms
links:
  - {{name: loopback, address: 127.0.0.1, role: gateway, interval: 1s, count: 5,
     spacing: 50ms, timeout: 500ms}}
  - {{name: parent-silent, address: {silent_address}, role: parent, interval: 1s, count: 5,
     spacing: 50ms, timeout: 500ms}}
snmp_devices:
  - {{name: uplink-router, address: 127.0.0.1, profile: if-mib, interval: 1s, interfaces: [lo],
     snmp: {{version: 2c, community_file: community, port: {snmpd.port}, timeout: 500ms}}}}
host: {{interval: 1s}}
""",
    )
    http_port = free_port()
    collector_file = _write(
        tmp_path / "collector.yaml",
        f"""
broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: e2e-collector}}
influxdb: {{api: v1, url: "{influxd.url}", database: {influx_db}, flush_interval: 200ms}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./collector-data
""",
    )
    collector = start(
        [script("fieldmon-collector"), "run", "--config", collector_file],
        tmp_path / "collector.log",
    )
    # The agent starts once the broker keeps its envelopes for the collector (SUBACK in):
    # one sent before would wait for the agent's 30 s ack timeout to be sent again.
    try:
        wait_subscribed(http_port, daemons=collector)
    except AssertionError:
        collector.stop()
        snmpd.stop()
        raise
    agent = start([script("fieldmon-agent"), "run", "--config", site_file], tmp_path / "agent.log")
    try:

        def rows() -> dict[str, dict[str, object]]:
            found = influxd.query(
                "SELECT * FROM \"link\" WHERE site = 'e2e-site' GROUP BY * ORDER BY time DESC "
                "LIMIT 1",
                db=influx_db,
            )
            by_target = {str(row["target"]): row for row in found}
            return by_target if {"loopback", "parent-silent"} <= set(by_target) else {}

        latest = wait_for(rows, "link rows for both targets in influxd", 30)
        loop_row, silent_row = latest["loopback"], latest["parent-silent"]
        for row, role in ((loop_row, "gateway"), (silent_row, "parent")):
            assert row["site"] == "e2e-site"
            assert row["agent"] == "e2e-pi"
            assert row["role"] == role
            assert row["sent"] == 5
        assert loop_row["loss_pct"] == 0
        assert loop_row["received"] == 5
        assert 0 < float(loop_row["rtt_p50_ms"]) < 50  # type: ignore[arg-type]
        assert silent_row["loss_pct"] == 100
        assert silent_row["received"] == 0
        assert silent_row.get("rtt_avg_ms") is None

        # The SNMP probe polled the router's IF-MIB (a real snmpd) and the host probe ran.
        def snmp_rows() -> list[dict[str, object]]:
            return influxd.query(
                'SELECT * FROM "snmp_if" WHERE in_bps >= 0 GROUP BY *', db=influx_db
            )

        [lo_row, *_] = wait_for(snmp_rows, "an snmp_if row with a rate", 30)
        assert (lo_row["device"], lo_row["ifname"], lo_row["oper_up"]) == ("uplink-router", "lo", 1)
        [host_row, *_] = wait_for(
            lambda: influxd.query('SELECT * FROM "host" GROUP BY *', db=influx_db), "host rows", 30
        )
        assert 0 <= float(host_row["mem_pct"]) <= 100  # type: ignore[arg-type]

        # The alert role judged the same stream: two all-lost rounds make the silent parent
        # link LinkDown, recorded as an `alert` row (docs/contract.md) with the fixed label set.
        def link_down() -> list[dict[str, object]]:
            return influxd.query(
                "SELECT * FROM \"alert\" WHERE alertname = 'LinkDown' GROUP BY *", db=influx_db
            )

        [down, *_] = wait_for(link_down, "a LinkDown alert row", 30)
        assert (down["site"], down["target"], down["severity"]) == (
            "e2e-site",
            "parent-silent",
            "critical",
        )
        assert down["state"] == "firing"

        status, health = collector_health(http_port)
        assert (status, health["status"]) == (200, "ok"), health
        metrics = http_get(f"http://127.0.0.1:{http_port}/metrics")[1].decode()
        written = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("fieldmon_points_written_total")
        ]
        assert written and written[0] >= 2
    finally:
        agent_status = agent.stop()
        collector_status = collector.stop()
        snmpd.stop()
    logs = f"agent log:\n{(tmp_path / 'agent.log').read_text()[-3000:]}"
    assert agent_status == 0, logs
    assert collector_status == 0, (tmp_path / "collector.log").read_text()[-3000:]

    # Everything the agent committed was acknowledged end to end, so its outbox is empty
    # (or holds only what it measured in the last moments before SIGTERM).
    with sqlite3.connect(outbox) as db:
        left = db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0]
        next_seq = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
    assert next_seq >= 1
    assert left <= 1, logs

    # A clean stop leaves the retained status "offline" (the agent published it itself).
    assert _retained_status(mosquitto.port)["state"] == "offline"


def _retained_status(port: int) -> dict[str, object]:
    received: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.connect("127.0.0.1", port)
    client.subscribe("fieldmon/v1/e2e-site/e2e-pi/status", qos=1)
    client.loop_start()
    try:
        wait_for(lambda: received, "the retained status message", 5)
    finally:
        client.loop_stop()
        client.disconnect()
    return json.loads(received[0])
