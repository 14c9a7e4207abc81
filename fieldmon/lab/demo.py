"""`fieldmon-lab demo`: two field hospitals and the whole pipeline on this machine.

Starts Mosquitto, influxd and Alertmanager on loopback, each site's parent hospital in a network
namespace of our own, the collector and one agent per site; shows every site's links and the
firing alerts as they are measured; for the middle third of the run cuts one site's parent link
(iptables in the parent hospital's namespace drops every echo), so LinkDown fires and then
resolves; and prints what reached InfluxDB. Data and logs stay in the data folder.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fieldmon.lab.netns import Namespace, remove_stale, unique_name, veth
from fieldmon.lab.servers import AlertmanagerServer, InfluxdServer, MosquittoServer, free_port

BIN = Path(sys.executable).parent
DATABASE = "fieldmon"
NAMESPACE_TAG = "demo"
IMPAIRED_SITE = "demo-pavilion"
SITES = {  # site -> (display name, link interval)
    "demo-pavilion": "Demo field hospital - Pavilion",
    "demo-school": "Demo field hospital - School gym",
}
ALERTMANAGER_CONFIG = """
route: {receiver: log, group_by: [site], group_wait: 1s, group_interval: 5s, repeat_interval: 1h}
receivers: [{name: log}]
"""


@dataclass(frozen=True)
class Site:
    """One simulated site: its parent hospital's namespace and address."""

    site: str
    agent: str
    parent: str
    internet: str
    parent_ns: Namespace


@contextlib.contextmanager
def simulated_sites() -> Iterator[list[Site]]:
    """Per site a parent hospital and an internet host, each behind its own veth link."""
    remove_stale(f"fm-{NAMESPACE_TAG}-")  # left by a demo that crashed
    with contextlib.ExitStack() as stack:
        sites = []
        for site in SITES:
            parent = stack.enter_context(Namespace(unique_name(NAMESPACE_TAG)))
            internet = stack.enter_context(Namespace(unique_name(NAMESPACE_TAG)))
            parent_ip = str(veth(None, parent).b_v4.ip)
            internet_ip = str(veth(None, internet).b_v4.ip)
            sites.append(Site(site, f"{site}-pi1", parent_ip, internet_ip, parent))
        yield sites


def cut_parent(site: Site, cut: bool) -> None:
    """Drop every echo request reaching the site's parent hospital, or stop dropping."""
    site.parent_ns.run("iptables", "-F", "INPUT")
    if cut:
        site.parent_ns.run(
            "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"
        )


def write_site_file(folder: Path, workdir: Path, site: Site, mosquitto_port: int) -> Path:
    """The site file a field engineer would write for this simulated site."""
    path = folder / f"{site.site}.yaml"
    path.write_text(
        f"""site: {site.site}
name: "{SITES[site.site]}"
parent_hospital: demo-central
agent:
  id: {site.agent}
  broker: {{host: 127.0.0.1, port: {mosquitto_port}, username: {site.agent}}}
  outbox: {{path: {workdir / site.agent / "outbox.db"}}}
links:
  - {{name: parent-gw, address: {site.parent}, role: parent, interval: 5s, count: 20,
     spacing: 100ms, timeout: 1s, thresholds: {{loss_pct: 5, rtt_ms: 80}}}}
  - {{name: internet, address: {site.internet}, role: internet, interval: 5s, count: 10}}
  - {{name: site-gateway, address: 127.0.0.1, role: gateway, interval: 5s, count: 10}}
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


def _api(http_port: int, path: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=5) as reply:
            return dict(json.loads(reply.read()))
    except OSError:
        return {}


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{float(value):.1f}{unit}"  # type: ignore[arg-type]


_COLOURS = {"ok": "green", "degraded": "yellow", "down": "red", "unreachable": "magenta"}


def status_table(status: dict[str, object], elapsed: float, phase: str) -> Table:
    """One line per site and link, as the collector's status API reports them."""
    table = Table(title=f"after {elapsed:.0f}s - {phase}")
    for column in ("site", "link", "state", "loss", "rtt p95", "jitter", "MOS"):
        table.add_column(column)
    for site in status.get("sites", []):  # type: ignore[union-attr]
        for link in site["links"]:
            latest, state = link["latest"], link["state"]
            colour = _COLOURS.get(state, "white")
            table.add_row(
                site["site"],
                link["name"],
                f"[{colour}]{state}[/{colour}]",
                _fmt(latest.get("loss_pct"), " %"),
                _fmt(latest.get("rtt_p95_ms"), " ms"),
                _fmt(latest.get("jitter_ms"), " ms"),
                _fmt(latest.get("mos")),
            )
    return table


def _alert_lines(alerts: dict[str, object]) -> list[str]:
    return [
        f"[bold red]FIRING[/bold red] {a['labels']['alertname']} {a['labels']['site']}/"  # type: ignore[index]
        f"{a['labels']['target']}: {a['annotations'].get('summary', '')}"  # type: ignore[index]
        for a in alerts.get("alerts", [])  # type: ignore[union-attr]
    ]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def summary(influxd: InfluxdServer) -> Table:
    """How many rows reached InfluxDB per site and link, and their worst loss."""
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
    return table


def run_demo(duration: float, workdir: Path, console: Console) -> int:
    """The whole demo; tears everything down on return, Ctrl-C included."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]fieldmon demo[/bold]: data and logs in {workdir}")
    with contextlib.ExitStack() as stack:
        mosquitto = stack.enter_context(MosquittoServer(workdir / "mosquitto"))
        influxd = stack.enter_context(InfluxdServer(workdir / "influxd"))
        alertmanager = stack.enter_context(
            AlertmanagerServer(workdir / "alertmanager", ALERTMANAGER_CONFIG)
        )
        sites = stack.enter_context(simulated_sites())
        folder = workdir / "site_configs"
        folder.mkdir(exist_ok=True)
        site_files = [write_site_file(folder, workdir, site, mosquitto.port) for site in sites]
        collector_file, http_port = write_collector_file(
            workdir, mosquitto.port, influxd.url, alertmanager.url
        )
        with contextlib.ExitStack() as processes:  # stopped (and flushed) before the summary
            collector = _start(
                [str(BIN / "fieldmon-collector"), "run", "--config", str(collector_file),
                 "--log-format", "text"],
                workdir / "collector.log",
            )  # fmt: skip
            processes.callback(_stop, collector)
            for site, site_file in zip(sites, site_files, strict=True):
                agent = _start(
                    [str(BIN / "fieldmon-agent"), "run", "--config", str(site_file),
                     "--log-format", "text"],
                    workdir / f"{site.agent}.log",
                )  # fmt: skip
                processes.callback(_stop, agent)
            console.print(
                f"status page [bold]http://127.0.0.1:{http_port}/[/bold] - Alertmanager "
                f"{alertmanager.url} - InfluxDB {influxd.url} (database {DATABASE}) - "
                f"Mosquitto 127.0.0.1:{mosquitto.port}"
            )
            impaired = next(site for site in sites if site.site == IMPAIRED_SITE)
            _watch(console, http_port, impaired, duration)
        console.print(summary(influxd))
    console.print(f"Stopped. Logs and InfluxDB data stay in {workdir}")
    return 0


def _watch(console: Console, http_port: int, impaired: Site, duration: float) -> None:
    """Show the sites every 5 s; cut the impaired site's parent link for the middle third."""
    started = time.monotonic()
    phase = "healthy"
    try:
        while (elapsed := time.monotonic() - started) < duration:
            if duration / 3 <= elapsed < 2 * duration / 3:
                wanted = f"{impaired.site} parent link cut"
            else:
                wanted = "healthy" if elapsed < duration / 3 else "parent link restored"
            if wanted != phase:
                cut_parent(impaired, wanted.endswith("cut"))
                console.print(f"[bold yellow]>>> {wanted}[/bold yellow]")
                phase = wanted
            console.print(status_table(_api(http_port, "/api/v1/sites"), elapsed, phase))
            for line in _alert_lines(_api(http_port, "/api/v1/alerts")):
                console.print(line)
            time.sleep(5)
    except KeyboardInterrupt:
        console.print("interrupted; tearing down")
