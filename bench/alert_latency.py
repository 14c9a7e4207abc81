"""bench/alert_latency: how fast a degraded or dead parent link pages, fieldmon beside Prometheus.

One simulated site (bench/_alert_stack.py): the fieldmon agent and blackbox_exporter both run in
the site's network namespace and probe the same parent-hospital links, each link a namespace of
its own. Two stacks judge them and notify one Alertmanager, which posts to one webhook receiver:
- fieldmon: agent (10 echoes every --round) -> Mosquitto -> collector (alerts role) ->
  Alertmanager API v2; LinkDegraded after for_rounds bad rounds, LinkDown after 2 dead ones;
- the usual alternative: Prometheus scraping blackbox_exporter's ICMP module every 15 s, rules
  on avg_over_time(probe_success[...]) (down: == 0 over 1m; degraded: loss >= 5 % over 5m) and
  on the probe's RTT over 1m, each with `for: 1m`.

--trials links get 30 % loss (iptables statistic in the parent namespace), --trials others lose
everything (DROP all), each at a random moment, all in one run; latency runs from the iptables
rule being in place to the notification reaching the receiver. Meanwhile --healthy-links links
answer through a userspace echo responder with delay and jitter but no loss, and every
notification about them (or about the site) in --healthy-minutes is a false one, as is one
about an impaired link before its impairment. Target: fieldmon's median detection within
for_rounds rounds + 2 s, zero false notifications.

Run (root: namespaces, raw sockets, iptables):
  .venv/bin/python -m bench.alert_latency [--trials 8] [--healthy-minutes 10] [--round 5s]
  .venv/bin/python -m bench.alert_latency --quick     # a smoke run, about 3 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._alert_stack import (
    AGENT,
    DETECTING_ALERTS,
    ECHOES,
    SPACING_S,
    TIMEOUT_S,
    BenchLink,
    NamespacedBlackboxExporter,
    Notification,
    Receiver,
    SiteTopology,
    alertmanager_config_text,
    collector_file_text,
    impair,
    prometheus_config_text,
    prometheus_probe_success,
    prometheus_rules_text,
    site_file_text,
    site_status,
    site_topology,
)
from fieldmon.lab.impair import EchoResponder
from fieldmon.lab.process import script, start
from fieldmon.lab.servers import (
    AlertmanagerServer,
    InfluxdServer,
    MosquittoServer,
    PrometheusServer,
    free_port,
)

SYSTEMS = ("fieldmon", "prometheus")
KINDS = ("degrade", "down")
DATABASE = "albench"
SCRAPE_S = 15.0
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunSettings:
    """What one run does; filled from the command line."""

    trials: int
    healthy_links: int
    healthy_minutes: float
    round_s: float
    for_rounds: int
    loss_pct: float
    healthy_delay_ms: float
    healthy_jitter_ms: float
    timeout_s: float
    seed: int | None
    workdir: Path | None

    @property
    def target_s(self) -> float:
        """fieldmon's target: for_rounds rounds plus 2 s."""
        return self.for_rounds * self.round_s + 2.0


@dataclass(frozen=True)
class Episode:
    """One impaired link: what was done to it and when (monotonic)."""

    link: BenchLink
    impaired_at: float


# --- running the stacks ----------------------------------------------------------------------


def start_fieldmon(
    stack: contextlib.ExitStack,
    workdir: Path,
    topology: SiteTopology,
    settings: RunSettings,
    *,
    mosquitto: MosquittoServer,
    site_broker_port: int,
    influxd: InfluxdServer,
    alertmanager: AlertmanagerServer,
    receiver: Receiver,
) -> int:
    """Collector in the root namespace, agent in the site's; returns the collector's HTTP port."""
    sites = workdir / "site_configs"
    sites.mkdir()
    site_file = sites / f"{AGENT}.yaml"
    site_file.write_text(
        site_file_text(topology, site_broker_port, workdir / "outbox.db", settings.round_s),
        encoding="utf-8",
    )
    http_port = free_port()
    collector_file = workdir / "collector.yaml"
    collector_file.write_text(
        collector_file_text(
            broker_port=mosquitto.port or 0,
            influx_url=influxd.url,
            database=DATABASE,
            http_port=http_port,
            alertmanager_url=alertmanager.url,
            receiver_port=receiver.port,
            for_rounds=settings.for_rounds,
        ),
        encoding="utf-8",
    )
    collector = start(
        [script("fieldmon-collector"), "run", "--config", collector_file],
        workdir / "collector.log",
    )
    stack.callback(collector.stop)  # SIGTERM, SIGKILL of that same PID if it lingers
    agent = start(
        ["ip", "netns", "exec", topology.site.name,
         script("fieldmon-agent"), "run", "--config", site_file],
        workdir / "agent.log",
    )  # fmt: skip
    stack.callback(agent.stop)
    return http_port


def start_alternative(
    stack: contextlib.ExitStack,
    workdir: Path,
    topology: SiteTopology,
    alertmanager: AlertmanagerServer,
) -> PrometheusServer:
    """blackbox_exporter in the site namespace, Prometheus scraping it from the root one."""
    stack.enter_context(
        NamespacedBlackboxExporter(workdir / "blackbox", topology.site, topology.site_address)
    )
    prometheus = PrometheusServer(
        workdir / "prometheus",
        prometheus_config_text(topology, alertmanager.port or 0, SCRAPE_S),
        prometheus_rules_text(),
    )
    return stack.enter_context(prometheus)


def wait_until_both_see_healthy_links(
    topology: SiteTopology, http_port: int, prometheus: PrometheusServer
) -> None:
    """Both stacks have measured every link answering before anything is impaired."""
    names = {link.name for link in topology.links}
    deadline = time.monotonic() + READY_TIMEOUT_S
    fieldmon_ok: set[str] = set()
    prometheus_ok: set[str] = set()
    while time.monotonic() < deadline:
        fieldmon_ok = {
            link["name"]
            for site in site_status(http_port).get("sites", [])
            for link in site.get("links", [])
            if (link.get("latest") or {}).get("loss_pct") == 0
        }
        prometheus_ok = {
            name for name, up in prometheus_probe_success(prometheus.url).items() if up == 1
        }
        if names <= fieldmon_ok and names <= prometheus_ok:
            return
        time.sleep(1)
    raise RuntimeError(
        f"links not healthy after {READY_TIMEOUT_S:g}s: fieldmon misses "
        f"{sorted(names - fieldmon_ok)}, Prometheus misses {sorted(names - prometheus_ok)}"
    )


def _detected(notes: list[Notification], episode: Episode, system: str, route: str) -> bool:
    wanted = DETECTING_ALERTS[(system, episode.link.kind)]
    return any(
        n.route == route
        and n.system == system
        and n.link == episode.link.name
        and n.status == "firing"
        and n.alertname in wanted
        and n.at >= episode.impaired_at
        for n in notes
    )


def impair_and_watch(
    topology: SiteTopology, receiver: Receiver, settings: RunSettings, started: float
) -> list[Episode]:
    """Impair each degrade/down link at a random moment within one scrape interval of
    `started`, then wait until both stacks paged for every one (or --timeout passed) and the
    healthy window is over."""
    rng = random.Random(settings.seed)
    plan = sorted(
        ((started + rng.uniform(0, SCRAPE_S), link) for link in topology.links
         if link.kind in KINDS),
        key=lambda item: item[0],
    )  # fmt: skip
    episodes: list[Episode] = []
    healthy_end = started + settings.healthy_minutes * 60
    while True:
        now = time.monotonic()
        while plan and plan[0][0] <= now:
            _, link = plan.pop(0)
            impair(link, link.kind, settings.loss_pct)
            episodes.append(Episode(link, time.monotonic()))
            print(f"  {time.monotonic() - started:6.1f}s  {link.name}: impaired", flush=True)
        notes = receiver.snapshot()
        waiting = [
            e for e in episodes
            if now - e.impaired_at < settings.timeout_s
            and not all(_detected(notes, e, system, "alertmanager") for system in SYSTEMS)
        ]  # fmt: skip
        if not plan and not waiting and now >= healthy_end:
            return episodes
        time.sleep(0.2)


# --- results ---------------------------------------------------------------------------------


def _latency(
    notes: list[Notification], episode: Episode, system: str, route: str, timeout_s: float
) -> float | None:
    wanted = DETECTING_ALERTS[(system, episode.link.kind)]
    for n in notes:  # arrival order
        if (
            n.route == route
            and n.system == system
            and n.link == episode.link.name
            and n.status == "firing"
            and n.alertname in wanted
            and n.at >= episode.impaired_at
        ):
            latency = n.at - episode.impaired_at
            return latency if latency <= timeout_s else None
    return None


def false_notifications(
    notes: list[Notification], episodes: list[Episode], end: float
) -> list[Notification]:
    """Firing notifications, through Alertmanager, about an impaired link before its impairment,
    or about anything else before `end`: a healthy link, or the site itself (SiteUnreachable,
    AgentBacklog: nothing here justifies them)."""
    impaired_at = {e.link.name: e.impaired_at for e in episodes}
    return [
        n for n in notes
        if n.route == "alertmanager" and n.status == "firing"
        and n.at < impaired_at.get(n.link, end)
    ]  # fmt: skip


def _summary(latencies: list[float | None], target_s: float | None = None) -> dict[str, Any]:
    """Median over every trial: one not detected within the timeout counts as slower than all
    (a median that lands on one is None: "more than the timeout")."""
    seen = sorted(x for x in latencies if x is not None)
    ranked = seen + [math.inf] * (len(latencies) - len(seen))
    median = statistics.median(ranked) if ranked else math.inf
    return {
        "median_s": round(median, 1) if math.isfinite(median) else None,
        "within_target": None if target_s is None else sum(x <= target_s for x in seen),
        "min_s": round(seen[0], 1) if seen else None,
        "max_s": round(seen[-1], 1) if seen else None,
        "detected": len(seen),
        "trials": len(latencies),
        "each_s": [None if x is None else round(x, 1) for x in latencies],
    }


def healthy_link_figures(influxd: InfluxdServer) -> dict[str, Any]:
    """What fieldmon measured on the healthy links: proof the jitter was there."""
    rows = influxd.query(
        "SELECT MEAN(jitter_ms) AS jitter_mean, MAX(jitter_ms) AS jitter_max, "
        "MEAN(rtt_p50_ms) AS rtt_p50_mean, MAX(rtt_p95_ms) AS rtt_p95_max, "
        "MAX(loss_pct) AS loss_max, COUNT(loss_pct) AS rounds "
        "FROM link WHERE target =~ /^healthy-/",
        db=DATABASE,
    )
    if not rows:
        return {}
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in rows[0].items()
            if k != "time"}  # fmt: skip


def _fieldmon_rounds(
    influxd: InfluxdServer, link: str, since_s: float
) -> list[tuple[float, float]]:
    """(start, end) wall seconds of each of fieldmon's rounds on `link` since `since_s`. A round
    with a lost echo ends when the last echo's timeout runs out, a clean one at its last reply."""
    rows = influxd.query(
        f"SELECT loss_pct FROM link WHERE target = '{link}' AND time >= {int(since_s * 1e9)}",
        db=DATABASE,
    )
    last_echo = (ECHOES - 1) * SPACING_S
    return [
        (row["time"] / 1e9, row["time"] / 1e9 + last_echo + (TIMEOUT_S if row["loss_pct"] else 0))
        for row in rows
    ]


def fieldmon_breakdown(
    influxd: InfluxdServer,
    notes: list[Notification],
    episodes: list[Episode],
    settings: RunSettings,
    wall_offset: float,
) -> dict[str, Any]:
    """Where fieldmon's latency goes, per kind: rounds that carried impaired echoes until the
    page (inherent: the rule needs them), and the pipeline from the end of the round that
    tipped the state to the notification (agent batching, MQTT, collector, Alertmanager)."""
    result: dict[str, Any] = {}
    for kind in KINDS:
        rounds, pipeline = [], []
        for episode in (e for e in episodes if e.link.kind == kind):
            latency = _latency(notes, episode, "fieldmon", "alertmanager", settings.timeout_s)
            if latency is None:
                continue
            impaired = episode.impaired_at + wall_offset
            paged = impaired + latency
            done = [
                (start, end)
                for start, end in _fieldmon_rounds(influxd, episode.link.name, impaired - 30)
                if end <= paged
            ]
            if not done:
                continue
            rounds.append(
                sum(1 for start, _ in done if start + (ECHOES - 1) * SPACING_S >= impaired)
            )
            pipeline.append(paged - max(end for _, end in done))
        result[kind] = {
            "impaired_rounds_median": statistics.median(rounds) if rounds else None,
            "impaired_rounds_each": rounds,
            "pipeline_median_s": round(statistics.median(pipeline), 2) if pipeline else None,
            "pipeline_max_s": round(max(pipeline), 2) if pipeline else None,
        }
    return result


def analyse(
    notes: list[Notification],
    episodes: list[Episode],
    settings: RunSettings,
    healthy_end: float,
) -> dict[str, Any]:
    """The run's figures, as printed and as JSON."""
    result: dict[str, Any] = {}
    for kind in KINDS:
        mine = [e for e in episodes if e.link.kind == kind]
        for system in SYSTEMS:
            result[f"{kind}_{system}"] = _summary(
                [_latency(notes, e, system, "alertmanager", settings.timeout_s) for e in mine],
                settings.target_s,
            )
        result[f"{kind}_fieldmon_own_webhook"] = _summary(
            [_latency(notes, e, "fieldmon", "fieldmon", settings.timeout_s) for e in mine]
        )
    false = false_notifications(notes, episodes, healthy_end)
    for system in SYSTEMS:
        result[f"false_{system}"] = sum(1 for n in false if n.system == system)
    result["false_notifications"] = [
        {"system": n.system, "alertname": n.alertname, "link": n.link} for n in false
    ]
    return result


def _fmt(value: float | None, missing: str = "-") -> str:
    return missing if value is None else f"{value:.1f}"


def _ratio(slow: float | None, fast: float | None) -> str:
    return "-" if not slow or not fast else f"{slow / fast:.1f}x"


def print_report(result: dict[str, Any], settings: RunSettings) -> None:
    """A table for people, then one JSON line for tools."""
    print()
    print(
        f"Alert detection latency: fieldmon ({settings.round_s:g} s rounds, for_rounds "
        f"{settings.for_rounds}) vs Prometheus + blackbox_exporter ({SCRAPE_S:g} s scrape, "
        "for: 1m), both via Alertmanager"
    )
    header = f"{'':36}{'fieldmon':>12}{'prometheus':>14}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    labels = {
        "degrade": f"degrade ({settings.loss_pct:g} % loss)",
        "down": "down (all dropped)",
    }
    for kind in KINDS:
        ours, theirs = result[f"{kind}_fieldmon"], result[f"{kind}_prometheus"]
        never = f">{settings.timeout_s:g}"
        median = (ours["median_s"], theirs["median_s"])
        print(
            f"{labels[kind] + ' median s':36}{_fmt(median[0], never):>12}"
            f"{_fmt(median[1], never):>14}{_ratio(median[1], median[0]):>8}"
        )
        for label in ("min", "max"):
            a, b = ours[f"{label}_s"], theirs[f"{label}_s"]
            print(f"{'  ' + label + ' s':36}{_fmt(a):>12}{_fmt(b):>14}")
        for label, key in (
            ("detected", "detected"),
            (f"within {settings.target_s:g} s", "within_target"),
        ):
            print(
                f"{'  ' + label:36}{str(ours[key]) + '/' + str(ours['trials']):>12}"
                f"{str(theirs[key]) + '/' + str(theirs['trials']):>14}"
            )
    minutes = f"{settings.healthy_links} x {settings.healthy_minutes:g} min"
    print(
        f"{'false notifications (' + minutes + ')':36}"
        f"{result['false_fieldmon']:>12}{result['false_prometheus']:>14}"
    )
    print(
        f"healthy links: {settings.healthy_delay_ms:g} ms +- {settings.healthy_jitter_ms:g} ms; "
        f"fieldmon measured {result.get('healthy_links_measured', {})}"
    )
    for kind in KINDS:
        parts = result["fieldmon_breakdown"][kind]
        print(
            f"fieldmon {kind}: rounds with impaired echoes until the page, median "
            f"{parts['impaired_rounds_median']}; tipping round's end -> notification, median "
            f"{parts['pipeline_median_s']} s, max {parts['pipeline_max_s']} s"
        )
    own = [result[f"{kind}_fieldmon_own_webhook"]["median_s"] for kind in KINDS]
    print(f"fieldmon straight to its own webhook, median s: degrade {_fmt(own[0])}, down "
          f"{_fmt(own[1])}")  # fmt: skip
    print(
        f"target: fieldmon's median within {settings.target_s:g} s ({settings.for_rounds} "
        f"rounds + 2 s) with zero false notifications: "
        + ("met" if result["target_met"] else "NOT met")
    )
    print(json.dumps(result))


def target_met(result: dict[str, Any], settings: RunSettings) -> bool:
    """fieldmon's median latency of each kind within the target, and nothing paged falsely."""
    medians = [result[f"{kind}_fieldmon"]["median_s"] for kind in KINDS]
    return (
        all(m is not None and m <= settings.target_s for m in medians)
        and result["false_fieldmon"] == 0
    )


# --- entry point -----------------------------------------------------------------------------


def run(settings: RunSettings) -> dict[str, Any]:
    """Bring both stacks up on one simulated site, impair, wait, tear down; the figures."""
    kinds = [(f"{kind}-{i + 1}", kind) for kind in KINDS for i in range(settings.trials)]
    kinds += [(f"healthy-{i + 1}", "healthy") for i in range(settings.healthy_links)]
    with contextlib.ExitStack() as stack:
        if settings.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="albench-")))
        else:
            workdir = settings.workdir
            workdir.mkdir(parents=True, exist_ok=False)
        receiver = Receiver()
        stack.callback(receiver.close)
        topology = stack.enter_context(site_topology(kinds))
        site_broker_port = free_port(topology.root_address)
        mosquitto = stack.enter_context(
            MosquittoServer(
                workdir / "mosquitto",
                extra_config=f"listener {site_broker_port} {topology.root_address}",
            )
        )
        influxd = stack.enter_context(InfluxdServer(workdir / "influxd"))
        alertmanager = stack.enter_context(
            AlertmanagerServer(workdir / "alertmanager", alertmanager_config_text(receiver.port))
        )
        for link in topology.links:
            if link.kind == "healthy":
                stack.enter_context(
                    EchoResponder(
                        link.namespace, settings.healthy_delay_ms, settings.healthy_jitter_ms
                    )
                )
        prometheus = start_alternative(stack, workdir, topology, alertmanager)
        http_port = start_fieldmon(
            stack, workdir, topology, settings,
            mosquitto=mosquitto, site_broker_port=site_broker_port, influxd=influxd,
            alertmanager=alertmanager, receiver=receiver,
        )  # fmt: skip
        print(f"{len(topology.links)} links up; waiting until both stacks see them healthy")
        wait_until_both_see_healthy_links(topology, http_port, prometheus)
        started = time.monotonic()
        wall_offset = time.time() - started
        print("impairing (times from the start of the healthy window):", flush=True)
        episodes = impair_and_watch(topology, receiver, settings, started)
        healthy_end = started + settings.healthy_minutes * 60
        result = analyse(receiver.snapshot(), episodes, settings, healthy_end)
        result["healthy_links_measured"] = healthy_link_figures(influxd)
        result["fieldmon_breakdown"] = fieldmon_breakdown(
            influxd, receiver.snapshot(), episodes, settings, wall_offset
        )
    result["settings"] = {
        "round_s": settings.round_s,
        "for_rounds": settings.for_rounds,
        "scrape_s": SCRAPE_S,
        "prometheus_for": "1m",
        "trials": settings.trials,
        "loss_pct": settings.loss_pct,
        "healthy_links": settings.healthy_links,
        "healthy_minutes": settings.healthy_minutes,
        "healthy_delay_ms": settings.healthy_delay_ms,
        "healthy_jitter_ms": settings.healthy_jitter_ms,
        "timeout_s": settings.timeout_s,
        "cpus": os.cpu_count(),
    }
    result["target_s"] = settings.target_s
    result["target_met"] = target_met(result, settings)
    return result


def _seconds(text: str) -> float:
    value = float(text.removesuffix("s"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def parse_settings(argv: list[str] | None = None) -> RunSettings:
    """The command line as RunSettings; --quick overrides the sizes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="impaired links of each kind")
    parser.add_argument("--healthy-minutes", type=float, default=10.0)
    parser.add_argument("--healthy-links", type=int, default=2)
    parser.add_argument("--round", type=_seconds, default=5.0, help="fieldmon round, e.g. 5s")
    parser.add_argument("--for-rounds", type=int, default=3)
    parser.add_argument("--loss-pct", type=float, default=30.0, help="loss of a degraded link")
    parser.add_argument("--healthy-delay-ms", type=float, default=40.0)
    parser.add_argument("--healthy-jitter-ms", type=float, default=15.0)
    parser.add_argument(
        "--timeout", type=_seconds, default=300.0, help="give up on one detection after this"
    )
    parser.add_argument("--seed", type=int, default=None, help="impairment times (random)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep configs and logs here (a new folder)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 trial each, 1 healthy link, 2 min"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.healthy_links, args.healthy_minutes = 1, 1, 2.0
        args.timeout = min(args.timeout, 150.0)
    if args.trials < 1 or args.healthy_links < 0:
        parser.error("--trials must be at least 1 and --healthy-links at least 0")
    return RunSettings(
        trials=args.trials,
        healthy_links=args.healthy_links,
        healthy_minutes=args.healthy_minutes,
        round_s=args.round,
        for_rounds=args.for_rounds,
        loss_pct=args.loss_pct,
        healthy_delay_ms=args.healthy_delay_ms,
        healthy_jitter_ms=args.healthy_jitter_ms,
        timeout_s=args.timeout,
        seed=args.seed,
        workdir=args.workdir,
    )


def main() -> None:
    """Run once and print the table and the JSON line."""
    if os.geteuid() != 0:
        sys.exit("bench/alert_latency needs root: network namespaces, raw ICMP and iptables")
    settings = parse_settings()
    print_report(run(settings), settings)


if __name__ == "__main__":
    main()
