"""bench/services: fieldmon's dns, http and tcp probes beside blackbox_exporter, same targets.

The targets live in a network namespace of our own behind a veth (`fm-svcbench-*`): nginx serving
HTTPS on port 443 (a certificate of a throwaway CA, for the namespace's IP address) and a plain
TCP port (5000), and dnsmasq answering `his.bench.example` on port 53. Blackbox_exporter 0.23
(Debian's) listens on loopback; each probe is one GET of its `/probe` endpoint.

1. Timing agreement. For each kind, `--pairs` runs of fieldmon's probe (the agent's own probe
   classes, in this process) alternate with blackbox probes of the same target, the first
   `--warmup` of each dropped. fieldmon's fields are cumulative phase ends (curl's time_*),
   blackbox's `probe_http_duration_seconds{phase}` are phase lengths, so fieldmon's are turned
   into blackbox's definitions: resolve = dns_ms, connect = connect_ms - dns_ms, tls = tls_ms -
   dns_ms (blackbox's "tls" runs from the end of resolving to the connection being ready, so it
   includes the TCP connect), processing = ttfb_ms - tls_ms, transfer = duration_ms - ttfb_ms.
   TCP and DNS have no phases in common: their whole run is compared (fieldmon's duration_ms;
   blackbox's probe_duration_seconds, and for DNS also the sum of probe_dns_duration_seconds).
   The CPU both spent on these runs is measured too: this process's for fieldmon's probes alone,
   blackbox's own (from /proc) for its.
2. CPU per probe, daemons. The real agent (`fieldmon-agent run`: scheduler, probes, outbox,
   MQTT to a real Mosquitto, acknowledged like the collector would) with 20 services (8 http,
   6 tcp, 6 dns) every 2 s, and over the very same `--window` seconds blackbox_exporter driven
   at the same rate, 20 targets of the same mix each every 2 s through `/probe` (one keep-alive
   connection per target, as Prometheus scrapes). Both run in one window, so whatever else loads
   the machine (other people's work on a shared host) weighs on both alike; one after the other,
   the ratio moved with the load between the windows. Each side's CPU is its own process's
   (every thread's schedstat, from /proc), divided by the probes it ran in the window; the HTTP
   client that drives blackbox is not counted.
3. Memory. The agent's peak RSS (VmHWM) with a base site (one ICMP link, the host probe) and the
   same site with the 20 services added, each run as its own daemon for the same window.

Run (root: a network namespace, raw ICMP sockets):
    .venv/bin/python -m bench.services [--window 120 | --quick] [--pairs 150]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._report import print_result

SITE, AGENT = "svcbench", "svcbench-pi"
HIS_NAME = "his.bench.example"
TCP_PORT = 5000
SERVICE_INTERVAL_S = 2.0
MIX = {"http": 8, "tcp": 6, "dns": 6}  # 20 services
RSS_TARGET_MB = 64.0
HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
TIMING_TARGET_MS = 1.0  # each phase's median difference
METRIC_RE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


# == the targets =================================================================================


@dataclass
class Targets:
    """The namespace's address and the CA bundle that trusts its certificate."""

    address: str
    ca_file: Path

    @property
    def url(self) -> str:
        return f"https://{self.address}/health"


@contextlib.contextmanager
def targets(workdir: Path) -> Any:
    """nginx (HTTPS and a plain TCP port) and dnsmasq in a namespace of our own."""
    from fieldmon.lab.netns import Namespace, unique_name, veth
    from fieldmon.lab.servers import stop_quietly
    from fieldmon.lab.services import DnsmasqServer, NginxServer, TestCa

    ca = TestCa.create("fieldmon bench CA")
    with Namespace(unique_name("svcbench")) as ns:
        address = str(veth(None, ns).b_v4.ip)
        cert = ca.issue(workdir / "tls" / "his", [address, HIS_NAME], days=90)
        servers = f"""
    server {{
        listen {address}:443 ssl;
        ssl_certificate {cert.cert_file}; ssl_certificate_key {cert.key_file};
        location = /health {{ return 200 "status: ok\\n"; }}
    }}
    server {{
        listen {address}:{TCP_PORT};
        location / {{ return 200 "ok\\n"; }}
    }}
"""
        nginx = NginxServer(
            workdir / "nginx", ns.name, servers, [(address, 443), (address, TCP_PORT)]
        )
        dns = DnsmasqServer(
            workdir / "dnsmasq", ns.name, address, records=[f"host-record={HIS_NAME},{address}"],
            local_domains=("bench.example",),
        )  # fmt: skip
        try:
            nginx.start()
            dns.start()
            yield Targets(address, ca.write(workdir / "ca.pem"))
        finally:
            stop_quietly(dns)
            stop_quietly(nginx)


# == blackbox_exporter ===========================================================================


def blackbox_config(ca_file: Path) -> str:
    """One module per kind, judging what fieldmon's services judge."""
    return f"""modules:
  http_his:
    prober: http
    timeout: 5s
    http:
      valid_status_codes: [200]
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config: {{ca_file: {ca_file}}}
  tcp_port:
    prober: tcp
    timeout: 5s
    tcp: {{preferred_ip_protocol: ip4, ip_protocol_fallback: false}}
  dns_his:
    prober: dns
    timeout: 5s
    dns:
      query_name: {HIS_NAME}
      query_type: A
      transport_protocol: udp
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      valid_rcodes: [NOERROR]
"""


def blackbox_target(kind: str, t: Targets) -> tuple[str, str]:
    """(module, target) for one kind."""
    return {
        "http": ("http_his", t.url),
        "tcp": ("tcp_port", f"{t.address}:{TCP_PORT}"),
        "dns": ("dns_his", t.address),
    }[kind]


def parse_metrics(text: str) -> dict[str, float]:
    """`name` or `name{phase="x"}` -> value, for the probe's own metrics."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC_RE.match(line.strip())
        if match is None:
            continue
        labels = match["labels"] or ""
        phase = re.search(r'phase="([^"]+)"', labels)
        key = match["name"] + (f"{{{phase[1]}}}" if phase else "")
        with contextlib.suppress(ValueError):
            out[key] = float(match["value"])
    return out


class BlackboxClient:
    """GET /probe over one keep-alive connection (the client's CPU is ours, not blackbox's)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def probe(self, module: str, target: str) -> dict[str, float]:
        query = urllib.parse.urlencode({"module": module, "target": target})
        for attempt in range(2):
            try:
                self._conn.request("GET", f"/probe?{query}")
                reply = self._conn.getresponse()
                body = reply.read().decode("utf-8")
                break
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()  # the server closed an idle keep-alive: reconnect once
                if attempt:
                    raise
        if reply.status != 200:
            raise RuntimeError(f"blackbox /probe answered {reply.status}: {body[:200]}")
        return parse_metrics(body)

    def close(self) -> None:
        self._conn.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, its threads summed, in ns resolution from each thread's
    /proc/PID/task/TID/schedstat (utime + stime in /proc/PID/stat count 10 ms ticks, too coarse
    for one probe). A thread that ends between two readings takes its time with it: the agent's
    and blackbox's threads live as long as they do."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text(encoding="ascii").split()[0])
    return total / 1e9


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of process `pid` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for PID {pid}")


# == 1. timing agreement =========================================================================


def service_config(kind: str, name: str, t: Targets, interval: str = "30s") -> dict[str, Any]:
    """One service of the site file, as a mapping."""
    common = {"name": name, "kind": kind, "interval": interval, "timeout": "1500ms"}
    if kind == "http":
        return {**common, "url": t.url, "ca_file": str(t.ca_file), "expect_status": 200}
    if kind == "tcp":
        return {**common, "address": t.address, "port": TCP_PORT}
    return {**common, "server": t.address, "query": HIS_NAME, "type": "A"}


def fieldmon_probe(kind: str, t: Targets) -> Any:
    """The agent's own probe class for `kind`, built from a site-file entry."""
    from fieldmon.agent.probes.dns import DnsProbe
    from fieldmon.agent.probes.http import HttpProbe
    from fieldmon.agent.probes.tcp import TcpProbe
    from fieldmon.core.site.dns import DnsServiceConfig
    from fieldmon.core.site.http import HttpServiceConfig
    from fieldmon.core.site.tcp import TcpServiceConfig

    model, probe = {
        "http": (HttpServiceConfig, HttpProbe),
        "tcp": (TcpServiceConfig, TcpProbe),
        "dns": (DnsServiceConfig, DnsProbe),
    }[kind]
    config = model.model_validate(service_config(kind, f"bench-{kind}", t))
    return probe(config, site=SITE, agent=AGENT)


def fieldmon_phases(kind: str, fields: dict[str, Any]) -> dict[str, float]:
    """fieldmon's cumulative ends as blackbox's phase lengths (ms); see the module docstring."""
    if kind != "http":
        return {"total": fields["duration_ms"]}
    dns = fields.get("dns_ms", 0.0)
    return {
        "resolve": dns,
        "connect": fields["connect_ms"] - dns,
        "tls": fields["tls_ms"] - dns,
        "processing": fields["ttfb_ms"] - fields["tls_ms"],
        "transfer": fields["duration_ms"] - fields["ttfb_ms"],
        "total": fields["duration_ms"],
    }


def blackbox_phases(kind: str, metrics: dict[str, float]) -> dict[str, float]:
    """Blackbox's figures for one probe (ms)."""
    ms = {key: value * 1000 for key, value in metrics.items()}
    out = {"total": ms["probe_duration_seconds"]}
    if kind == "http":
        out |= {phase: ms[f"probe_http_duration_seconds{{{phase}}}"] for phase in HTTP_PHASES}
    if kind == "dns":
        parts = [v for k, v in ms.items() if k.startswith("probe_dns_duration_seconds{")]
        if parts:
            out["query"] = sum(parts)
    return out


@dataclass
class Timing:
    """One kind's paired runs: phase -> values, per side, and the CPU each side spent."""

    fieldmon: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    blackbox: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    fieldmon_cpu_s: float = 0.0
    blackbox_cpu_s: float = 0.0
    runs: int = 0
    failures: int = 0


def measure_timing(
    kind: str, t: Targets, bb: BlackboxClient, bb_pid: int, *, pairs: int, warmup: int
) -> Timing:
    """`pairs` alternating runs of each side after `warmup` dropped ones."""
    probe = fieldmon_probe(kind, t)
    module, target = blackbox_target(kind, t)
    timing = Timing()
    loop = asyncio.new_event_loop()
    try:
        for index in range(warmup + pairs):
            counted = index >= warmup
            # Alternate who goes first, so neither always meets a server the other just warmed.
            order = ("fieldmon", "blackbox") if index % 2 == 0 else ("blackbox", "fieldmon")
            for side in order:
                if side == "fieldmon":
                    cpu = time.process_time()
                    sample = loop.run_until_complete(probe.collect())[0]
                    spent = time.process_time() - cpu
                    if not sample.fields["up"]:
                        timing.failures += 1
                        continue
                    if counted:
                        timing.fieldmon_cpu_s += spent
                        for phase, value in fieldmon_phases(kind, sample.fields).items():
                            timing.fieldmon[phase].append(value)
                else:
                    cpu = cpu_seconds(bb_pid)
                    metrics = bb.probe(module, target)
                    spent = cpu_seconds(bb_pid) - cpu
                    if metrics.get("probe_success") != 1.0:
                        timing.failures += 1
                        continue
                    if counted:
                        timing.blackbox_cpu_s += spent
                        for phase, value in blackbox_phases(kind, metrics).items():
                            timing.blackbox[phase].append(value)
                time.sleep(0.01)  # let the server settle between runs
            timing.runs += int(counted)
    finally:
        loop.close()
    return timing


def timing_result(kind: str, timing: Timing) -> dict[str, Any]:
    """Medians per phase, each side, and their difference."""
    out: dict[str, Any] = {}
    for phase in timing.fieldmon.keys() | timing.blackbox.keys():
        ours, theirs = timing.fieldmon.get(phase), timing.blackbox.get(phase)
        if not ours or not theirs:
            continue
        a, b = statistics.median(ours), statistics.median(theirs)
        out[phase] = {"fieldmon_ms": round(a, 3), "blackbox_ms": round(b, 3),
                      "diff_ms": round(a - b, 3)}  # fmt: skip
    if kind == "dns" and "query" in timing.blackbox:
        a, b = (
            statistics.median(timing.fieldmon["total"]),
            statistics.median(timing.blackbox["query"]),
        )
        out["query"] = {"fieldmon_ms": round(a, 3), "blackbox_ms": round(b, 3),
                        "diff_ms": round(a - b, 3)}  # fmt: skip
    return out


# == 2 and 3. the daemons ========================================================================


def site_file_text(t: Targets, broker_port: int, outbox: Path, services: bool) -> str:
    """The bench site: one ICMP link and the host probe; with `services`, the 20 services."""
    lines = [
        f"site: {SITE}",
        'name: "Services bench site"',
        "parent_hospital: svcbench-central",
        "agent:",
        f"  id: {AGENT}",
        f"  broker: {{host: 127.0.0.1, port: {broker_port}}}",
        f"  outbox: {{path: {outbox}}}",
        "links:",
        f"  - {{name: parent, address: {t.address}, role: parent, interval: 10s}}",
        "host: {interval: 30s}",
    ]
    if services:
        lines.append("services:")
        for kind, count in MIX.items():
            for number in range(1, count + 1):
                entry = service_config(kind, f"{kind}-{number}", t, f"{SERVICE_INTERVAL_S:g}s")
                lines.append(f"  - {json.dumps(entry)}")
    return "\n".join(lines) + "\n"


class Acker:
    """Acknowledges every envelope as the collector would; counts `service` rows by time."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from fieldmon.core.wire import topics

        self.service_times: list[int] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._ack_topic = topics.ack_topic(SITE, AGENT)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="svcbench-acker")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(
            [(topics.samples_topic(SITE, AGENT), 1), (topics.events_topic(SITE, AGENT), 1)]
        )
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        from fieldmon.core.wire.codec import decode_envelope
        from fieldmon.core.wire.models import Envelope

        envelope = decode_envelope(message.payload)
        if not isinstance(envelope, Envelope):
            return
        with self._lock:
            for sample in envelope.samples:
                if sample.measurement == "service":
                    self.service_times.append(sample.time)
                    self.failed += int(sample.fields.get("up") is not True)
        ack = json.dumps({"ranges": [[envelope.seq, envelope.seq]]})
        self._client.publish(self._ack_topic, ack, qos=1)

    def runs_between(self, start_ns: int, end_ns: int) -> int:
        with self._lock:
            return sum(1 for at in self.service_times if start_ns <= at < end_ns)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class BlackboxDriver:
    """20 targets of MIX through /probe, each every SERVICE_INTERVAL_S from a thread of its own
    (one keep-alive connection each, as Prometheus scrapes); counts the probes in a window."""

    def __init__(self, port: int, pid: int, t: Targets) -> None:
        self.pid = pid
        self._port = port
        self._jobs = [blackbox_target(kind, t) for kind, count in MIX.items() for _ in range(count)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counting = False
        self._counts = {"probes": 0, "failed": 0}
        self._threads: list[threading.Thread] = []

    def _drive(self, module: str, target: str, phase: float) -> None:
        client = BlackboxClient(self._port)
        due = time.monotonic() + phase
        try:
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                ok = client.probe(module, target).get("probe_success") == 1.0
                with self._lock:
                    if self._counting:
                        self._counts["probes"] += 1
                        self._counts["failed"] += int(not ok)
                due += SERVICE_INTERVAL_S
        finally:
            client.close()

    def start(self) -> None:
        rng = random.Random(16)
        for module, target in self._jobs:
            phase = rng.uniform(0, SERVICE_INTERVAL_S)
            thread = threading.Thread(target=self._drive, args=(module, target, phase))
            thread.start()
            self._threads.append(thread)

    def begin_window(self) -> float:
        """Start counting probes; blackbox's CPU seconds so far."""
        with self._lock:
            self._counting = True
            return cpu_seconds(self.pid)

    def end_window(self) -> tuple[float, int, int]:
        """Stop counting: (blackbox's CPU seconds so far, probes, failed) for the window."""
        with self._lock:
            self._counting = False
            return cpu_seconds(self.pid), self._counts["probes"], self._counts["failed"]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def run_agent(
    workdir: Path,
    t: Targets,
    broker_port: int,
    *,
    services: bool,
    window: float,
    blackbox: BlackboxDriver | None = None,
) -> dict[str, Any]:
    """The real agent daemon for `window` seconds after a warm-up: CPU, probes, peak RSS; with
    `blackbox`, blackbox_exporter is driven over the very same window and measured alike."""
    from fieldmon.lab.process import script, start, wait_for

    name = "with-services" if services else "base"
    site_file = workdir / f"{name}.yaml"
    site_file.write_text(
        site_file_text(t, broker_port, workdir / f"{name}-outbox.db", services), encoding="utf-8"
    )
    acker = Acker(broker_port)
    agent = start([script("fieldmon-agent"), "run", "--config", site_file], workdir / f"{name}.log")
    bb: dict[str, Any] | None = None
    try:
        if services:
            wait_for(lambda: len(acker.service_times) >= 40, "the agent's first service rows",
                     60, daemons=agent)  # fmt: skip
        if blackbox is not None:
            blackbox.start()
        time.sleep(2 * SERVICE_INTERVAL_S)  # every service has run (imports, TLS contexts)
        bb_cpu = blackbox.begin_window() if blackbox is not None else 0.0
        start_ns, cpu = time.time_ns(), cpu_seconds(agent.pid)
        time.sleep(window)  # the measured window
        spent, end_ns = cpu_seconds(agent.pid) - cpu, time.time_ns()
        if blackbox is not None:
            bb_end, probes, failed = blackbox.end_window()
            bb = {"cpu_s": bb_end - bb_cpu, "probes": probes, "failed": failed, "window_s": window}
        peak = peak_rss_mb(agent.pid)
    finally:
        if blackbox is not None:
            blackbox.stop()
        agent.stop(30)
        acker.close()
    return {
        "cpu_s": spent,
        "window_s": (end_ns - start_ns) / 1e9,
        "probes": acker.runs_between(start_ns, end_ns),
        "failed": acker.failed,
        "peak_rss_mb": peak,
        "blackbox": bb,
    }


# == the run =====================================================================================


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from fieldmon.lab.servers import BlackboxExporterServer, MosquittoServer

    with contextlib.ExitStack() as stack:
        t = stack.enter_context(targets(workdir))
        blackbox = stack.enter_context(
            BlackboxExporterServer(workdir / "blackbox", blackbox_config(t.ca_file))
        )
        assert blackbox.pid is not None and blackbox.port is not None
        client = BlackboxClient(blackbox.port)
        stack.callback(client.close)
        print("timing: paired runs", file=sys.stderr)
        timings = {
            kind: measure_timing(
                kind, t, client, blackbox.pid, pairs=args.pairs, warmup=args.warmup
            )
            for kind in ("http", "tcp", "dns")
        }
        mosquitto = stack.enter_context(MosquittoServer(workdir / "mosquitto"))
        print(f"agent without services, {args.window:g}s", file=sys.stderr)
        base = run_agent(workdir, t, mosquitto.port, services=False, window=args.window)
        print(
            f"agent with 20 services and blackbox_exporter at the same rate, {args.window:g}s",
            file=sys.stderr,
        )
        driver = BlackboxDriver(blackbox.port, blackbox.pid, t)
        agent = run_agent(
            workdir, t, mosquitto.port, services=True, window=args.window, blackbox=driver
        )
        bb = agent["blackbox"]
        bb_rss = peak_rss_mb(blackbox.pid)
    return result(args, timings, base, agent, bb, bb_rss)


def result(  # noqa: PLR0917 - the one place that turns measurements into the table
    args: argparse.Namespace,
    timings: dict[str, Timing],
    base: dict[str, Any],
    agent: dict[str, Any],
    bb: dict[str, Any],
    bb_rss: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs_per_kind": args.pairs, "warmup_dropped": args.warmup}
    worst = 0.0
    for kind, timing in timings.items():
        phases = timing_result(kind, timing)
        out[f"{kind}_timing_ms"] = phases
        compared = HTTP_PHASES if kind == "http" else ("total",)
        worst = max([worst, *(abs(phases[p]["diff_ms"]) for p in compared if p in phases)])
        out[f"{kind}_probe_cpu_us"] = {
            "fieldmon_in_process": round(timing.fieldmon_cpu_s / timing.runs * 1e6, 1),
            "blackbox": round(timing.blackbox_cpu_s / timing.runs * 1e6, 1),
        }
        out[f"{kind}_failed_runs"] = timing.failures
    agent_per = agent["cpu_s"] / max(1, agent["probes"]) * 1e6
    base_rate = base["cpu_s"] / base["window_s"]
    net = (agent["cpu_s"] - base_rate * agent["window_s"]) / max(1, agent["probes"]) * 1e6
    bb_per = bb["cpu_s"] / max(1, bb["probes"]) * 1e6
    out |= {
        "window_s": args.window,
        "services": sum(MIX.values()),
        "mix": MIX,
        "interval_s": SERVICE_INTERVAL_S,
        "agent_probes": agent["probes"],
        "agent_failed_probes": agent["failed"],
        "agent_cpu_per_probe_us": round(agent_per, 1),
        "agent_cpu_per_probe_net_of_base_us": round(net, 1),
        "agent_base_cpu_pct": round(100 * base_rate, 2),
        "agent_cpu_pct_with_services": round(100 * agent["cpu_s"] / agent["window_s"], 2),
        "blackbox_probes": bb["probes"],
        "blackbox_failed_probes": bb["failed"],
        "blackbox_cpu_per_probe_us": round(bb_per, 1),
        "cpu_ratio_agent_to_blackbox": round(agent_per / bb_per, 2) if bb_per else None,
        "agent_peak_rss_base_mb": round(base["peak_rss_mb"], 1),
        "agent_peak_rss_with_20_services_mb": round(agent["peak_rss_mb"], 1),
        "agent_peak_rss_delta_mb": round(agent["peak_rss_mb"] - base["peak_rss_mb"], 1),
        "blackbox_peak_rss_mb": round(bb_rss, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    out["targets_met"] = {
        "phases_within_1_ms_median": worst <= TIMING_TARGET_MS,
        "cpu_per_probe_at_most_blackbox": agent_per <= bb_per,
        "peak_rss_with_services_within_64_mb": agent["peak_rss_mb"] <= RSS_TARGET_MB,
    }
    out["worst_phase_diff_ms"] = round(worst, 3)
    return out


def main() -> None:
    """Run the benchmark and print its table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=120.0, help="seconds per daemon window")
    parser.add_argument("--pairs", type=int, default=150, help="timed runs per kind and side")
    parser.add_argument("--warmup", type=int, default=10, help="runs dropped first")
    parser.add_argument("--quick", action="store_true", help="20 s windows, 40 pairs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/services needs root: it builds a network namespace and pings")
    if args.quick:
        args.window, args.pairs = 20.0, 40
    with tempfile.TemporaryDirectory(prefix="fieldmon-bench-services-") as tmp:
        print_result(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
