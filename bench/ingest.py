"""bench/ingest: envelopes through Mosquitto into the collector and InfluxDB, end to end.

Each rate is a backlog drain, the collector's real busy hour (a site's uplink returns, the
collector restarts): the envelopes are first queued in Mosquitto for a persistent session, then
the consumer connects and the clock runs until the last one is done. So the publisher's own CPU
is not in any figure, and all three are measured in the same run on the same data:
- Mosquitto alone: a paho QoS 1 subscriber drains the queue (auto-ack, does nothing else);
- InfluxDB alone: the same line protocol POSTed to influxd's /write in batches of 5000;
- fieldmon: `fieldmon-collector run` drains the queue into influxd (decode, validate, encode,
  write, ack), until its /metrics reports every sample written.
The collector's target is at least 50 % of the slower ceiling on one core.

Run: .venv/bin/python -m bench.ingest [--envelopes N] [--samples-per-envelope K]
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
    _status, body = http_get(f"http://127.0.0.1:{http_port}/metrics")
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
) -> tuple[float, float]:
    """Samples/s the collector drains from its queued session into influxd; its CPU share."""
    sites = workdir / "site_configs"
    sites.mkdir()
    (sites / f"{SITE}.yaml").write_text(
        f"site: {SITE}\nname: Bench\nparent_hospital: bench-hospital\n"
        f"agent: {{id: {AGENT}, broker: {{host: 127.0.0.1, port: {mosquitto.port}}}}}\n"
        # The links the envelopes name: the collector refuses a target the site file does not.
        "links:\n"
        + "".join(
            f"  - {{name: link-{i:03d}, address: 192.0.2.1, role: {role}}}\n"
            for i, role in enumerate(["parent"] + ["ap"] * 99)
        )
    )
    http_port = free_port()
    config = workdir / "collector.yaml"
    config.write_text(
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: bench-collector}}\n"
        f'influxdb: {{api: v1, url: "{influxd.url}", database: bench_e2e}}\n'
        f"site_configs: ./site_configs\nhttp: {{listen: '127.0.0.1:{http_port}'}}\n"
        "data_dir: ./collector-data\n"
        f"roles: [{', '.join(roles)}]\n"
    )
    command = [script("fieldmon-collector"), "run", "--config", config]
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
                    "py-spy",
                    "record",
                    "-p",
                    str(collector.pid),
                    "-o",
                    os.environ["FIELDMON_BENCH_PROFILE"],
                    "-d",
                    "10",
                    "-f",
                    "raw",
                ]
            )
        # The clock starts once the process is up (HTTP answers before MQTT connects), so
        # Python's start-up is not counted against the drain.
        wait_http(f"http://127.0.0.1:{http_port}/metrics", interval=0.05, daemons=collector)
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
        _stop(collector)
    return samples / elapsed, cpu / elapsed


def main() -> None:
    """Run the three measurements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envelopes", type=int, default=2000)
    parser.add_argument("--samples-per-envelope", type=int, default=100)
    parser.add_argument(
        "--roles",
        default="ingest",
        help="collector roles: ingest (what this measures; scales out in a shared group) or "
        "ingest,alerts (one process judging every round too)",
    )
    args = parser.parse_args()
    envelopes = realistic_envelopes(args.envelopes, args.samples_per_envelope)
    payloads = [encode(envelope) for envelope in envelopes]
    samples = args.envelopes * args.samples_per_envelope
    all_samples = [sample for envelope in envelopes for sample in envelope.samples]
    bodies = [encode_samples(all_samples[i : i + 5000]) for i in range(0, samples, 5000)]

    with tempfile.TemporaryDirectory(prefix="fieldmon-bench-") as tmp:
        workdir = Path(tmp)
        # Sized like deploy/mosquitto.conf: stock Mosquitto drops past 1000 queued per client.
        mosquitto_server = MosquittoServer(workdir / "mosquitto", max_queued_messages=100_000)
        with mosquitto_server as mosquitto, InfluxdServer(workdir / "influxd") as influxd:
            influxd.create_database("bench_ceiling")
            mqtt_rate = mosquitto_ceiling(mosquitto.port, payloads) * args.samples_per_envelope
            influx_rate = asyncio.run(influx_ceiling(influxd.url, "bench_ceiling", bodies, samples))
            e2e_rate, cpu_share = end_to_end(
                workdir, mosquitto, influxd, payloads, samples, roles=args.roles.split(",")
            )
    slower = min(mqtt_rate, influx_rate)
    result = {
        "envelopes": args.envelopes,
        "samples_per_envelope": args.samples_per_envelope,
        "payload_bytes_avg": round(sum(map(len, payloads)) / len(payloads)),
        "mosquitto_alone_samples_per_s": round(mqtt_rate),
        "influxd_write_alone_points_per_s": round(influx_rate),
        "fieldmon_end_to_end_samples_per_s": round(e2e_rate),
        "collector_roles": args.roles,
        "collector_cpu_cores": round(cpu_share, 2),
        "ratio_to_slower_ceiling": round(e2e_rate / slower, 2),
        "cpus": os.cpu_count(),
    }
    print_result(result)


if __name__ == "__main__":
    main()
