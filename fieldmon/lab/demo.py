"""`fieldmon-lab demo`: one field hospital and the whole pipeline on this machine.

Starts Mosquitto and influxd on loopback, a simulated parent hospital and an internet host in
network namespaces of our own, the collector and one agent; shows the site's links as they are
measured; part-way through drops 30 % of the parent link's packets (iptables statistic, in the
parent hospital's namespace), then restores it; and prints what reached InfluxDB.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fieldmon.lab.netns import Namespace, remove_stale, unique_name, veth
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

BIN = Path(sys.executable).parent
SITE, AGENT, DATABASE = "demo-pavilion", "demo-pavilion-pi1", "fieldmon"
NAMESPACE_TAG = "demo"


@dataclass(frozen=True)
class Hosts:
    """Addresses of the simulated far ends."""

    parent: str
    internet: str
    parent_ns: Namespace


@contextlib.contextmanager
def simulated_hosts() -> Iterator[Hosts]:
    """A parent hospital and an internet host, each behind its own veth link."""
    remove_stale(f"fm-{NAMESPACE_TAG}-")  # left by a demo that crashed
    with (
        Namespace(unique_name(NAMESPACE_TAG)) as parent,
        Namespace(unique_name(NAMESPACE_TAG)) as internet,
    ):
        parent_link = veth(None, parent)
        internet_link = veth(None, internet)
        yield Hosts(str(parent_link.b_v4.ip), str(internet_link.b_v4.ip), parent)


def impair_parent(hosts: Hosts, loss: float) -> None:
    """Drop `loss` of the echo requests reaching the parent hospital (0 restores it)."""
    hosts.parent_ns.run("iptables", "-F", "INPUT")
    if loss > 0:
        hosts.parent_ns.run(
            "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request",
            "-m", "statistic", "--mode", "random", "--probability", f"{loss:.2f}", "-j", "DROP",
        )  # fmt: skip


def write_configs(
    workdir: Path, mosquitto_port: int, influx_url: str, hosts: Hosts
) -> tuple[Path, Path, int]:
    """The site file and the collector file; returns their paths and the HTTP port."""
    sites = workdir / "site_configs"
    sites.mkdir(parents=True, exist_ok=True)
    site_file = sites / f"{SITE}.yaml"
    site_file.write_text(
        f"""site: {SITE}
name: "Demo field hospital - Pavilion"
parent_hospital: demo-central
agent:
  id: {AGENT}
  broker: {{host: 127.0.0.1, port: {mosquitto_port}}}
  outbox: {{path: {workdir / "agent" / "outbox.db"}}}
links:
  - {{name: parent-gw, address: {hosts.parent}, role: parent, interval: 5s, count: 20,
     spacing: 100ms, timeout: 1s, thresholds: {{loss_pct: 5, rtt_ms: 80}}}}
  - {{name: internet, address: {hosts.internet}, role: internet, interval: 5s, count: 10}}
  - {{name: site-gateway, address: 127.0.0.1, role: gateway, interval: 5s, count: 10}}
""",
        encoding="utf-8",
    )
    http_port = free_port()
    collector_file = workdir / "collector.yaml"
    collector_file.write_text(
        f"""broker: {{host: 127.0.0.1, port: {mosquitto_port}, client_id: demo-collector}}
influxdb: {{api: v1, url: "{influx_url}", database: {DATABASE}}}
site_configs: ./site_configs
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./collector-data
""",
        encoding="utf-8",
    )
    return site_file, collector_file, http_port


def latest_rows(influxd: InfluxdServer) -> list[dict[str, object]]:
    """The newest `link` row per target."""
    query = f"SELECT * FROM link WHERE site = '{SITE}' GROUP BY target ORDER BY time DESC LIMIT 1"
    try:
        return influxd.query(query, db=DATABASE)
    except RuntimeError:
        return []


def _fmt(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{float(value):.1f}{unit}"  # type: ignore[arg-type]


def status_table(rows: list[dict[str, object]], elapsed: float, phase: str) -> Table:
    """One line per link of what InfluxDB holds now."""
    table = Table(title=f"{SITE} after {elapsed:.0f}s - {phase}")
    for column in ("link", "role", "loss", "rtt p50", "rtt p95", "jitter", "MOS"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: str(r.get("target"))):
        loss = float(row.get("loss_pct") or 0)  # type: ignore[arg-type]
        colour = "green" if loss < 5 else ("yellow" if loss < 100 else "red")
        table.add_row(
            str(row.get("target")),
            str(row.get("role")),
            f"[{colour}]{loss:.0f} %[/{colour}]",
            _fmt(row.get("rtt_p50_ms"), " ms"),
            _fmt(row.get("rtt_p95_ms"), " ms"),
            _fmt(row.get("jitter_ms"), " ms"),
            _fmt(row.get("mos")),
        )
    return table


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
    """How many rows reached InfluxDB per link, and their worst loss."""
    table = Table(title="What the demo wrote to InfluxDB (database fieldmon, measurement link)")
    for column in ("link", "rows", "worst loss", "mean rtt p50"):
        table.add_column(column)
    query = (
        f"SELECT COUNT(loss_pct), MAX(loss_pct), MEAN(rtt_p50_ms) FROM link "
        f"WHERE site = '{SITE}' GROUP BY target"
    )
    for row in influxd.query(query, db=DATABASE):
        table.add_row(
            str(row.get("target")),
            str(row.get("count")),
            _fmt(row.get("max"), " %"),
            _fmt(row.get("mean"), " ms"),
        )
    return table


def run_demo(duration: float, workdir: Path, console: Console) -> int:
    """The whole demo; tears everything down on return, Ctrl-C included."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]fieldmon demo[/bold]: data and logs in {workdir}")
    with contextlib.ExitStack() as stack:
        mosquitto = stack.enter_context(MosquittoServer(workdir / "mosquitto"))
        influxd = stack.enter_context(InfluxdServer(workdir / "influxd"))
        hosts = stack.enter_context(simulated_hosts())
        site_file, collector_file, http_port = write_configs(
            workdir, mosquitto.port, influxd.url, hosts
        )
        collector = _start(
            [str(BIN / "fieldmon-collector"), "run", "--config", str(collector_file),
             "--log-format", "text"],
            workdir / "collector.log",
        )  # fmt: skip
        stack.callback(_stop, collector)
        agent = _start(
            [str(BIN / "fieldmon-agent"), "run", "--config", str(site_file),
             "--log-format", "text"],
            workdir / "agent.log",
        )  # fmt: skip
        stack.callback(_stop, agent)
        console.print(
            f"Mosquitto 127.0.0.1:{mosquitto.port}, InfluxDB {influxd.url} (database "
            f"{DATABASE}), collector http://127.0.0.1:{http_port}/metrics"
        )
        _watch(console, influxd, hosts, duration)
        _stop(agent)
        _stop(collector)
        console.print(summary(influxd))
    console.print(f"Stopped. Logs and InfluxDB data stay in {workdir}")
    return 0


def _watch(console: Console, influxd: InfluxdServer, hosts: Hosts, duration: float) -> None:
    """Show the links every 5 s; impair the parent link for the middle third."""
    started = time.monotonic()
    impaired_from, impaired_until = duration / 3, 2 * duration / 3
    phase = "healthy"
    try:
        while (elapsed := time.monotonic() - started) < duration:
            wanted = (
                "parent link 30 % loss"
                if impaired_from <= elapsed < impaired_until
                else ("healthy" if elapsed < impaired_from else "restored")
            )
            if wanted != phase:
                impair_parent(hosts, 0.3 if wanted.startswith("parent") else 0.0)
                console.print(f"[bold yellow]>>> {wanted}[/bold yellow]")
                phase = wanted
            console.print(status_table(latest_rows(influxd), elapsed, phase))
            time.sleep(5)
    except KeyboardInterrupt:
        console.print("interrupted; tearing down")
