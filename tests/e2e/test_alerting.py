"""Alerts end to end: an impaired parent link in a namespace pages through Alertmanager.

The agent probes a parent-hospital host in a network namespace of the test's own; Mosquitto,
influxd, the collector, a real Alertmanager and a webhook receiver run on loopback. 30 % loss
(iptables statistic) -> LinkDegraded; everything dropped -> LinkDown; restored -> resolved;
agent stopped -> SiteUnreachable; agent back -> resolved. Detection latencies are printed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.process import http_get, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port

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


def _latency(predicate: Callable[[], bool], what: str, timeout: float, since: float) -> float:
    """Seconds from `since` until `predicate` holds."""
    wait_for(predicate, what, timeout)
    return time.monotonic() - since


def _judged_rounds(http_port: int, site: str, link: str) -> list[list[float]]:
    """[time, loss %, rtt p95] of each round of `link` the collector has taken in."""
    sites = json.loads(http_get(f"http://127.0.0.1:{http_port}/api/v1/sites")[1])["sites"]
    [view] = [view for view in sites if view["site"] == site]
    return next(entry["history"] for entry in view["links"] if entry["name"] == link)


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
    logs = tmp_path / "collector.log"  # the agent's too
    collector = start([script("fieldmon-collector"), "run", "--config", collector_file], logs)
    agent_args = [script("fieldmon-agent"), "run", "--config", site_file]
    agent = None
    states = receiver.alertmanager_states

    def seen(name: str, status: str) -> Callable[[], bool]:
        return lambda: any(n == name and s == status for _, n, s in states())

    latencies = {}
    try:
        wait_subscribed(http_port, daemons=collector)
        agent = start(agent_args, logs)
        # Healthy rounds first: the collector has judged a few before anything is impaired.
        wait_for(
            lambda: len(_judged_rounds(http_port, "alert-site", "parent-gw")) >= 3,
            "three healthy rounds judged",
            30,
            daemons=[collector, agent],
        )
        assert states() == [], "no page for a healthy link"
        started = _drop(parent, 0.3)
        latencies["degraded"] = _latency(
            seen("LinkDegraded", "firing"), "LinkDegraded", 40, started
        )
        started = _drop(parent, 1.0)
        latencies["down"] = _latency(seen("LinkDown", "firing"), "LinkDown", 30, started)
        started = _drop(parent, None)
        latencies["resolved"] = _latency(
            seen("LinkDown", "resolved"), "LinkDown resolved", 40, started
        )
        agent.stop()
        stopped = time.monotonic()
        latencies["unreachable"] = _latency(
            seen("SiteUnreachable", "firing"), "SiteUnreachable", 30, stopped
        )
        agent = start(agent_args, logs)
        wait_for(seen("SiteUnreachable", "resolved"), "SiteUnreachable resolved", 30)
    finally:
        if agent is not None:
            agent.stop()
        collector.stop()
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
