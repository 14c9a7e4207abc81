"""Two collectors with the alerts role side by side: Alertmanager turns their pages into one.

Both read the whole stream on their own subscriptions (never the ingest shared group), judge the
same rounds, and send identical label sets; the receiver behind Alertmanager gets one firing
and one resolved notification for the episode.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import Daemon, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port

from .test_alerting import Receiver, _alertmanager_config

SITE, AGENT = "ha-site", "ha-pi"
pytestmark = pytest.mark.integration


def _round(seq: int, received: int, at_ns: int) -> bytes:
    fields: dict[str, float | int] = {
        "sent": 10,
        "received": received,
        "loss_pct": 100.0 * (10 - received) / 10,
    }
    if received:
        fields |= {"rtt_p95_ms": 10.0, "jitter_ms": 1.0}
    sample = Sample(
        measurement="link",
        tags={"site": SITE, "agent": AGENT, "target": "parent-gw", "role": "parent"},
        fields=fields,  # type: ignore[arg-type]
        time=at_ns,
    )
    return encode(Envelope(site=SITE, agent=AGENT, seq=seq, sent_at=at_ns, samples=[sample]))


def _collector(
    tmp: Path, name: str, *, mosquitto: int, influx: InfluxdServer, db: str, am: str
) -> tuple[Daemon, int]:
    """An alerts-only collector and its HTTP port."""
    config = tmp / f"{name}.yaml"
    http_port = free_port()
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto}, client_id: {name}}}\n"
        f'influxdb: {{api: v1, url: "{influx.url}", database: {db}}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        f"roles: [alerts]\ndata_dir: ./{name}-data\n"
        f"alerting: {{for_rounds: 3, clear_rounds: 3, silence_timeout: 1h}}\n"
        f'notify: {{alertmanager: {{url: "{am}"}}}}\n',
        encoding="utf-8",
    )
    command = [script("fieldmon-collector"), "run", "--config", config]
    return start(command, tmp / f"{name}.log"), http_port


def test_two_alert_evaluators_give_one_notification_per_episode(
    tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, influx_db: str
) -> None:
    (tmp_path / "site_configs").mkdir()
    (tmp_path / "site_configs" / f"{SITE}.yaml").write_text(
        f"site: {SITE}\nname: HA\nparent_hospital: central\n"
        f"agent: {{id: {AGENT}, broker: {{host: 127.0.0.1, port: {mosquitto.port}}}}}\n"
        "links:\n  - {name: parent-gw, address: 127.0.0.1, role: parent, interval: 10s}\n",
        encoding="utf-8",
    )
    receiver = Receiver()
    alertmanager = AlertmanagerServer(tmp_path / "am", _alertmanager_config(receiver.port))
    alertmanager.start()
    collectors = [
        _collector(
            tmp_path,
            name,
            mosquitto=mosquitto.port,
            influx=influxd,
            db=influx_db,
            am=alertmanager.url,
        )
        for name in ("alerts-a", "alerts-b")
    ]
    try:
        for collector, http_port in collectors:
            wait_subscribed(http_port, daemons=collector)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        # Rounds 5 s apart ending about now: recent enough to be judged live, not as history.
        start = time.time_ns() - 45 * 10**9
        # Three healthy rounds, three all-lost rounds (down), four healthy rounds (resolve).
        pattern = [10, 10, 10, 0, 0, 0, 10, 10, 10, 10]
        for seq, received in enumerate(pattern):
            at = start + seq * 5 * 10**9
            client.publish(
                f"fieldmon/v1/{SITE}/{AGENT}/samples", _round(seq, received, at), qos=1
            ).wait_for_publish(5)
            # Spread over two seconds as live rounds would be, rather than in one burst: the
            # page reaches Alertmanager before the resolve does, so it notifies both.
            time.sleep(0.2)
        client.loop_stop()
        client.disconnect()

        def link_down(status: str) -> list[tuple[float, str, str]]:
            return [s for s in receiver.alertmanager_states() if s[1:] == ("LinkDown", status)]

        wait_for(lambda: bool(link_down("resolved")), "the resolved notification", 30)
        time.sleep(3)  # room for a duplicate to show up, were there one
    finally:
        for collector, _http_port in collectors:
            collector.stop()
        alertmanager.stop()
        receiver.server.shutdown()
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("alerts-a", "alerts-b")]
    # Both evaluators paged; Alertmanager delivered the episode once.
    assert all("page: " in log and "LinkDown" in log for log in logs)
    assert len(link_down("firing")) == 1
    assert len(link_down("resolved")) == 1
