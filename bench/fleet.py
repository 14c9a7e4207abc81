"""bench/fleet: N simulated sites through Mosquitto into shared-subscription collectors and influxd.

Each simulated site is an agent as the broker and the collector see it: its own MQTT v5
connection (client id = agent id), its own `samples` topic, its own `ack` subscription, its own
seq counter, and a site file in `site_configs` naming its 100 links. It commits one envelope a
second (10 of its 100 links; every link every 10 s, as the agent's batcher does with a 1 s
linger), keeps at most 32 messages awaiting the collector's ack (8 of them for live envelopes)
and holds the rest in its "outbox" (a queue) until acks free a slot, like the real agent. The
envelopes are built from pre-encoded pieces (tag prefixes per link, a pool of realistic field
texts from bench/disk's generator, the times spliced in): the simulator costs a few µs a message.
Some sites replay a backlog (`--replaying`, default one site in 200, each an hour): their
uplink "comes back" at a staggered moment in the phase, and they replay with the agent's own
rules: joined by fieldmon.agent.coalesce (256 KiB of JSON a message) and zlib-compressed once an
ack said `accept: parts,zlib`, at most 24 messages and 4 MiB of stored backlog awaiting acks,
at most 300 envelopes/s (`outbox.replay_rate`).

The system under test: Mosquitto (the bench's plain config, no ACL, `max_queued_messages` as in
deploy/mosquitto.conf), one `fieldmon-collector` with `roles: [alerts]` and ingest collectors
with `roles: [ingest]` and `broker.shared_group`, writing influxd 1.x. Phase 1 runs one ingest
collector, phase 2 starts a second one. Each phase: a warm-up, then a measured window:
- samples/s written (the collectors' `fieldmon_points_written_total`) against samples/s offered;
- CPU of every process (cores: CPU seconds / wall seconds) and the machine's total, so the
  first limit shows as the process at one core (Python and Mosquitto are single-threaded) or the
  machine at two; the collector's CPU per sample written;
- RSS of each process; ingest RSS per 1,000 sites; the alert process's growth from subscribed
  (inventory loaded, no sample yet) to the window's end, per link: the alert engine's state;
- end-to-end lag of live envelopes: committed at the agent -> the collector's ack back at the
  agent (broker, collector, influxd write, ack; the agent deletes it then); p50 and p95 of those
  committed in the window, those still unacknowledged at the end counted as later than all;
- influxd's raw disk: after the last phase the fleet stops, influxd compacts (bench/disk's
  settings) and the database's bytes per row scale to a site-day of link rows.

Run: .venv/bin/python -m bench.fleet [--sites 100,1000,5000] [--quick] [--warmup S] [--measure S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench._mqttwire import AgentConnection, mqtt_string
from bench._report import print_result
from bench.disk import ROLES, CompactingInfluxd, _link, _LinkState, _settled, policy_bytes
from fieldmon.agent.coalesce import build
from fieldmon.agent.outbox import StoredEnvelope
from fieldmon.core.wire.codec import ACCEPT_PARTS, ACCEPT_PROPERTY, ACCEPT_ZLIB
from fieldmon.lab.process import Daemon, http_get, script, start, wait_subscribed
from fieldmon.lab.servers import MosquittoServer, free_port

NS = 10**9
LINKS = 100
ROUND_S = 10
PER_ENVELOPE = LINKS // ROUND_S  # one envelope a second holds the 10 links whose round ended
DATABASE = "fleet"
POOL_ROUNDS = 60  # distinct field texts per link, cycled: ten minutes of a real link's drift
# The agent's sender (docs/contract.md, "Delivery is end to end").
WINDOW, LIVE_RESERVED = 32, 8
BACKLOG_BYTES = 4 << 20
REPLAY_RATE = 300.0
JOIN_BYTES = 256 << 10
LINK_ROWS_PER_SITE_DAY = LINKS * 86_400 // ROUND_S


def site_id(index: int) -> str:
    return f"fleet-{index:05d}"


def agent_id(index: int) -> str:
    return f"fleet-{index:05d}-pi"


def write_site_files(folder: Path, sites: int, broker_port: int) -> None:
    """One site file per simulated site, naming its 100 links (the collector refuses others)."""
    folder.mkdir(parents=True, exist_ok=True)
    links = "".join(
        f"  - {{name: link-{i:03d}, address: 192.0.2.{i + 1}, role: {ROLES[i % len(ROLES)]}}}\n"
        for i in range(LINKS)
    )
    for index in range(sites):
        (folder / f"{site_id(index)}.yaml").write_text(
            f"site: {site_id(index)}\nname: Fleet site {index}\nparent_hospital: fleet-hospital\n"
            f"agent: {{id: {agent_id(index)}, broker: {{host: 127.0.0.1, port: {broker_port}}}}}\n"
            f"links:\n{links}",
            encoding="utf-8",
        )


def field_pool(seed: int = 17) -> list[list[bytes]]:
    """Per link, POOL_ROUNDS consecutive rounds of realistic fields, encoded as JSON."""
    rng = random.Random(seed)
    pool = []
    for index in range(LINKS):
        state = _LinkState(rng, ROLES[index % len(ROLES)])
        pool.append(
            [
                json.dumps(_link(rng, state), separators=(",", ":")).encode()
                for _ in range(POOL_ROUNDS)
            ]
        )
    return pool


@dataclass
class Flight:
    """One message awaiting the collector's ack."""

    created_ns: int  # when its (first) envelope was committed at the agent
    samples: int
    remaining: int  # seqs not acknowledged yet
    live: bool
    stored_bytes: int = 0


@dataclass
class Stats:
    """What the fleet measured in the current window (times in ns, wall clock)."""

    start_ns: int = 0
    end_ns: int = 0
    live_samples_committed: int = 0
    backlog_samples_sent: int = 0
    backlog_samples_acked: int = 0
    lags: list[float] = field(default_factory=list)

    def in_window(self, at_ns: int) -> bool:
        return self.start_ns <= at_ns < self.end_ns


class SimSite:
    """One simulated agent: envelopes from pre-encoded pieces, its window, its outbox queue."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.site, self.agent = site_id(index), agent_id(index)
        self.topic = mqtt_string(f"fieldmon/v1/{self.site}/{self.agent}/samples")
        self.ack_topic = f"fieldmon/v1/{self.site}/{self.agent}/ack"
        self.header = f'{{"schema":1,"site":"{self.site}","agent":"{self.agent}","seq":'.encode()
        tags = f'"tags":{{"site":"{self.site}","agent":"{self.agent}","target":"link-'
        self.prefixes = [
            f'{{"measurement":"link",{tags}{j:03d}","role":"{ROLES[j % len(ROLES)]}"}},'
            f'"fields":'.encode()
            for j in range(LINKS)
        ]
        # Whole milliseconds apart, so each link's series is exactly 10 s apart, as the agent's.
        self.phase_ns = (index * 1000 // fleet.sites) * 1_000_000
        self.next_seq = 0
        self.pending: deque[tuple[int, int, int]] = deque()  # (seq, second, committed ns)
        self.flights: dict[int, Flight] = {}  # by each seq it carries
        self.in_flight = 0
        self.backlog_in_flight = 0
        self.backlog_bytes = 0
        self.backlog: deque[tuple[bytes, list[int], int, int]] = deque()  # payload, seqs, ...
        self.replay_at_ns: int | None = None
        self.tokens = 0.0
        self.accepts = False
        self.connection: AgentConnection | None = None

    def envelope(self, seq: int, second: int, sent_at: int) -> bytes:
        """The envelope the agent commits at `second` (since the fleet's epoch)."""
        rnd, slot = divmod(second, ROUND_S)
        at = b',"time":%d}' % (self.fleet.epoch_ns + self.phase_ns + second * NS)
        pool, shift = self.fleet.pool, rnd + self.index * 7
        items = b",".join(
            self.prefixes[j] + pool[j][shift % POOL_ROUNDS] + at for j in range(slot, LINKS, 10)
        )
        return b"".join(
            (self.header, b'%d,"sent_at":%d,"samples":[' % (seq, sent_at), items, b"]}")
        )

    def prepare_backlog(self, envelopes: int) -> None:
        """`envelopes` seconds of outage before the fleet's epoch, joined and compressed as the
        agent's coalesce does (the seqs come before the live ones, as in a real outbox)."""
        first = self.next_seq
        stored = [
            StoredEnvelope(
                first + i, self.envelope(first + i, i - envelopes, 0), samples=PER_ENVELOPE
            )
            for i in range(envelopes)
        ]
        self.next_seq += envelopes
        chunk: list[StoredEnvelope] = []
        size = 0
        for item in [*stored, None]:
            if item is None or (chunk and size + len(item.payload) > JOIN_BYTES):
                message = build(chunk, site=self.site, agent=self.agent, parts=True, compress=True)
                self.backlog.append(
                    (message.payload, message.seqs, message.stored_bytes, PER_ENVELOPE * len(chunk))
                )
                chunk, size = [], 0
            if item is not None:
                chunk.append(item)
                size += len(item.payload)

    def commit(self, second: int, now_ns: int) -> None:
        """The batcher commits this second's envelope to the outbox."""
        self.pending.append((self.next_seq, second, now_ns))
        self.next_seq += 1
        stats = self.fleet.stats
        if stats.in_window(now_ns):
            stats.live_samples_committed += PER_ENVELOPE
        self.pump(now_ns)

    def pump(self, now_ns: int) -> None:
        """Send what the window allows: live first, then backlog within its own limits."""
        connection = self.connection
        if connection is None:
            return
        while self.pending and self.in_flight < WINDOW:
            seq, second, committed = self.pending.popleft()
            connection.publish(self.topic, self.envelope(seq, second, now_ns))
            self.flights[seq] = Flight(committed, PER_ENVELOPE, 1, live=True)
            self.in_flight += 1
        if self.replay_at_ns is None or now_ns < self.replay_at_ns or not self.accepts:
            return
        stats = self.fleet.stats
        while (
            self.backlog
            and self.in_flight < WINDOW
            and self.backlog_in_flight < WINDOW - LIVE_RESERVED
            and self.backlog_bytes < BACKLOG_BYTES
            and self.tokens >= len(self.backlog[0][1])
        ):
            payload, seqs, stored, samples = self.backlog.popleft()
            self.tokens -= len(seqs)
            connection.publish(self.topic, payload)
            flight = Flight(now_ns, samples, len(seqs), live=False, stored_bytes=stored)
            for seq in seqs:
                self.flights[seq] = flight
            self.in_flight += 1
            self.backlog_in_flight += 1
            self.backlog_bytes += stored
            if stats.in_window(now_ns):
                stats.backlog_samples_sent += samples

    def on_ack(self, _topic: str, payload: bytes, properties: dict[str, str]) -> None:
        now_ns = time.time_ns()
        accepted = set(properties.get(ACCEPT_PROPERTY, "").split(","))
        self.accepts = {ACCEPT_PARTS, ACCEPT_ZLIB} <= accepted
        stats = self.fleet.stats
        for first, last in json.loads(payload)["ranges"]:
            for seq in range(first, last + 1):
                flight = self.flights.pop(seq, None)
                if flight is None:
                    continue  # a duplicate ack (a re-delivery written twice)
                flight.remaining -= 1
                if flight.remaining:
                    continue
                self.in_flight -= 1
                if flight.live:
                    if stats.in_window(flight.created_ns):
                        stats.lags.append((now_ns - flight.created_ns) / NS)
                else:
                    self.backlog_in_flight -= 1
                    self.backlog_bytes -= flight.stored_bytes
                    if stats.in_window(now_ns):
                        stats.backlog_samples_acked += flight.samples
        self.pump(now_ns)

    def unacked_since(self) -> list[int]:
        """Commit times of live envelopes not yet acknowledged (queued or in flight)."""
        waiting = [committed for _seq, _second, committed in self.pending]
        waiting += [f.created_ns for f in self.flights.values() if f.live]
        return waiting


class Fleet:
    """Every simulated site, their connections, and the clock that makes them commit."""

    def __init__(self, sites: int, port: int, *, replaying: int, backlog_s: int) -> None:
        self.sites = sites
        self.port = port
        self.pool = field_pool()
        self.epoch_ns = time.time_ns() // NS * NS
        self.members = [SimSite(self, index) for index in range(sites)]
        self.replaying = (
            [self.members[r * sites // replaying] for r in range(replaying)] if replaying else []
        )
        self.backlog_s = backlog_s
        self.stats = Stats()
        self.committed = 0  # envelopes committed so far across the fleet, in phase order
        self.running = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(100)  # the broker's listen backlog, not a flood of SYNs

        async def one(site: SimSite) -> None:
            async with gate:
                _transport, connection = await loop.create_connection(
                    lambda: AgentConnection(site.agent, site.on_ack), "127.0.0.1", self.port
                )
                await asyncio.wait_for(connection.connected, 30)
                code = await asyncio.wait_for(connection.subscribe(site.ack_topic), 30)
                if code != 1:
                    raise RuntimeError(f"{site.agent}: SUBACK 0x{code:02x} for its ack topic")
                site.connection = connection

        await asyncio.gather(*(one(site) for site in self.members))

    def plan_replays(self, start_ns: int, span_s: float) -> None:
        """Give each replaying site a fresh backlog and the moment its uplink comes back."""
        for number, site in enumerate(self.replaying):
            site.prepare_backlog(self.backlog_s)
            site.replay_at_ns = start_ns + int((number + 0.5) * span_s / len(self.replaying) * NS)
            site.tokens = 0.0

    async def run(self) -> None:
        """Commit one envelope per site per second, staggered across the second; until stopped."""
        self.running = True
        self.committed = int((time.time_ns() - self.epoch_ns) / NS * self.sites)
        last = time.monotonic()
        while self.running:
            await asyncio.sleep(0.01)
            now_ns = time.time_ns()
            due = int((now_ns - self.epoch_ns) / NS * self.sites)
            members, count = self.members, self.sites
            while self.committed < due:
                second, index = divmod(self.committed, count)
                members[index].commit(second, now_ns)
                self.committed += 1
            elapsed, last = time.monotonic() - last, time.monotonic()
            for site in self.replaying:
                if site.backlog and site.replay_at_ns is not None and now_ns >= site.replay_at_ns:
                    site.tokens = min(site.tokens + REPLAY_RATE * elapsed, REPLAY_RATE)
                    site.pump(now_ns)

    def backlog_left(self) -> int:
        return sum(len(site.backlog) for site in self.replaying)

    def unacked(self) -> list[int]:
        return [t for site in self.members for t in site.unacked_since()]

    def close(self) -> None:
        for site in self.members:
            if site.connection is not None:
                site.connection.close()


# -- the system under test ---------------------------------------------------------------------


class Collector:
    """One `fieldmon-collector run` with the given roles."""

    def __init__(self, workdir: Path, name: str, roles: str, broker_port: int, influx: str) -> None:
        self.name = name
        self.http_port = free_port()
        folder = workdir / name
        folder.mkdir()
        shared = ", shared_group: fleet" if roles == "ingest" else ""
        config = folder / "collector.yaml"
        config.write_text(
            f"broker: {{host: 127.0.0.1, port: {broker_port}, client_id: {name}{shared}}}\n"
            f'influxdb: {{api: v1, url: "{influx}", database: {DATABASE}}}\n'
            f"site_configs: {workdir / 'site_configs'}\n"
            f"http: {{listen: '127.0.0.1:{self.http_port}'}}\n"
            f"data_dir: {folder / 'data'}\nroles: [{roles}]\n",
            encoding="utf-8",
        )
        self.command = [script("fieldmon-collector"), "run", "--config", config]
        self.log = folder / "collector.log"
        self.daemon: Daemon | None = None
        self.rss_subscribed = 0

    def start(self, sites: int) -> None:
        self.daemon = start(self.command, self.log)
        # Loading the site files dominates start-up (about 90 ms a site here).
        wait_subscribed(self.http_port, timeout=60 + sites * 0.5, daemons=self.daemon)
        self.rss_subscribed = psutil.Process(self.daemon.pid).memory_info().rss

    def written(self) -> tuple[float, float]:
        # A saturated collector answers slowly, but it answers.
        _status, body = http_get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=120)
        counts = {"fieldmon_points_written_total": 0.0, "fieldmon_spool_points_spooled_total": 0.0}
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in counts:
                counts[name] = float(value)
        return counts["fieldmon_points_written_total"], counts[
            "fieldmon_spool_points_spooled_total"
        ]

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(timeout=30)


def prime_series(fleet: Fleet, influxd: CompactingInfluxd) -> float:
    """One row for every link of every site, an hour before the fleet's epoch, written straight
    to influxd: the database of a fleet that has been running holds every series already. The
    first write of a series costs influxd far more than the next (its index), so without this a
    run of minutes would measure series creation, not the fleet. Returns series created per s."""
    lines = [
        f"link,agent={site.agent},role={ROLES[j % len(ROLES)]},site={site.site},"
        f"target=link-{j:03d} sent=10i,received=10i,loss_pct=0 {fleet.epoch_ns - 3600 * NS}"
        for site in fleet.members
        for j in range(LINKS)
    ]
    started = time.perf_counter()
    for first in range(0, len(lines), 5000):
        influxd.write("\n".join(lines[first : first + 5000]), DATABASE)
    return len(lines) / (time.perf_counter() - started)


async def _written(ingest: list[Collector]) -> tuple[float, float]:
    """Points the ingest collectors wrote to influxd and spooled, read off the fleet's loop."""
    counts = await asyncio.gather(*(asyncio.to_thread(c.written) for c in ingest))
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _busy() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def _percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


async def measure_phase(
    fleet: Fleet,
    processes: dict[str, int],
    ingest: list[Collector],
    alerts: Collector,
    *,
    warmup: float,
    window: float,
    grace: float,
) -> dict[str, object]:
    """Warm up, then measure one window; wait `grace` for its last acks."""
    start_ns = time.time_ns()
    fleet.stats = Stats(start_ns=start_ns + int(warmup * NS), end_ns=0)
    fleet.stats.end_ns = fleet.stats.start_ns + int(window * NS)
    fleet.plan_replays(start_ns, warmup + window * 0.6)
    runner = asyncio.create_task(fleet.run())
    await asyncio.sleep(warmup)  # the window starts at a set time; nothing waits for readiness
    written0 = await _written(ingest)
    cpu0 = {name: _cpu(pid) for name, pid in processes.items()}
    busy0, wall0 = _busy(), time.monotonic()
    await asyncio.sleep(window)
    written1 = await _written(ingest)
    cpu1 = {name: _cpu(pid) for name, pid in processes.items()}
    busy1, wall = _busy(), time.monotonic() - wall0
    rss = {name: psutil.Process(pid).memory_info().rss for name, pid in processes.items()}
    # Acks of the window's last envelopes; the fleet keeps committing meanwhile.
    deadline = time.monotonic() + grace
    stats = fleet.stats
    while time.monotonic() < deadline:
        waiting = [t for t in fleet.unacked() if stats.in_window(t)]
        if not waiting:
            break
        await asyncio.sleep(0.2)
    fleet.running = False
    await runner
    waiting = [t for t in fleet.unacked() if stats.in_window(t)]
    lags = sorted(stats.lags) + [float("inf")] * len(waiting)
    cores = {name: (cpu1[name] - cpu0[name]) / wall for name in processes}
    # Stored: written to influxd, or spooled to disk when influxd took no batch within the
    # collector's retry budget (acknowledged either way; the spool drains when influxd answers).
    spooled = (written1[1] - written0[1]) / wall
    written = (written1[0] - written0[0]) / wall + spooled
    offered = (stats.live_samples_committed + stats.backlog_samples_sent) / wall
    ingest_cpu = sum(cores[c.name] for c in ingest)

    def lag(fraction: float) -> str:
        value = _percentile(lags, fraction)
        if value == float("inf"):
            oldest = (time.time_ns() - min(waiting)) / NS
            return f"> {oldest:.0f} s (unacknowledged)"
        return f"{value:.2f} s"

    n = fleet.sites
    result: dict[str, object] = {
        "sites": n,
        "ingest_collectors": len(ingest),
        "window_s": round(wall, 1),
        "live_samples_per_s_committed": round(stats.live_samples_committed / wall),
        "backlog_samples_per_s_sent": round(stats.backlog_samples_sent / wall),
        "backlog_samples_per_s_acked": round(stats.backlog_samples_acked / wall),
        "samples_per_s_stored": round(written),
        "samples_per_s_spooled": round(spooled),
        "stored_over_offered": round(written / offered, 3) if offered else None,
        "lag_p50": lag(0.5),
        "lag_p95": lag(0.95),
        "live_envelopes_unacked_at_end": len(waiting),
        "ingest_cpu_us_per_sample": round(ingest_cpu / written * 1e6, 1) if written else None,
        "alerts_rss_growth_bytes_per_link": round(
            (rss[alerts.name] - alerts.rss_subscribed) / (n * LINKS)
        ),
        "machine_busy_cores": round((busy1 - busy0) / wall, 2),
        "others_cores": round((busy1 - busy0) / wall - sum(cores.values()), 2),
    }
    result |= {f"cores_{name}": round(value, 2) for name, value in cores.items()}
    result |= {f"rss_mb_{name}": round(value / 2**20, 1) for name, value in rss.items()}
    result["first_limit"] = first_limit(cores, result["machine_busy_cores"], written, offered)
    return result


def first_limit(cores: dict[str, float], busy: object, written: float, offered: float) -> str:
    """The process that ran out first: a single-threaded one near a whole core, else the
    machine (influxd is multi-threaded), or none while the fleet's samples are all written."""
    if offered and written >= 0.97 * offered:
        return "none: every sample offered was written"
    single = {name: value for name, value in cores.items() if name != "influxd"}
    name, value = max(single.items(), key=lambda item: item[1])
    if value >= 0.85:
        return f"{name} at {value:.2f} of a core (single-threaded)"
    if isinstance(busy, float) and busy >= 1.8:
        top = max(cores.items(), key=lambda item: item[1])
        return f"the machine's 2 cores ({busy:.2f} busy; most: {top[0]} at {top[1]:.2f})"
    return "unclear: no process at a core and the machine not full"


async def run_fleet(
    workdir: Path,
    sites: int,
    *,
    ingest_counts: list[int],
    warmup: float,
    window: float,
    grace: float,
    replaying: int,
    backlog_s: int,
    disk: bool,
) -> list[dict[str, object]]:
    """Every phase for one fleet size, in one set of servers; the disk figure after the last."""
    mosquitto_server = MosquittoServer(workdir / "mosquitto", max_queued_messages=100_000)
    influxd_server = CompactingInfluxd(workdir / "influxd")
    collectors: list[Collector] = []
    fleet: Fleet | None = None
    results: list[dict[str, object]] = []
    before = (0, 0)  # link rows and raw bytes at the previous phase's end
    with mosquitto_server as mosquitto, influxd_server as influxd:
        try:
            influxd.create_database(DATABASE)
            write_site_files(workdir / "site_configs", sites, mosquitto.port)
            alerts = Collector(workdir, "alerts", "alerts", mosquitto.port, influxd.url)
            ingest: list[Collector] = []
            collectors.append(alerts)
            await asyncio.to_thread(alerts.start, sites)
            fleet = Fleet(sites, mosquitto.port, replaying=replaying, backlog_s=backlog_s)
            series_per_s = await asyncio.to_thread(prime_series, fleet, influxd)
            print(f"influxd created {sites * LINKS} series at {series_per_s:.0f} per s")
            for count in ingest_counts:
                while len(ingest) < count:
                    collector = Collector(
                        workdir, f"ingest{len(ingest) + 1}", "ingest", mosquitto.port, influxd.url
                    )
                    collectors.append(collector)
                    await asyncio.to_thread(collector.start, sites)
                    ingest.append(collector)
                if fleet.members[0].connection is None:
                    await fleet.connect()
                processes = {
                    "mosquitto": mosquitto.pid,
                    "influxd": influxd.pid,
                    **{c.name: c.daemon.pid for c in collectors if c.daemon is not None},
                    "fleet_simulator": os.getpid(),
                }
                result = await measure_phase(
                    fleet,
                    processes,  # type: ignore[arg-type]
                    ingest,
                    alerts,
                    warmup=warmup,
                    window=window,
                    grace=grace,
                )
                result["backlog_messages_left"] = fleet.backlog_left()
                result["influxd_series_created_per_s"] = round(series_per_s)
                results.append(result)
                print_result(result)
                # Let every queue empty before the next phase, so it starts from the same place.
                deadline = time.monotonic() + max(grace, 60)
                while time.monotonic() < deadline:
                    if not fleet.unacked():
                        break
                    await asyncio.sleep(0.5)
                if disk and fleet.unacked():
                    # The collectors still write what queued up: influxd would never go cold.
                    result["disk"] = "not measured: the queues did not empty after the phase"
                elif disk:
                    settled = await asyncio.to_thread(raw_disk, fleet, influxd, before)
                    result |= settled
                    before = (settled["disk_link_rows"], settled["disk_raw_bytes"])
                    print_result({k: v for k, v in result.items() if k.startswith("disk_")})
        finally:
            if fleet is not None:
                fleet.close()
            for collector in collectors:
                collector.stop()
    return results


def raw_disk(fleet: Fleet, influxd: CompactingInfluxd, before: tuple[int, int]) -> dict:
    """influxd's raw bytes once compacted (the fleet is stopped, so the shard goes cold), per
    row, and per row added since the previous phase: a short run leaves each series a few
    dozen points, so its per-series index and block overhead weighs far more than in a day of
    8,640 points per series; the rows added to the same series show the cost of a row in a
    long-lived series. Scaled to a site-day of link rows (864,000)."""
    _settled(influxd)
    rows = influxd.query(f'SELECT count("sent") FROM "{DATABASE}"."autogen"."link"', db=DATABASE)
    count = int(rows[0]["count"]) if rows else 0
    size = policy_bytes(influxd, DATABASE, "autogen")
    added_rows, added_bytes = count - before[0], size - before[1]
    per_row = size / count if count else float("nan")
    marginal = added_bytes / added_rows if added_rows and before[0] else None
    return {
        "disk_link_rows": count,
        "disk_raw_bytes": size,
        "disk_points_per_series": round(count / (fleet.sites * LINKS), 1),
        "disk_bytes_per_row": round(per_row, 1),
        "disk_raw_mb_per_site_day": round(per_row * LINK_ROWS_PER_SITE_DAY / 1e6, 1),
        "disk_bytes_per_added_row": round(marginal, 1) if marginal is not None else None,
        "disk_raw_mb_per_site_day_added_rows": (
            round(marginal * LINK_ROWS_PER_SITE_DAY / 1e6, 1) if marginal is not None else None
        ),
    }


def scaling(results: list[dict]) -> dict[str, object]:
    """Memory that grows with the fleet: the slope between the smallest and largest fleet run
    with one ingest collector (what a process costs at start-up cancels out)."""
    runs = sorted(
        (r for r in results if r["ingest_collectors"] == 1), key=lambda r: int(r["sites"])
    )
    if len(runs) < 2 or runs[0]["sites"] == runs[-1]["sites"]:
        return {}
    small, large = runs[0], runs[-1]
    sites = int(large["sites"]) - int(small["sites"])

    def slope(key: str) -> float:
        return (float(large[key]) - float(small[key])) * 2**20 / sites

    # CPU per sample between the two: a process's fixed cost (timers, idle polling) cancels out.
    samples = float(large["samples_per_s_stored"]) - float(small["samples_per_s_stored"])

    def cpu_per_sample(key: str) -> float | None:
        if samples <= 0:
            return None
        return round((float(large[key]) - float(small[key])) / samples * 1e6, 1)

    return {
        "between_sites": f"{small['sites']} and {large['sites']}",
        "ingest_rss_mb_per_1000_sites": round(slope("rss_mb_ingest1") * 1000 / 2**20, 1),
        "alerts_rss_bytes_per_link": round(slope("rss_mb_alerts") / LINKS),
        "mosquitto_rss_kb_per_site": round(slope("rss_mb_mosquitto") / 1024, 1),
        "ingest_cpu_us_per_added_sample": cpu_per_sample("cores_ingest1"),
        "alerts_cpu_us_per_added_sample": cpu_per_sample("cores_alerts"),
        "mosquitto_cpu_us_per_added_sample": cpu_per_sample("cores_mosquitto"),
        "influxd_cpu_us_per_added_sample": cpu_per_sample("cores_influxd"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="100,1000,5000", help="fleet sizes, comma separated")
    parser.add_argument("--ingest", default="1,2", help="ingest collectors per phase")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--measure", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument(
        "--replaying", type=int, default=None, help="sites replaying a backlog (default N/200)"
    )
    parser.add_argument("--backlog", type=int, default=3600, help="seconds of backlog each")
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    parser.add_argument("--no-disk", action="store_true", help="skip the raw disk figure")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.measure, args.grace, args.backlog = 1.5, 3.0, 5.0, 300
    sizes = [int(size) for size in args.sites.split(",")]
    # Thousands of connections: the broker (our child) inherits this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    results = []
    for size in sizes:
        replaying = args.replaying if args.replaying is not None else max(1, size // 200)
        with tempfile.TemporaryDirectory(prefix="fieldmon-fleet-") as tmp:
            results += asyncio.run(
                run_fleet(
                    Path(tmp),
                    size,
                    ingest_counts=[int(n) for n in args.ingest.split(",")],
                    warmup=args.warmup,
                    window=args.measure,
                    grace=args.grace,
                    replaying=replaying,
                    backlog_s=args.backlog,
                    disk=not args.no_disk,
                )
            )
    summary = scaling(results)
    if summary:
        print_result(summary)
    for result in [*results, summary]:
        print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
