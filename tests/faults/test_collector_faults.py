"""Collector-side faults on real servers: InfluxDB down, InfluxDB answering 503, the collector
killed with -9 at 20 random moments, and the broker killed with -9 while the collector is away.

Real Mosquitto, real influxd, and the agent and collector as subprocesses (200 ms rounds). How
each test knows what the agent committed: an observer client subscribes to the agent's samples
topic before the agent starts (and again after every reconnect). An envelope leaves the agent's
outbox only when a collector acknowledged it, and a collector can only have received it through
the broker, so every committed envelope is seen by the observer or still in the outbox at the
end. The checks, by InfluxQL: every (agent, target, time) key the agent committed is in influxd
exactly once, nothing else is, and the count per target equals the agent's own; and the agent's
outbox shows that everything from before the recovery was acknowledged (deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from fieldmon.lab.process import Daemon, http_get, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

SITE, AGENT = "spool-site", "spool-pi"
TARGETS = ("gw-a", "gw-b")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root"),
]


class Observer:
    """Records every envelope on the agent's samples topic; subscribes again on every connect
    (a broker killed with -9 forgets our session)."""

    def __init__(self, port: int) -> None:
        self.envelopes: dict[int, list[str]] = {}  # seq -> each delivery's samples, as JSON
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="spool-observer", protocol=mqtt.MQTTv5
        )
        self._client.on_message = self._record
        self._client.on_connect = self._subscribe
        self._client.on_subscribe = lambda *_args: self.subscribed.set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 300
        self._client.connect("127.0.0.1", port, clean_start=False, properties=properties)
        self._client.loop_start()
        assert self.subscribed.wait(5)

    def _subscribe(self, client: mqtt.Client, *_args: object) -> None:
        # Envelopes of `event` rows (the agent's state changes) travel on the events topic.
        client.subscribe(
            [(f"fieldmon/v1/{SITE}/{AGENT}/samples", 1), (f"fieldmon/v1/{SITE}/{AGENT}/events", 1)]
        )

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


class FlakyProxy:
    """An HTTP proxy to influxd that answers /write with 503 while `failing` (every other one
    with Retry-After: 1), as an overloaded InfluxDB or a load balancer in front of it would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failing = False
        self.refused = 0
        self.refused_with_retry_after = 0
        self.forwarded_writes = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="flaky-proxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failing and request.path == "/write":
            self.refused += 1
            headers = {}
            if self.refused % 2:
                headers["Retry-After"] = "1"
                self.refused_with_retry_after += 1
            return web.json_response(
                {"error": "overloaded (test proxy)"}, status=503, headers=headers
            )
        assert self._session is not None
        forward = {
            key: value
            for key, value in request.headers.items()
            if key.lower() in ("content-type", "authorization")
        }
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=forward
        ) as reply:
            answer = await reply.read()
            if request.path == "/write" and reply.status == 204:
                self.forwarded_writes += 1
            return web.Response(
                status=reply.status,
                body=answer,
                content_type=reply.content_type if answer else None,
            )

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start(self) -> FlakyProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class Rig:
    """Site file, collector file (its InfluxDB URL chosen by the test) and the processes."""

    def __init__(
        self, tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer, db: str
    ) -> None:
        assert mosquitto.port is not None
        self.tmp, self.influxd, self.db = tmp_path, influxd, db
        self.outbox = tmp_path / "agent" / "outbox.db"
        self.spool_dir = tmp_path / "collector-data" / "spool"
        self.http_port = free_port()
        self.mqtt_port = mosquitto.port
        sites = tmp_path / "site_configs"
        sites.mkdir()
        links = "\n".join(
            f"  - {{name: {name}, address: 127.0.0.1, role: gateway, interval: 200ms, count: 2,"
            f" spacing: 20ms, timeout: 100ms}}"
            for name in TARGETS
        )
        self.site_file = sites / f"{SITE}.yaml"
        self.site_file.write_text(
            f"site: {SITE}\nname: Spool site\nparent_hospital: test-hospital\n"
            f"agent:\n  id: {AGENT}\n  broker: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
            f"  outbox: {{path: {self.outbox}}}\n  linger: 100ms\nlinks:\n{links}\n",
            encoding="utf-8",
        )
        self.agent: Daemon | None = None
        self.collector: Daemon | None = None

    def write_collector_config(self, influx_url: str) -> Path:
        path = self.tmp / "collector.yaml"
        path.write_text(
            f"broker: {{host: 127.0.0.1, port: {self.mqtt_port}, client_id: spool-collector}}\n"
            f'influxdb: {{api: v1, url: "{influx_url}", database: {self.db}, '
            "flush_interval: 200ms, timeout: 2s}\n"
            "site_configs: ./site_configs\n"
            "roles: [ingest]\n"
            f'http: {{listen: "127.0.0.1:{self.http_port}"}}\n'
            "data_dir: ./collector-data\n"
            "spool: {max_mb: 64, retry_budget: 300ms}\n",
            encoding="utf-8",
        )
        return path

    def start_collector(
        self, influx_url: str, *, until: Literal["connected", "subscribed"] = "subscribed"
    ) -> Daemon:
        """Start a collector and return once it is `connected` to the broker or `subscribed`
        (the broker granted its SUBSCRIBE: before that it keeps nothing for the session)."""
        config = self.write_collector_config(influx_url)
        self.collector = collector = start(
            [script("fieldmon-collector"), "run", "--config", config], self.tmp / "collector.log"
        )
        if until == "connected":
            wait_for(
                lambda: "connected to broker" in collector.output(),
                "the collector to connect",
                20,
                daemons=collector,
            )
        else:
            wait_subscribed(self.http_port, 20, daemons=collector)
        return collector

    def start_agent(self) -> Daemon:
        self.agent = start(
            [script("fieldmon-agent"), "run", "--config", self.site_file], self.tmp / "agent.log"
        )
        return self.agent

    def stop_all(self) -> None:
        for process in (self.agent, self.collector):
            if process is not None:
                process.kill()

    def logs(self) -> str:
        parts = []
        for name in ("agent.log", "collector.log"):
            path = self.tmp / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text()[-3000:]}")
        return "\n".join(parts)

    def collector_log(self) -> str:
        return (self.tmp / "collector.log").read_text()

    def metrics(self) -> dict[str, float]:
        """The collector's /metrics, unlabelled samples by name ({} while it is not serving)."""
        try:
            _status, body = http_get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2)
        except OSError:
            return {}
        text = body.decode()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.labels
        }

    def outbox_state(self) -> tuple[int, set[int]]:
        """The agent's next seq and the seqs still waiting for an ack."""
        with contextlib.closing(sqlite3.connect(self.outbox, timeout=10)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            left = {seq for (seq,) in db.execute("SELECT seq FROM envelopes")}
        return (int(row[0]) if row else 0), left

    def wait_acked_through(self, seq: int, timeout: float, what: str) -> None:
        """Until the agent has deleted every seq up to `seq`: a collector acknowledged them."""
        wait_for(lambda: all(s > seq for s in self.outbox_state()[1]), what, timeout)

    def spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.seg")) if self.spool_dir.exists() else []

    def influx_keys(self) -> list[tuple[str, str, int]]:
        rows = self.influxd.query(
            f"SELECT sent FROM \"link\" WHERE site = '{SITE}' GROUP BY agent, target", db=self.db
        )
        return [(str(row["agent"]), str(row["target"]), int(row["time"])) for row in rows]


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoServer, influxd: InfluxdServer) -> Iterator[Rig]:
    """A rig on the session influxd with a fresh database."""
    db = f"spool_{os.getpid()}_{random.randrange(1 << 30)}"
    influxd.create_database(db)
    rig = Rig(tmp_path, mosquitto, influxd, db)
    try:
        yield rig
    finally:
        rig.stop_all()
        with contextlib.suppress(Exception):
            influxd.query(f'DROP DATABASE "{db}"')


def _check_every_key_once(rig: Rig, observer: Observer) -> dict[str, int]:
    """Stop the agent; every committed key is in influxd once, counts equal the agent's."""
    assert rig.agent is not None
    assert rig.agent.stop() == 0, rig.logs()
    next_seq, left = rig.outbox_state()
    seen = observer.snapshot()
    assert set(seen) | left == set(range(next_seq)), rig.logs()
    for seq, copies in seen.items():
        assert len(set(copies)) == 1, f"seq {seq} was reused for different samples"
    committed = [
        (sample["tags"]["agent"], sample["tags"]["target"], sample["time"])
        for copies in seen.values()
        for sample in json.loads(copies[0])
        if sample["measurement"] == "link"
    ]
    assert len(committed) == len(set(committed)), "a sample was committed under two seqs"
    expected = sorted(committed)
    wait_for(lambda: sorted(rig.influx_keys()) == expected, "influxd to hold every key", 30)
    keys = rig.influx_keys()
    assert len(keys) == len(set(keys)), "a key is stored twice (in two series)"
    per_target = {target: sum(1 for k in keys if k[1] == target) for target in TARGETS}
    assert per_target == {target: sum(1 for k in committed if k[1] == target) for target in TARGETS}
    assert all(per_target.values()), per_target
    return per_target


def _spool_drained(rig: Rig) -> bool:
    metrics = rig.metrics()
    return (
        metrics.get("fieldmon_spool_batches_spooled_total", 0) > 0
        and metrics.get("fieldmon_spool_batches_drained_total")
        == metrics.get("fieldmon_spool_batches_spooled_total")
        and metrics.get("fieldmon_spool_bytes") == 0
    )


def test_influxdb_stopped_then_restarted_spools_acks_and_drains(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    influxd = InfluxdServer(tmp_path / "own-influxd").start()  # ours alone: we stop it
    db = "spooltest"
    influxd.create_database(db)
    rig = Rig(tmp_path, mosquitto, influxd, db)
    observer = Observer(rig.mqtt_port)
    try:
        rig.start_collector(influxd.url)
        rig.start_agent()
        wait_for(lambda: len(rig.influx_keys()) >= 10, "the first rows in influxd", 30)
        influxd.stop()
        time.sleep(1.5)  # rounds measured while InfluxDB is down
        during = rig.outbox_state()[0] - 1
        # The spool makes batches durable, so they are acknowledged with InfluxDB still down.
        rig.wait_acked_through(during, 10, "acks while InfluxDB is down")
        assert rig.spool_files(), "nothing was spooled"
        spooled = rig.metrics()["fieldmon_spool_batches_spooled_total"]
        assert spooled > 0 and rig.metrics()["fieldmon_spool_bytes"] > 0
        time.sleep(1.0)  # more rounds into the spool while InfluxDB stays down
        influxd.start()  # same port
        wait_for(lambda: _spool_drained(rig), "the spool to drain", 40)
        after = rig.outbox_state()[0] - 1
        rig.wait_acked_through(after, 15, "acks after the restart")
        per_target = _check_every_key_once(rig, observer)
        assert not rig.spool_files()
        assert "spooling batches to disk" in rig.collector_log()
        assert rig.collector is not None and rig.collector.stop() == 0, rig.logs()
    finally:
        observer.close()
        rig.stop_all()
        influxd.stop()
    print(f"rows per target {per_target}; batches spooled {spooled:g}")


def test_influxdb_answering_503_with_retry_after_is_spooled_and_drained(
    rig: Rig, influxd: InfluxdServer
) -> None:
    proxy = FlakyProxy(influxd.url).start()
    observer = Observer(rig.mqtt_port)
    try:
        rig.start_collector(proxy.url)
        rig.start_agent()
        wait_for(lambda: len(rig.influx_keys()) >= 10, "the first rows in influxd", 30)
        proxy.failing = True
        time.sleep(1.5)  # rounds measured while InfluxDB answers 503
        during = rig.outbox_state()[0] - 1
        rig.wait_acked_through(during, 10, "acks while InfluxDB answers 503")
        assert rig.metrics()["fieldmon_spool_bytes"] > 0
        time.sleep(1.0)  # more rounds into the spool while the 503s go on
        proxy.failing = False
        wait_for(lambda: _spool_drained(rig), "the spool to drain", 30)
        after = rig.outbox_state()[0] - 1
        rig.wait_acked_through(after, 15, "acks after the 503s")
        _check_every_key_once(rig, observer)
        assert proxy.refused >= 2 and proxy.refused_with_retry_after >= 1
        assert not rig.spool_files()
        assert rig.collector is not None and rig.collector.stop() == 0, rig.logs()
    finally:
        observer.close()
        rig.stop_all()
        proxy.stop()


def test_collector_killed_at_20_random_moments_loses_and_duplicates_nothing(
    rig: Rig, influxd: InfluxdServer
) -> None:
    """Half the time InfluxDB answers 503 (through the proxy), so kills also land while the
    collector spools, drains, or has spooled but not yet acknowledged."""
    seed = random.randrange(2**32)
    chance = random.Random(seed)
    proxy = FlakyProxy(influxd.url).start()
    observer = Observer(rig.mqtt_port)
    spooled_at_some_point = False
    try:
        # Creates the persistent session: the broker queues for it from its SUBACK on.
        first = rig.start_collector(proxy.url)
        first.kill()
        rig.start_agent()
        for _ in range(20):
            proxy.failing = chance.random() < 0.5
            # Connected, then a random moment within the next 1.2 s: the SUBSCRIBE, the
            # redelivery burst, writes, spooling, draining, acks (python's start-up takes about
            # 2 s here, so the kill moments are counted from the connect).
            collector = rig.start_collector(proxy.url, until="connected")
            time.sleep(chance.uniform(0.0, 1.2))
            spooled_at_some_point = spooled_at_some_point or bool(rig.spool_files())
            collector.kill()  # SIGKILL this PID, mid-whatever it was doing
        proxy.failing = False
        # Subscribed (its SIGTERM handler long installed): when the one killed last had
        # acknowledged everything, the checks below pass at once, and a SIGTERM that reached
        # this collector still importing would end it with -15 instead of a clean stop.
        collector = rig.start_collector(proxy.url)
        before = rig.outbox_state()[0] - 1
        rig.wait_acked_through(before, 40, f"seed {seed}: acks after the last restart")
        wait_for(lambda: not rig.spool_files(), "the spool to drain", 30)
        _check_every_key_once(rig, observer)
        assert collector.stop() == 0, rig.logs()
    finally:
        observer.close()
        rig.stop_all()
        proxy.stop()
    resent = sum(len(copies) - 1 for copies in observer.snapshot().values())
    assert spooled_at_some_point, f"seed {seed}: no kill came while the spool held data"
    print(f"seed {seed}: {resent} re-sent deliveries")


def test_broker_killed_while_the_collector_is_away_loses_nothing(
    rig: Rig, mosquitto: MosquittoServer, influxd: InfluxdServer
) -> None:
    """The broker's queue for the collector dies with it; the agent's outbox re-sends.

    The agent is frozen (SIGSTOP) across the broker restart until the collector has subscribed
    again, so its reconnect re-send reaches a subscriber; without that the re-send would come
    after the agent's 30 s ack timeout instead, which the agent fault tests cover.
    """
    observer = Observer(rig.mqtt_port)
    try:
        collector = rig.start_collector(influxd.url)
        agent = rig.start_agent()
        wait_for(lambda: len(rig.influx_keys()) >= 10, "the first rows in influxd", 30)
        assert collector.stop() == 0, rig.logs()
        stopped_at = len(observer.snapshot())
        # A backlog queued in the broker for the collector's persistent session.
        wait_for(lambda: len(observer.snapshot()) >= stopped_at + 10, "a queued backlog", 20)
        agent.send_signal(signal.SIGSTOP)
        backlog = rig.outbox_state()[1]
        assert len(backlog) >= 10, backlog
        observer.subscribed.clear()
        mosquitto.kill()
        mosquitto.start()
        assert observer.subscribed.wait(10)
        collector = rig.start_collector(influxd.url)
        assert '"session_present": false' in collector.output(), "the session should be gone"
        agent.send_signal(signal.SIGCONT)
        after = rig.outbox_state()[0] - 1
        assert max(backlog) <= after
        rig.wait_acked_through(after, 30, "acks of the backlog the broker lost")
        _check_every_key_once(rig, observer)
        assert rig.collector is not None and rig.collector.stop() == 0, rig.logs()
    finally:
        observer.close()
        rig.stop_all()
