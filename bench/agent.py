"""bench/agent: the agent's footprint at a busy site, beside fping and net-snmp in the same run.

The real agent (`fieldmon-agent run`: probes, batcher, SQLite outbox, MQTT sender to a real
Mosquitto, acknowledged like the collector would) probes 100 links (10 echoes 100 ms apart
every 10 s) and 50 SNMP devices (if-mib plus an AP profile each, every 30 s: 100 SNMP probes).
The targets live in a network namespace of our own behind a veth: 100 addresses on its
loopback, and 50 real snmpd processes (one per device address, port 161) serving their own
IF-MIB plus a recorded AP walk (10 devices each of UniFi, Cisco WLC, Aruba, MikroTik,
generic-ap) with advancing counters.

`--services N` adds N service probes (every 30 s, cycling through HTTP by address, HTTPS by a
name its resolver gives, TCP, TCP with a TLS handshake, and DNS) against nginx and dnsmasq on
one more address in the namespace, with a test CA's certificate: their CPU is counted apart.

In the same window, fping (`fping -C 10 -p 100 -i 1`, the same 100 targets every 10 s) and
net-snmp (`snmpget` of the same if-mib instances, `snmpbulkwalk` of the same AP columns, every
30 s per device; `-m ""`: no MIB loading) do the same work; their CPU is their own rusage.

The agent's CPU is split by what ran: every event-loop callback is timed (thread CPU) and
charged to ICMP or SNMP by the task or protocol it belongs to, so CPU per echo and per polled
OID come from the same run as the whole-agent figure. Lateness: each round's start against its
target's fixed schedule, and each echo's send against its round's 100 ms grid.

The agent runs from byte-compiled modules, as on a Pi (pip compiles every module it installs,
and the unit's read-only /opt could not take a .pyc later): the bench byte-compiles the venv's
packages and the workspace's sources in place first (`__pycache__`, ignored by git), whatever
this shell's PYTHONDONTWRITEBYTECODE says. Compiling at every import instead cost the agent
about 4 MB of peak RSS.

Run (root: namespaces, raw sockets):
    .venv/bin/python -m bench.agent [--duration 300 | --quick] [--services 20] [--pysnmp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ipaddress
import json
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._report import print_result

if TYPE_CHECKING:
    from fieldmon.lab.process import Daemon

ROOT = Path(__file__).resolve().parent.parent
LINKS = 100
DEVICES = 50
VENDORS = ("unifi", "cisco-wlc", "aruba", "mikrotik", "generic-ap")
ICMP_INTERVAL, ECHOES, SPACING = 10.0, 10, 0.1
SNMP_INTERVAL = 30.0
SERVICE_INTERVAL = 30.0
SERVICE_KINDS = ("http", "https", "tcp", "tcp-tls", "dns")
SERVICE_NAME = "his.bench.example"
COMMUNITY = "bench-community"
SITE, AGENT = "bench-site", "bench-pi"
WARMUP_S = SNMP_INTERVAL + 5  # every probe has run once (index walks, imports) before we count
TARGETS = {  # issue 17: with `--services 20`
    "peak_rss_mb": 64.0,
    "icmp_cpu_per_echo_vs_fping": 1.5,
    "snmp_cpu_per_oid_us": 150.0,
    "agent_cpu_pct_of_one_core": 10.0,
    "late_ms": SPACING * 1000,
}
IF_INSTANCE_COLUMNS = (
    "1.3.6.1.2.1.2.2.1.8",  # ifOperStatus
    "1.3.6.1.2.1.31.1.1.1.15",  # ifHighSpeed
    "1.3.6.1.2.1.31.1.1.1.19",  # ifCounterDiscontinuityTime
    "1.3.6.1.2.1.2.2.1.14",  # ifInErrors
    "1.3.6.1.2.1.2.2.1.20",  # ifOutErrors
    "1.3.6.1.2.1.2.2.1.13",  # ifInDiscards
    "1.3.6.1.2.1.2.2.1.19",  # ifOutDiscards
)
IF_SCALARS = ("1.3.6.1.2.1.1.3.0", "1.3.6.1.2.1.2.1.0", "1.3.6.1.2.1.31.1.5.0")
IF_NAME, IF_HC_IN, IF_HC_OUT = (
    "1.3.6.1.2.1.31.1.1.1.1",
    "1.3.6.1.2.1.31.1.1.1.6",
    "1.3.6.1.2.1.31.1.1.1.10",
)
IF_IN, IF_OUT = "1.3.6.1.2.1.2.2.1.10", "1.3.6.1.2.1.2.2.1.16"


# == the agent process (--child) ================================================================


@dataclass
class Accounting:
    """What the agent process measures about itself; a snapshot line per SIGUSR1."""

    report: Path
    kinds: dict[str, str]  # probe name -> icmp | snmp | service
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # The ICMP share split by what ran: "kind: where" -> [CPU seconds, callbacks].
    icmp_parts: dict[str, list[float]] = field(default_factory=dict)
    # Python's cyclic garbage collector, by generation: [collections, CPU seconds].
    gc: dict[str, list[float]] = field(default_factory=dict)
    handles: int = 0
    echoes: int = 0
    replies: int = 0
    snmp_clients: list[Any] = field(default_factory=list)
    round_starts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # When each echo left and how late; flat arrays so measuring adds little to the peak RSS.
    echo_sent_at: array[float] = field(default_factory=lambda: array("d"))
    echo_late: array[float] = field(default_factory=lambda: array("d"))
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    # Callbacks that held the loop over 20 ms: (wall s, CPU s, kind, what, when), for diagnosis.
    slow: list[tuple[float, float, str, str, float]] = field(default_factory=list)
    profile: Path | None = None  # cProfile the measured window into this file
    _profiler: cProfile.Profile | None = None
    tracemalloc: Path | None = None  # Python's allocations at the window's end, into this file

    def snapshot(self, *_args: object) -> None:
        self._toggle_profile()
        if self.snapshots:
            self._write_tracemalloc()
        values = sum(client.values for client in self.snmp_clients)
        self.snapshots.append(
            {
                "at": time.monotonic(),
                "process_cpu_s": time.process_time(),
                "cpu_s": dict(self.cpu),
                "icmp_parts": {key: list(value) for key, value in self.icmp_parts.items()},
                "gc": {key: list(value) for key, value in self.gc.items()},
                "handles": self.handles,
                "echoes": self.echoes,
                "replies": self.replies,
                "snmp_values": values,
                "snmp_requests": sum(client.requests for client in self.snmp_clients),
            }
        )
        with self.report.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"snapshot": self.snapshots[-1]}) + "\n")

    def _toggle_profile(self) -> None:
        if self.profile is None:
            return
        if self._profiler is None:
            self._profiler = cProfile.Profile()
            self._profiler.enable()
            return
        self._profiler.disable()
        with self.profile.open("w", encoding="utf-8") as out:
            pstats.Stats(self._profiler, stream=out).sort_stats("tottime").print_stats(60)
        self.profile = None

    def _write_tracemalloc(self) -> None:
        import tracemalloc

        if self.tracemalloc is None or not tracemalloc.is_tracing():
            return
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
        )
        lines = [f"traced now {current / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB", "", "by file:"]
        lines += [str(stat) for stat in snapshot.statistics("filename")[:40]]
        lines += ["", "by line:"]
        lines += [str(stat) for stat in snapshot.statistics("lineno")[:40]]
        self.tracemalloc.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.tracemalloc = None

    def category(self, callback: Any) -> str:
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, asyncio.Task):
            kind, _, name = owner.get_name().partition(":")
            if kind == "probe":
                return self.kinds.get(name, "other")
            return kind if kind in ("icmp", "snmp") else "other"
        module = type(owner).__module__ if owner is not None else ""
        if module.endswith("icmp_socket"):
            return "icmp"
        if "snmp" in module:
            return "snmp"
        protocol = getattr(owner, "_protocol", None)  # a datagram transport reading for SNMP
        return "snmp" if protocol is not None and "snmp" in type(protocol).__module__ else "other"

    def final(self, intervals: dict[str, float]) -> dict[str, Any]:
        first, last = self.snapshots[0]["at"], self.snapshots[-1]["at"]
        rounds: dict[str, list[float]] = defaultdict(list)
        for name, starts in self.round_starts.items():
            interval = intervals[name]
            base = min(start - k * interval for k, start in enumerate(starts))
            late = [s - k * interval - base for k, s in enumerate(starts) if first <= s <= last]
            rounds[self.kinds[name]].extend(late)
        pairs = zip(self.echo_sent_at, self.echo_late, strict=True)
        echoes = [late for when, late in pairs if first <= when <= last]
        slow = sorted(entry[:4] for entry in self.slow if first <= entry[4] <= last)[::-1][:10]
        # Libraries this site needs none of (scapy never; pysnmp for v3, dnspython for DNS).
        heavy = {"scapy", "pysnmp", "pyasn1", "dns"} & {name.split(".")[0] for name in sys.modules}
        return {
            "round_late_s": dict(rounds),
            "echo_late_s": echoes,
            "slow_callbacks": slow,
            "heavy_modules": sorted(heavy),
        }


def _instrument(acct: Accounting, pysnmp_v2c: bool) -> None:
    """Patch the agent's classes in this process only: timing, counting, task names."""
    from fieldmon.agent.probes.icmp import IcmpProbe
    from fieldmon.agent.probes.icmp_socket import IcmpPinger
    from fieldmon.agent.probes.snmp import SnmpProbe
    from fieldmon.agent.snmp.client import SnmpClient

    original_run = asyncio.events.Handle._run
    thread_time, perf_counter = time.thread_time, time.perf_counter

    def timed_run(handle: asyncio.Handle) -> None:
        callback = handle._callback  # type: ignore[attr-defined]
        resumes = _resumes_at(callback)  # read before the step moves the coroutine on
        started, wall = thread_time(), perf_counter()
        original_run(handle)
        cpu, wall = thread_time() - started, perf_counter() - wall
        kind = acct.category(callback)
        acct.cpu[kind] += cpu
        acct.handles += 1
        if kind == "icmp":
            part = acct.icmp_parts.setdefault(resumes, [0.0, 0])
            part[0] += cpu
            part[1] += 1
        if wall > 0.02:
            what = _describe(handle._callback)  # type: ignore[attr-defined]
            acct.slow.append((wall, cpu, kind, what, time.monotonic()))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    _time_garbage_collection(acct)

    def named(kind: str, original: Any) -> Any:
        async def collect(self: Any) -> Any:
            task = asyncio.current_task()
            if task is not None:
                task.set_name(f"{kind}:{self.name}")
            acct.round_starts[self.name].append(time.monotonic())
            return await original(self)

        return collect

    IcmpProbe.collect = named("icmp", IcmpProbe.collect)  # type: ignore[method-assign]
    SnmpProbe.collect = named("snmp", SnmpProbe.collect)  # type: ignore[method-assign]

    original_round = IcmpPinger.round

    async def counted_round(self: IcmpPinger, address: str, **kwargs: Any) -> Any:
        result = await original_round(self, address, **kwargs)
        acct.echoes += result.sent
        acct.replies += result.received
        return result

    IcmpPinger.round = counted_round  # type: ignore[method-assign]
    _instrument_echo_lateness(acct, IcmpPinger)

    original_init = SnmpClient.__init__

    def recorded_init(self: SnmpClient, **kwargs: Any) -> None:
        original_init(self, **{"pysnmp_v2c": pysnmp_v2c, **kwargs})
        acct.snmp_clients.append(self)

    SnmpClient.__init__ = recorded_init  # type: ignore[method-assign]


def _time_garbage_collection(acct: Accounting) -> None:
    """Count the collector's runs and CPU (inside whichever callback allocated at the time)."""
    import gc

    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.thread_time()
            return
        entry = acct.gc.setdefault(f"gen{info['generation']}", [0, 0.0])
        entry[0] += 1
        entry[1] += time.thread_time() - began[0]

    gc.callbacks.append(timed)


def _resumes_at(callback: Any) -> str:
    """What a loop callback is: a task step by where its coroutine resumes (the innermost
    await of its chain), any other callback by its function's name."""
    owner = getattr(callback, "__self__", None)
    if not isinstance(owner, asyncio.Task):
        return getattr(callback, "__qualname__", type(callback).__name__)
    coro: Any = owner.get_coro()
    where = "start"
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        where = f"{coro.cr_code.co_name}:{coro.cr_frame.f_lineno}"
        coro = coro.cr_await
    return f"task at {where}"


def _describe(callback: Any) -> str:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
        return f"task {owner.get_name()} ({getattr(coro, '__qualname__', coro)}){where}"
    return repr(callback)[:160]


def _instrument_echo_lateness(acct: Accounting, pinger_class: Any) -> None:
    """Each echo's send against the time the pinger planned it for: its round's grid (aligned
    rounds: the shared clock's ticks from the round's first tick on)."""
    original_send_echo = pinger_class._send_echo

    def send_echo(self: Any, rnd: Any, when: float) -> None:
        now = time.monotonic()  # the event loop's clock
        acct.echo_sent_at.append(now)
        acct.echo_late.append(now - when)
        original_send_echo(self, rnd, when)

    pinger_class._send_echo = send_echo


def run_child(
    site_file: Path,
    report: Path,
    pysnmp_v2c: bool,
    profile: Path | None,
    tracemalloc_file: Path | None = None,
) -> int:
    """The agent as deployed, instrumented; writes snapshots and a final report to `report`."""
    if tracemalloc_file is not None:
        import tracemalloc

        tracemalloc.start()  # before the agent's imports: they are part of its memory
    # First, as `fieldmon-agent run` does it (fieldmon/agent/cli.py), before anything else loads.
    from fieldmon.agent.cli import import_paho_without_resolver

    import_paho_without_resolver()
    from fieldmon.agent.daemon import run_agent
    from fieldmon.core.site.config import load_site_config

    config = load_site_config(site_file)
    kinds = {link.name: "icmp" for link in config.links}
    kinds |= {device.name: "snmp" for device in config.snmp_devices}
    kinds |= {service.name: "service" for service in config.services}
    intervals = {link.name: link.interval for link in config.links}
    intervals |= {device.name: device.interval for device in config.snmp_devices}
    acct = Accounting(report, kinds, profile=profile, tracemalloc=tracemalloc_file)
    _instrument(acct, pysnmp_v2c)
    signal.signal(signal.SIGUSR1, acct.snapshot)
    status = run_agent(site_file)
    if len(acct.snapshots) >= 2:
        with report.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"final": acct.final(intervals)}) + "\n")
    return status


# == the lab: namespace, targets, snmpd, broker ================================================


def _taken_networks() -> list[ipaddress.IPv4Network]:
    listing = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    )
    taken = []
    for route in json.loads(listing.stdout or "[]"):
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.IPv4Network(route.get("dst", ""), strict=False))
    return taken


def _free_block(avoid: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /25 of the benchmarking range that no route or address on this host overlaps."""
    from fieldmon.lab.netns import IPV4_POOL

    taken = _taken_networks() + avoid
    blocks = list(IPV4_POOL.subnets(new_prefix=25))
    random.shuffle(blocks)
    for block in blocks:
        if not any(block.overlaps(net) for net in taken if net.prefixlen > 0):
            return block
    raise RuntimeError("no free /25 left in 198.18.0.0/15")


@dataclass
class Device:
    """One simulated SNMP device: address, vendor profile, and the OIDs the agent polls."""

    name: str
    address: str
    vendor: str
    if_oids: list[str] = field(default_factory=list)  # what if-mib GETs each poll
    ap_columns: list[str] = field(default_factory=list)  # what the AP profile walks


@dataclass
class Lab:
    """Everything the agent probes, inside a namespace we create and delete."""

    workdir: Path
    stack: contextlib.ExitStack
    services: int = 0  # service probes against nginx and dnsmasq on `service_host`
    targets: list[str] = field(default_factory=list)
    service_host: str = ""
    devices: list[Device] = field(default_factory=list)
    mosquitto_port: int = 0

    def build(self) -> None:
        from fieldmon.lab.netns import Namespace, unique_name, veth

        namespace = self.stack.enter_context(Namespace(unique_name("bench")))
        link = veth(None, namespace)
        block = _free_block([link.a_v4.network])
        hosts = [str(host) for host in block.hosts()]
        self.targets = hosts[:LINKS]
        self.service_host = hosts[LINKS]
        # On the namespace's loopback (this kernel has no dummy interfaces): each answers echoes
        # and each can be an SNMP device's address.
        batch = "".join(f"addr add {host}/32 dev lo\n" for host in hosts[: LINKS + 1])
        subprocess.run(
            ["ip", "-n", namespace.name, "-batch", "-"], input=batch, text=True, check=True
        )
        subprocess.run(
            ["ip", "route", "add", str(block), "via", str(link.b_v4.ip)], check=True
        )  # removed with the veth when the namespace goes
        self.devices = [
            Device(f"dev-{number:02d}", hosts[number], VENDORS[number % len(VENDORS)])
            for number in range(DEVICES)
        ]
        self._start_snmpd(namespace.name, str(link.a_v4.network))
        if self.services:
            self._start_services(namespace.name)
        self._start_mosquitto()

    def _start_services(self, namespace: str) -> None:
        from fieldmon.lab.servers import stop_quietly
        from fieldmon.lab.services import DnsmasqServer, NginxServer, TestCa

        ca = TestCa.create()
        ca.write(self.workdir / "ca.pem")
        host = self.service_host
        cert = ca.issue(self.workdir / "his", [SERVICE_NAME, host], days=30)
        dnsmasq = DnsmasqServer(
            self.workdir / "dnsmasq",
            namespace,
            host,
            records=[f"host-record={SERVICE_NAME},{host}"],
            local_domains=["bench.example"],
        )
        dnsmasq.start()
        self.stack.callback(stop_quietly, dnsmasq)
        tls = f"ssl_certificate {cert.cert_file}; ssl_certificate_key {cert.key_file};"
        servers = f"""
    server {{
        listen {host}:80;
        location / {{ return 200 "status: ok\\n"; }}
    }}
    server {{
        listen {host}:443 ssl;
        server_name {SERVICE_NAME};
        {tls}
        location / {{ return 200 "status: ok\\n"; }}
    }}
"""
        nginx = NginxServer(self.workdir / "nginx", namespace, servers, [(host, 80), (host, 443)])
        nginx.start()
        self.stack.callback(stop_quietly, nginx)

    def _start_snmpd(self, namespace: str, agent_network: str) -> None:
        from fieldmon.lab.simap import recorded_walk, walk_server

        def start(device: Device) -> Any:
            server = walk_server(
                self.workdir / "snmpd" / device.name,
                recorded_walk(device.vendor),
                port=161,
                community=COMMUNITY,
                namespace=namespace,
                listen=(device.address,),
                allow_from=agent_network,
            )
            return server.start()

        with ThreadPoolExecutor(max_workers=8) as pool:
            servers = list(pool.map(start, self.devices))
        for server in servers:
            self.stack.callback(server.stop)

    def _start_mosquitto(self) -> None:
        from fieldmon.lab.servers import MosquittoServer

        mosquitto = self.stack.enter_context(MosquittoServer(self.workdir / "mosquitto"))
        self.mosquitto_port = int(mosquitto.port)

    def learn_polled_oids(self) -> None:
        """Per device, the OIDs the agent polls, for net-snmp to ask for the same."""
        from fieldmon.agent.snmp.profiles import load_profile

        for device in self.devices:
            names = _netsnmp_walk(device.address, IF_NAME)
            hc = _netsnmp_walk(device.address, IF_HC_IN)
            oids = list(IF_SCALARS)
            for index in names:
                octets = (IF_HC_IN, IF_HC_OUT) if index in hc else (IF_IN, IF_OUT)
                columns = [*IF_INSTANCE_COLUMNS[:3], *octets, *IF_INSTANCE_COLUMNS[3:]]
                oids.extend(f"{column}.{index}" for column in columns)
            device.if_oids = oids
            profile = load_profile(device.vendor)
            parent = profile.parent.columns.values() if profile.parent else []
            device.ap_columns = [*profile.columns.values(), *parent]

    def site_file(self) -> Path:
        secrets = self.workdir / "secrets"
        secrets.mkdir(exist_ok=True)
        from fieldmon.lab.secretfiles import write_secret

        # Private, as the agent requires of a secret file.
        write_secret(secrets / "community", COMMUNITY, remember=False)
        links = [
            f"  - {{name: link-{n:03d}, address: {address}, role: ap, interval: "
            f"{ICMP_INTERVAL:g}s, count: {ECHOES}, spacing: {SPACING * 1000:g}ms, timeout: 1s}}"
            for n, address in enumerate(self.targets)
        ]
        snmp = [
            f"  - {{name: {device.name}-{kind}, address: {device.address}, profile: {profile}, "
            f"interval: {SNMP_INTERVAL:g}s, snmp: {{version: 2c, community_file: "
            f"secrets/community, port: 161}}}}"
            for device in self.devices
            for kind, profile in (("if", "if-mib"), ("ap", device.vendor))
        ]
        services = [self._service(number) for number in range(self.services)]
        path = self.workdir / f"{SITE}.yaml"
        path.write_text(
            f"site: {SITE}\nname: Bench site\nparent_hospital: bench-hospital\n"
            f"agent:\n  id: {AGENT}\n  broker: {{host: 127.0.0.1, port: {self.mosquitto_port}}}\n"
            f"  outbox: {{path: {self.workdir / 'outbox.db'}}}\n"
            "links:\n"
            + "\n".join(links)
            + "\nsnmp_devices:\n"
            + "\n".join(snmp)
            + "\n"
            + ("services:\n" + "\n".join(services) + "\n" if services else ""),
            encoding="utf-8",
        )
        return path

    def _service(self, number: int) -> str:
        kind = SERVICE_KINDS[number % len(SERVICE_KINDS)]
        host, ca = self.service_host, self.workdir / "ca.pem"
        common = f"name: svc-{number:02d}-{kind}, interval: {SERVICE_INTERVAL:g}s, timeout: 5s"
        keys = {
            "http": f"kind: http, url: http://{host}/health, body_contains: ok",
            "https": f"kind: http, url: https://{SERVICE_NAME}/health, resolver: {host}, "
            f"ca_file: {ca}, body_contains: ok",
            "tcp": f"kind: tcp, address: {host}, port: 80",
            "tcp-tls": f"kind: tcp, address: {host}, port: 443, tls: true, "
            f"server_name: {SERVICE_NAME}, ca_file: {ca}",
            "dns": f"kind: dns, server: {host}, query: {SERVICE_NAME}, type: A, expect: {host}",
        }[kind]
        return f"  - {{{common}, {keys}}}"


# == the comparisons: child processes whose rusage we read ====================================


@dataclass
class Rusage:
    """CPU seconds and runs of one kind of child process."""

    cpu_s: float = 0.0
    runs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, cpu_s: float) -> None:
        with self.lock:
            self.cpu_s += cpu_s
            self.runs += 1


def _spawn(argv: list[str], stdout: Path, stderr: Path) -> float:
    """Run `argv` to completion; its own CPU seconds (user + system) from wait4."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 1, str(stdout), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, str(stderr), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
    _pid, _status, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime


def _netsnmp(kind: str, address: str, *oids: str, repetitions: int = 25) -> list[str]:
    base = ["-v2c", "-c", COMMUNITY, "-m", "", "-On", "-Oq", "-t", "2", "-r", "1"]
    extra = [f"-Cr{repetitions}"] if kind == "snmpbulkwalk" else []
    return [kind, *base, *extra, f"{address}:161", *oids]


def _netsnmp_walk(address: str, column: str) -> list[str]:
    output = subprocess.run(
        _netsnmp("snmpbulkwalk", address, column), capture_output=True, text=True, check=True
    ).stdout
    prefix = "." + column + "."
    return [
        line.split()[0][len(prefix) :] for line in output.splitlines() if line.startswith(prefix)
    ]


@dataclass
class Comparisons:
    """fping and net-snmp doing the agent's work on the same cadence, until stopped."""

    lab: Lab
    scratch: Path
    fping: Rusage = field(default_factory=Rusage)
    netsnmp: Rusage = field(default_factory=Rusage)
    netsnmp_runs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fping_sent: int = 0
    fping_answered: int = 0
    netsnmp_values: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._every, args=(ICMP_INTERVAL, self._fping_round)),
            threading.Thread(target=self._every, args=(SNMP_INTERVAL, self._netsnmp_round)),
        ]
        for thread in threads:
            thread.start()
        return threads

    def _every(self, interval: float, work: Any) -> None:
        next_start = time.monotonic()
        while not self.stop.is_set():
            work()
            next_start += interval
            self.stop.wait(max(0.0, next_start - time.monotonic()))

    def _fping_round(self) -> None:
        out, err = self.scratch / "fping.out", self.scratch / "fping.err"
        argv = ["fping", "-q", "-C", str(ECHOES), "-p", str(int(SPACING * 1000)), "-i", "1"]
        self.fping.add(_spawn([*argv, "-t", "1000", *self.lab.targets], out, err))
        for line in err.read_text(encoding="utf-8").splitlines():
            if " : " in line:
                results = line.split(" : ", 1)[1].split()
                self.fping_sent += len(results)
                self.fping_answered += sum(result != "-" for result in results)

    def _netsnmp_round(self) -> None:
        # Spread over the interval like the agent's random phases, not in one burst.
        gap = SNMP_INTERVAL / len(self.lab.devices) * 0.8
        for device in self.lab.devices:
            if self.stop.is_set():
                return
            started = time.monotonic()
            self._netsnmp_device(device)
            self.stop.wait(max(0.0, gap - (time.monotonic() - started)))

    def _netsnmp_device(self, device: Device) -> None:
        out, err = self.scratch / "snmp.out", self.scratch / "snmp.err"
        commands = [
            _netsnmp("snmpget", device.address, *device.if_oids[start : start + 40])
            for start in range(0, len(device.if_oids), 40)
        ]
        commands += [_netsnmp("snmpbulkwalk", device.address, col) for col in device.ap_columns]
        for argv in commands:
            self.netsnmp.add(_spawn(argv, out, err))
            self.netsnmp_runs[argv[0]] += 1
            text = out.read_text(encoding="utf-8", errors="replace")
            self.netsnmp_values += sum(
                1 for line in text.splitlines() if line.startswith(".") and "No Such" not in line
            )


def _netsnmp_startup_cpu(address: str, scratch: Path, runs: int = 20) -> dict[str, float]:
    """CPU seconds of each net-snmp tool doing one tiny request: its fixed cost per run."""
    tiny = {
        "snmpget": _netsnmp("snmpget", address, IF_SCALARS[0]),
        "snmpbulkwalk": _netsnmp("snmpbulkwalk", address, "1.3.6.1.4.1.99999"),  # empty
    }
    return {
        tool: sum(_spawn(argv, scratch / "c.out", scratch / "c.err") for _ in range(runs)) / runs
        for tool, argv in tiny.items()
    }


# == the acknowledging "collector" =============================================================


class Acker:
    """Acknowledges every envelope as the collector would, and counts the samples by kind."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from fieldmon.core.wire import topics

        self.samples: dict[str, int] = defaultdict(int)
        self.services_down: list[str] = []  # a `service` row that said down: "name: error"
        self._ack_topic = topics.ack_topic(SITE, AGENT)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-acker")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        # Envelopes of `event` rows (state changes) travel on the events topic.
        self._client.subscribe(
            [(topics.samples_topic(SITE, AGENT), 1), (topics.events_topic(SITE, AGENT), 1)]
        )
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        from fieldmon.core.wire.codec import decode_envelope
        from fieldmon.core.wire.models import Envelope

        envelope = decode_envelope(message.payload)
        if isinstance(envelope, Envelope):
            for sample in envelope.samples:
                self.samples[sample.measurement] += 1
                if sample.measurement == "service" and not sample.fields.get("up"):
                    error = sample.fields.get("error")
                    self.services_down.append(f"{sample.tags.get('target')}: {error}")
            ack = json.dumps({"ranges": [[envelope.seq, envelope.seq]]})
            self._client.publish(self._ack_topic, ack, qos=1)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# == measuring =================================================================================


def _bytecode_env() -> dict[str, str]:
    """The agent's environment, every module it may import compiled beforehand as pip does on
    a Pi: the venv's packages and the workspace's sources, beside them (the interpreter's own
    library comes compiled)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    sources = [Path(path) for path in sys.path if path.endswith("site-packages")]
    sources += [ROOT / part / "src" for part in ("core", "firmware_hooks", "agent")]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, sources)],
        env=env,
        check=False,  # a module that does not compile (a test fixture's) is no agent module
        stdout=subprocess.DEVNULL,
    )
    return env


def _status_mb(pid: int, key: str = "VmHWM") -> float:
    """A memory figure from /proc/PID/status: VmHWM (peak RSS) or VmRSS (now), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for PID {pid}")


def _report_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _snapshot(agent: Daemon, report: Path) -> dict[str, Any]:
    before = len(_report_lines(report))
    agent.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = _report_lines(report)
        if len(lines) > before:
            return lines[-1]["snapshot"]
        time.sleep(0.05)
    raise RuntimeError("the agent did not answer SIGUSR1 with a snapshot")


def _late_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"max_ms": 0.0, "p99_ms": 0.0, "count": 0}
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "max_ms": round(ordered[-1] * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "count": len(ordered),
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from fieldmon.lab.process import start

    with contextlib.ExitStack() as stack:
        lab = Lab(workdir, stack, services=args.services)
        lab.build()
        lab.learn_polled_oids()
        startup_cpu = _netsnmp_startup_cpu(lab.devices[0].address, workdir)
        acker = Acker(lab.mosquitto_port)
        stack.callback(acker.close)
        report = workdir / "agent-report.jsonl"
        command = [sys.executable, "-m", "bench.agent", "--child", str(lab.site_file())]
        command += ["--child-report", str(report)] + (["--pysnmp"] if args.pysnmp else [])
        command += ["--profile", str(args.profile.resolve())] if args.profile else []
        if args.tracemalloc:
            command += ["--tracemalloc", str(args.tracemalloc.resolve())]
        agent = start(command, workdir / "agent.log", cwd=ROOT, env=_bytecode_env())
        stack.callback(agent.stop, 30)  # on any failure too; by the PID we started
        print(f"agent PID {agent.pid}; warming up {WARMUP_S:g}s", file=sys.stderr)
        time.sleep(WARMUP_S)
        comparisons = Comparisons(lab, workdir)
        begin = _snapshot(agent, report)
        threads = comparisons.run()
        print(f"measuring {args.duration:g}s", file=sys.stderr)
        time.sleep(args.duration)
        end = _snapshot(agent, report)
        peak_rss = _status_mb(agent.pid)
        # Steady state after 5 minutes; the peak is set at start-up by scapy's import.
        end["rss_now_mb"] = _status_mb(agent.pid, "VmRSS")
        comparisons.stop.set()
        for thread in threads:
            thread.join()
        agent.stop(30)
        final = next(line["final"] for line in _report_lines(report) if "final" in line)
        return _result(args, begin, end, final, peak_rss, comparisons, startup_cpu, acker)


def _result(  # noqa: PLR0917 - one place that turns the measurements into the table
    args: argparse.Namespace,
    begin: dict[str, Any],
    end: dict[str, Any],
    final: dict[str, Any],
    peak_rss: float,
    comparisons: Comparisons,
    startup_cpu: dict[str, float],
    acker: Acker,
) -> dict[str, Any]:
    window = end["at"] - begin["at"]
    agent_cpu = end["process_cpu_s"] - begin["process_cpu_s"]

    def spent(kind: str) -> float:
        return end["cpu_s"].get(kind, 0.0) - begin["cpu_s"].get(kind, 0.0)

    echoes = end["echoes"] - begin["echoes"]
    replies = end["replies"] - begin["replies"]
    values = end["snmp_values"] - begin["snmp_values"]
    per_echo = spent("icmp") / echoes * 1e6
    fping_per_echo = comparisons.fping.cpu_s / max(1, comparisons.fping_sent) * 1e6
    per_oid = spent("snmp") / values * 1e6
    netsnmp_per_oid = comparisons.netsnmp.cpu_s / max(1, comparisons.netsnmp_values) * 1e6
    rounds = final["round_late_s"]
    late = {
        "icmp_round": _late_summary(rounds.get("icmp", [])),
        "snmp_round": _late_summary(rounds.get("snmp", [])),
        "echo_send": _late_summary(final["echo_late_s"]),
    }
    result = {
        "window_s": round(window, 1),
        "links": LINKS,
        "snmp_devices": DEVICES,
        "services": args.services,
        "snmp_path": "pysnmp" if args.pysnmp else "fieldmon v2c codec",
        "agent_peak_rss_mb": round(peak_rss, 1),
        "agent_rss_at_end_mb": round(end["rss_now_mb"], 1),
        "agent_cpu_s": round(agent_cpu, 2),
        "agent_cpu_pct_of_one_core": round(100 * agent_cpu / window, 2),
        "agent_cpu_icmp_s": round(spent("icmp"), 2),
        "agent_cpu_snmp_s": round(spent("snmp"), 2),
        "agent_cpu_service_s": round(spent("service"), 2),
        "agent_cpu_rest_s": round(agent_cpu - spent("icmp") - spent("snmp") - spent("service"), 2),
        "agent_loop_callbacks": end["handles"] - begin["handles"],
        "echoes": echoes,
        "agent_loss_pct": round(100 * (1 - replies / max(1, echoes)), 2),
        "agent_cpu_per_echo_us": round(per_echo, 1),
        "fping_echoes": comparisons.fping_sent,
        "fping_loss_pct": round(
            100 * (1 - comparisons.fping_answered / max(1, comparisons.fping_sent)), 2
        ),
        "fping_cpu_per_echo_us": round(fping_per_echo, 1),
        "icmp_ratio_to_fping": round(per_echo / fping_per_echo, 2) if fping_per_echo else None,
        "icmp_cpu_per_echo_by_part_us": _icmp_parts(begin, end, echoes),
        "agent_gc": {
            gen: f"{count - begin['gc'].get(gen, (0, 0.0))[0]:.0f} runs, "
            f"{(cpu - begin['gc'].get(gen, (0, 0.0))[1]) * 1000:.1f} ms"
            for gen, (count, cpu) in sorted(end["gc"].items())
        },
        "snmp_oids": values,
        "snmp_requests": end["snmp_requests"] - begin["snmp_requests"],
        "agent_cpu_per_oid_us": round(per_oid, 1),
        "netsnmp_oids": comparisons.netsnmp_values,
        "netsnmp_invocations": dict(comparisons.netsnmp_runs),
        "netsnmp_cpu_per_oid_us": round(netsnmp_per_oid, 1),
        "netsnmp_cpu_per_run_ms": {tool: round(cpu * 1000, 2) for tool, cpu in startup_cpu.items()},
        "icmp_round_late_max_ms": late["icmp_round"]["max_ms"],
        "icmp_round_late_p99_ms": late["icmp_round"]["p99_ms"],
        "snmp_round_late_max_ms": late["snmp_round"]["max_ms"],
        "snmp_round_late_p99_ms": late["snmp_round"]["p99_ms"],
        "echo_send_late_max_ms": late["echo_send"]["max_ms"],
        "echo_send_late_p99_ms": late["echo_send"]["p99_ms"],
        "spacing_ms": SPACING * 1000,
        "samples_acknowledged": dict(acker.samples),
        "agent_loaded": final["heavy_modules"],
        "service_rows_down": acker.services_down[:5]
        + (["..."] if len(acker.services_down) > 5 else []),
        "slowest_callbacks": [
            f"{wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU, {kind}: {what}"
            for wall, cpu, kind, what in final["slow_callbacks"][:5]
        ],
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    result["targets_met"] = _targets(result)
    return result


def _icmp_parts(begin: dict[str, Any], end: dict[str, Any], echoes: int) -> dict[str, str]:
    """The ICMP CPU per echo by what ran (largest first): "µs per echo (callbacks per echo)"."""
    parts = []
    for key, (cpu, calls) in end["icmp_parts"].items():
        before_cpu, before_calls = begin["icmp_parts"].get(key, (0.0, 0))
        parts.append(((cpu - before_cpu) / max(1, echoes) * 1e6, (calls - before_calls), key))
    parts.sort(reverse=True)
    return {key: f"{us:.1f} ({calls / max(1, echoes):.2f})" for us, calls, key in parts[:12]}


def _targets(result: dict[str, Any]) -> dict[str, bool]:
    late = max(
        result["icmp_round_late_max_ms"],
        result["snmp_round_late_max_ms"],
        result["echo_send_late_max_ms"],
    )
    ratio = result["icmp_ratio_to_fping"]
    return {
        "rss_at_most_64_mb": result["agent_peak_rss_mb"] <= TARGETS["peak_rss_mb"],
        "icmp_within_1_5x_fping": ratio is not None
        and ratio <= TARGETS["icmp_cpu_per_echo_vs_fping"],
        "snmp_at_most_150_us_per_oid": result["agent_cpu_per_oid_us"]
        <= TARGETS["snmp_cpu_per_oid_us"],
        "agent_under_10_pct_of_a_core": result["agent_cpu_pct_of_one_core"]
        < TARGETS["agent_cpu_pct_of_one_core"],
        "nothing_late_by_a_spacing": late <= TARGETS["late_ms"],
    }


def main() -> None:
    """Run the benchmark (or, with --child, be the agent under test)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="measured seconds")
    parser.add_argument("--quick", action="store_true", help="a 60 s window")
    parser.add_argument("--pysnmp", action="store_true", help="v2c through pysnmp (comparison)")
    parser.add_argument(
        "--services", type=int, default=0, help="also probe N HTTP/TCP/DNS services (e.g. 20)"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the agent's window into FILE")
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        help="the agent's Python allocations at the window's end into FILE (tracing costs RSS)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(
            run_child(args.child, args.child_report, args.pysnmp, args.profile, args.tracemalloc)
        )
    if os.geteuid() != 0:
        sys.exit("bench/agent needs root: it builds a network namespace and uses raw sockets")
    if args.quick:
        args.duration = 60.0
    with tempfile.TemporaryDirectory(prefix="fieldmon-bench-agent-") as tmp:
        result = measure(args, Path(tmp))
    print_result(result)


if __name__ == "__main__":
    main()
