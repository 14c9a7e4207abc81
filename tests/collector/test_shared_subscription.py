"""Two ingest collectors in one MQTT v5 shared group split the stream: every envelope once."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import Daemon, http_get, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

SITE, AGENT = "shared-site", "shared-pi"
ENVELOPES, PER_ENVELOPE = 200, 5
pytestmark = pytest.mark.integration


def _metric(port: int, name: str) -> float:
    _status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _collector(
    tmp: Path, name: str, mosquitto: int, influx_url: str, db: str
) -> tuple[Daemon, int]:
    port = free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto}, client_id: {name}, "
        f"shared_group: fieldmon-ingest}}\n"
        f'influxdb: {{api: v1, url: "{influx_url}", database: {db}, flush_interval: 200ms}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{port}'}}\n"
        f"roles: [ingest]\ndata_dir: ./{name}-data\n",
        encoding="utf-8",
    )
    command = [script("fieldmon-collector"), "run", "--config", config]
    return start(command, tmp / f"{name}.log"), port


def test_two_collectors_write_every_envelope_exactly_once(
    tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, influx_db: str
) -> None:
    (tmp_path / "site_configs").mkdir()
    (tmp_path / "site_configs" / f"{SITE}.yaml").write_text(
        f"site: {SITE}\nname: Shared\nparent_hospital: central\n"
        f"agent: {{id: {AGENT}, broker: {{host: 127.0.0.1, port: {mosquitto.port}}}}}\n"
        "links:\n"
        + "".join(
            f"  - {{name: t{i}, address: 192.0.2.1, role: ap}}\n" for i in range(PER_ENVELOPE)
        ),
        encoding="utf-8",
    )
    collectors = [
        _collector(tmp_path, name, mosquitto.port, influxd.url, influx_db)
        for name in ("ingest-1", "ingest-2")
    ]
    try:
        # Both in the shared group before anything is published (SUBACKs in), or the first
        # one would get the whole stream.
        for process, port in collectors:
            wait_subscribed(port, daemons=process)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        base = time.time_ns() - 3_600_000_000_000
        for seq in range(ENVELOPES):
            samples = [
                Sample(
                    measurement="link",
                    tags={"site": SITE, "agent": AGENT, "target": f"t{i}", "role": "ap"},
                    fields={"loss_pct": 0.0},
                    time=base + seq * 1_000_000_000,
                )
                for i in range(PER_ENVELOPE)
            ]
            envelope = Envelope(site=SITE, agent=AGENT, seq=seq, sent_at=base, samples=samples)
            client.publish(f"fieldmon/v1/{SITE}/{AGENT}/samples", encode(envelope), qos=1)
        client.loop_stop()
        client.disconnect()
        total = ENVELOPES * PER_ENVELOPE

        def all_written() -> bool:
            return (
                sum(_metric(port, "fieldmon_points_written_total") for _, port in collectors)
                >= total
            )

        wait_for(all_written, "every point written", daemons=[p for p, _ in collectors])
        written = [_metric(port, "fieldmon_points_written_total") for _, port in collectors]
        received = [_metric(port, "fieldmon_envelopes_received_total") for _, port in collectors]
    finally:
        for process, _port in collectors:
            process.stop()
    # The broker split the stream: both worked, neither saw an envelope the other saw.
    assert sum(received) == ENVELOPES
    assert min(received) > 0
    assert sum(written) == total
    rows = influxd.query(f"SELECT COUNT(loss_pct) FROM link WHERE site = '{SITE}'", db=influx_db)
    assert rows[0]["count"] == total
