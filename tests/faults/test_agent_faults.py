"""Agent faults on real servers: kill -9 at 20 random moments, a broker restart, the site's uplink
cut in a network namespace, and the outbox cap reached.

Real Mosquitto, real influxd, `fieldmon-agent run` and `fieldmon-collector run` as subprocesses;
probe intervals are 200 ms so outages of seconds hold many rounds.

How the test knows what the agent committed (the outbox deletes on ack, so it cannot simply be
read at the end): an observer client subscribes (QoS 1, persistent session) to the agent's
samples topic before the agent starts, and records every delivery in arrival order. An envelope
leaves the outbox only after a collector acknowledged it, and the collector can only have
received it through the broker, so every committed envelope is either seen by the observer,
still in the outbox, or counted in the outbox's own drop counter. The checks (`_check_accounting`):
- the seqs seen, left in the outbox and dropped add up exactly to 0..next_seq-1: the drop count
  the agent keeps equals the seqs that never arrived (zero unless the cap was reached);
- a seq seen twice carried the same samples (a re-send, never a reuse);
- no (measurement, agent, target, time) key was committed under two seqs;
- influxd holds exactly the keys of the envelopes seen, each once: same set, same count.

A joined backlog message (several envelopes in one, `parts`, perhaps zlib-compressed) is split
by the observer into one arrival per seq, with that seq's own samples, so every check holds for
replayed backlog exactly as for envelopes sent alone.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldmon.core.wire.codec import inflate
from fieldmon.lab.netns import Namespace, run, unique_name, veth
from fieldmon.lab.process import Daemon, http_get, script, start, wait_for, wait_subscribed
from fieldmon.lab.servers import InfluxdServer, MosquittoServer, free_port

SITE, AGENT = "fault-site", "fault-pi"
TARGETS = ("gw-a", "gw-b")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets and namespaces need root"),
]

Key = tuple[str, str, int]  # (measurement, target or event kind or "", time)


@dataclass(frozen=True)
class Arrival:
    """One delivery to the observer, in the order the broker handed them over."""

    at: float  # time.monotonic() on arrival
    seq: int
    samples: str  # the envelope's samples, as canonical JSON


def _key(sample: dict) -> Key:  # type: ignore[type-arg]
    tags = sample["tags"]
    return (sample["measurement"], tags.get("target") or tags.get("kind") or "", sample["time"])


class Observer:
    """Records every envelope the agent publishes (samples and events topics), across broker
    restarts."""

    def __init__(self, port: int) -> None:
        self.arrivals: list[Arrival] = []
        self.messages: list[tuple[int, bool]] = []  # (envelopes carried, compressed) per message
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
        # One SUBSCRIBE, one SUBACK: envelopes of `event` rows go to the events topic.
        self._client.subscribe(
            [(f"fieldmon/v1/{SITE}/{AGENT}/samples", 1), (f"fieldmon/v1/{SITE}/{AGENT}/events", 1)]
        )
        self._client.loop_start()
        assert self._subscribed.wait(5)

    def _record(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        envelope = json.loads(inflate(message.payload))
        samples = envelope["samples"]
        parts = envelope.get("parts") or [[envelope["seq"], len(samples)]]
        arrivals, offset = [], 0
        for seq, count in parts:  # a joined message: each seq with its own samples
            own = samples[offset : offset + count]
            offset += count
            arrivals.append(Arrival(at, seq, json.dumps(own, sort_keys=True)))
        with self._lock:
            self.arrivals.extend(arrivals)
            self.messages.append((len(parts), message.payload[:1] == b"x"))

    def joined(self) -> list[tuple[int, bool]]:
        """(envelopes, compressed) of every message that carried more than one envelope."""
        with self._lock:
            return [entry for entry in self.messages if entry[0] > 1]

    def snapshot(self) -> dict[int, list[str]]:
        """seq -> the samples of each delivery of it."""
        seen: dict[int, list[str]] = {}
        for arrival in self.ordered():
            seen.setdefault(arrival.seq, []).append(arrival.samples)
        return seen

    def ordered(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def newest_time(self) -> int:
        """The latest sample time delivered so far (0 before any)."""
        return max(
            (s["time"] for a in self.ordered() for s in json.loads(a.samples)),
            default=0,
        )

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class OutboxState:
    """What the agent's own outbox file says (read with sqlite3 beside the running agent)."""

    next_seq: int
    left: dict[int, str]  # seq -> samples JSON of envelopes not yet acknowledged
    dropped_envelopes: int
    dropped_samples: int


class Rig:
    """Site file, collector and agent command lines for one test."""

    def __init__(
        self,
        tmp_path: Path,
        mosquitto: MosquittoServer,
        influxd: InfluxdServer,
        db: str,
        *,
        agent_broker: tuple[str, int] | None = None,
        agent_extra: str = "",
        outbox_extra: str = "",
        host_interval: str = "1s",
        namespace: Namespace | None = None,
    ) -> None:
        self.tmp = tmp_path
        self.outbox = tmp_path / "agent" / "outbox.db"
        self.namespace = namespace
        sites = tmp_path / "site_configs"
        sites.mkdir()
        links = "\n".join(
            f"  - {{name: {name}, address: 127.0.0.1, role: gateway, interval: 200ms, count: 2,"
            f" spacing: 20ms, timeout: 100ms}}"
            for name in TARGETS
        )
        assert mosquitto.port is not None
        host, port = agent_broker or ("127.0.0.1", mosquitto.port)
        self.site_file = sites / f"{SITE}.yaml"
        self.site_file.write_text(
            f"site: {SITE}\nname: Fault site\nparent_hospital: test-hospital\n"
            f"agent:\n  id: {AGENT}\n  broker: {{host: '{host}', port: {port}, keepalive: 5s}}\n"
            f"  outbox: {{path: {self.outbox}{outbox_extra}}}\n  linger: 100ms\n{agent_extra}"
            f"links:\n{links}\nhost: {{interval: {host_interval}}}\n",
            encoding="utf-8",
        )
        collector_file = tmp_path / "collector.yaml"
        self.http_port = free_port()
        collector_file.write_text(
            f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: fault-collector}}\n"
            f'influxdb: {{api: v1, url: "{influxd.url}", database: {db}, '
            "flush_interval: 200ms}\n"
            f"site_configs: ./site_configs\n"
            f'http: {{listen: "127.0.0.1:{self.http_port}"}}\n'
            "data_dir: ./collector-data\n",
            encoding="utf-8",
        )
        self.collector_args = [script("fieldmon-collector"), "run", "--config", collector_file]
        self.influxd, self.db = influxd, db
        self.processes: list[Daemon] = []

    def _start(self, command: list[str | Path], log: Path) -> Daemon:
        process = start(command, log)
        self.processes.append(process)
        return process

    def kill_leftovers(self) -> None:
        """SIGKILL, by PID, whatever this rig started and a failed test left running."""
        for process in self.processes:
            process.kill()

    def agent(self) -> Daemon:
        command: list[str | Path] = [script("fieldmon-agent"), "run", "--config", self.site_file]
        if self.namespace is not None:
            # `ip netns exec` execs the agent in place: the PID we hold is the agent's.
            command = ["ip", "netns", "exec", self.namespace.name, *command]
        return self._start(command, self.tmp / "agent.log")

    def collector(self) -> Daemon:
        """The collector, once the broker granted its subscriptions: from then on the broker
        keeps what the agent sends for the collector's session, even while it is away."""
        collector = self._start(self.collector_args, self.tmp / "collector.log")
        wait_subscribed(self.http_port, daemons=collector)
        return collector

    def agent_log(self) -> str:
        path = self.tmp / "agent.log"
        return path.read_text() if path.exists() else ""

    def logs(self) -> str:
        return (self.tmp / "agent.log").read_text()[-3000:]

    def collector_seqs(self) -> dict[str, float]:
        """The collector's seq accounting for the agent (its /metrics): duplicate, lost, missing."""
        _status, body = http_get(f"http://127.0.0.1:{self.http_port}/metrics")
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

    def influx_keys(self) -> list[Key]:
        """Every stored row of this agent, as a key (one per row, duplicates kept)."""
        where = f"WHERE agent = '{AGENT}'"
        queries = (
            ("link", f'SELECT sent FROM "link" {where} GROUP BY target', "target"),
            ("host", f'SELECT uptime_s FROM "host" {where}', None),
            ("event", f'SELECT message FROM "event" {where} GROUP BY kind', "kind"),
        )
        keys: list[Key] = []
        for measurement, query, tag in queries:
            for row in self.influxd.query(query, db=self.db):
                keys.append((measurement, str(row[tag]) if tag else "", int(row["time"])))
        return keys

    def next_seq_so_far(self) -> int:
        """The outbox's next seq while the agent runs; 0 before the file is set up."""
        try:
            return self.outbox_state().next_seq
        except (sqlite3.Error, KeyError):
            return 0

    def dropped_so_far(self) -> int:
        """The outbox's drop counter while the agent runs; 0 before the file is set up."""
        if not self.outbox.exists():
            return 0
        try:
            return self.outbox_state().dropped_envelopes
        except (sqlite3.Error, KeyError):
            return 0

    def outbox_state(self) -> OutboxState:
        with sqlite3.connect(self.outbox) as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            left = {
                seq: json.dumps(json.loads(payload)["samples"], sort_keys=True)
                for seq, payload in db.execute("SELECT seq, payload FROM envelopes")
            }
        return OutboxState(
            int(meta["next_seq"]),
            left,
            int(meta.get("dropped_envelopes", 0)),
            int(meta.get("dropped_samples", 0)),
        )


@pytest.fixture
def rig_for(tmp_path: Path, influxd: InfluxdServer, influx_db: str) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def build(mosquitto: MosquittoServer, **options: object) -> Rig:
        rig = Rig(tmp_path, mosquitto, influxd, influx_db, **options)  # type: ignore[arg-type]
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        rig.kill_leftovers()


@dataclass(frozen=True)
class Accounting:
    """What the checks found, for the test's own assertions."""

    state: OutboxState
    lost: set[int]  # seqs neither seen nor left: dropped by the outbox
    keys: list[Key]  # what influxd holds


def _check_accounting(rig: Rig, observer: Observer) -> Accounting:
    """Every committed seq accounted for, once; influxd holds every observed key once."""
    state = rig.outbox_state()
    seen = observer.snapshot()
    lost = set(range(state.next_seq)) - set(seen) - set(state.left)
    assert set(seen) <= set(range(state.next_seq)), "a seq beyond the agent's counter arrived"
    assert len(lost) == state.dropped_envelopes, (
        f"{len(lost)} seqs never arrived, the outbox counted {state.dropped_envelopes} dropped\n"
        + rig.logs()
    )
    for seq, copies in seen.items():
        assert len(set(copies)) == 1, f"seq {seq} was reused for different samples"
        if seq in state.left:
            assert state.left[seq] == copies[0], f"seq {seq} left in the outbox differs"
    committed: list[Key] = [
        _key(sample) for copies in seen.values() for sample in json.loads(copies[0])
    ]
    assert len(committed) == len(set(committed)), "a sample was committed under two seqs"
    expected = sorted(committed)
    try:
        wait_for(lambda: sorted(rig.influx_keys()) == expected, "influxd to hold every key", 20)
    except AssertionError:
        stored = set(rig.influx_keys())
        missing, extra = sorted(set(expected) - stored), sorted(stored - set(expected))
        raise AssertionError(f"influxd lacks {missing[:10]}, has extra {extra[:10]}") from None
    keys = rig.influx_keys()
    assert len(keys) == len(set(keys)) == len(committed)
    return Accounting(state, lost, keys)


def _times_by_target(keys: list[Key]) -> dict[str, list[int]]:
    by_target: dict[str, list[int]] = {target: [] for target in TARGETS}
    for measurement, target, at in keys:
        if measurement == "link":
            by_target[target].append(at)
    return {target: sorted(times) for target, times in by_target.items()}


def _assert_no_hole(by_target: dict[str, list[int]], spanning: tuple[int, int]) -> None:
    for target, times in by_target.items():
        assert times[0] < spanning[0] and times[-1] > spanning[1], target
        # Rounds are 200 ms apart; the outages last seconds, so a lost stretch would show as a
        # hole of seconds. 1 s leaves room for a scheduler hiccup, none for lost rounds.
        widest = max(b - a for a, b in itertools.pairwise(times))
        assert widest < 1_000_000_000, f"{target}: a {widest / 1e9:.2f} s hole"


def test_agent_killed_at_20_random_moments_loses_and_duplicates_nothing(
    rig_for: Callable[..., Rig], mosquitto: MosquittoServer
) -> None:
    rig = rig_for(mosquitto)
    seed = random.randrange(2**32)
    chance = random.Random(seed)
    assert mosquitto.port is not None
    observer = Observer(mosquitto.port)
    collector = rig.collector()
    # Kill moments span the agent's whole life: one in four during start-up (imports, opening
    # the outbox), the rest while it probes, commits, publishes and deletes on ack.
    moments = [round(chance.uniform(0.0, 1.2), 3) for _ in range(20)]
    try:
        for index, moment in enumerate(moments):
            started = rig.agent_log().count("agent started")
            agent = rig.agent()
            if index % 4:
                wait_for(
                    lambda n=started: rig.agent_log().count("agent started") > n, "start-up", 20
                )
            time.sleep(moment)  # the kill moment, random by design
            agent.kill()  # SIGKILL this PID, mid-whatever it was doing
        agent = rig.agent()
        before = rig.next_seq_so_far()
        wait_for(
            lambda: max(observer.snapshot(), default=-1) >= before + 5,
            "envelopes after the restarts",
            20,
        )
        assert agent.stop() == 0, rig.logs()
        result = _check_accounting(rig, observer)
        resent = sum(len(copies) - 1 for copies in observer.snapshot().values())
    finally:
        observer.close()
        collector.stop()
    assert result.state.dropped_envelopes == 0
    assert all(_times_by_target(result.keys).values()), f"seed {seed}: a target has no rows"
    print(f"seed {seed}: kills at {moments}; {result.state.next_seq} seqs, {resent} re-sent")


def test_broker_stopped_for_3s_leaves_no_gap(
    rig_for: Callable[..., Rig], mosquitto: MosquittoServer
) -> None:
    rig = rig_for(mosquitto)
    assert mosquitto.port is not None
    observer = Observer(mosquitto.port)
    collector = rig.collector()
    agent = rig.agent()
    try:
        wait_for(lambda: len(observer.snapshot()) >= 5, "the first envelopes", 20)
        stopped_ns = time.time_ns()
        mosquitto.stop()
        time.sleep(3.0)  # the outage: rounds measured with no broker
        mosquitto.start()
        restarted_ns = time.time_ns()
        wait_for(lambda: observer.newest_time() > restarted_ns, "rounds after the restart", 20)
        assert agent.running(), rig.logs()
        assert agent.stop() == 0, rig.logs()
        result = _check_accounting(rig, observer)
    finally:
        observer.close()
        collector.stop()
    assert result.state.dropped_envelopes == 0
    _assert_no_hole(_times_by_target(result.keys), (stopped_ns, restarted_ns))


@pytest.fixture
def uplink() -> Iterator[tuple[Namespace, str, str]]:
    """The site: a namespace joined to this host by a veth; yields (namespace, host-side
    interface, host-side address). Deleting the namespace removes the veth too."""
    with Namespace(unique_name("site")) as site:
        pair = veth(None, site)
        yield site, pair.a_name, str(pair.a_v4.ip)


def test_uplink_cut_then_restored_replays_fresh_first_and_loses_nothing(
    tmp_path: Path,
    rig_for: Callable[..., Rig],
    uplink: tuple[Namespace, str, str],
) -> None:
    site, host_side, host_address = uplink
    site_port = free_port()
    # A second listener on the host's end of the site's veth: the agent's only way to the broker.
    broker = MosquittoServer(
        tmp_path / "mosquitto", extra_config=f"listener {site_port} {host_address}"
    )
    broker.start()
    rig = rig_for(
        broker,
        agent_broker=(host_address, site_port),
        namespace=site,
        # Everything older than 1 s at reconnect is backlog; 10 envelopes/s keeps it visible.
        outbox_extra=", fresh_window: 1s, replay_rate: 10",
    )
    assert broker.port is not None
    observer = Observer(broker.port)
    collector = rig.collector()
    agent = rig.agent()
    try:
        wait_for(lambda: len(observer.snapshot()) >= 5, "the first envelopes", 20)
        cut_at = time.monotonic()
        cut_ns = time.time_ns()
        run(None, "ip", "link", "set", host_side, "down")
        # The agent notices by its keepalive (5 s): TCP sees no error on a dead link.
        wait_for(lambda: "disconnected from broker" in rig.agent_log(), "the agent to notice", 20)
        time.sleep(2.0)  # the outage goes on: a backlog of rounds builds up in the outbox
        run(None, "ip", "link", "set", host_side, "up")
        restored_at = time.monotonic()
        restored_ns = time.time_ns()
        wait_for(lambda: observer.newest_time() > restored_ns, "rounds after the restore", 40)
        before_cut = {a.seq for a in observer.ordered() if a.at < cut_at}
        # The backlog: everything committed after the cut and before the restore.
        wait_for(
            lambda: (
                set(range(max(before_cut), rig.outbox_state().next_seq - 5))
                <= set(observer.snapshot())
            ),
            "the backlog to drain",
            30,
        )
        assert agent.running(), rig.logs()
        assert agent.stop() == 0, rig.logs()
        result = _check_accounting(rig, observer)
        after = [a for a in observer.ordered() if a.at >= restored_at and a.seq not in before_cut]
        joined = observer.joined()
    finally:
        observer.close()
        collector.stop()
        broker.stop()
    assert result.state.dropped_envelopes == 0
    _assert_no_hole(_times_by_target(result.keys), (cut_ns, restored_ns))

    def measured(arrival: Arrival) -> int:
        return min(sample["time"] for sample in json.loads(arrival.samples))

    backlog = [a for a in after if measured(a) < restored_ns - 1_000_000_000]
    oldest = min(backlog, key=lambda a: a.seq)
    first = after[0]
    # Fresh-first: the first envelope through the restored link was measured at the restore,
    # not in the outage, and it arrived before the oldest backlog envelope.
    assert measured(first) > restored_ns - 2_000_000_000, (first, oldest)
    assert first.seq > oldest.seq
    assert after.index(first) < after.index(oldest)
    assert measured(oldest) < cut_ns + 1_000_000_000, "the backlog should start at the cut"
    # Behind the live rounds the backlog itself drains oldest first, joined several to a message.
    backlog_seqs = [a.seq for a in backlog]
    assert backlog_seqs == sorted(backlog_seqs)
    assert joined, "the backlog was never replayed joined"


def test_agent_killed_during_a_joined_replay_loses_and_duplicates_nothing(
    tmp_path: Path,
    rig_for: Callable[..., Rig],
    uplink: tuple[Namespace, str, str],
) -> None:
    site, host_side, host_address = uplink
    site_port = free_port()
    broker = MosquittoServer(
        tmp_path / "mosquitto", extra_config=f"listener {site_port} {host_address}"
    )
    broker.start()
    rig = rig_for(
        broker,
        agent_broker=(host_address, site_port),
        namespace=site,
        # 10 envelopes/s: the backlog of a 20 s outage (~11 envelopes a second) takes about as
        # long to replay, in messages of up to 10 envelopes, so the kills land in the middle.
        outbox_extra=", fresh_window: 1s, replay_rate: 10",
    )
    seed = random.randrange(2**32)
    chance = random.Random(seed)
    assert broker.port is not None
    observer = Observer(broker.port)
    collector = rig.collector()
    agent = rig.agent()
    kills: list[float] = []
    try:
        wait_for(lambda: len(observer.snapshot()) >= 5, "the first envelopes", 20)
        run(None, "ip", "link", "set", host_side, "down")
        wait_for(lambda: "disconnected from broker" in rig.agent_log(), "the agent to notice", 20)
        time.sleep(12.0)  # the outage goes on: a backlog of rounds builds up in the outbox
        run(None, "ip", "link", "set", host_side, "up")
        for _kill in range(3):
            joined_before = len(observer.joined())
            wait_for(
                lambda n=joined_before: len(observer.joined()) > n, "a joined backlog message", 40
            )
            moment = round(chance.uniform(0.0, 1.0), 3)
            time.sleep(moment)  # the kill moment, random by design: mid-replay
            agent.kill()
            kills.append(moment)
            agent = rig.agent()
        wait_for(lambda: not rig.outbox_state().left or len(rig.outbox_state().left) < 5,
                 "the backlog to drain", 60)  # fmt: skip
        assert agent.running(), rig.logs()
        assert agent.stop() == 0, rig.logs()
        result = _check_accounting(rig, observer)
        resent = sum(len(copies) - 1 for copies in observer.snapshot().values())
        # The collector counted what the observer saw: every re-sent seq a duplicate, nothing
        # else; every seq in the end (no gap left open), so no loss either.
        try:
            wait_for(lambda: rig.collector_seqs()["duplicate"] == resent, "the duplicates", 10)
        finally:
            counts = rig.collector_seqs()
            print(f"observer: {resent} re-sent; collector: {counts}")
        joined = observer.joined()
        seen = observer.snapshot()
    finally:
        observer.close()
        collector.stop()
        broker.stop()
    assert result.state.dropped_envelopes == 0
    # The agent stopped with a few envelopes still in its outbox (kept, sent on its next start):
    # those older than the newest seq the collector saw are its open gaps, and nothing else is.
    unsent_below = {seq for seq in result.state.left if seq not in seen and seq < max(seen)}
    assert (counts["lost"], counts["missing"]) == (0, len(unsent_below)), (counts, unsent_below)
    assert len(joined) >= 3 and all(compressed for _, compressed in joined), joined
    print(f"seed {seed}: kills {kills} s into joined replays; {result.state.next_seq} seqs, "
          f"{len(joined)} joined messages, {resent} re-sent")  # fmt: skip


def test_outbox_cap_drops_the_oldest_bulk_counts_exactly_and_keeps_events(
    rig_for: Callable[..., Rig], mosquitto: MosquittoServer
) -> None:
    # One sample per envelope, so envelopes and samples count alike; 8 KB holds ~18 of them,
    # under two seconds of this site's rounds (10 link + 2 host rows a second).
    rig = rig_for(
        mosquitto,
        outbox_extra=", max_mb: 0.008",
        agent_extra="  max_samples_per_envelope: 1\n",
        host_interval="500ms",
    )
    assert mosquitto.port is not None
    observer = Observer(mosquitto.port)
    # The collector's persistent session and subscription exist before the outage (rig.collector
    # waits for its SUBACK), or the broker has no queue to keep for it.
    collector = rig.collector()
    # The uplink is down when the agent starts: nothing it drops was ever published, so the
    # drop count must equal exactly what never arrives.
    mosquitto.stop()
    agent = rig.agent()
    try:
        wait_for(lambda: rig.dropped_so_far() >= 30, "the outbox to reach its cap and drop", 30)
        assert agent.running(), rig.logs()
        mosquitto.start()
        wait_for(lambda: "connected to broker" in rig.agent_log(), "the agent to reconnect", 20)
        # Host rows every 500 ms: a few measured after the reconnect carry the final count.
        reconnected_ns = time.time_ns()
        wait_for(lambda: observer.newest_time() > reconnected_ns + 1.5e9, "rounds after", 30)
        wait_for(lambda: len(rig.outbox_state().left) < 10, "the outbox to drain", 30)

        def newest_reported() -> int | None:
            rows = rig.influxd.query(
                f"SELECT outbox_dropped FROM host WHERE agent = '{AGENT}' "
                "ORDER BY time DESC LIMIT 1",
                db=rig.db,
            )
            return rows[0]["outbox_dropped"] if rows else None

        # Drops go on while the backlog is still over the cap; once drained, the next host row
        # carries the final count.
        wait_for(
            lambda: newest_reported() == rig.dropped_so_far(), "a host row with the final count", 30
        )
        assert agent.running(), rig.logs()
        assert agent.stop() == 0, rig.logs()
        result = _check_accounting(rig, observer)
    finally:
        observer.close()
        collector.stop()
    state = result.state
    assert state.dropped_envelopes == state.dropped_samples >= 30
    # Reported dropped == measured - stored (every seq is one sample; none left unsent).
    unsent = set(state.left) - set(observer.snapshot())
    measured, stored = state.next_seq - len(unsent), len(result.keys)
    assert newest_reported() == state.dropped_samples == measured - stored
    # The drop episode's event was kept though it is older than bulk samples dropped after it.
    events = [key for key in result.keys if key[0] == "event"]
    assert [kind for _, kind, _ in events] == ["outbox_dropping"]
    event_seq = next(
        seq
        for seq, copies in observer.snapshot().items()
        if json.loads(copies[0])[0]["measurement"] == "event"
    )
    assert event_seq < max(result.lost)
    # The oldest went first: every dropped seq is older than every bulk seq kept.
    assert max(result.lost) < min(set(observer.snapshot()) - {event_seq})
    assert result.lost == set(range(max(result.lost) + 1)) - {event_seq}
