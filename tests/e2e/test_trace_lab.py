"""Path traces in the lab, beside mtr: loss injected at one router of a multi-hop path, and a
router that rate-limits its own ICMP answers.

The site's wired uplink crosses two transit routers: agent (root namespace) -> site router ->
transit1 -> transit2 -> parent hospital, so the parent is hop 4. iptables `statistic` drops
20 % of what arrives at transit2 (hop 3), so loss starts there and carries on to the far end.
fieldmon's trace (the subprocess the agent runs) and `mtr --json` probe the same path at the same
time; each hop's loss must agree within TOLERANCE_PCT points and the summary must name hop 3.

Why CYCLES and TOLERANCE_PCT: the kernel's random drops are what they are (nothing to seed), so
each tool's loss at a lossy hop is binomial, p = 0.2, n = CYCLES. The difference of two
independent estimates has a standard deviation of sqrt(2 p (1 - p) / n) = 3.3 points at n = 300;
12 points is 3.7 of them (a chance of about 2 in 10,000 per hop to fail with both tools right),
while a hop named wrongly differs by 20 points (clean vs lossy) and fails every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fieldmon.agent.trace.analysis import Trace, summarize
from fieldmon.lab.process import http_get, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port
from fieldmon.lab.topology import Lab, SiteSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and raw ICMP sockets need root"),
]
CYCLES = 300
INTERVAL_S = 0.05
LOSS_PCT = 20
TOLERANCE_PCT = 12
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    site = SiteSpec("hq", router=False, transit=2)
    with Lab.up(f"tr{os.getpid()}", [site], tmp_path_factory.mktemp("labs")) as lab:
        yield lab


def _fieldmon(address: str, protocol: str, cycles: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fieldmon.agent.trace", address, "--protocol", protocol,
         "--cycles", str(cycles), "--interval", str(INTERVAL_S), "--max-hops", "8"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _mtr(address: str, cycles: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["mtr", "--json", "--report-cycles", str(cycles), "-i", str(INTERVAL_S), "-n",
         "--max-ttl", "8", address],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _side_by_side(address: str, cycles: int = CYCLES) -> tuple[Trace, dict[int, tuple[str, float]]]:
    """fieldmon's ICMP trace and mtr's report of the same path, run at the same time."""
    ours, theirs = _fieldmon(address, "icmp", cycles), _mtr(address, cycles)
    ours_out, _ = ours.communicate(timeout=120)
    theirs_out, _ = theirs.communicate(timeout=120)
    assert ours.returncode == 0 and theirs.returncode == 0
    hubs = json.loads(theirs_out)["report"]["hubs"]
    mtr = {int(hub["count"]): (hub["host"], float(hub["Loss%"])) for hub in hubs}
    return Trace.from_json(json.loads(ours_out)), mtr


def _report(trace: Trace, mtr: dict[int, tuple[str, float]]) -> str:
    lines = [f"{'hop':>3} {'fieldmon':<16} {'loss':>6}   {'mtr':<16} {'loss':>6}"]
    for hop in trace.hops:
        address, loss = mtr.get(hop.ttl, ("-", float("nan")))
        lines.append(
            f"{hop.ttl:>3} {hop.address:<16} {hop.loss_pct:>5.1f}%   {address:<16} {loss:>5.1f}%"
        )
    return "\n".join(lines)


def _addresses(lab: Lab) -> list[str]:
    """The path's hops as the agent sees them: site router, transit1, transit2, parent."""
    return [lab.link(f"hq/{name}").address for name in ("lan", "transit1", "transit2", "parent")]


def test_loss_at_one_hop_is_named_and_agrees_with_mtr(lab: Lab) -> None:
    path = _addresses(lab)
    lab.impair("hq/transit2", loss_pct=LOSS_PCT)
    try:
        trace, mtr = _side_by_side(path[-1])
    finally:
        lab.restore("hq/transit2")
    print(f"\nloss {LOSS_PCT} % into transit2 (hop 3), {CYCLES} cycles each\n{_report(trace, mtr)}")
    assert trace.reached
    assert [hop.address for hop in trace.hops] == path
    assert [mtr[ttl][0] for ttl in range(1, 5)] == path
    for hop in trace.hops:
        assert abs(hop.loss_pct - mtr[hop.ttl][1]) <= TOLERANCE_PCT, _report(trace, mtr)
    assert [hop.loss_pct for hop in trace.hops[:2]] == [0.0, 0.0]
    for hop in trace.hops[2:]:
        assert LOSS_PCT - TOLERANCE_PCT <= hop.loss_pct <= LOSS_PCT + TOLERANCE_PCT
    summary = summarize(trace)
    assert (summary.loss_hop, summary.loss_address) == (3, path[2])
    assert summary.text.startswith(f"loss starts at hop 3, {path[2]}: ")


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_udp_and_tcp_traces_name_the_same_hop(lab: Lab, protocol: str) -> None:
    path = _addresses(lab)
    lab.impair("hq/transit2", loss_pct=LOSS_PCT)
    try:
        out, _ = _fieldmon(path[-1], protocol, 200).communicate(timeout=120)
    finally:
        lab.restore("hq/transit2")
    trace = Trace.from_json(json.loads(out))
    assert trace.protocol == protocol and trace.reached
    assert [hop.address for hop in trace.hops] == path
    assert summarize(trace).loss_hop == 3


def test_a_rate_limiting_hop_is_not_blamed(lab: Lab) -> None:
    path = _addresses(lab)
    lab.impair("hq/transit1", icmp_limit_pct=60)  # hop 2 answers 40 % of the probes it ends
    try:
        trace, mtr = _side_by_side(path[-1], cycles=200)
    finally:
        lab.restore("hq/transit1")
    print(f"\ntransit1 (hop 2) drops 60 % of its own time-exceeded\n{_report(trace, mtr)}")
    hop2 = trace.hops[1]
    assert 60 - TOLERANCE_PCT <= hop2.loss_pct <= 60 + TOLERANCE_PCT
    assert abs(hop2.loss_pct - mtr[2][1]) <= TOLERANCE_PCT
    assert [trace.hops[i].loss_pct for i in (0, 2, 3)] == [0.0, 0.0, 0.0]
    summary = summarize(trace)
    assert summary.verdict == "clean" and summary.rate_limited == (2,)
    assert summary.text == (
        f"hop 2 ({path[1]}) drops only probes addressed to itself (rate limiting); "
        "the path beyond it is clean, no loss at the far end"
    )


def test_the_lab_shows_its_transit_links_and_icmp_limit(lab: Lab) -> None:
    lab.impair("hq/transit1", icmp_limit_pct=25)
    try:
        status = {link["link"]: link for link in lab.status()["links"]}
    finally:
        lab.restore("hq/transit1")
    assert list(status) == ["hq/lan", "hq/transit1", "hq/transit2", "hq/parent", "hq/internet"]
    assert status["hq/transit1"]["icmp_limit_pct"] == 25
    assert lab.link("hq/transit1").icmp_limit_pct == 0


# --- the page names the hop --------------------------------------------------------------


class Receiver:
    """Webhook deliveries: Alertmanager's receivers (/am-page, /am-chat) and fieldmon's (/fm)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.deliveries.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, prefix: str, name: str) -> list[dict[str, Any]]:
        """Every firing `name` alert delivered to a path starting with `prefix`, in order."""
        return [
            alert
            for path, body in list(self.deliveries)
            if path.startswith(prefix)
            for alert in body["alerts"]
            if alert["labels"]["alertname"] == name
            and alert.get("status", alert.get("state")) == "firing"
        ]


def _shipped_alertmanager(port: int) -> str:
    """deploy/alertmanager.yml as shipped (group_wait 10 s for a degraded parent link), its
    receivers pointed at the test's."""
    text = (REPO / "deploy" / "alertmanager.yml").read_text(encoding="utf-8")
    text = text.replace("http://127.0.0.1:9099/page", f"http://127.0.0.1:{port}/am-page")
    return text.replace("http://127.0.0.1:9098/chat", f"http://127.0.0.1:{port}/am-chat")


def _board_path(http_port: int, link: str) -> str | None:
    sites = json.loads(http_get(f"http://127.0.0.1:{http_port}/api/v1/sites")[1])["sites"]
    [view] = [view for view in sites if view["site"] == "hq"]
    return next(entry["path"] for entry in view["links"] if entry["name"] == link)


def test_the_degradation_page_names_the_hop(
    lab: Lab,
    tmp_path: Path,
    mosquitto: MosquittoServer,
    influxd: InfluxdServer,
    influx_db: str,
) -> None:
    path = _addresses(lab)
    receiver = Receiver()
    alertmanager = AlertmanagerServer(tmp_path / "am", _shipped_alertmanager(receiver.port))
    alertmanager.start()
    sites = tmp_path / "site_configs"
    sites.mkdir()
    site_file = sites / "hq.yaml"
    site_file.write_text(
        f"""site: hq
name: "Field hospital behind a carrier"
parent_hospital: central
agent:
  id: hq-pi
  broker: {{host: 127.0.0.1, port: {mosquitto.port}}}
  outbox: {{path: {tmp_path / "outbox.db"}}}
  linger: 50ms
links:
  - {{name: wan, address: {path[-1]}, role: parent, interface: {lab.link("hq/lan").near_dev},
     interval: 1s, count: 10, spacing: 20ms, timeout: 300ms, thresholds: {{loss_pct: 5}},
     trace: {{protocol: icmp, cycles: 20, interval: 100ms, timeout: 500ms, max_hops: 8}}}}
""",
        encoding="utf-8",
    )
    http_port = free_port()
    collector_file = tmp_path / "collector.yaml"
    collector_file.write_text(
        f"""broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: trace-collector}}
influxdb: {{api: v1, url: "{influxd.url}", database: {influx_db}, flush_interval: 200ms}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./data
alerting: {{for_rounds: 3, clear_rounds: 3}}
notify:
  alertmanager: {{url: "{alertmanager.url}"}}
  webhook: [{{url: "http://127.0.0.1:{receiver.port}/fm"}}]
""",
        encoding="utf-8",
    )
    logs = tmp_path / "daemons.log"
    collector = start([script("fieldmon-collector"), "run", "--config", collector_file], logs)
    agent = None
    try:
        wait_subscribed(http_port, daemons=collector)
        agent = start([script("fieldmon-agent"), "run", "--config", site_file], logs)
        daemons = [collector, agent]
        # Once the agent judges the link up it traces it: the route later traces compare with.
        wait_for(lambda: _board_path(http_port, "wan"), "the first trace", 60, daemons=daemons)
        assert _board_path(http_port, "wan") == "no loss on the path (20 cycles, 4 hops)"
        lab.impair("hq/transit2", loss_pct=30)
        wait_for(
            lambda: receiver.alerts("/am-", "LinkDegraded"),
            "Alertmanager's LinkDegraded notification",
            60,
            daemons=daemons,
        )
        # fieldmon's own webhook: the page, then the same alert again with the path.
        wait_for(
            lambda: any("path" in a["annotations"] for a in receiver.alerts("/fm", "LinkDegraded")),
            "the page with its path",
            30,
            daemons=daemons,
        )
    finally:
        lab.restore("hq/transit2")
        if agent is not None:
            agent.stop()
        collector.stop()
        alertmanager.stop()
        receiver.server.shutdown()
    # Alertmanager's first notification of the degradation (group_wait 10 s) names the hop.
    first = receiver.alerts("/am-", "LinkDegraded")[0]
    print(f"\npage: {first['annotations']['summary']}\npath: {first['annotations'].get('path')}")
    assert first["annotations"]["path"].startswith(f"loss starts at hop 3, {path[2]}: ")
    direct = receiver.alerts("/fm", "LinkDegraded")
    assert "path" not in direct[0]["annotations"]  # paged as soon as judged, before the trace
    assert direct[-1]["annotations"]["path"] == first["annotations"]["path"]
    assert direct[-1]["summary"] == direct[0]["summary"]
    # The hops and the summary are in InfluxDB.
    hops = influxd.query("SELECT * FROM \"path\" WHERE target = 'wan' GROUP BY *", db=influx_db)
    assert {row["hop"] for row in hops} == {"1", "2", "3", "4"}
    assert {row["address"] for row in hops if row["hop"] == "3"} == {path[2]}
    events = influxd.query("SELECT * FROM \"event\" WHERE kind = 'path' GROUP BY *", db=influx_db)
    assert {row["trigger"] for row in events} >= {"link_up", "link_degraded"}
