"""Agent faults on real servers: kill -9 at random moments, and a broker stopped for 3 s.

How the test knows what the agent committed (the outbox deletes on ack, so it cannot simply
be read at the end): an observer client subscribes (QoS 1, persistent session) to the agent's
samples topic before the agent starts. An envelope leaves the outbox only after a collector
acknowledged it, and the collector can only have received it through the broker, so every
committed envelope is either seen by the observer or still in the outbox when the test ends.
The checks: the observed seqs plus those left in the outbox are exactly 0..next_seq-1 (none
lost, none skipped); a seq seen twice carried the same samples (a re-send, never a reuse);
no (target, time) key was committed under two seqs; and influxd holds exactly the observed
keys, once each.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

BIN = Path(sys.executable).parent
SITE, AGENT = "fault-site", "fault-pi"
TARGETS = ("gw-a", "gw-b")
INTERVAL_S = 0.2
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root"),
]


class Observer:
    """Records every envelope published on the agent's samples topic, across broker restarts."""

    def __init__(self, port: int) -> None:
        self.envelopes: dict[int, list[str]] = {}  # seq -> each delivery's samples, as JSON
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fault-observer", protocol=mqtt.MQTTv5
        )
        self._client.on_message = self._record
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 300  # the broker keeps our queue while we are away
        self._client.connect("127.0.0.1", port, clean_start=False, properties=properties)
        self._client.subscribe(f"fieldmon/v1/{SITE}/{AGENT}/samples", qos=1)
        self._client.loop_start()
        assert self._subscribed.wait(5)

    def _record(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        envelope = json.loads(message.payload)
        with self._lock:
            self.envelopes.setdefault(envelope["seq"], []).append(
                json.dumps(envelope["samples"], sort_keys=True)
            )

    def snapshot(self) -> dict[int, list[str]]:
        with self._lock:
            return {seq: list(copies) for seq, copies in self.envelopes.items()}

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Rig:
    """Site file, collector and agent command lines for one test."""

    def __init__(self, tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, db: str):
        self.tmp = tmp_path
        self.outbox = tmp_path / "agent" / "outbox.db"
        sites = tmp_path / "site_configs"
        sites.mkdir()
        links = "\n".join(
            f"  - {{name: {name}, address: 127.0.0.1, role: gateway, interval: 200ms, count: 2,"
            f" spacing: 20ms, timeout: 100ms}}"
            for name in TARGETS
        )
        self.site_file = sites / f"{SITE}.yaml"
        self.site_file.write_text(
            f"site: {SITE}\nname: Fault site\nparent_hospital: test-hospital\n"
            f"agent:\n  id: {AGENT}\n  broker: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
            f"  outbox: {{path: {self.outbox}}}\n  linger: 100ms\nlinks:\n{links}\n",
            encoding="utf-8",
        )
        collector_file = tmp_path / "collector.yaml"
        collector_file.write_text(
            f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: fault-collector}}\n"
            f'influxdb: {{api: v1, url: "{influxd.url}", database: {db}, '
            "flush_interval: 200ms}\n"
            f"site_configs: ./site_configs\n"
            f'http: {{listen: "127.0.0.1:{free_port()}"}}\n'
            "data_dir: ./collector-data\n",
            encoding="utf-8",
        )
        self.collector_args = [
            str(BIN / "fieldmon-collector"),
            "run",
            "--config",
            str(collector_file),
        ]
        self.influxd, self.db = influxd, db

    def agent(self) -> subprocess.Popen[bytes]:
        return _start(
            [str(BIN / "fieldmon-agent"), "run", "--config", str(self.site_file)],
            self.tmp / "agent.log",
        )

    def logs(self) -> str:
        return (self.tmp / "agent.log").read_text()[-3000:]

    def influx_keys(self) -> list[tuple[str, int]]:
        rows = self.influxd.query(
            f"SELECT sent FROM \"link\" WHERE site = '{SITE}' GROUP BY target", db=self.db
        )
        return [(str(row["target"]), int(row["time"])) for row in rows]

    def outbox_state(self) -> tuple[int, set[int]]:
        with sqlite3.connect(self.outbox) as db:
            (next_seq,) = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            left = {seq for (seq,) in db.execute("SELECT seq FROM envelopes")}
        return int(next_seq), left


@pytest.fixture
def rig(
    tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, influx_db: str
) -> Iterator[Rig]:
    yield Rig(tmp_path, mosquitto, influxd, influx_db)


def _check_accounting(rig: Rig, observer: Observer) -> dict[str, list[int]]:
    """Every committed seq accounted for, once; influxd holds every observed key once."""
    next_seq, left = rig.outbox_state()
    seen = observer.snapshot()
    assert set(seen) | left == set(range(next_seq)), rig.logs()
    for seq, copies in seen.items():
        assert len(set(copies)) == 1, f"seq {seq} was reused for different samples"
    committed: list[tuple[str, int]] = [
        (sample["tags"]["target"], sample["time"])
        for copies in seen.values()
        for sample in json.loads(copies[0])
        if sample["measurement"] == "link"  # the host probe's rows are keyed by time alone
    ]
    assert len(committed) == len(set(committed)), "a sample was committed under two seqs"
    expected = sorted(committed)
    _wait_for(lambda: sorted(rig.influx_keys()) == expected, 20, "influxd to hold every key")
    keys = rig.influx_keys()
    assert len(keys) == len(set(keys))
    by_target: dict[str, list[int]] = {target: [] for target in TARGETS}
    for target, at in keys:
        by_target[target].append(at)
    return {target: sorted(times) for target, times in by_target.items()}


def test_agent_killed_at_random_moments_loses_and_duplicates_nothing(
    rig: Rig, mosquitto: MosquittoServer
) -> None:
    seed = random.randrange(2**32)
    chance = random.Random(seed)
    assert mosquitto.port is not None
    observer = Observer(mosquitto.port)
    collector = _start(rig.collector_args, rig.tmp / "collector.log")
    try:
        for _ in range(5):
            agent = rig.agent()
            time.sleep(chance.uniform(0.8, 2.5))
            agent.kill()  # SIGKILL this PID, mid-whatever it was doing
            agent.wait()
        agent = rig.agent()
        _wait_for(lambda: len(observer.snapshot()) >= 10, 20, "envelopes after the restarts")
        time.sleep(1.0)
        assert _stop(agent) == 0, rig.logs()
        by_target = _check_accounting(rig, observer)
        resent = sum(len(copies) - 1 for copies in observer.snapshot().values())
    finally:
        observer.close()
        _stop(collector)
    assert all(by_target.values()), f"seed {seed}: a target has no rows"
    print(f"seed {seed}: {rig.outbox_state()[0]} seqs, {resent} re-sent deliveries")


def test_broker_stopped_for_3s_leaves_no_gap(rig: Rig, mosquitto: MosquittoServer) -> None:
    assert mosquitto.port is not None
    observer = Observer(mosquitto.port)
    collector = _start(rig.collector_args, rig.tmp / "collector.log")
    agent = rig.agent()
    try:
        _wait_for(lambda: len(observer.snapshot()) >= 5, 20, "the first envelopes")
        stopped_ns = time.time_ns()
        mosquitto.stop()
        time.sleep(3.0)
        mosquitto.start()
        restarted_ns = time.time_ns()
        _wait_for(
            lambda: any(
                json.loads(c[0])[0]["time"] > restarted_ns for c in observer.snapshot().values()
            ),
            20,
            "envelopes measured after the restart",
        )
        time.sleep(1.0)
        assert _stop(agent) == 0, rig.logs()
        by_target = _check_accounting(rig, observer)
    finally:
        observer.close()
        _stop(collector)
    for target, times in by_target.items():
        assert times[0] < stopped_ns and times[-1] > restarted_ns, target
        # Rounds are 200 ms apart; the outage lasted 3 s, so a lost stretch would show as a
        # hole of seconds. 1 s leaves room for a scheduler hiccup, none for lost rounds.
        widest = max(b - a for a, b in itertools.pairwise(times))
        assert widest < 1_000_000_000, f"{target}: a {widest / 1e9:.2f} s hole"
