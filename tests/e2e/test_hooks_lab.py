"""Hooks end to end in a lab site: a real cut of the wired uplink and its restore.

The lab site has a wired and an LTE uplink to its parent hospital, and the NOC (Mosquitto, the
collector, influxd, all on this machine) behind the parent hospital. The agent runs in the site
router's namespace with the shipped hooks (deploy/hooks): 10-diagnostics and 50-lte-failover.
Cut the wired uplink: the agent judges it down while the NOC is out of reach, the failover hook
moves the default route to LTE, the probes and the site's reports follow it; restore: after the
hold time the route goes back. Every hook run is an `event` row in InfluxDB.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldmon.lab.netns import run
from fieldmon.lab.process import script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port
from fieldmon.lab.topology import Lab, SiteSpec, namespace_name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, raw ICMP and routes need root"),
]
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "hooks"
HOLD_S = 4


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    site = SiteSpec("field", router=False, lte_rate="5mbit", noc=True)
    with Lab.up(f"hk{os.getpid()}", [site], tmp_path / "labs") as lab:
        yield lab


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """The hooks' state, under /run as on a Pi."""
    path = Path(f"/run/fieldmon-e2e-{os.getpid()}")
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _install_hooks(directory: Path, lab: Lab, state: Path) -> None:
    directory.mkdir(mode=0o755)
    for name in ("10-diagnostics", "50-lte-failover"):
        shutil.copy(SHIPPED / name, directory / name)
        (directory / name).chmod(0o755)
    wired, lte = lab.link("field/parent"), lab.link("field/lte")
    conf = directory / "lte-failover.conf"
    conf.write_text(
        f"WIRED_LINK=parent-wired\nWIRED_DEV={wired.near_dev}\nWIRED_GW={wired.address}\n"
        f"LTE_DEV={lte.near_dev}\nLTE_GW={lte.address}\nHOLD={HOLD_S}\n"
        f"STATE_DIR={state}/lte-failover\n",
        encoding="ascii",
    )
    conf.chmod(0o644)
    diagnostics = directory / "diagnostics.conf"
    diagnostics.write_text(f"REPORT_DIR={state}/diagnostics\n", encoding="ascii")
    diagnostics.chmod(0o644)


def _site_file(path: Path, lab: Lab, broker: tuple[str, int], hooks: Path, outbox: Path) -> None:
    wired, lte = lab.link("field/parent"), lab.link("field/lte")
    probe = "interval: 1s, count: 5, spacing: 50ms, timeout: 300ms"
    path.write_text(
        f"""site: field
name: "Field hospital with an LTE backup"
parent_hospital: central
agent:
  id: field-pi
  broker: {{host: {broker[0]}, port: {broker[1]}, keepalive: 5s, connect_timeout: 3s}}
  outbox: {{path: {outbox}}}
  linger: 100ms
links:
  - {{name: parent-wired, address: {wired.address}, role: parent, interface: {wired.near_dev},
     {probe}}}
  - {{name: parent-lte, address: {lte.address}, role: parent, interface: {lte.near_dev}, {probe}}}
  - {{name: parent-core, address: {lab.core_address("field")}, role: parent, {probe}}}
host: {{interval: 5s}}
hooks: {{dir: {hooks}, timeout: 10s}}
""",
        encoding="utf-8",
    )


def _default_route(gw: str) -> str:
    return run(None, "ip", "-n", gw, "-4", "route", "show", "default").stdout.strip()


def _hook_rows(influxd: InfluxdServer, db: str) -> list[dict[str, Any]]:
    return influxd.query("SELECT * FROM event WHERE kind = 'hook'", db=db)


def _row(rows: list[dict[str, Any]], hook: str, event: str, target: str) -> dict[str, Any] | None:
    found = [r for r in rows if (r["hook"], r["event"], r.get("target")) == (hook, event, target)]
    return found[-1] if found else None


def test_a_cut_and_restore_run_the_hooks_and_the_site_keeps_reporting_over_lte(
    tmp_path: Path,
    lab: Lab,
    run_dir: Path,
    influxd: InfluxdServer,
    influx_db: str,
) -> None:
    gw = namespace_name(lab.name, "field", "gw")
    noc = lab.noc_address("field")
    agent_port = free_port(noc)
    broker = MosquittoServer(tmp_path / "mosquitto", extra_config=f"listener {agent_port} {noc}\n")
    hooks = tmp_path / "hooks"
    _install_hooks(hooks, lab, run_dir)
    sites = tmp_path / "site_configs"
    sites.mkdir()
    _site_file(sites / "field.yaml", lab, (noc, agent_port), hooks, tmp_path / "outbox.db")
    http_port = free_port()
    collector_file = tmp_path / "collector.yaml"
    logs = tmp_path / "daemons.log"
    db = influx_db

    def rows() -> list[dict[str, Any]]:
        return _hook_rows(influxd, db)

    def reported_over_lte_after(since_ns: int) -> bool:
        answered = influxd.query(
            "SELECT loss_pct FROM link WHERE target = 'parent-core' AND loss_pct < 100 "
            f"AND time > {since_ns}",
            db=db,
        )
        return len(answered) >= 3

    broker.start()
    collector = agent = None
    try:
        collector_file.write_text(
            f"broker: {{host: 127.0.0.1, port: {broker.port}, client_id: hooks-collector}}\n"
            f'influxdb: {{api: v1, url: "{influxd.url}", database: {db}, '
            "flush_interval: 200ms}\n"
            f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
            "data_dir: ./data\n",
            encoding="utf-8",
        )
        collector = start([script("fieldmon-collector"), "run", "--config", collector_file], logs)
        wait_subscribed(http_port, daemons=collector)
        agent = start(
            ["ip", "netns", "exec", gw, script("fieldmon-agent"), "run", "--config",
             sites / "field.yaml"],
            logs,
        )  # fmt: skip
        daemons = [collector, agent]
        assert "dev wan-parent" in _default_route(gw)
        # Every link established: the failover hook has seen the wired link up (and left the
        # route alone), and its row reached InfluxDB through the events topic.
        settled = wait_for(
            lambda: _row(rows(), "50-lte-failover", "link_up", "parent-wired"),
            "the hooks' first runs in InfluxDB",
            60,
            daemons=daemons,
        )
        assert (
            settled["output"] == "lte-failover: parent-wired up; the default route is on wan-parent"
        )
        assert settled["exit_status"] == 0

        # The cut: the NOC is out of reach; the agent judges and acts on its own.
        lab.impair("field/parent", cut=True)
        cut_ns = time.time_ns()
        wait_for(
            lambda: "dev wan-lte" in _default_route(gw), "failover to LTE", 30, daemons=daemons
        )
        moved_ns = time.time_ns()
        assert f"via {lab.link('field/lte').address}" in _default_route(gw)
        assert "dev wan-lte" in run(gw, "ip", "route", "get", noc).stdout  # the NOC, too
        # Traffic and probes follow the route: the parent hospital's core answers over LTE,
        # and the site reports again over its backup link.
        wait_for(
            lambda: reported_over_lte_after(moved_ns),
            "parent-core answering over LTE, stored by the collector",
            90,
            daemons=daemons,
        )
        down = wait_for(
            lambda: _row(rows(), "50-lte-failover", "link_down", "parent-wired"),
            "the failover hook's link_down row",
            60,
            daemons=daemons,
        )
        assert (
            down["output"] == "lte-failover: parent-wired link_down: default route moved to wan-lte"
        )
        assert (down["exit_status"], down["timed_out"]) == (0, False)
        assert cut_ns < down["time"] < moved_ns
        diagnosis = wait_for(
            lambda: _row(rows(), "10-diagnostics", "link_down", "parent-wired"),
            "the diagnostics hook's link_down row",
            30,
            daemons=daemons,
        )
        assert diagnosis["output"].startswith("diag link_down parent-wired: default ")
        assert f"report {run_dir}/diagnostics/" in diagnosis["output"]
        assert diagnosis["exit_status"] == 0
        assert float(diagnosis["duration_ms"]) > 0
        state_rows = influxd.query(
            "SELECT * FROM event WHERE kind = 'link_state' AND target = 'parent-wired'", db=db
        )
        assert [(r["state"], r["previous"]) for r in state_rows][:1] == [("down", "ok")]

        # The restore: up again, then the hold time, then the route goes back.
        lab.restore("field/parent")
        restored = time.monotonic()
        wait_for(
            lambda: "dev wan-parent" in _default_route(gw),
            "the route back on the wired uplink",
            60,
            interval=0.05,
            daemons=daemons,
        )
        back_ns = time.time_ns()
        up = wait_for(
            lambda: _row(
                [r for r in rows() if r["time"] > cut_ns], "50-lte-failover", "link_up",
                "parent-wired",
            ),
            "the failover hook's link_up row",
            30,
            daemons=daemons,
        )  # fmt: skip
        assert up["output"] == (
            f"lte-failover: parent-wired up; the default route goes back to wan-parent "
            f"if it stays up {HOLD_S}s"
        )
        held = (back_ns - up["time"]) / 1e9
        assert held >= HOLD_S - 0.2, f"back after {held:.1f} s, before the hold time"
        assert time.monotonic() - restored < 60
        log = (run_dir / "lte-failover" / "log").read_text()
        assert f"wired link parent-wired up for {HOLD_S}s: default route back via wan-parent" in log
        assert agent.running(), agent.tail()
    finally:
        for daemon in (agent, collector):
            if daemon is not None:
                daemon.stop()
        broker.stop()
    # The diagnostics report is on the Pi, with the routes and the kernel's words.
    [report, *_] = sorted((run_dir / "diagnostics").glob("*-link_down-parent-wired.txt"))
    text = report.read_text()
    for section in ("## routes", "## interface counters", "## neighbours", "## kernel messages"):
        assert section in text
