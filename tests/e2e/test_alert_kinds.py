"""ApDown end to end: a radio vanishes from a real snmpd's walk, the page reaches Alertmanager.

Real parts only: snmpd serving a copy of the recorded generic-ap walk (fieldmon.lab.simap), the
agent polling it every second, Mosquitto, the collector (ingest + alerts) and Alertmanager
delivering to a webhook receiver. Removing wlan0's rows from the walk makes the agent report it
down (`up=0`); ApDown fires after `ap_down_polls` polls. The collector is restarted in the
middle of the episode: it must neither page again nor lose the resolve once the rows are back.
wlan1 is down in the recording from the start: a radio never seen up must never page.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldmon.lab.process import Daemon, script, start, wait_for, wait_subscribed
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port
from fieldmon.lab.simap import recorded_walk, walk_server

from .test_alerting import Receiver, _alertmanager_config

SITE, AGENT = "kinds-site", "kinds-pi"
pytestmark = pytest.mark.integration

# generic-ap.walk: ifIndex 2 is wlan0 (up, channel 6); these are every OID of that radio.
WLAN0_OIDS = (
    ".1.3.6.1.2.1.2.2.1.3.2 ",
    ".1.3.6.1.2.1.2.2.1.8.2 ",
    ".1.3.6.1.2.1.2.2.1.10.2 ",
    ".1.3.6.1.2.1.31.1.1.1.1.2 ",
    ".1.2.840.10036.4.5.1.1.2 ",
)


def _write_configs(
    tmp: Path, *, mosquitto: int, snmp_port: int, community: str, influx: str, db: str, am: str
) -> tuple[Path, Path, int]:
    """The site file, the collector file and the collector's HTTP port."""
    write_secret(tmp / "community", community)
    sites = tmp / "site_configs"
    sites.mkdir()
    site_file = sites / f"{SITE}.yaml"
    site_file.write_text(
        f"""site: {SITE}
name: "ApDown end-to-end site"
parent_hospital: test-central
agent:
  id: {AGENT}
  broker: {{host: 127.0.0.1, port: {mosquitto}}}
  outbox: {{path: {tmp / "outbox.db"}}}
  linger: 50ms
snmp_devices:
  - {{name: ap-hall, address: 127.0.0.1, profile: generic-ap, interval: 1s,
     snmp: {{version: 2c, community_file: {tmp / "community"}, port: {snmp_port},
            timeout: 500ms, retries: 0}}}}
host: {{interval: 5s}}
alerting: {{ap_down_polls: 2}}
""",
        encoding="utf-8",
    )
    collector_file = tmp / "collector.yaml"
    http_port = free_port()
    collector_file.write_text(
        f"""broker: {{host: 127.0.0.1, port: {mosquitto}, client_id: kinds-collector}}
influxdb: {{api: v1, url: "{influx}", database: {db}, flush_interval: 200ms}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./data
alerting: {{silence_timeout: 1h, device_clear_polls: 2}}
notify:
  alertmanager: {{url: "{am}"}}
""",
        encoding="utf-8",
    )
    return site_file, collector_file, http_port


def test_radio_removed_from_the_walk_pages_ap_down_and_resolves(
    tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, influx_db: str
) -> None:
    walk = tmp_path / "ap.walk"
    shutil.copy(recorded_walk("generic-ap"), walk)
    original = walk.read_text(encoding="utf-8")
    without_wlan0 = "".join(
        line for line in original.splitlines(keepends=True) if not line.startswith(WLAN0_OIDS)
    )
    assert without_wlan0 != original
    snmpd = walk_server(tmp_path / "snmpd", walk).start()
    receiver = Receiver()
    alertmanager = AlertmanagerServer(tmp_path / "am", _alertmanager_config(receiver.port))
    alertmanager.start()
    site_file, collector_file, http_port = _write_configs(
        tmp_path,
        mosquitto=mosquitto.port,
        snmp_port=snmpd.port,  # type: ignore[arg-type]
        community=snmpd.community,
        influx=influxd.url,
        db=influx_db,
        am=alertmanager.url,
    )
    logs = tmp_path / "processes.log"

    def start_collector() -> Daemon:
        return start([script("fieldmon-collector"), "run", "--config", collector_file], logs)

    collector = start_collector()
    agent: Daemon | None = None

    def ap_down_alerts() -> list[dict[str, object]]:
        return [
            alert
            for _, path, body in receiver.deliveries
            if path == "/am"
            for alert in body["alerts"]  # type: ignore[union-attr]
            if alert["labels"]["alertname"] == "ApDown"  # type: ignore[index]
        ]

    def seen(status: str) -> Callable[[], bool]:
        return lambda: any(alert["status"] == status for alert in ap_down_alerts())

    def radio_rows() -> int:
        rows = influxd.query(
            """SELECT count("up") FROM "ap" WHERE "radio" = 'wlan0'""", db=influx_db
        )
        return int(rows[0]["count"]) if rows else 0

    try:
        wait_subscribed(http_port, daemons=collector)
        agent = start([script("fieldmon-agent"), "run", "--config", site_file], logs)
        # wlan0 seen up a few times first (a radio is watched once it was seen working).
        wait_for(lambda: radio_rows() >= 3, "wlan0 rows in InfluxDB", 20)
        assert ap_down_alerts() == [], "no page while every watched radio is up"
        walk.write_text(without_wlan0, encoding="utf-8")
        wait_for(seen("firing"), "ApDown firing at Alertmanager", 20)
        collector.stop()
        collector = start_collector()
        wait_subscribed(http_port, daemons=collector)
        time.sleep(3)  # the restored collector judges a few more down polls: no second page
        walk.write_text(original, encoding="utf-8")
        wait_for(seen("resolved"), "ApDown resolved at Alertmanager", 20)
    finally:
        for process in (agent, collector):
            if process is not None:
                process.stop()
        alertmanager.stop()
        receiver.server.shutdown()
        snmpd.stop()

    log = (tmp_path / "processes.log").read_text(encoding="utf-8")
    assert log.count("page: kinds-site: AP ap-hall radio wlan0 down since") == 1
    assert log.count("page: kinds-site: AP ap-hall radio wlan0 recovered") == 1
    alerts = ap_down_alerts()
    # One radio, one identity: the fixed label set, never a measured value.
    assert {tuple(sorted(a["labels"].items())) for a in alerts} == {  # type: ignore[attr-defined]
        (
            ("alertname", "ApDown"),
            ("device", "ap-hall"),
            ("parent_hospital", "test-central"),
            ("radio", "wlan0"),
            ("severity", "warning"),
            ("site", SITE),
            ("target", "ap-hall/wlan0"),
        )
    }
    firing = next(a for a in alerts if a["status"] == "firing")
    assert "AP ap-hall radio wlan0 down since" in firing["annotations"]["summary"]  # type: ignore[index]
    assert firing["annotations"]["up"] == "0"  # type: ignore[index]
    # Both state changes are `alert` rows in InfluxDB.
    rows = influxd.query(
        """SELECT "state" FROM "alert" WHERE "alertname" = 'ApDown'""", db=influx_db
    )
    assert [row["state"] for row in rows] == ["firing", "resolved"]
