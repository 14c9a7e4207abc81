"""The two alerting stacks bench/alert_latency compares, on one simulated site, and their receiver.

Topology (every namespace is ours, named `fm-albench-*`, deleted on exit):

    root namespace                      site namespace                parent namespaces
    Mosquitto, influxd, collector  <->  fieldmon agent           <->  one per probed link
    Prometheus, Alertmanager,   (veth)  blackbox_exporter (ICMP) (veth) (iptables impairs it,
    the webhook receiver                                                 or an echo responder
                                                                         adds jitter)

Both probers run inside the site namespace, so both measure the same links; both stacks notify
the same Alertmanager, which posts every notification to one webhook receiver.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.servers import BlackboxExporterServer, ServerQueryError

NAMESPACE_TAG = "albench"
SITE, AGENT = "albench", "albench-pi"
BLACKBOX_JOB = "blackbox-icmp"
BLACKBOX_PORT = 9115  # inside the site namespace, which is ours alone
# Thresholds shared by both stacks, so they judge the same thing.
LOSS_PCT, RTT_MS, JITTER_MS = 5.0, 80.0, 20.0
# fieldmon's round on every link: ECHOES echoes SPACING_S apart, each answered within TIMEOUT_S.
ECHOES, SPACING_S, TIMEOUT_S = 10, 0.1, 1.0

# What counts as detecting each impairment, per system.
DETECTING_ALERTS = {
    ("fieldmon", "degrade"): frozenset({"LinkDegraded"}),
    ("fieldmon", "down"): frozenset({"LinkDown"}),
    ("prometheus", "degrade"): frozenset({"PingPacketLoss", "PingSlow"}),
    ("prometheus", "down"): frozenset({"PingDown"}),
}


@dataclass(frozen=True)
class BenchLink:
    """One parent-hospital link of the site: `kind` is degrade, down or healthy."""

    name: str  # fieldmon's `target` tag and the Prometheus `link` label
    kind: str
    namespace: Namespace
    address: str


@dataclass(frozen=True)
class SiteTopology:
    """The site namespace, its uplink to the root namespace and its parent links."""

    site: Namespace
    root_address: str  # the root namespace's end of the uplink: the broker, seen from the site
    site_address: str  # the site's end: blackbox_exporter listens here
    links: list[BenchLink]


@contextlib.contextmanager
def site_topology(kinds: list[tuple[str, str]]) -> Iterator[SiteTopology]:
    """A site namespace joined to the root namespace and to one parent namespace per
    (name, kind); deletes everything on exit."""
    with contextlib.ExitStack() as stack:
        site = stack.enter_context(Namespace(unique_name(f"{NAMESPACE_TAG}-site")))
        uplink = veth(None, site)
        links = []
        for name, kind in kinds:
            parent = stack.enter_context(Namespace(unique_name(NAMESPACE_TAG)))
            pair = veth(site, parent)
            links.append(BenchLink(name, kind, parent, str(pair.b_v4.ip)))
        yield SiteTopology(site, str(uplink.a_v4.ip), str(uplink.b_v4.ip), links)


def impair(link: BenchLink, kind: str | None, loss_pct: float = 30.0) -> None:
    """`degrade`: drop `loss_pct` % of echo requests at random; `down`: drop every packet;
    None: drop nothing. iptables in the parent namespace, so both probers see the same link."""
    link.namespace.run("iptables", "-F", "INPUT")
    if kind == "degrade":
        link.namespace.run(
            "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request",
            "-m", "statistic", "--mode", "random", "--probability", f"{loss_pct / 100:.4f}",
            "-j", "DROP",
        )  # fmt: skip
    elif kind == "down":
        link.namespace.run("iptables", "-A", "INPUT", "-j", "DROP")
    elif kind is not None:
        raise ValueError(f"unknown impairment {kind!r}: expected degrade, down or None")


# --- the fieldmon stack ---------------------------------------------------------------------


def site_file_text(topology: SiteTopology, broker_port: int, outbox: Path, round_s: float) -> str:
    """The site file: every link probed with 10 echoes 100 ms apart every `round_s`."""
    lines = [
        f"site: {SITE}",
        'name: "Alert latency bench site"',
        "parent_hospital: albench-central",
        "agent:",
        f"  id: {AGENT}",
        f"  broker: {{host: {topology.root_address}, port: {broker_port}}}",
        f"  outbox: {{path: {outbox}}}",
        "links:",
    ]
    for link in topology.links:
        lines.append(
            f"  - {{name: {link.name}, address: {link.address}, role: parent, "
            f"interval: {round_s:g}s, count: {ECHOES}, spacing: {SPACING_S:g}s, "
            f"timeout: {TIMEOUT_S:g}s, "
            f"thresholds: {{loss_pct: {LOSS_PCT:g}, rtt_ms: {RTT_MS:g}, "
            f"jitter_ms: {JITTER_MS:g}}}}}"
        )
    return "\n".join(lines) + "\n"


def collector_file_text(
    *,
    broker_port: int,
    influx_url: str,
    database: str,
    http_port: int,
    alertmanager_url: str,
    receiver_port: int,
    for_rounds: int,
) -> str:
    """The collector's file: one collector, both roles, notifying Alertmanager and a webhook."""
    return f"""\
broker: {{host: 127.0.0.1, port: {broker_port}, client_id: albench-collector}}
influxdb: {{api: v1, url: "{influx_url}", database: {database}}}
site_configs: ./site_configs
roles: [ingest, alerts]
http: {{listen: "127.0.0.1:{http_port}"}}
data_dir: ./collector-data
alerting: {{for_rounds: {for_rounds}, clear_rounds: 5}}
notify:
  alertmanager: {{url: "{alertmanager_url}"}}
  webhook: [{{url: "http://127.0.0.1:{receiver_port}/fieldmon"}}]
"""


def site_status(http_port: int) -> dict[str, Any]:
    """The collector's /api/v1/sites answer (empty while it is not up)."""
    try:
        url = f"http://127.0.0.1:{http_port}/api/v1/sites"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return dict(json.loads(reply.read()))
    except OSError:
        return {}


# --- the alternative: Prometheus + blackbox_exporter ------------------------------------------

BLACKBOX_CONFIG = """\
modules:
  icmp:
    prober: icmp
    timeout: 5s
"""


def prometheus_config_text(topology: SiteTopology, alertmanager_port: int, scrape_s: float) -> str:
    """prometheus.yml the usual way: blackbox ICMP through relabelling, one `link` label each."""
    targets = "\n".join(
        f"      - targets: ['{link.address}']\n        labels: {{link: {link.name}}}"
        for link in topology.links
    )
    return f"""\
global:
  scrape_interval: {scrape_s:g}s
  evaluation_interval: {scrape_s:g}s
rule_files: [rules.yml]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ['127.0.0.1:{alertmanager_port}']}}]
scrape_configs:
  - job_name: {BLACKBOX_JOB}
    metrics_path: /probe
    params: {{module: [icmp]}}
    static_configs:
{targets}
    relabel_configs:
      - {{source_labels: [__address__], target_label: __param_target}}
      - {{source_labels: [__param_target], target_label: instance}}
      - {{target_label: __address__, replacement: '{topology.site_address}:{BLACKBOX_PORT}'}}
"""


def prometheus_rules_text(loss_window: str = "5m", window: str = "1m") -> str:
    """The usual blackbox ICMP rules, each `for: 1m`, with fieldmon's thresholds: down when no
    probe in `window` succeeded; degraded on the loss over `loss_window` or on round-trip time.

    With one echo per 15 s scrape, a 1m loss window holds 4 probes: 30 % loss leaves a clean
    window often enough to reset `for`, and in a trial run half the degraded links were not
    paged within 200 s. 5m (20 probes) pages reliably, so it is the default: the alternative
    is given its better setting."""
    for_duration = "1m"
    job = f'job="{BLACKBOX_JOB}"'
    return f"""\
groups:
  - name: blackbox-icmp
    rules:
      - alert: PingDown
        expr: avg_over_time(probe_success{{{job}}}[{window}]) == 0
        for: {for_duration}
        labels: {{severity: critical}}
      - alert: PingPacketLoss
        expr: (1 - avg_over_time(probe_success{{{job}}}[{loss_window}])) * 100 >= {LOSS_PCT:g}
        for: {for_duration}
        labels: {{severity: warning}}
      - alert: PingSlow
        expr: avg_over_time(probe_icmp_duration_seconds{{{job},phase="rtt"}}[{window}]) * 1000 >= {RTT_MS:g}
        for: {for_duration}
        labels: {{severity: warning}}
"""  # noqa: E501


class NamespacedBlackboxExporter(BlackboxExporterServer):
    """blackbox_exporter inside the site namespace (its ICMP must leave from there), listening
    on the site's end of the uplink so Prometheus in the root namespace can scrape it."""

    def __init__(self, directory: Path, namespace: Namespace, listen_host: str) -> None:
        super().__init__(directory, BLACKBOX_CONFIG, port=BLACKBOX_PORT)
        self.namespace = namespace
        self.host = listen_host

    def _prepare(self) -> list[str]:
        config = self.directory / "blackbox.yml"
        config.write_text(self.config_text, encoding="utf-8")
        return [
            "ip", "netns", "exec", self.namespace.name,
            "prometheus-blackbox-exporter",
            f"--config.file={config}",
            f"--web.listen-address={self.address}",
        ]  # fmt: skip

    def _ready(self) -> bool:
        # /proc/net/tcp shows our namespace, not the site's: ask over HTTP instead.
        try:
            url = f"http://{self.address}/-/healthy"
            with urllib.request.urlopen(url, timeout=1) as reply:
                return int(reply.status) == 200
        except OSError:
            return False


def prometheus_probe_success(url: str) -> dict[str, float]:
    """link -> the latest probe_success Prometheus holds for it."""
    query = urllib.parse.urlencode({"query": f'probe_success{{job="{BLACKBOX_JOB}"}}'})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise ServerQueryError(f"prometheus /api/v1/query answered {exc.code}") from exc
    return {r["metric"]["link"]: float(r["value"][1]) for r in answer["data"]["result"]}


# --- Alertmanager and the receiver -----------------------------------------------------------


def alertmanager_config_text(receiver_port: int) -> str:
    """One route for both stacks. group_wait 0 s: Alertmanager's batching delay (30 s by
    default) would add the same to both, and we measure detection, not batching."""
    return f"""\
route:
  receiver: bench
  group_by: [alertname, site, target, link]
  group_wait: 0s
  group_interval: 10s
  repeat_interval: 4h
receivers:
  - name: bench
    webhook_configs:
      - url: http://127.0.0.1:{receiver_port}/alertmanager
        send_resolved: true
"""


@dataclass(frozen=True)
class Notification:
    """One alert in one delivery: when it arrived (monotonic), by which route, about what."""

    at: float
    route: str  # "alertmanager" (either stack, through Alertmanager) or "fieldmon" (its webhook)
    system: str  # "fieldmon" or "prometheus"
    alertname: str
    link: str
    status: str  # "firing" or "resolved"


def _from_alertmanager(at: float, body: dict[str, Any]) -> list[Notification]:
    notes = []
    for alert in body.get("alerts", []):
        labels = alert.get("labels", {})
        if labels.get("job") == BLACKBOX_JOB:
            system, link = "prometheus", labels.get("link", "")
        else:
            system, link = "fieldmon", labels.get("target", "")
        notes.append(
            Notification(at, "alertmanager", system, labels.get("alertname", ""), link,
                         alert.get("status", ""))
        )  # fmt: skip
    return notes


def _from_fieldmon(at: float, body: dict[str, Any]) -> list[Notification]:
    return [
        Notification(at, "fieldmon", "fieldmon", alert["alertname"], alert["link"],
                     alert["state"])
        for alert in body.get("alerts", [])
    ]  # fmt: skip


@dataclass
class Receiver:
    """A webhook receiver on loopback: Alertmanager posts to /alertmanager, the collector's
    own webhook notifier to /fieldmon. Arrival times are time.monotonic()."""

    notifications: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                parse = _from_alertmanager if self.path == "/alertmanager" else _from_fieldmon
                with receiver._lock:
                    receiver.notifications.extend(parse(at, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self) -> list[Notification]:
        """Every notification so far, in arrival order."""
        with self._lock:
            return list(self.notifications)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
