"""bench/ingest: envelopes through Mosquitto into the collector and InfluxDB, end to end.

Each rate is a backlog drain, the collector's real busy hour (a site's uplink returns, the
collector restarts): the envelopes are first queued in Mosquitto for a persistent session, then
the consumer connects and the clock runs until the last one is done. So the publisher's own CPU
is not in any figure, and all three are measured in the same run on the same data:
- Mosquitto alone: a paho QoS 1 subscriber drains the queue (auto-ack, does nothing else);
- InfluxDB alone: the same line protocol POSTed to influxd's /write in batches of 5000;
- fieldmon: `fieldmon-collector run` drains the queue into influxd (decode, validate, encode,
  write, ack), until its /metrics reports every sample written.
The servers (influxd, Mosquitto) run on one core and the consumer on the other, the same way in
every measurement, so the ratio compares like with like: the paho subscriber, the /write client
and the collector each get the core the servers do not use (`--server-core`, `--client-core`).
The collector's target is at least 0.8 of influxd alone, and at most 5 µs of CPU per sample
(7 µs with the alert role in the same process).

Run: .venv/bin/python -m bench.ingest [--envelopes N] [--samples-per-envelope K]
     [--roles ingest|ingest,alerts] [--collector-from CHECKOUT ...]
`--collector-from` runs another checkout's collector (its .venv) on the same queue and servers
after this one's, for before / after figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._report import print_result
from fieldmon.collector.storage.lineprotocol import encode_samples
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.lab.process import Daemon, http_get, script, start, wait_http, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

SITE, AGENT = "bench-site", "bench-pi"
TOPIC = f"fieldmon/v1/{SITE}/{AGENT}/samples"


def realistic_envelopes(count: int, per_envelope: int) -> list[Envelope]:
    """`link` rows like a busy site's: 100 targets, full statistics, distinct times."""
    rng = random.Random(7)
    start = time.time_ns() - 86_400 * 10**9
    envelopes = []
    for seq in range(count):
        samples = []
        for i in range(per_envelope):
            rtts = sorted(rng.uniform(1, 80) for _ in range(5))
            samples.append(
                Sample(
                    measurement="link",
                    tags={
                        "site": SITE,
                        "agent": AGENT,
                        "target": f"link-{i % 100:03d}",
                        "role": "parent" if i % 100 == 0 else "ap",
                    },
                    fields={
                        "sent": 10,
                        "received": 10,
                        "loss_pct": 0.0,
                        "rtt_min_ms": round(rtts[0], 3),
                        "rtt_avg_ms": round(sum(rtts) / 5, 3),
                        "rtt_p50_ms": round(rtts[2], 3),
                        "rtt_p95_ms": round(rtts[4], 3),
                        "rtt_max_ms": round(rtts[4], 3),
                        "jitter_ms": round(rng.uniform(0, 5), 3),
                        "mos": round(rng.uniform(3.5, 4.4), 3),
                    },
                    time=start + (seq * per_envelope + i) * 1_000_000,
                )
            )
        envelopes.append(
            Envelope(site=SITE, agent=AGENT, seq=seq, sent_at=time.time_ns(), samples=samples)
        )
    return envelopes


def site_file_text(broker_port: int) -> str:
    """The bench site's file: its agent and the 100 links the envelopes name."""
    return (
        f"site: {SITE}\nname: Bench\nparent_hospital: bench-hospital\n"
        f"agent: {{id: {AGENT}, broker: {{host: 127.0.0.1, port: {broker_port}}}}}\n"
        # The links the envelopes name: the collector refuses a target the site file does not.
        "links:\n"
        + "".join(
            f"  - {{name: link-{i:03d}, address: 192.0.2.1, role: {role}}}\n"
            for i, role in enumerate(["parent"] + ["ap"] * 99)
        )
    )


def _client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(port: int, payloads: list[bytes], client_id: str) -> float:
    """Publish QoS 1 with a bounded in-flight window; returns the seconds it took."""
    client = _client(port, client_id)
    window = threading.Semaphore(1000)
    client.on_publish = lambda *_args: window.release()
    started = time.perf_counter()
    for payload in payloads:
        window.acquire()
        client.publish(TOPIC, payload, qos=1)
    for _ in range(1000):
        window.acquire()
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return elapsed


def _persistent_client(port: int, client_id: str, clean_start: bool) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=clean_start, properties=properties)
    return client


def mosquitto_ceiling(port: int, payloads: list[bytes]) -> float:
    """Envelopes/s a QoS 1 subscriber drains from its queued persistent session."""
    subscriber = _persistent_client(port, "bench-ceiling-sub", clean_start=True)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.loop_start()
    subscriber.subscribe(TOPIC, qos=1)
    if not subscribed.wait(10):  # the broker queues for the session from its SUBACK on
        raise RuntimeError("no SUBACK from Mosquitto within 10 s")
    subscriber.disconnect()
    subscriber.loop_stop()
    publish_all(port, payloads, "bench-ceiling-pub")

    done = threading.Event()
    received = [0]

    def on_message(*_args: object) -> None:
        received[0] += 1
        if received[0] == len(payloads):
            done.set()

    started = time.perf_counter()
    subscriber = _persistent_client(port, "bench-ceiling-sub", clean_start=False)
    subscriber.on_message = on_message
    subscriber.loop_start()
    if not done.wait(timeout=600):
        raise RuntimeError(f"the subscriber drained only {received[0]} of {len(payloads)}")
    elapsed = time.perf_counter() - started
    subscriber.loop_stop()
    subscriber.disconnect()
    return len(payloads) / elapsed


async def influx_ceiling(url: str, database: str, bodies: list[bytes], points: int) -> float:
    """Points/s POSTed to /write from one client, batches of the collector's size."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for body in bodies:
            async with session.post(
                f"{url}/write", params={"db": database, "precision": "ns"}, data=body
            ) as reply:
                if reply.status != 204:
                    raise RuntimeError(f"influxd /write answered {reply.status}")
        return points / (time.perf_counter() - started)


def _written(http_port: int) -> float:
    # A collector busy with a burst answers late; on a loaded host that is seconds, not a fault.
    _status, body = http_get(f"http://127.0.0.1:{http_port}/metrics", timeout=60)
    for line in body.decode().splitlines():
        if line.startswith("fieldmon_points_written_total"):
            return float(line.split()[-1])
    return 0.0


def _stop(collector: Daemon) -> None:
    """SIGTERM and wait; a collector that does not stop is a bug worth its log, then killed."""
    if collector.stop(timeout=30) == -signal.SIGKILL:
        message = f"the collector ignored SIGTERM for 30 s; its log ends:\n{collector.tail()}"
        raise RuntimeError(message)


def end_to_end(
    workdir: Path,
    mosquitto: MosquittoServer,
    influxd: InfluxdServer,
    payloads: list[bytes],
    samples: int,
    *,
    roles: list[str],
    collector: Path,
    cores: Cores,
) -> tuple[float, float]:
    """Samples/s the collector drains from its queued session into influxd; its CPU share."""
    workdir.mkdir()
    sites = workdir / "site_configs"
    sites.mkdir()
    (sites / f"{SITE}.yaml").write_text(site_file_text(mosquitto.port))
    http_port = free_port()
    config = workdir / "collector.yaml"
    # Each run its own client id and database: a fresh session, and no points already there.
    run_name = workdir.name.replace("-", "_")
    client_id = f"bench_collector_{run_name}"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: {client_id}}}\n"
        f'influxdb: {{api: v1, url: "{influxd.url}", database: bench_e2e_{run_name}}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        "data_dir: ./collector-data\n"
        f"roles: [{', '.join(roles)}]\n"
    )
    # On the consumer's core: the collector inherits this process's affinity.
    os.sched_setaffinity(0, {cores.client})
    command = [collector, "run", "--config", config]
    log = workdir / "collector.log"
    # First run: the collector creates its persistent session and subscription, then stops.
    collector = start(command, log)
    try:
        wait_subscribed(http_port, daemons=collector)
    finally:
        _stop(collector)
    publish_all(mosquitto.port, payloads, "bench-agent")

    collector = start(command, log)
    try:
        process = psutil.Process(collector.pid)
        if os.environ.get("FIELDMON_BENCH_PROFILE"):
            # Developer aid: a py-spy profile of the collector while it drains.
            subprocess.Popen(
                [
                    script("py-spy"),
                    "record",
                    "-p",
                    str(collector.pid),
                    "-o",
                    os.environ["FIELDMON_BENCH_PROFILE"],
                    "-d",
                    "10",
                    "-f",
                    "raw",
                    # Per thread (paho's network thread beside the event loop), waits included.
                    "--threads",
                    "--idle",
                ]
            )
        # The clock starts once the process is up (HTTP answers before MQTT connects), so
        # Python's start-up is not counted against the drain. This process only watches, from
        # the servers' core, so the collector has its core to itself as the ceilings' clients do.
        wait_http(f"http://127.0.0.1:{http_port}/metrics", interval=0.05, daemons=collector)
        os.sched_setaffinity(0, {cores.server})
        started = time.perf_counter()
        cpu_before = sum(process.cpu_times()[:2])
        last, last_change = 0.0, time.perf_counter()
        while (written := _written(http_port)) < samples:
            if written != last:
                last, last_change = written, time.perf_counter()
            elif time.perf_counter() - last_change > 30:
                raise RuntimeError(
                    f"stalled at {written:.0f} of {samples} points written; see {workdir}"
                )
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = sum(process.cpu_times()[:2]) - cpu_before
    finally:
        os.sched_setaffinity(0, {cores.client})
        _stop(collector)
    return samples / elapsed, cpu / elapsed


@dataclass(frozen=True)
class Cores:
    """Where the servers run and where their consumer runs (never the same core)."""

    server: int
    client: int

    def check(self) -> None:
        """Both cores exist for this process and differ; a clear error otherwise."""
        usable = os.sched_getaffinity(0)
        if self.server == self.client or not {self.server, self.client} <= usable:
            raise SystemExit(
                f"--server-core {self.server} and --client-core {self.client} must be two "
                f"different cores of {sorted(usable)}"
            )


def main() -> None:
    """Run the three measurements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envelopes", type=int, default=2000)
    parser.add_argument("--samples-per-envelope", type=int, default=100)
    parser.add_argument("--server-core", type=int, default=0, help="influxd and Mosquitto")
    parser.add_argument(
        "--client-core", type=int, default=1, help="the consumer: subscriber, writer, collector"
    )
    parser.add_argument(
        "--collector-from",
        type=Path,
        action="append",
        default=[],
        help="also run the collector of this checkout (its .venv), after this one's",
    )
    parser.add_argument(
        "--roles",
        default="ingest",
        help="collector roles: ingest (what this measures; scales out in a shared group) or "
        "ingest,alerts (one process judging every round too)",
    )
    args = parser.parse_args()
    cores = Cores(args.server_core, args.client_core)
    cores.check()
    collectors = {"this": script("fieldmon-collector")}
    for checkout in args.collector_from:
        collectors[checkout.name] = checkout.resolve() / ".venv" / "bin" / "fieldmon-collector"
        if not collectors[checkout.name].exists():
            raise SystemExit(f"{collectors[checkout.name]} does not exist")
    envelopes = realistic_envelopes(args.envelopes, args.samples_per_envelope)
    payloads = [encode(envelope) for envelope in envelopes]
    samples = args.envelopes * args.samples_per_envelope
    all_samples = [sample for envelope in envelopes for sample in envelope.samples]
    bodies = [encode_samples(all_samples[i : i + 5000]) for i in range(0, samples, 5000)]

    with tempfile.TemporaryDirectory(prefix="fieldmon-bench-") as tmp:
        workdir = Path(tmp)
        # Sized like deploy/mosquitto.conf: stock Mosquitto drops past 1000 queued per client.
        mosquitto_server = MosquittoServer(workdir / "mosquitto", max_queued_messages=100_000)
        # The servers inherit the affinity they start with, every thread of them.
        os.sched_setaffinity(0, {cores.server})
        with mosquitto_server as mosquitto, InfluxdServer(workdir / "influxd") as influxd:
            os.sched_setaffinity(0, {cores.client})
            influxd.create_database("bench_ceiling")
            mqtt_rate = mosquitto_ceiling(mosquitto.port, payloads) * args.samples_per_envelope
            influx_rate = asyncio.run(influx_ceiling(influxd.url, "bench_ceiling", bodies, samples))
            runs = {
                name: end_to_end(
                    workdir / f"run-{index}",
                    mosquitto,
                    influxd,
                    payloads,
                    samples,
                    roles=args.roles.split(","),
                    collector=collector,
                    cores=cores,
                )
                for index, (name, collector) in enumerate(collectors.items())
            }
    slower = min(mqtt_rate, influx_rate)
    result: dict[str, object] = {
        "envelopes": args.envelopes,
        "samples_per_envelope": args.samples_per_envelope,
        "payload_bytes_avg": round(sum(map(len, payloads)) / len(payloads)),
        "cores_servers_consumer": f"{cores.server},{cores.client}",
        "mosquitto_alone_samples_per_s": round(mqtt_rate),
        "influxd_write_alone_points_per_s": round(influx_rate),
        "collector_roles": args.roles,
    }
    for name, (e2e_rate, cpu_share) in runs.items():
        prefix = "" if name == "this" else f"{name}_"
        result[f"{prefix}fieldmon_end_to_end_samples_per_s"] = round(e2e_rate)
        result[f"{prefix}collector_cpu_cores"] = round(cpu_share, 2)
        result[f"{prefix}collector_cpu_us_per_sample"] = round(cpu_share / e2e_rate * 1e6, 2)
        result[f"{prefix}ratio_to_slower_ceiling"] = round(e2e_rate / slower, 2)
    result["cpus"] = os.cpu_count()
    print_result(result)


if __name__ == "__main__":
    main()
