"""bench/outbox: the agent's outbox end to end, beside the raw MQTT ceiling, in one run.

- MQTT ceiling: a paho QoS 1 publisher (1000 in flight) -> Mosquitto -> a paho subscriber, on
  the same envelopes: what the broker path carries when nothing is kept on disk or acknowledged.
- Sustained: Outbox.append (SQLite commit) -> Sender (32 in flight) -> Mosquitto ->
  `fieldmon-collector run` (writes influxd, acks the seqs) -> delete from the outbox. N
  envelopes are enqueued at once; the clock runs until the last one is deleted.
- Backlog drain: `fieldmon-agent run` in a network namespace whose veth to this host is limited
  to 1 Mbit/s each way (tbf), probing 100 links every 10 s (the live data keeps flowing), its
  outbox pre-filled with one hour of that site's rounds (36,000 `link` samples in 10-sample
  envelopes, as the batcher commits them). The clock runs from the agent's start until the
  backlog is gone; the live envelopes' lag (arrival - measurement) during the drain says whether
  the backlog got in their way.
- Write cost: the outbox's own disk writes for an hour of a 100-link site (one 10-sample
  envelope committed and one ack deleted each second), in compressed time, in a subprocess:
  bytes handed to write() (/proc/self/io wchar) and fsync calls (strace, if installed); with
  the power-cut loss window they imply.

Needs root (namespaces, tc, raw ICMP). Run: .venv/bin/python -m bench.outbox [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
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
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.netns import Namespace, unique_name, veth
from fieldmon.lab.process import Daemon, script, start, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

LINKS = 100  # a 100-link site
ROUND_S = 10  # every link probed every 10 s
SAMPLES_PER_ENVELOPE = 10  # 100 links / 10 s, committed once a second (the batcher's linger)
UPLINK = "1mbit"


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
    path: Path, broker: tuple[str, int], outbox: Path, links: int, replay_rate: float | None = None
) -> None:
    replay = f", replay_rate: {replay_rate}" if replay_rate else ""
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


# -- one hour's backlog over 1 Mbit/s --------------------------------------------------------


class ArrivalClock:
    """Subscribes to the agent's samples; records each envelope's seq, lag and arrival."""

    def __init__(self, port: int, backlog_end: int) -> None:
        self.backlog_end = backlog_end
        self.live_lags: list[float] = []
        self.after_drain_lags: list[float] = []  # the same site once the backlog is gone
        self.drained = False
        self.backlog_arrivals = 0
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
        envelope = json.loads(message.payload)
        if envelope["seq"] < self.backlog_end:
            self.backlog_arrivals += 1
            return
        if self.first_live_at is None:
            self.first_live_at = time.monotonic()
        newest = max(sample["time"] for sample in envelope["samples"])
        lag = (time.time_ns() - newest) / 1e9
        (self.after_drain_lags if self.drained else self.live_lags).append(lag)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _limit(namespace: Namespace | None, device: str) -> None:
    prefix = [] if namespace is None else ["ip", "netns", "exec", namespace.name]
    subprocess.run(
        [*prefix, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", UPLINK,
         "burst", "16kb", "latency", "500ms"],
        check=True,
    )  # fmt: skip


def _backlog_left(outbox: Path, backlog_end: int) -> int:
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM envelopes WHERE seq < ?", (backlog_end,)).fetchone()[0]
        )


def prefill(outbox_path: Path, envelopes: int) -> tuple[int, int]:
    """One hour (or `envelopes` seconds) of the site's rounds, aged as if held by an outage;
    returns (seqs, payload bytes)."""
    start = time.time_ns() - (envelopes + 60) * 1_000_000_000
    outbox = Outbox(outbox_path, site=SITE, agent=AGENT)
    for batch in site_samples(envelopes, start):
        outbox.append(batch)
    stored = outbox.stored_bytes
    outbox.close()
    with sqlite3.connect(outbox_path) as db:
        db.execute("UPDATE envelopes SET created_ns = created_ns - 3600000000000")
    return envelopes, stored


def _p(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[int(share * (len(ordered) - 1))], 2) if ordered else None


def drain(
    workdir: Path,
    mosquitto_dir: Path,
    influxd: InfluxdServer,
    envelopes: int,
    *,
    baseline_s: float,
    replay_rate: float | None,
) -> dict:
    """Seconds to drain `envelopes` of backlog through 1 Mbit/s while 100 links keep probing;
    then `baseline_s` more of live data alone, for the live lag without a backlog."""
    with Namespace(unique_name("bench-site")) as site:
        pair = veth(None, site)
        _limit(None, pair.a_name)  # host -> site (acks)
        _limit(site, pair.b_name)  # site -> host (the uplink)
        site_port = free_port()
        broker = MosquittoServer(
            mosquitto_dir,
            max_queued_messages=100_000,
            extra_config=f"listener {site_port} {pair.a_v4.ip}",
        )
        with broker as mosquitto:
            outbox_path = workdir / "drain" / "outbox.db"
            backlog_end, backlog_bytes = prefill(outbox_path, envelopes)
            site_file = workdir / "drain-site.yaml"
            address = (str(pair.a_v4.ip), site_port)
            write_site_file(site_file, address, outbox_path, LINKS, replay_rate)
            with Collector(workdir, mosquitto, influxd):
                clock = ArrivalClock(mosquitto.port, backlog_end)
                agent = start(
                    ["ip", "netns", "exec", site.name, script("fieldmon-agent"), "run",
                     "--config", site_file],
                    workdir / "drain-agent.log",
                )  # fmt: skip
                started = time.monotonic()
                try:
                    while (left := _backlog_left(outbox_path, backlog_end)) > 0:
                        if not agent.running():
                            raise RuntimeError(f"the agent died; see {workdir}/drain-agent.log")
                        if time.monotonic() - started > 3600:
                            raise RuntimeError(f"{left} backlog envelopes left after an hour")
                        time.sleep(0.25)
                    elapsed = time.monotonic() - started
                    clock.drained = True
                    time.sleep(baseline_s)  # live data alone, for the lag without a backlog
                finally:
                    agent.stop(timeout=30)
                    clock.close()
    lags = clock.live_lags
    return {
        "replay_rate_per_s": replay_rate or OutboxConfig().replay_rate,
        "backlog_envelopes": envelopes,
        "backlog_samples": envelopes * SAMPLES_PER_ENVELOPE,
        "backlog_payload_mb": round(backlog_bytes / 1e6, 2),
        "drain_s": round(elapsed, 1),
        "drain_goodput_kbit_s": round(backlog_bytes * 8 / elapsed / 1000),
        "first_live_envelope_after_s": (
            round(clock.first_live_at - started, 1) if clock.first_live_at else None
        ),
        "live_envelopes_during_drain": len(lags),
        "live_lag_p50_s": _p(lags, 0.5),
        "live_lag_p95_s": _p(lags, 0.95),
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
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test < 1 min")
    parser.add_argument(
        "--replay-rate",
        type=float,
        help="the agent's outbox.replay_rate for the drain (default: the agent's default)",
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
    ceiling_n, sustained_n, backlog_n, write_s, baseline_s = (
        (2000, 200, 300, 600, 5.0) if args.quick else (20_000, 2000, 3600, 3600, 20.0)
    )
    batches = site_samples(max(ceiling_n, sustained_n), time.time_ns() - 86_400 * 10**9)
    payloads = [
        encode(Envelope(site=SITE, agent=AGENT, seq=i, sent_at=time.time_ns(), samples=batch))
        for i, batch in enumerate(batches[:ceiling_n])
    ]
    with tempfile.TemporaryDirectory(prefix="fieldmon-bench-outbox-") as tmp:
        workdir = Path(tmp)
        sites = workdir / "site_configs"
        sites.mkdir()
        # Every link the envelopes name: the collector refuses targets the site file does not.
        write_site_file(
            sites / f"{SITE}.yaml",
            ("127.0.0.1", 1883),
            workdir / "unused.db",
            SAMPLES_PER_ENVELOPE,
        )
        with (
            MosquittoServer(workdir / "mosquitto", max_queued_messages=100_000) as mosquitto,
            InfluxdServer(workdir / "influxd") as influxd,
        ):
            influxd.create_database("bench")
            ceiling = mqtt_ceiling(mosquitto.port, payloads)
            with Collector(workdir, mosquitto, influxd):
                sustained = asyncio.run(_sustained(workdir, mosquitto.port, batches[:sustained_n]))
            # The same with a collector that acks every 100 ms: the window's round trip shrinks.
            with Collector(workdir, mosquitto, influxd, flush_interval="100ms"):
                fast = asyncio.run(
                    _sustained(workdir, mosquitto.port, batches[:sustained_n], "fast")
                )
        with InfluxdServer(workdir / "influxd-drain") as influxd:
            influxd.create_database("bench")
            backlog = drain(
                workdir,
                workdir / "mosquitto-drain",
                influxd,
                backlog_n,
                baseline_s=baseline_s,
                replay_rate=args.replay_rate,
            )
        cost = write_cost(workdir, write_s)
    result = {
        "envelope_bytes": round(statistics.mean(map(len, payloads))),
        "samples_per_envelope": SAMPLES_PER_ENVELOPE,
        "mqtt_ceiling_envelopes_per_s": round(ceiling),
        "outbox_sustained_envelopes_per_s": round(sustained, 1),
        "outbox_sustained_samples_per_s": round(sustained * SAMPLES_PER_ENVELOPE),
        "ratio_to_mqtt_ceiling": round(sustained / ceiling, 3),
        "outbox_sustained_acks_every_100ms_envelopes_per_s": round(fast, 1),
        **{f"drain_{key}": value for key, value in backlog.items()},
        **{f"disk_{key}": value for key, value in cost.items()},
        "quick": args.quick,
        "cpus": os.cpu_count(),
    }
    print_result(result)


if __name__ == "__main__":
    main()
