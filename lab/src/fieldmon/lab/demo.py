"""`fieldmon-lab demo`: two field hospitals and the whole pipeline on this machine.

Starts Mosquitto, influxd and Alertmanager on loopback, a lab (fieldmon/lab/topology.py) with two
sites - each a site router with simulated APs (real snmpd serving recorded walks), a parent
hospital and the internet in network namespaces of our own - the collector and one agent per
site, polling links over ICMP and APs over SNMP. One site's parent hospital also runs the
services its staff use: a DNS server (dnsmasq) and the hospital information system (nginx over
HTTPS with a certificate of the demo's own CA, which the site file trusts, in front of a backend
the demo controls); the agent probes both. A live view shows each site's links, services, APs
and alerts as the pipeline measured them, and every notification Alertmanager delivers; a
schedule first makes the HIS slow, then answer 503, then heals it (ServiceSlow and ServiceDown
fire and resolve), then degrades that site's parent link (loss, delay and jitter), cuts it and
restores it (LinkDegraded and LinkDown, and the services behind the link with them). At the end it
prints what reached InfluxDB. Data and logs stay in the data folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fieldmon.lab.process import script, start, wait_subscribed
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port
from fieldmon.lab.services import DnsmasqServer, NginxServer, SlowUpstream, TestCa
from fieldmon.lab.topology import (
    COMMUNITY,
    ApSpec,
    Lab,
    Schedule,
    SiteSpec,
    Step,
    remove_stale_labs,
)

DATABASE = "fieldmon"
LAB_STEM = "demo"  # the lab is named demo<pid>, so a crashed demo's leftovers are recognisable
IMPAIRED_SITE = "demo-pavilion"
SITES = {
    "demo-pavilion": "Demo field hospital - Pavilion",
    "demo-school": "Demo field hospital - School gym",
}
DEMO_SITES = (
    SiteSpec(
        "demo-pavilion",
        aps=(
            ApSpec("ap-hall-a", "generic-ap"),
            ApSpec("ap-hall-b", "unifi"),
            ApSpec("wlc-triage", "cisco-wlc"),  # a controller: channel use per radio
            ApSpec("ap-stores", "mikrotik"),  # noise floor per radio
        ),
    ),
    SiteSpec("demo-school", aps=(ApSpec("ap-gym", "mikrotik"),)),
)
# lab link -> (the agent's link name, its role)
AGENT_LINKS = {
    "parent": ("parent-gw", "parent"),
    "internet": ("internet", "internet"),
    "lan": ("site-gateway", "gateway"),
}
SNMP_INTERVAL = "10s"
# The parent hospital's services, at the impaired site's parent hospital.
HOSPITAL_DOMAIN = "demo-central.example"
HIS_HOST = f"his.{HOSPITAL_DOMAIN}"
HIS_BACKEND_PORT = 8081  # on the parent hospital's loopback, behind nginx
HIS_SLOW_MS = 400  # the HIS's slow_ms in the site file
HIS_SLOW_DELAY_MS = 800  # what the backend waits while the demo makes it slow
SERVICE_INTERVAL = "2s"  # short, so a 90 s demo shows services fire and resolve


def alertmanager_config(receiver_port: int) -> str:
    """Alertmanager delivering every alert, each in a group of its own, to the demo's receiver."""
    return f"""
route: {{receiver: demo, group_by: [site, alertname, target], group_wait: 1s, group_interval: 2s,
        repeat_interval: 1h}}
receivers:
  - name: demo
    webhook_configs: [{{url: "http://127.0.0.1:{receiver_port}/alertmanager", send_resolved: true}}]
"""


@dataclass
class Pages:
    """Receives Alertmanager's webhook notifications on loopback and keeps each change of state.

    A notification carries its group's whole alert list; only an alert whose status changed since
    the last one is news (`take()` returns those lines).
    """

    server: ThreadingHTTPServer | None = None
    seen: dict[tuple[str, str, str], str] = dataclasses.field(default_factory=dict)
    lines: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def start(self) -> Pages:
        """Listen on an ephemeral loopback port, in a thread."""
        pages = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    pages.delivered(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="demo-pages", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        """Where Alertmanager posts."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def delivered(self, body: dict[str, Any]) -> None:
        """One webhook notification from Alertmanager."""
        with self.lock:
            for alert in body["alerts"]:
                labels = alert["labels"]
                key = (labels["alertname"], labels["site"], labels.get("target", ""))
                if self.seen.get(key) == alert["status"]:
                    continue
                self.seen[key] = alert["status"]
                colour = "red" if alert["status"] == "firing" else "green"
                self.lines.append(
                    f"[bold magenta]PAGE[/bold magenta] via Alertmanager: [{colour}]"
                    f"{alert['status']}[/{colour}] {key[0]} {key[1]}/{key[2]} "
                    f"({labels.get('severity', '?')}): {alert['annotations'].get('summary', '')}"
                )

    def take(self) -> list[str]:
        """The changes received since the last call."""
        with self.lock:
            lines, self.lines = self.lines, []
            return lines

    def stop(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class ParentServices:
    """The impaired site's parent hospital's DNS server and HIS, and how the HIS answers now."""

    address: str  # the parent hospital's address: dnsmasq and nginx listen there
    ca_file: Path  # the demo CA's certificate, which the site file trusts
    backend: SlowUpstream
    mode: str = "-"  # what the demo does to the HIS now, in words

    def slow(self) -> None:
        """The HIS answers after HIS_SLOW_DELAY_MS (its slow_ms is HIS_SLOW_MS)."""
        self.backend.set(delay_ms=HIS_SLOW_DELAY_MS)
        self.mode = f"slow: +{HIS_SLOW_DELAY_MS} ms"

    def failing(self) -> None:
        """The HIS answers 503."""
        self.backend.set(delay_ms=0, status=503)
        self.mode = "503"

    def healthy(self) -> None:
        """The HIS answers 200 at once."""
        self.backend.set(delay_ms=0)
        self.mode = "-"

    def site_services(self) -> str:
        """The site file's `services` section for them."""
        return f"""services:
  - {{name: his, kind: http, url: "https://{HIS_HOST}/health", resolver: {self.address},
     ca_file: {self.ca_file}, expect_status: 200, interval: {SERVICE_INTERVAL}, timeout: 1500ms,
     slow_ms: {HIS_SLOW_MS}, severity: critical}}
  - {{name: hospital-dns, kind: dns, server: {self.address}, query: {HIS_HOST},
     expect: {self.address}, interval: {SERVICE_INTERVAL}, timeout: 1s}}
"""


def start_parent_services(
    stack: contextlib.ExitStack, lab: Lab, site: str, workdir: Path, secrets: Path
) -> ParentServices:
    """dnsmasq and nginx (HTTPS, the demo CA's certificate) in `site`'s parent hospital, with the
    backend nginx proxies to; each stopped by its PID when `stack` closes."""
    parent = lab.link(f"{site}/parent")
    address, namespace = parent.address, parent.far_ns
    directory = workdir / "parent-services"
    ca = TestCa.create("fieldmon demo CA")
    ca_file = ca.write(secrets / "demo-central-ca.pem")
    cert = ca.issue(directory / "tls" / "his", [HIS_HOST], days=60)
    dns = DnsmasqServer(
        directory / "dnsmasq", namespace, address,
        records=[f"host-record={HIS_HOST},{address}"], local_domains=(HOSPITAL_DOMAIN,),
    ).start()  # fmt: skip
    stack.callback(dns.stop)
    backend = SlowUpstream(
        directory / "backend", namespace, "127.0.0.1", HIS_BACKEND_PORT, delay_ms=0,
        control=directory / "backend-control.json",
    ).start()  # fmt: skip
    stack.callback(backend.stop)
    servers = f"""
    server {{
        listen {address}:443 ssl;
        server_name {HIS_HOST};
        ssl_certificate {cert.cert_file};
        ssl_certificate_key {cert.key_file};
        location = /health {{ proxy_pass http://127.0.0.1:{HIS_BACKEND_PORT}; }}
    }}
"""
    nginx = NginxServer(directory / "nginx", namespace, servers, [(address, 443)]).start()
    stack.callback(nginx.stop)
    return ParentServices(address, ca_file, backend)


def demo_schedule(duration: float, services: ParentServices | None = None) -> list[Step]:
    """Make the HIS slow, failing, then healthy (4 to 27 s into a 90 s run), each state about
    five of its 2 s runs long, so each alert's three-run debounce has room even on a busy
    machine; then degrade the impaired site's parent link (32 s), cut it (45 s), restore it
    (63 s)."""
    link = f"{IMPAIRED_SITE}/parent"
    steps = [
        Step(0.35 * duration, link, f"{IMPAIRED_SITE} parent link degraded: 20 % loss, "
             "60 ± 20 ms added", loss_pct=20, delay_ms=60, jitter_ms=20),
        Step(0.5 * duration, link, f"{IMPAIRED_SITE} parent link cut", cut=True),
        Step(0.7 * duration, link, f"{IMPAIRED_SITE} parent link restored", restore=True),
    ]  # fmt: skip
    if services is not None:
        his = f"{IMPAIRED_SITE}/his"
        steps += [
            Step(0.04 * duration, his, f"{IMPAIRED_SITE} HIS slow: answers after "
                 f"{HIS_SLOW_DELAY_MS} ms (slow_ms {HIS_SLOW_MS})", action=services.slow),
            Step(0.17 * duration, his, f"{IMPAIRED_SITE} HIS failing: answers 503",
                 action=services.failing),
            Step(0.3 * duration, his, f"{IMPAIRED_SITE} HIS healthy again",
                 action=services.healthy),
        ]  # fmt: skip
    return steps


def write_site_file(  # noqa: PLR0917 - one call site, each argument a different thing
    folder: Path, workdir: Path, lab: Lab, site: str, mosquitto_port: int, services: str = ""
) -> Path:
    """The site file a field engineer would write for this simulated site (`services`: its
    `services` section, if it has one)."""
    agent = f"{site}-pi1"
    links = []
    for link in lab.site_links(site):
        name, role = AGENT_LINKS[link.name]
        extra = (
            "count: 20, spacing: 100ms, timeout: 1s, thresholds: {loss_pct: 5, rtt_ms: 80}"
            if role == "parent"
            else "count: 10"
        )
        links.append(
            f"  - {{name: {name}, address: {link.address}, role: {role}, interval: 5s, {extra}}}"
        )
    devices = []
    for device in lab.site_devices(site):
        only = ", interfaces: [wan-parent, wan-internet]" if device.profile == "if-mib" else ""
        devices.append(
            f"  - {{name: {device.name}, address: {device.address}, profile: {device.profile}"
            f"{only}, interval: {SNMP_INTERVAL},\n"
            f"     snmp: {{version: 2c, community_file: secrets/snmp-community.txt}}}}"
        )
    path = folder / f"{site}.yaml"
    path.write_text(
        f"""site: {site}
name: "{SITES[site]}"
parent_hospital: demo-central
agent:
  id: {agent}
  broker: {{host: 127.0.0.1, port: {mosquitto_port}, username: {agent}}}
  outbox: {{path: {workdir / agent / "outbox.db"}}}
links:
{chr(10).join(links)}
snmp_devices:
{chr(10).join(devices)}
{services}host: {{interval: 10s}}
""",
        encoding="utf-8",
    )
    return path


def write_collector_file(
    workdir: Path, mosquitto_port: int, influx_url: str, am_url: str
) -> tuple[Path, int]:
    """The collector's file; returns it and its HTTP port."""
    http_port = free_port()
    path = workdir / "collector.yaml"
    path.write_text(
        f"""broker: {{host: 127.0.0.1, port: {mosquitto_port}, client_id: demo-collector}}
influxdb: {{api: v1, url: "{influx_url}", database: {DATABASE}}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./collector-data
alerting: {{silence_timeout: 30s, for_rounds: 2, clear_rounds: 3}}
notify: {{alertmanager: {{url: "{am_url}"}}}}
retention: {{raw: 30d, rollups: [{{every: 5m, keep: 730d}}]}}
""",
        encoding="utf-8",
    )
    return path, http_port


def _api(http_port: int, path: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=5) as reply:
            return dict(json.loads(reply.read()))
    except OSError:
        return {}


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{float(value):.1f}{unit}"  # type: ignore[arg-type]


_COLOURS = {"ok": "green", "degraded": "yellow", "down": "red", "unreachable": "magenta"}


def _impairment(lab: Lab, site: str, agent_link: str) -> str:
    """What the lab does to the link behind `agent_link` now, in words."""
    for link in lab.site_links(site):
        if AGENT_LINKS[link.name][0] != agent_link:
            continue
        if link.cut:
            return "[red]cut[/red]"
        parts = [f"{link.loss_pct:g} % loss"] if link.loss_pct else []
        if link.delay_ms or link.jitter_ms:
            parts.append(f"+{link.delay_ms:g} ± {link.jitter_ms:g} ms")
        return ", ".join(parts) or "-"
    return "-"


def _latest_snmp(influxd: InfluxdServer) -> dict[str, list[dict[str, Any]]]:
    """The last minute's AP radios and router interfaces per site, as InfluxDB has them."""
    rows: dict[str, list[dict[str, Any]]] = {}
    queries = (
        'SELECT last("up") AS "up", last("clients") AS "clients", '
        'last("channel_util_pct") AS "util" FROM "ap" WHERE time > now() - 1m '
        'GROUP BY "site", "device", "radio"',
        'SELECT last("oper_up") AS "up", last("in_bps") AS "in_bps", last("out_bps") AS "out_bps"'
        ' FROM "snmp_if" WHERE time > now() - 1m GROUP BY "site", "device", "ifname"',
    )
    for query in queries:
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            for row in influxd.query(query, db=DATABASE):
                rows.setdefault(str(row.get("site")), []).append(row)
    return rows


def site_table(
    site: dict[str, Any],
    lab: Lab,
    snmp: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    services: ParentServices | None = None,
) -> Table:
    """One site: its links as measured (and as impaired), its services, its APs and router, its
    alerts."""
    name = str(site["site"])
    table = Table(title=f"{name} - {SITES.get(name, '')}", title_justify="left", min_width=100)
    for column in ("", "name", "state", "loss / clients / run", "rtt p95 / util / status",
                   "jitter / cert days", "MOS", "lab impairment"):  # fmt: skip
        table.add_column(column, no_wrap=True)
    for link in site["links"]:
        latest, state = link["latest"], link["state"]
        colour = _COLOURS.get(state, "white")
        table.add_row(
            "link",
            link["name"],
            f"[{colour}]{state}[/{colour}]",
            _fmt(latest.get("loss_pct"), " %"),
            _fmt(latest.get("rtt_p95_ms"), " ms"),
            _fmt(latest.get("jitter_ms"), " ms"),
            _fmt(latest.get("mos")),
            _impairment(lab, name, link["name"]),
        )
    for service in site.get("services", []):
        latest, state = service["latest"], service["state"]
        colour = _COLOURS.get(state, "white")
        ran = (
            "-"
            if "up" not in latest
            else "up"
            if latest["up"]
            else f"failed: {latest.get('error')}"
        )
        status = latest.get("status_code", latest.get("rcode", "-"))
        table.add_row(
            "service",
            f"{service['name']} ({service['kind']})",
            f"[{colour}]{state}[/{colour}]",
            f"{ran}, {_fmt(latest.get('duration_ms'), ' ms')}",
            str(status),
            _fmt(latest.get("cert_days_left")),
            "",
            services.mode if services is not None and service["name"] == "his" else "",
        )
    for row in snmp:
        if "radio" in row:
            up = row.get("up") == 1
            table.add_row(
                "AP",
                f"{row.get('device')} radio {row.get('radio')}",
                "[green]up[/green]" if up else "[red]down[/red]",
                "-" if row.get("clients") is None else str(row.get("clients")),
                _fmt(row.get("util"), " %"),
                "", "", "",
            )  # fmt: skip
        else:
            up = row.get("up") == 1
            traffic = f"in {_fmt(_kbit(row.get('in_bps')))} / out {_fmt(_kbit(row.get('out_bps')))}"
            table.add_row(
                "router",
                f"{row.get('device')} {row.get('ifname')}",
                "[green]up[/green]" if up else "[red]down[/red]",
                traffic + " kbit/s",
                "", "", "", "",
            )  # fmt: skip
    for alert in alerts:
        labels = alert["labels"]
        if labels.get("site") == name:
            table.add_row(
                "alert",
                str(labels.get("alertname")),
                "[bold red]firing[/bold red]",
                str(labels.get("target", "")),
                "", "", "", "",
            )  # fmt: skip
    return table


def _kbit(bps: object) -> float | None:
    return None if bps is None else float(bps) / 1000  # type: ignore[arg-type]


def _alert_key(alert: dict[str, Any]) -> str:
    labels = alert["labels"]
    return f"{labels['alertname']} {labels['site']}/{labels.get('target', '')}"


def summary(influxd: InfluxdServer) -> Group:
    """How many rows reached InfluxDB per site and link (and SNMP device), the alert history."""
    table = Table(title="What the demo wrote to InfluxDB (database fieldmon, measurement link)")
    for column in ("site", "link", "rows", "worst loss", "mean rtt p50"):
        table.add_column(column)
    query = (
        "SELECT COUNT(loss_pct), MAX(loss_pct), MEAN(rtt_p50_ms) FROM link GROUP BY site, target"
    )
    for row in influxd.query(query, db=DATABASE):
        table.add_row(
            str(row.get("site")),
            str(row.get("target")),
            str(row.get("count")),
            _fmt(row.get("max"), " %"),
            _fmt(row.get("mean"), " ms"),
        )
    counts = []
    for state in ("firing", "resolved"):  # `state` is a field: one query per value
        query = f"SELECT COUNT(value) FROM alert WHERE state = '{state}' GROUP BY alertname"
        for row in influxd.query(query, db=DATABASE):
            counts.append(f"{row.get('alertname')} {state}: {row.get('count')}")
    table.caption = "alert rows: " + ("  ".join(counts) or "none")
    services = Table(title="Service runs (measurement service)")
    for column in ("site", "service", "runs", "failed", "mean duration"):
        services.add_column(column)
    query = (
        'SELECT COUNT("duration_ms"), MEAN("duration_ms") FROM "service" GROUP BY "site", "target"'
    )
    failed = {
        (str(row.get("site")), str(row.get("target"))): row.get("count")
        for row in influxd.query(
            'SELECT COUNT("error") FROM "service" GROUP BY "site", "target"', db=DATABASE
        )
    }
    for row in influxd.query(query, db=DATABASE):
        key = (str(row.get("site")), str(row.get("target")))
        services.add_row(*key, f"{row.get('count')} runs", f"{failed.get(key, 0)} failed",
                         _fmt(row.get("mean"), " ms"))  # fmt: skip
    snmp = Table(title="SNMP rows (measurements ap and snmp_if)")
    for column in ("site", "device", "measurement", "rows"):
        snmp.add_column(column)
    for measurement, field in (("ap", "up"), ("snmp_if", "oper_up")):
        query = f'SELECT COUNT("{field}") FROM "{measurement}" GROUP BY "site", "device"'
        for row in influxd.query(query, db=DATABASE):
            snmp.add_row(str(row.get("site")), str(row.get("device")), measurement,
                         f"{row.get('count')} rows")  # fmt: skip
    return Group(table, services, snmp)


def write_secrets(folder: Path) -> Path:
    """The SNMP community the site files refer to (secrets/snmp-community.txt); returns the
    secrets folder."""
    secrets = folder / "secrets"
    secrets.mkdir(exist_ok=True)
    # The lab's community is well known in the lab; private all the same, as the agent requires.
    write_secret(secrets / "snmp-community.txt", COMMUNITY, remember=False)
    return secrets


def run_demo(duration: float, workdir: Path, console: Console) -> int:
    """The whole demo; tears everything down on return, Ctrl-C included."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]fieldmon demo[/bold]: data and logs in {workdir}")
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` tears down like Ctrl-C does
    with contextlib.ExitStack() as stack:
        mosquitto = stack.enter_context(MosquittoServer(workdir / "mosquitto"))
        influxd = stack.enter_context(InfluxdServer(workdir / "influxd"))
        pages = Pages().start()
        stack.callback(pages.stop)
        alertmanager = stack.enter_context(
            AlertmanagerServer(workdir / "alertmanager", alertmanager_config(pages.port))
        )
        remove_stale_labs(LAB_STEM)  # left by a demo that crashed
        lab = Lab.up(f"{LAB_STEM}{os.getpid()}", DEMO_SITES, workdir / "lab")
        stack.callback(lab.down, keep_files=True)
        folder = workdir / "site_configs"
        folder.mkdir(exist_ok=True)
        secrets = write_secrets(folder)
        services = start_parent_services(stack, lab, IMPAIRED_SITE, workdir, secrets)
        site_files = {
            site: write_site_file(
                folder, workdir, lab, site, mosquitto.port,
                services.site_services() if site == IMPAIRED_SITE else "",
            )
            for site in SITES
        }  # fmt: skip
        collector_file, http_port = write_collector_file(
            workdir, mosquitto.port, influxd.url, alertmanager.url
        )
        # Raw rows for 30 days and 5-minute rollups for two years, as a NOC would set it up;
        # the dashboards read the rollups for ranges beyond the raw rows (`rp` variable).
        subprocess.run(
            [script("fieldmon-collector"), "retention", "--config", str(collector_file),
             "--apply"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        with contextlib.ExitStack() as processes:  # stopped (and flushed) before the summary
            collector = start(
                [script("fieldmon-collector"), "run", "--config", collector_file,
                 "--log-format", "text"],
                workdir / "collector.log",
            )  # fmt: skip
            processes.callback(collector.stop, 15)
            # Agents start once the broker keeps their envelopes for the collector.
            wait_subscribed(http_port, daemons=collector)
            for site, site_file in site_files.items():
                agent = start(
                    [script("fieldmon-agent"), "run", "--config", site_file,
                     "--log-format", "text"],
                    workdir / f"{site}-pi1.log",
                )  # fmt: skip
                processes.callback(agent.stop, 15)
            console.print(
                f"status page [bold]http://127.0.0.1:{http_port}/[/bold] - Alertmanager "
                f"{alertmanager.url} - InfluxDB {influxd.url} (database {DATABASE}) - "
                f"Mosquitto 127.0.0.1:{mosquitto.port} - lab {lab.name} "
                f"(`fieldmon-lab status {lab.name} --state-dir {workdir / 'lab'}`)"
            )
            _watch(console, _View(http_port, lab, influxd, pages, services), duration)
        console.print(summary(influxd))
    console.print(f"Stopped. Logs and InfluxDB data stay in {workdir}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _View:
    """The live view's content and the event lines, refreshed from the collector and InfluxDB,
    with what Alertmanager delivered."""

    def __init__(
        self,
        http_port: int,
        lab: Lab,
        influxd: InfluxdServer,
        pages: Pages,
        services: ParentServices | None = None,
    ) -> None:
        self.http_port = http_port
        self.lab = lab
        self.influxd = influxd
        self.pages = pages
        self.services = services
        self.firing: set[str] = set()
        self.phase = "healthy"

    def refresh(self, elapsed: float) -> tuple[Group, list[str]]:
        """The view now, and what changed since the last call (alerts firing or resolving)."""
        status = _api(self.http_port, "/api/v1/sites")
        alerts = list(_api(self.http_port, "/api/v1/alerts").get("alerts", []))
        snmp = _latest_snmp(self.influxd)
        events = []
        now = {_alert_key(alert): alert for alert in alerts}
        for key in sorted(now.keys() - self.firing):
            summary_text = now[key].get("annotations", {}).get("summary", "")
            events.append(f"[bold red]FIRING[/bold red] {key}: {summary_text}")
        for key in sorted(self.firing - now.keys()):
            events.append(f"[bold green]RESOLVED[/bold green] {key}")
        events.extend(self.pages.take())
        self.firing = set(now)
        tables = [
            site_table(site, self.lab, snmp.get(str(site["site"]), []), alerts, self.services)
            for site in status.get("sites", [])
        ]
        heading = f"[bold]after {elapsed:.0f}s[/bold] - {self.phase}"
        return Group(heading, *tables), events


def _watch(console: Console, view: _View, duration: float) -> None:
    """Run the impairment schedule and show the sites until `duration` or Ctrl-C."""
    steps_done: list[Step] = []
    lock = threading.Lock()

    def on_step(step: Step) -> None:
        with lock:
            steps_done.append(step)

    schedule = Schedule(view.lab, demo_schedule(duration, view.services), on_step).start()
    interval = 2.0 if console.is_terminal else 5.0
    started = time.monotonic()
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    try:
        with live or contextlib.nullcontext():
            while (elapsed := time.monotonic() - started) < duration:
                with lock:
                    new_steps, steps_done[:] = list(steps_done), []
                for step in new_steps:
                    view.phase = step.label
                    console.print(f"[bold yellow]>>> {step.label}[/bold yellow]")
                content, events = view.refresh(elapsed)
                for event in events:
                    console.print(event)
                if live is not None:
                    live.update(content, refresh=True)
                else:
                    console.print(content)
                time.sleep(min(interval, max(0.0, duration - elapsed)))
    except KeyboardInterrupt:
        console.print("interrupted; tearing down")
    finally:
        schedule.stop()
        for error in schedule.errors:
            console.print(f"[red]schedule: {error}[/red]")
