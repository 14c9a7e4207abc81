"""bench/outbox: the agent's outbox end to end, beside the raw MQTT ceiling, in one run.

- MQTT ceiling: a paho QoS 1 publisher (1000 in flight) -> Mosquitto -> a paho subscriber, on
  the same envelopes: what the broker path carries when nothing is kept on disk or acknowledged.
- Sustained: Outbox.append (SQLite commit) -> Sender (32 in flight) -> Mosquitto ->
  `fieldmon-collector run` (writes influxd, acks the seqs) -> delete from the outbox. N
  envelopes are enqueued at once; the clock runs until the last one is deleted.
- Backlog drains: `fieldmon-agent run` in a network namespace whose veth to this host is rate
  limited each way (tbf), probing 100 links every 10 s (the live data keeps flowing), its outbox
  pre-filled with the site's rounds as the batcher commits them (10-sample envelopes, one a
  second, through Outbox.append): one hour over 1 Mbit/s, and a day (86,400 envelopes, 864,000
  samples, 276 MB) over 10 Mbit/s. The clock runs from the agent's start until the backlog is
  gone; the live envelopes' lag (arrival - measurement) during the drain says whether the
  backlog got in their way, the tbf counters how much of the link it used (and whether the link
  dropped anything), /proc what it cost the agent and the collector in CPU, and the collector's
  seq accounting whether it counted anything lost or twice. `--agent-from CHECKOUT` runs another
  checkout's agent (an earlier commit) on the same outboxes, for before / after in one session;
  `--drain-limit S` stops a drain that takes longer and projects its time from its rate.
- Write cost: the outbox's own disk writes for an hour of a 100-link site (one 10-sample
  envelope committed and one ack deleted each second), in compressed time, in a subprocess:
  bytes handed to write() (/proc/self/io wchar) and fsync calls (strace, if installed); with
  the power-cut loss window they imply.

Needs root (namespaces, tc, raw ICMP). Run: .venv/bin/python -m bench.outbox [--quick]
[--only day] [--replay-rate N] [--agent-from PATH] [--drain-limit S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench._report import print_result
from bench.ingest import AGENT, SITE, realistic_envelopes
from fieldmon.agent.daemon import build_pipeline
from fieldmon.agent.outbox import PAGE_SIZE, Outbox
from fieldmon.core.mqtt.link import MqttLink, new_client
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.outbox import OutboxConfig
from fieldmon.core.wire import topics
from fieldmon.core.wire.codec import encode, inflate
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.process import Daemon, http_get, script, start, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

LINKS = 100  # a 100-link site
ROUND_S = 10  # every link probed every 10 s
SAMPLES_PER_ENVELOPE = 10  # 100 links / 10 s, committed once a second (the batcher's linger)
HOUR, DAY = 3600, 86_400
SCENARIOS = ("ceiling", "sustained", "hour", "day", "disk")


@dataclass(frozen=True)
class Drain:
    """One backlog-drain scenario: how much backlog, over what link."""

    name: str
    envelopes: int
    uplink_mbit: float
    max_mb: float | None = None  # the agent's outbox cap, when the default would not hold it


# -- shared pieces ---------------------------------------------------------------------------


def site_samples(envelopes: int, start_ns: int) -> list[list[Sample]]:
    """`envelopes` one-second batches of a 100-link site's rounds, from `start_ns` on."""
    batches = []
    for index, envelope in enumerate(realistic_envelopes(envelopes, SAMPLES_PER_ENVELOPE)):
        second = start_ns + index * 1_000_000_000
        batches.append(
            [
                Sample(
                    measurement=sample.measurement,
                    tags=sample.tags,
                    fields=sample.fields,
                    time=second + offset * 1_000_000,
                )
                for offset, sample in enumerate(envelope.samples)
            ]
        )
    return batches


def write_site_file(
    path: Path,
    broker: tuple[str, int],
    outbox: Path,
    links: int,
    *,
    replay_rate: float | None = None,
    max_mb: float | None = None,
) -> None:
    replay = f", replay_rate: {replay_rate}" if replay_rate else ""
    replay += f", max_mb: {max_mb}" if max_mb else ""
    rows = "\n".join(
        f"  - {{name: link-{i:03d}, address: 127.0.0.1, role: {'parent' if i == 0 else 'ap'},"
        f" interval: {ROUND_S}s}}"
        for i in range(links)
    )
    path.write_text(
        f"site: {SITE}\nname: Bench site\nparent_hospital: bench-hospital\n"
        f"agent:\n  id: {AGENT}\n  broker: {{host: '{broker[0]}', port: {broker[1]}}}\n"
        f"  outbox: {{path: {outbox}{replay}}}\n"
        f"links:\n{rows}\n",
        encoding="utf-8",
    )


class Collector:
    """`fieldmon-collector run` (ingest role) writing to influxd, acking to the agent."""

    def __init__(
        self,
        workdir: Path,
        mosquitto: MosquittoServer,
        influxd: InfluxdServer,
        *,
        flush_interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        config = workdir / "collector.yaml"
        config.write_text(
            f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: bench-collector}}\n"
            f'influxdb: {{api: v1, url: "{influxd.url}", database: bench, '
            f"flush_interval: {flush_interval}}}\n"
            f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{self.http_port}'}}\n"
            "data_dir: ./collector-data\nroles: [ingest]\n",
            encoding="utf-8",
        )
        self.command = [script("fieldmon-collector"), "run", "--config", config]
        self.process: Daemon | None = None

    def __enter__(self) -> Collector:
        log_path = self.workdir / "collector.log"
        log_path.write_bytes(b"")
        self.process = start(self.command, log_path)
        try:
            # Subscribed: from its SUBACK on the broker delivers the agent's envelopes to it.
            wait_subscribed(self.http_port, daemons=self.process)
        except AssertionError:
            self.process.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.process is not None
        self.process.stop(timeout=30)


# -- the raw MQTT ceiling --------------------------------------------------------------------


def mqtt_ceiling(port: int, payloads: list[bytes]) -> float:
    """Envelopes/s from a QoS 1 publisher through Mosquitto to a live subscriber."""
    done = threading.Event()
    received = [0]

    def on_message(*_args: object) -> None:
        received[0] += 1
        if received[0] == len(payloads):
            done.set()

    subscribed = threading.Event()
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.connect("127.0.0.1", port)
    subscriber.loop_start()
    subscriber.subscribe("bench/ceiling", qos=1)
    subscribed.wait(5)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.max_inflight_messages_set(1000)
    window = threading.Semaphore(1000)
    publisher.on_publish = lambda *_args: window.release()
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    started = time.perf_counter()
    for payload in payloads:
        window.acquire()
        publisher.publish("bench/ceiling", payload, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"the subscriber got {received[0]} of {len(payloads)}")
    elapsed = time.perf_counter() - started
    for client in (publisher, subscriber):
        client.loop_stop()
        client.disconnect()
    return len(payloads) / elapsed


# -- sustained enqueue -> publish -> ack -> delete -------------------------------------------


async def _sustained(
    workdir: Path, port: int, batches: list[list[Sample]], name: str = "sustained"
) -> float:
    loop = asyncio.get_running_loop()
    disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    outbox_path = workdir / name / "outbox.db"
    config = SiteConfig.model_validate(
        {
            "site": SITE,
            "name": "Bench",
            "parent_hospital": "bench-hospital",
            "agent": {
                "id": AGENT,
                "broker": {"host": "127.0.0.1", "port": port},
                "outbox": {"path": str(outbox_path)},
            },
        }
    )
    outbox = await loop.run_in_executor(disk, lambda: Outbox(outbox_path, site=SITE, agent=AGENT))
    broker = BrokerConfig(host="127.0.0.1", port=port)
    link = MqttLink(new_client(broker, client_id=AGENT), broker, loop)
    sender, _batcher = build_pipeline(config, outbox, link, disk)
    task = asyncio.create_task(sender.run())
    link.start()
    await asyncio.wait_for(link.wait_subscribed(), 10)  # the ack subscription's SUBACK
    started = time.perf_counter()
    for batch in batches:
        await loop.run_in_executor(disk, outbox.append, batch)
        sender.notify()
    while outbox.waiting_samples:  # noqa: ASYNC110 - polls a count the sender updates
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    task.cancel()
    link.stop()
    await loop.run_in_executor(disk, outbox.close)
    disk.shutdown()
    return len(batches) / elapsed


# -- a backlog drained through a rate-limited uplink -----------------------------------------


class ArrivalClock:
    """Subscribes to the agent's samples; records each envelope's seq, lag and arrival."""

    def __init__(self, port: int, backlog_end: int) -> None:
        self.backlog_end = backlog_end
        self.live_lags: list[float] = []
        self.after_drain_lags: list[float] = []  # the same site once the backlog is gone
        self.drained = False
        self.backlog_messages = 0
        self.backlog_envelopes = 0  # a joined message carries several
        self.compressed_messages = 0
        self.first_live_at: float | None = None
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._record
        self._client.on_subscribe = lambda *_args: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        # Envelopes of `event` rows (state changes) travel on the events topic.
        self._client.subscribe(
            [(topics.samples_topic(SITE, AGENT), 1), (topics.events_topic(SITE, AGENT), 1)]
        )
        subscribed.wait(5)

    def _record(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        envelope = json.loads(inflate(message.payload))
        if envelope["seq"] < self.backlog_end:
            self.backlog_messages += 1
            self.backlog_envelopes += len(envelope.get("parts") or [None])
            self.compressed_messages += message.payload[:1] == b"x"
            return
        if self.first_live_at is None:
            self.first_live_at = time.monotonic()
        newest = max(sample["time"] for sample in envelope["samples"])
        lag = (time.time_ns() - newest) / 1e9
        (self.after_drain_lags if self.drained else self.live_lags).append(lag)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _limit(namespace: Namespace | None, device: str, mbit: float) -> None:
    prefix = [] if namespace is None else ["ip", "netns", "exec", namespace.name]
    subprocess.run(
        [*prefix, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{mbit}mbit",
         "burst", "16kb", "latency", "500ms"],
        check=True,
    )  # fmt: skip


def _tbf_counts(namespace: Namespace | None, device: str) -> tuple[int, int]:
    """(bytes sent, packets dropped) by the device's tbf so far."""
    prefix = [] if namespace is None else ["ip", "netns", "exec", namespace.name]
    out = subprocess.run(
        [*prefix, "tc", "-s", "-j", "qdisc", "show", "dev", device],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    [qdisc] = [q for q in json.loads(out) if q.get("kind") == "tbf"]
    return int(qdisc["bytes"]), int(qdisc["drops"])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backlog_left(outbox: Path, backlog_end: int) -> int:
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM envelopes WHERE seq < ?", (backlog_end,)).fetchone()[0]
        )


def prefill(outbox_path: Path, envelopes: int) -> tuple[int, int]:
    """`envelopes` seconds of the site's rounds, aged as if held by an outage; returns (seqs,
    payload bytes). Seq 0 is the round before the outage: the caller hands it to the collector
    and acknowledges it, as the uplink did before it went."""
    start = time.time_ns() - (envelopes + 60) * 1_000_000_000
    outbox = Outbox(outbox_path, site=SITE, agent=AGENT)
    for batch in site_samples(envelopes + 1, start):
        outbox.append(batch)
    outbox.close()
    with sqlite3.connect(outbox_path) as db:
        db.execute("UPDATE envelopes SET created_ns = created_ns - 3600000000000")
        query = "SELECT SUM(length(payload)) FROM envelopes WHERE seq > 0"
        (stored,) = db.execute(query).fetchone()
    return envelopes + 1, int(stored)


def _hand_over_before_outage(outbox_path: Path, port: int) -> None:
    """Publish seq 0 to the collector and delete it: the collector knew the agent before the
    outage, so its seq accounting has a start (a fresh one would count the backlog, arriving
    after the newest round, as duplicates)."""
    with sqlite3.connect(outbox_path) as db:
        (payload,) = db.execute("SELECT payload FROM envelopes WHERE seq = 0").fetchone()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish(topics.samples_topic(SITE, AGENT), payload, qos=1).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
        db.execute("DELETE FROM envelopes WHERE seq = 0")


def _collector_counts(http_port: int) -> dict[str, float]:
    """The collector's seq accounting for the bench agent, from its /metrics."""
    _status, body = http_get(f"http://127.0.0.1:{http_port}/metrics")
    names = {
        "duplicate": "fieldmon_envelopes_duplicate_total{",
        "lost": "fieldmon_envelopes_lost_total{",
        "missing": "fieldmon_envelopes_missing{",
    }
    counts = dict.fromkeys(names, 0.0)
    for line in body.decode().splitlines():
        for name, prefix in names.items():
            if line.startswith(prefix) and f'agent="{AGENT}"' in line:
                counts[name] = float(line.rsplit(" ", 1)[1])
    return counts


def _p(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[int(share * (len(ordered) - 1))], 2) if ordered else None


def drain(
    workdir: Path,
    influxd: InfluxdServer,
    scenario: Drain,
    *,
    baseline_s: float,
    replay_rate: float | None,
    agent_script: Path,
    limit_s: float,
) -> dict:
    """Seconds to drain the scenario's backlog through its uplink while 100 links keep probing;
    then `baseline_s` more of live data alone, for the live lag without a backlog."""
    folder = workdir / f"drain-{scenario.name}"
    with Namespace(unique_name("bench-site")) as site:
        pair = veth(None, site)
        _limit(None, pair.a_name, scenario.uplink_mbit)  # host -> site (acks)
        _limit(site, pair.b_name, scenario.uplink_mbit)  # site -> host (the uplink)
        site_port = free_port()
        broker = MosquittoServer(
            folder / "mosquitto",
            max_queued_messages=100_000,
            extra_config=f"listener {site_port} {pair.a_v4.ip}",
        )
        with broker as mosquitto:
            outbox_path = folder / "outbox.db"
            backlog_end, backlog_bytes = prefill(outbox_path, scenario.envelopes)
            site_file = folder / "site.yaml"
            address = (str(pair.a_v4.ip), site_port)
            write_site_file(
                site_file,
                address,
                outbox_path,
                LINKS,
                replay_rate=replay_rate,
                max_mb=scenario.max_mb,
            )
            with Collector(workdir, mosquitto, influxd) as collector:
                assert collector.process is not None
                _hand_over_before_outage(outbox_path, mosquitto.port)
                clock = ArrivalClock(mosquitto.port, backlog_end)
                uplink_before = _tbf_counts(site, pair.b_name)
                collector_cpu = _cpu_s(collector.process.pid)
                agent = start(
                    ["ip", "netns", "exec", site.name, agent_script, "run", "--config", site_file],
                    folder / "agent.log",
                )  # fmt: skip
                started = time.monotonic()
                left = scenario.envelopes
                try:
                    while (left := _backlog_left(outbox_path, backlog_end)) > 0:
                        if not agent.running():
                            raise RuntimeError(f"the agent died; see {folder}/agent.log")
                        if time.monotonic() - started > limit_s:
                            break
                        time.sleep(0.25)
                    elapsed = time.monotonic() - started
                    agent_cpu = _cpu_s(agent.pid)
                    collector_cpu = _cpu_s(collector.process.pid) - collector_cpu
                    uplink_after = _tbf_counts(site, pair.b_name)
                    clock.drained = True
                    time.sleep(baseline_s)  # live data alone, for the lag without a backlog
                    seqs = _collector_counts(collector.http_port)
                finally:
                    agent.stop(timeout=30)
                    clock.close()
    lags = clock.live_lags
    ours = agent_script == script("fieldmon-agent")
    drained = scenario.envelopes - left
    wire_bytes = uplink_after[0] - uplink_before[0]
    capacity_bits = scenario.uplink_mbit * 1e6 * elapsed
    return {
        "uplink_mbit_s": scenario.uplink_mbit,
        "replay_rate_per_s": replay_rate
        or (OutboxConfig().replay_rate if ours else "that checkout's default"),
        "agent": "this checkout" if ours else str(agent_script),
        "backlog_envelopes": scenario.envelopes,
        "backlog_samples": scenario.envelopes * SAMPLES_PER_ENVELOPE,
        "backlog_payload_mb": round(backlog_bytes / 1e6, 1),
        "drain_s": round(elapsed, 1) if not left else None,
        "drained_envelopes": drained,
        "projected_drain_s": round(elapsed * scenario.envelopes / drained) if left else None,
        "goodput_json_mbit_s": round(
            backlog_bytes * drained / scenario.envelopes * 8 / elapsed / 1e6, 2
        ),
        "uplink_used_mbit_s": round(wire_bytes * 8 / elapsed / 1e6, 2),
        "uplink_used_share": round(wire_bytes * 8 / capacity_bits, 3),
        "uplink_tbf_drops": uplink_after[1] - uplink_before[1],
        "backlog_messages": clock.backlog_messages,
        "backlog_envelopes_per_message": round(
            clock.backlog_envelopes / max(1, clock.backlog_messages), 1
        ),
        "backlog_messages_compressed": clock.compressed_messages,
        "agent_cpu_share_during_drain": round(agent_cpu / elapsed, 3),
        "collector_cpu_share_during_drain": round(collector_cpu / elapsed, 3),
        "collector_duplicates": seqs["duplicate"],
        "collector_lost": seqs["lost"],
        "collector_missing": seqs["missing"],
        "first_live_envelope_after_s": (
            round(clock.first_live_at - started, 1) if clock.first_live_at else None
        ),
        "live_envelopes_during_drain": len(lags),
        "live_lag_p50_s": _p(lags, 0.5),
        "live_lag_p95_s": _p(lags, 0.95),
        "live_lag_max_s": _p(lags, 1.0),
        "live_lag_after_drain_p50_s": _p(clock.after_drain_lags, 0.5),
        "live_lag_after_drain_p95_s": _p(clock.after_drain_lags, 0.95),
    }


# -- the SD card's share ---------------------------------------------------------------------


def write_cost_worker(directory: Path, seconds: int) -> None:
    """Runs in a subprocess: `seconds` of a 100-link site against a fresh outbox; prints JSON."""
    batches = site_samples(seconds, time.time_ns())
    outbox = Outbox(directory / "outbox.db", site=SITE, agent=AGENT)

    def io() -> dict[str, int]:
        lines = Path("/proc/self/io").read_text().splitlines()
        return {key: int(value) for key, value in (line.split(": ") for line in lines)}

    before = io()
    previous = None
    for batch in batches:
        stored = outbox.append(batch)
        if previous is not None:  # the collector acks about a second later
            outbox.acknowledge([(previous, previous)])
        previous = stored.seq
    after = io()
    outbox.close()
    print(
        json.dumps(
            {
                "commits": 2 * len(batches),
                "wchar": after["wchar"] - before["wchar"],
                "write_bytes": after["write_bytes"] - before["write_bytes"],
                "syscw": after["syscw"] - before["syscw"],
            }
        )
    )


def _strace_counts(summary: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in summary.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def write_cost(workdir: Path, seconds: int) -> dict:
    """Bytes and fsyncs per hour of a 100-link site, and the power-cut loss window."""
    directory = workdir / "write-cost"
    directory.mkdir()
    worker = [sys.executable, "-m", "bench.outbox", "--write-cost-worker", str(directory),
              "--seconds", str(seconds)]  # fmt: skip
    summary = workdir / "strace.txt"
    strace = shutil.which("strace")
    if strace:
        command = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(summary), *worker]
    else:
        command = worker
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    per_hour = 3600 / seconds
    fsyncs = None
    if strace:
        counts = _strace_counts(summary)
        fsyncs = counts.get("fsync", 0) + counts.get("fdatasync", 0)
    expire = int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text()) / 100
    writeback = int(Path("/proc/sys/vm/dirty_writeback_centisecs").read_text()) / 100
    result = {
        "site": f"{LINKS} links, {ROUND_S} s rounds: 1 commit + 1 ack-delete per second",
        "synchronous": f"WAL, synchronous=NORMAL, {PAGE_SIZE} B pages, autocheckpoint 1000 pages",
        "written_mb_per_hour": round(measured["wchar"] * per_hour / 1e6, 1),
        "written_kb_per_commit": round(measured["wchar"] / measured["commits"] / 1e3, 1),
        "fsyncs_per_hour": round(fsyncs * per_hour) if fsyncs is not None else None,
        "kernel_writeback_s": expire + writeback,
    }
    if fsyncs:
        # Each checkpoint fsyncs the WAL and the database: a commit is durable at the next one.
        checkpoints = fsyncs / 2
        result["power_cut_window_worst_s"] = round(seconds / checkpoints)
    return result


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    """Run every measurement and print one table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--only", choices=SCENARIOS, action="append", help="run only these (repeatable)"
    )
    parser.add_argument(
        "--replay-rate",
        type=float,
        help="the agent's outbox.replay_rate for the drains (default: the agent's default)",
    )
    parser.add_argument(
        "--agent-from",
        type=Path,
        help="a checkout whose .venv/bin/fieldmon-agent drains instead (before / after)",
    )
    parser.add_argument(
        "--drain-limit", type=float, default=3600.0, help="stop a drain after S seconds"
    )
    parser.add_argument(
        "--keep", type=Path, help="work in this (new) folder and keep it: logs, outboxes"
    )
    parser.add_argument("--write-cost-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=3600, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_cost_worker:
        write_cost_worker(args.write_cost_worker, args.seconds)
        return
    if os.geteuid() != 0:
        sys.exit("bench.outbox needs root: network namespaces, tc and raw ICMP sockets")
    # The in-process sender's connect / disconnect notices are not results.
    logging.getLogger("fieldmon").setLevel(logging.ERROR)
    chosen = set(args.only or SCENARIOS)
    ceiling_n, sustained_n, write_s, baseline_s = (
        (2000, 200, 600, 5.0) if args.quick else (20_000, 2000, 3600, 20.0)
    )
    drains = [
        Drain("hour", 300 if args.quick else HOUR, 1.0),
        # A day does not fit the default 200 MiB cap (276 MB of payload): a site that must ride
        # out a day's outage sets max_mb above it.
        Drain("day", 7200 if args.quick else DAY, 10.0, max_mb=400),
    ]
    agent_script = script("fieldmon-agent")
    if args.agent_from:
        agent_script = args.agent_from.resolve() / ".venv" / "bin" / "fieldmon-agent"
    batches = site_samples(max(ceiling_n, sustained_n), time.time_ns() - 86_400 * 10**9)
    payloads = [
        encode(Envelope(site=SITE, agent=AGENT, seq=i, sent_at=time.time_ns(), samples=batch))
        for i, batch in enumerate(batches[:ceiling_n])
    ]
    result: dict[str, object] = {
        "envelope_bytes": round(statistics.mean(map(len, payloads))),
        "samples_per_envelope": SAMPLES_PER_ENVELOPE,
    }
    if args.keep:
        args.keep.mkdir(parents=True)
    with (
        contextlib.nullcontext(str(args.keep))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="fieldmon-bench-outbox-")
    ) as tmp:
        workdir = Path(tmp)
        sites = workdir / "site_configs"
        sites.mkdir()
        # Every link the envelopes name: the collector refuses targets the site file does not.
        write_site_file(sites / f"{SITE}.yaml", ("127.0.0.1", 1883), workdir / "unused.db", LINKS)
        if chosen & {"ceiling", "sustained"}:
            result |= _throughput(workdir, chosen, payloads, batches[:sustained_n])
        for scenario in drains:
            if scenario.name not in chosen:
                continue
            with InfluxdServer(workdir / f"influxd-{scenario.name}") as influxd:
                influxd.create_database("bench")
                measured = drain(
                    workdir,
                    influxd,
                    scenario,
                    baseline_s=baseline_s,
                    replay_rate=args.replay_rate,
                    agent_script=agent_script,
                    limit_s=args.drain_limit,
                )
            result |= {f"drain_{scenario.name}_{key}": value for key, value in measured.items()}
        if "disk" in chosen:
            cost = write_cost(workdir, write_s)
            result |= {f"disk_{key}": value for key, value in cost.items()}
    result |= {"quick": args.quick, "cpus": os.cpu_count()}
    print_result(result)


def _throughput(
    workdir: Path, chosen: set[str], payloads: list[bytes], batches: list[list[Sample]]
) -> dict[str, object]:
    """The MQTT ceiling and the outbox's sustained rate, beside each other."""
    out: dict[str, object] = {}
    with (
        MosquittoServer(workdir / "mosquitto", max_queued_messages=100_000) as mosquitto,
        InfluxdServer(workdir / "influxd") as influxd,
    ):
        influxd.create_database("bench")
        ceiling = mqtt_ceiling(mosquitto.port, payloads)
        out["mqtt_ceiling_envelopes_per_s"] = round(ceiling)
        if "sustained" not in chosen:
            return out
        with Collector(workdir, mosquitto, influxd):
            sustained = asyncio.run(_sustained(workdir, mosquitto.port, batches))
        # The same with a collector that acks every 100 ms: the window's round trip shrinks.
        with Collector(workdir, mosquitto, influxd, flush_interval="100ms"):
            fast = asyncio.run(_sustained(workdir, mosquitto.port, batches, "fast"))
    out |= {
        "outbox_sustained_envelopes_per_s": round(sustained, 1),
        "outbox_sustained_samples_per_s": round(sustained * SAMPLES_PER_ENVELOPE),
        "ratio_to_mqtt_ceiling": round(sustained / ceiling, 3),
        "outbox_sustained_acks_every_100ms_envelopes_per_s": round(fast, 1),
    }
    return out


if __name__ == "__main__":
    main()
