"""Alerts end to end: an impaired parent link in a namespace pages through Alertmanager.

The agent probes a parent-hospital host in a network namespace of the test's own; Mosquitto,
influxd, the collector, a real Alertmanager and a webhook receiver run on loopback. 30 % loss
(iptables statistic) -> LinkDegraded; everything dropped -> LinkDown; restored -> resolved;
agent stopped -> SiteUnreachable; agent back -> resolved. Detection latencies are printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port

BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets and namespaces need root"),
]


class Receiver:
    """Collects webhook deliveries from Alertmanager (/am) and from fieldmon itself (/fm)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[float, str, dict[str, object]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.deliveries.append((time.monotonic(), self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alertmanager_states(self) -> list[tuple[float, str, str]]:
        """(arrival, alertname, status) for each alert in each Alertmanager notification."""
        return [
            (at, alert["labels"]["alertname"], alert["status"])  # type: ignore[index]
            for at, path, body in self.deliveries
            if path == "/am"
            for alert in body["alerts"]  # type: ignore[union-attr]
        ]


def _alertmanager_config(receiver_port: int) -> str:
    return f"""
route:
  receiver: test
  group_by: [site, alertname, target]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: http://127.0.0.1:{receiver_port}/am
        send_resolved: true
"""


@pytest.fixture
def parent_host() -> Iterator[tuple[Namespace, str]]:
    with Namespace(unique_name("alert")) as parent:
        link = veth(None, parent)
        yield parent, str(link.b_v4.ip)


def _drop(parent: Namespace, probability: float | None) -> float:
    parent.run("iptables", "-F", "INPUT")
    if probability is not None:
        rule = ["-m", "statistic", "--mode", "random", "--probability", str(probability)]
        parent.run(
            "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request",
            *(rule if probability < 1 else []), "-j", "DROP",
        )  # fmt: skip
    return time.monotonic()


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_link_and_site_alerts_page_and_resolve(
    tmp_path: Path,
    mosquitto: MosquittoServer,
    influxd: InfluxdServer,
    influx_db: str,
    parent_host: tuple[Namespace, str],
) -> None:
    parent, address = parent_host
    receiver = Receiver()
    alertmanager = AlertmanagerServer(tmp_path / "am", _alertmanager_config(receiver.port))
    alertmanager.start()
    sites = tmp_path / "site_configs"
    sites.mkdir()
    site_file = sites / "alert-site.yaml"
    site_file.write_text(
        f"""site: alert-site
name: "Alerting test site"
parent_hospital: test-central
agent:
  id: alert-pi
  broker: {{host: 127.0.0.1, port: {mosquitto.port}}}
  outbox: {{path: {tmp_path / "outbox.db"}}}
  linger: 50ms
links:
  - {{name: parent-gw, address: {address}, role: parent, interval: 1s, count: 10,
     spacing: 20ms, timeout: 300ms, thresholds: {{loss_pct: 5}}}}
""",
        encoding="utf-8",
    )
    http_port = free_port()
    collector_file = tmp_path / "collector.yaml"
    collector_file.write_text(
        f"""broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: alert-collector}}
influxdb: {{api: v1, url: "{influxd.url}", database: {influx_db}, flush_interval: 200ms}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./data
alerting: {{silence_timeout: 4s, offline_grace: 1s, for_rounds: 3, clear_rounds: 3}}
notify:
  alertmanager: {{url: "{alertmanager.url}"}}
  webhook: [{{url: "http://127.0.0.1:{receiver.port}/fm"}}]
""",
        encoding="utf-8",
    )
    logs = (tmp_path / "collector.log").open("wb")
    collector = subprocess.Popen(
        [str(BIN / "fieldmon-collector"), "run", "--config", str(collector_file)],
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    agent_args = [str(BIN / "fieldmon-agent"), "run", "--config", str(site_file)]
    agent = subprocess.Popen(agent_args, stdout=logs, stderr=subprocess.STDOUT)
    states = receiver.alertmanager_states

    def seen(name: str, status: str) -> Callable[[], bool]:
        return lambda: any(n == name and s == status for _, n, s in states())

    latencies = {}
    try:
        time.sleep(4)  # healthy rounds first
        assert states() == [], "no page for a healthy link"
        started = _drop(parent, 0.3)
        latencies["degraded"] = (
            _wait_for(seen("LinkDegraded", "firing"), "LinkDegraded", 40) - started
        )
        started = _drop(parent, 1.0)
        latencies["down"] = _wait_for(seen("LinkDown", "firing"), "LinkDown", 30) - started
        started = _drop(parent, None)
        latencies["resolved"] = (
            _wait_for(seen("LinkDown", "resolved"), "LinkDown resolved", 40) - started
        )
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        stopped = time.monotonic()
        latencies["unreachable"] = (
            _wait_for(seen("SiteUnreachable", "firing"), "SiteUnreachable", 30) - stopped
        )
        agent = subprocess.Popen(agent_args, stdout=logs, stderr=subprocess.STDOUT)
        _wait_for(seen("SiteUnreachable", "resolved"), "SiteUnreachable resolved", 30)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=20)
        collector.send_signal(signal.SIGTERM)
        collector.wait(timeout=20)
        alertmanager.stop()
        receiver.server.shutdown()
    print(f"detection latency (s): { {k: round(v, 1) for k, v in latencies.items()} }")

    # fieldmon's own webhook got the same pages, signed and with the contract's details.
    direct = [body for _, path, body in receiver.deliveries if path == "/fm"]
    alerts = [alert for body in direct for alert in body["alerts"]]  # type: ignore[union-attr]
    down = next(a for a in alerts if a["labels"]["alertname"] == "LinkDown")  # type: ignore[index]
    assert down["labels"]["site"] == "alert-site"  # type: ignore[index]
    assert down["labels"]["severity"] == "critical"  # type: ignore[index]
    assert "parent_hospital" in json.dumps(down)
    # History rows: every state change is an `alert` row in InfluxDB.
    rows = influxd.query('SELECT * FROM "alert" GROUP BY *', db=influx_db)
    assert {row["alertname"] for row in rows} >= {"LinkDegraded", "LinkDown", "SiteUnreachable"}
