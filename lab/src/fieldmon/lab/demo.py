"""`fieldmon-lab demo`: two field hospitals and the whole pipeline on this machine.

Starts Mosquitto, influxd and Alertmanager on loopback, a lab (fieldmon/lab/topology.py) with two
sites - each a site router with simulated APs (real snmpd serving recorded walks), a parent
hospital and the internet in network namespaces of our own - the collector and one agent per
site, polling links over ICMP and APs over SNMP. A live view shows each site's links, APs and
alerts as the pipeline measured them; a schedule degrades one site's parent link (loss, delay and
jitter), then cuts it, then restores it, so LinkDegraded and LinkDown fire and then resolve. At
the end it prints what reached InfluxDB. Data and logs stay in the data folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fieldmon.lab.process import script, start, wait_subscribed
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port
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
ALERTMANAGER_CONFIG = """
route: {receiver: log, group_by: [site], group_wait: 1s, group_interval: 5s, repeat_interval: 1h}
receivers: [{name: log}]
"""
SNMP_INTERVAL = "10s"


def demo_schedule(duration: float) -> list[Step]:
    """Degrade the impaired site's parent link (27 s into a 90 s run), cut it, restore it."""
    link = f"{IMPAIRED_SITE}/parent"
    return [
        Step(0.3 * duration, link, f"{IMPAIRED_SITE} parent link degraded: 20 % loss, "
             "60 ± 20 ms added", loss_pct=20, delay_ms=60, jitter_ms=20),
        Step(0.45 * duration, link, f"{IMPAIRED_SITE} parent link cut", cut=True),
        Step(0.67 * duration, link, f"{IMPAIRED_SITE} parent link restored", restore=True),
    ]  # fmt: skip


def write_site_file(folder: Path, workdir: Path, lab: Lab, site: str, mosquitto_port: int) -> Path:
    """The site file a field engineer would write for this simulated site."""
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
host: {{interval: 10s}}
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
) -> Table:
    """One site: its links as measured (and as impaired), its APs and router, its alerts."""
    name = str(site["site"])
    table = Table(title=f"{name} - {SITES.get(name, '')}", title_justify="left", min_width=100)
    for column in ("", "name", "state", "loss / clients", "rtt p95 / util", "jitter", "MOS",
                   "lab impairment"):  # fmt: skip
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
    snmp = Table(title="SNMP rows (measurements ap and snmp_if)")
    for column in ("site", "device", "measurement", "rows"):
        snmp.add_column(column)
    for measurement, field in (("ap", "up"), ("snmp_if", "oper_up")):
        query = f'SELECT COUNT("{field}") FROM "{measurement}" GROUP BY "site", "device"'
        for row in influxd.query(query, db=DATABASE):
            snmp.add_row(str(row.get("site")), str(row.get("device")), measurement,
                         f"{row.get('count')} rows")  # fmt: skip
    return Group(table, snmp)


def write_secrets(folder: Path) -> None:
    """The SNMP community the site files refer to (secrets/snmp-community.txt)."""
    secrets = folder / "secrets"
    secrets.mkdir(exist_ok=True)
    # The lab's community is well known in the lab; private all the same, as the agent requires.
    write_secret(secrets / "snmp-community.txt", COMMUNITY, remember=False)


def run_demo(duration: float, workdir: Path, console: Console) -> int:
    """The whole demo; tears everything down on return, Ctrl-C included."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]fieldmon demo[/bold]: data and logs in {workdir}")
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` tears down like Ctrl-C does
    with contextlib.ExitStack() as stack:
        mosquitto = stack.enter_context(MosquittoServer(workdir / "mosquitto"))
        influxd = stack.enter_context(InfluxdServer(workdir / "influxd"))
        alertmanager = stack.enter_context(
            AlertmanagerServer(workdir / "alertmanager", ALERTMANAGER_CONFIG)
        )
        remove_stale_labs(LAB_STEM)  # left by a demo that crashed
        lab = Lab.up(f"{LAB_STEM}{os.getpid()}", DEMO_SITES, workdir / "lab")
        stack.callback(lab.down, keep_files=True)
        folder = workdir / "site_configs"
        folder.mkdir(exist_ok=True)
        write_secrets(folder)
        site_files = {
            site: write_site_file(folder, workdir, lab, site, mosquitto.port) for site in SITES
        }
        collector_file, http_port = write_collector_file(
            workdir, mosquitto.port, influxd.url, alertmanager.url
        )
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
            _watch(console, http_port, lab, influxd, duration)
        console.print(summary(influxd))
    console.print(f"Stopped. Logs and InfluxDB data stay in {workdir}")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _View:
    """The live view's content and the event lines, refreshed from the collector and InfluxDB."""

    def __init__(self, http_port: int, lab: Lab, influxd: InfluxdServer) -> None:
        self.http_port = http_port
        self.lab = lab
        self.influxd = influxd
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
        self.firing = set(now)
        tables = [
            site_table(site, self.lab, snmp.get(str(site["site"]), []), alerts)
            for site in status.get("sites", [])
        ]
        heading = f"[bold]after {elapsed:.0f}s[/bold] - {self.phase}"
        return Group(heading, *tables), events


def _watch(
    console: Console, http_port: int, lab: Lab, influxd: InfluxdServer, duration: float
) -> None:
    """Run the impairment schedule and show the sites until `duration` or Ctrl-C."""
    steps_done: list[Step] = []
    lock = threading.Lock()

    def on_step(step: Step) -> None:
        with lock:
            steps_done.append(step)

    view = _View(http_port, lab, influxd)
    schedule = Schedule(lab, demo_schedule(duration), on_step).start()
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
