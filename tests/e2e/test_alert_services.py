"""Service alerts end to end: a real agent probes a real nginx in a namespace; the test breaks it.

The parent hospital is a network namespace of the test's own, joined to the root namespace (the
Pi) by a veth. In it run nginx (HTTPS with certificates of a test CA the site file trusts) and a
backend nginx proxies the HIS's /health to, whose delay the test controls. The real agent probes
the HIS over HTTPS and a lab system's TLS port (a certificate with 5 days left); Mosquitto, influxd,
the collector and a real Alertmanager delivering to a webhook receiver run on loopback.

The backend made slow -> ServiceSlow; fast again -> resolved. nginx stopped (by its PID) ->
ServiceDown (refused) for both services, the HIS's critical; started again -> resolved. The lab
system's certificate -> CertificateExpiring, never resolved. Each page is sent once, with the
fixed labels, and each state change is an `alert` row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.process import Daemon, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import (
    AlertmanagerServer,
    InfluxdServer,
    MosquittoServer,
    free_port,
    stop_quietly,
)
from fieldmon.lab.services import NginxServer, SlowUpstream, TestCa

from .test_alerting import Receiver, _alertmanager_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SITE, AGENT = "svc-site", "svc-pi"
BACKEND_PORT = 8081  # on the namespace's loopback
SLOW_MS = 300  # the HIS's slow_ms
SLOW_DELAY_MS = 600  # what the backend waits while the test makes it slow
LAB_NAME = "lab.hospital.example"


@dataclass
class Hospital:
    """The namespace, its servers, and the test CA's certificate."""

    ns: Namespace
    address: str
    ca_file: Path
    nginx: NginxServer
    backend: SlowUpstream


def _nginx_servers(address: str, his: Any, lab: Any) -> str:
    return f"""
    server {{
        listen {address}:443 ssl default_server;
        ssl_certificate {his.cert_file}; ssl_certificate_key {his.key_file};
        location = /health {{ proxy_pass http://127.0.0.1:{BACKEND_PORT}; }}
    }}
    server {{
        listen {address}:443 ssl;
        server_name {LAB_NAME};
        ssl_certificate {lab.cert_file}; ssl_certificate_key {lab.key_file};
        location / {{ return 200 "ok\\n"; }}
    }}
"""


@pytest.fixture
def hospital(tmp_path: Path) -> Iterator[Hospital]:
    ca = TestCa.create()
    with Namespace(unique_name("svcalert")) as ns:
        link = veth(None, ns)
        address = str(link.b_v4.ip)
        his = ca.issue(tmp_path / "tls" / "his", [address], days=90)
        lab = ca.issue(tmp_path / "tls" / "lab", [LAB_NAME], days=5)
        backend = SlowUpstream(
            tmp_path / "backend", ns.name, "127.0.0.1", BACKEND_PORT, delay_ms=0,
            control=tmp_path / "backend-control.json",
        )  # fmt: skip
        servers = _nginx_servers(address, his, lab)
        nginx = NginxServer(tmp_path / "nginx", ns.name, servers, [(address, 443)])
        try:
            backend.start()
            nginx.start()
            yield Hospital(ns, address, ca.write(tmp_path / "ca.pem"), nginx, backend)
        finally:
            stop_quietly(nginx)
            stop_quietly(backend)


def _write_configs(
    tmp: Path, hospital: Hospital, *, mosquitto: int, influx: str, db: str, am: str
) -> tuple[Path, Path, int]:
    """The site file, the collector file and the collector's HTTP port."""
    sites = tmp / "site_configs"
    sites.mkdir()
    site_file = sites / f"{SITE}.yaml"
    site_file.write_text(
        f"""site: {SITE}
name: "Service alerts end-to-end site"
parent_hospital: test-central
agent:
  id: {AGENT}
  broker: {{host: 127.0.0.1, port: {mosquitto}}}
  outbox: {{path: {tmp / "outbox.db"}}}
  linger: 50ms
services:
  - {{name: his, kind: http, url: "https://{hospital.address}/health", ca_file: {hospital.ca_file},
     interval: 1s, timeout: 900ms, slow_ms: {SLOW_MS}, severity: critical}}
  - {{name: lab-results, kind: tcp, address: {hospital.address}, port: 443, tls: true,
     server_name: {LAB_NAME}, ca_file: {hospital.ca_file}, interval: 1s, timeout: 900ms}}
host: {{interval: 5s}}
""",
        encoding="utf-8",
    )
    collector_file = tmp / "collector.yaml"
    http_port = free_port()
    collector_file.write_text(
        f"""broker: {{host: 127.0.0.1, port: {mosquitto}, client_id: svc-collector}}
influxdb: {{api: v1, url: "{influx}", database: {db}, flush_interval: 200ms}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./data
alerting: {{silence_timeout: 1h, for_rounds: 2, clear_rounds: 2}}
notify:
  alertmanager: {{url: "{am}"}}
""",
        encoding="utf-8",
    )
    return site_file, collector_file, http_port


def test_broken_nginx_pages_service_down_and_slow_and_resolves(
    tmp_path: Path,
    hospital: Hospital,
    mosquitto: MosquittoServer,
    influxd: InfluxdServer,
    influx_db: str,
) -> None:
    receiver = Receiver()
    alertmanager = AlertmanagerServer(tmp_path / "am", _alertmanager_config(receiver.port))
    alertmanager.start()
    site_file, collector_file, http_port = _write_configs(
        tmp_path, hospital, mosquitto=mosquitto.port, influx=influxd.url, db=influx_db,
        am=alertmanager.url,
    )  # fmt: skip
    logs = tmp_path / "processes.log"
    collector = start([script("fieldmon-collector"), "run", "--config", collector_file], logs)
    agent: Daemon | None = None

    def delivered(alertname: str, target: str = "his") -> list[dict[str, Any]]:
        return [
            alert
            for _, path, body in receiver.deliveries
            if path == "/am"
            for alert in body["alerts"]  # type: ignore[union-attr]
            if alert["labels"]["alertname"] == alertname  # type: ignore[index]
            and alert["labels"]["target"] == target  # type: ignore[index]
        ]

    def seen(alertname: str, status: str, target: str = "his") -> Callable[[], bool]:
        return lambda: any(alert["status"] == status for alert in delivered(alertname, target))

    def good_runs() -> int:
        rows = influxd.query(
            """SELECT count("duration_ms") FROM "service" WHERE "target" = 'his' AND "up" = true""",
            db=influx_db,
        )
        return int(rows[0]["count"]) if rows else 0

    try:
        wait_subscribed(http_port, daemons=collector)
        agent = start([script("fieldmon-agent"), "run", "--config", site_file], logs)
        watched = [collector, agent]
        wait_for(lambda: good_runs() >= 3, "good HIS runs in InfluxDB", 30, daemons=watched)
        assert delivered("ServiceSlow") == delivered("ServiceDown") == []
        # The lab system's certificate has 5 days left (cert_warn_days 14 by default).
        expiring = seen("CertificateExpiring", "firing", "lab-results")
        wait_for(expiring, "CertificateExpiring", 30, daemons=watched)

        hospital.backend.set(delay_ms=SLOW_DELAY_MS)
        wait_for(seen("ServiceSlow", "firing"), "ServiceSlow firing", 30, daemons=watched)
        hospital.backend.set(delay_ms=0)
        wait_for(seen("ServiceSlow", "resolved"), "ServiceSlow resolved", 30, daemons=watched)
        assert delivered("ServiceDown") == []

        hospital.nginx.stop()  # by its PID: connections to 443 are refused now
        wait_for(seen("ServiceDown", "firing"), "ServiceDown firing", 30, daemons=watched)
        # The lab system's TLS port is behind the same nginx.
        gone = seen("ServiceDown", "firing", "lab-results")
        wait_for(gone, "lab-results ServiceDown firing", 30, daemons=watched)
        hospital.nginx.start()
        wait_for(seen("ServiceDown", "resolved"), "ServiceDown resolved", 30, daemons=watched)
        back = seen("ServiceDown", "resolved", "lab-results")
        wait_for(back, "lab-results ServiceDown resolved", 30, daemons=watched)
    finally:
        for process in (agent, collector):
            if process is not None:
                process.stop()
        alertmanager.stop()
        receiver.server.shutdown()

    log = logs.read_text(encoding="utf-8")
    # One page per firing and one per resolve: debounced, never repeated.
    assert log.count(f"page: {SITE}: service his (http) slow since") == 1
    assert log.count(f"page: {SITE}: service his (http) down since") == 1
    assert log.count(f"page: {SITE}: service his (http) recovered") == 2
    expected = {
        ("ServiceSlow", "his"): ("http", "warning"),
        ("ServiceDown", "his"): ("http", "critical"),
        ("ServiceDown", "lab-results"): ("tcp", "warning"),
        ("CertificateExpiring", "lab-results"): ("tcp", "warning"),
    }
    for (alertname, target), (kind, severity) in expected.items():
        alerts = delivered(alertname, target)
        # One identity per alert: the fixed labels, never a measured value.
        assert {tuple(sorted(a["labels"].items())) for a in alerts} == {
            (
                ("alertname", alertname), ("kind", kind), ("parent_hospital", "test-central"),
                ("severity", severity), ("site", SITE), ("target", target),
            )
        }  # fmt: skip
    slow = next(a for a in delivered("ServiceSlow") if a["status"] == "firing")
    assert float(slow["annotations"]["duration_ms"]) >= SLOW_DELAY_MS
    down = next(a for a in delivered("ServiceDown") if a["status"] == "firing")
    assert down["annotations"]["error"] == "refused"
    assert down["annotations"]["summary"].endswith("(refused)")
    certificate = delivered("CertificateExpiring", "lab-results")
    assert 4 < float(certificate[0]["annotations"]["cert_days_left"]) < 5.1
    assert {a["status"] for a in certificate} == {"firing"}  # still 5 days left: never resolved
    assert delivered("CertificateExpiring") == []  # the HIS's certificate has 90 days
    # Every state change is an `alert` row in InfluxDB.
    rows = influxd.query(
        """SELECT "state" FROM "alert" WHERE "target" = 'his' GROUP BY "alertname" """,
        db=influx_db,
    )
    states: dict[str, list[str]] = {}
    for row in rows:
        states.setdefault(row["alertname"], []).append(row["state"])
    assert states == {"ServiceSlow": ["firing", "resolved"], "ServiceDown": ["firing", "resolved"]}
