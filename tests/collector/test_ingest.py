"""The ingest pipeline: decode, refuse with reasons, store, and acknowledge only after storing."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from paho.mqtt.properties import Properties

from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.inventory import Inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import PointWriter
from fieldmon.collector.seqtrack import SeqTracker
from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.config import AgentSection, SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig, LinkRole
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import AckMessage, Envelope, Sample
from fieldmon.core.wire.topics import samples_topic


@dataclass
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int = 1


@dataclass
class _Client:
    acked: list[int] = field(default_factory=list)
    published: list[tuple[str, bytes]] = field(default_factory=list)
    properties: list[Properties | None] = field(default_factory=list)

    def ack(self, mid: int, _qos: int) -> None:
        self.acked.append(mid)

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, properties: Properties | None = None
    ) -> None:
        self.published.append((topic, payload))
        self.properties.append(properties)


@dataclass
class _Link:
    client: _Client = field(default_factory=_Client)
    generation: int = 1


class _Writer:
    """Stores lines; refuses lines of target `bad`; fails the first `outages` writes."""

    def __init__(self, outages: int = 0) -> None:
        self.stored: list[str] = []
        self.outages = outages
        self.calls = 0

    async def write(self, body: bytes, points: int) -> None:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise RetryableWriteError("503 from test", retry_after=0.01)
        lines = body.decode().split("\n")
        assert len(lines) == points
        if any("target=bad" in line for line in lines):
            raise RejectedWriteError("field type conflict", status=400)
        self.stored.extend(lines)


# The links the tests' samples name (ingest refuses a target the site file does not name).
TARGETS = ["a", "b", "c", "bad", "now", "in-a-minute", "tomorrow", "last-int64"]
TARGETS += ["before", "live", "d", "e"]  # named by the coalesced backlog test


def _inventory() -> Inventory:
    site = SiteConfig(
        site="pavilion-2",
        name="Pavilion 2",
        parent_hospital="central",
        agent=AgentSection(id="pi1", broker=BrokerConfig(host="127.0.0.1")),
        links=[
            IcmpLinkConfig(name=name, address="192.0.2.1", role=LinkRole.GATEWAY)
            for name in [*TARGETS, *(f"t{i}" for i in range(20))]
        ],
    )
    return Inventory(sites={"pavilion-2": site})


def _envelope(seq: int, targets: list[str], site: str = "pavilion-2", agent: str = "pi1") -> bytes:
    samples = [
        Sample(
            measurement="link",
            tags={"site": site, "agent": agent, "target": target},
            fields={"loss_pct": 0.0},
            time=1_700_000_000_000_000_000 + seq,
        )
        for target in targets
    ]
    return encode(Envelope(site=site, agent=agent, seq=seq, sent_at=1, samples=samples))


def _pipeline(writer: _Writer, tmp_path: Path) -> tuple[IngestPipeline, _Link, CollectorMetrics]:
    link = _Link()
    metrics = CollectorMetrics()
    points = PointWriter(writer, metrics, DeadLetterFile(tmp_path / "dead.jsonl"))  # type: ignore[arg-type]
    pipeline = IngestPipeline(
        inventory=_inventory(),
        points=points,
        metrics=metrics,
        link=link,  # type: ignore[arg-type]
        batch_size=1000,
        flush_interval=0.05,
        max_payload_bytes=64 * 1024,
        max_deliveries=100,
    )
    return pipeline, link, metrics


def _counter(metrics: CollectorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


TOPIC = samples_topic("pavilion-2", "pi1")


def test_acks_only_after_the_write(tmp_path: Path) -> None:
    writer = _Writer()
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    pipeline.handle(_Message(TOPIC, _envelope(7, ["a", "b"]), mid=11))
    pipeline.handle(_Message(TOPIC, _envelope(8, ["c"]), mid=12))
    assert link.client.acked == []
    assert link.client.published == []
    asyncio.run(pipeline.flush())
    assert len(writer.stored) == 3
    assert link.client.acked == [11, 12]
    [(topic, payload)] = link.client.published
    assert topic == "fieldmon/v1/pavilion-2/pi1/ack"
    assert AckMessage.model_validate_json(payload).ranges == [(7, 8)]
    assert _counter(metrics, "fieldmon_points_written_total") == 3


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"not json", "not_json"),
        (TOPIC, b"x" * (65 * 1024), "oversized"),
        (TOPIC, b'{"schema": 9}', "unsupported_schema"),
        (TOPIC, b'{"schema": 1, "site": "pavilion-2"}', "invalid"),
        (samples_topic("pavilion-2", "intruder"), _envelope(1, ["a"]), "topic_mismatch"),
        (
            samples_topic("pavilion-2", "intruder"),
            _envelope(1, ["a"], agent="intruder"),
            "unknown_agent",
        ),
        (samples_topic("other", "pi1"), _envelope(1, ["a"], site="other"), "unknown_agent"),
    ],
)
def test_rejections_are_counted_by_reason_and_acked(
    tmp_path: Path, topic: str, payload: bytes, reason: str
) -> None:
    writer = _Writer()
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    pipeline.handle(_Message(topic, payload, mid=5))
    assert _counter(metrics, "fieldmon_envelopes_rejected_total", reason=reason) == 1
    assert link.client.acked == [5]
    asyncio.run(pipeline.flush())
    assert writer.stored == []


def test_one_bad_point_is_dead_lettered_and_the_rest_stored(tmp_path: Path) -> None:
    writer = _Writer()
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    targets = [f"t{i}" for i in range(20)]
    targets[13] = "bad"
    pipeline.handle(_Message(TOPIC, _envelope(1, targets), mid=1))
    asyncio.run(pipeline.flush())
    assert len(writer.stored) == 19
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert len(dead) == 1
    assert "target=bad" in dead[0]["line"]
    assert dead[0]["reason"] == "field type conflict"
    assert link.client.acked == [1]
    assert _counter(metrics, "fieldmon_points_dead_lettered_total") == 1


def test_samples_dated_in_the_future_are_dead_lettered_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    writer = _Writer()
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    seen: list[Envelope] = []
    pipeline.on_accepted.append(seen.append)
    now = time.time_ns()
    times = {"now": now, "in-a-minute": now + 60 * 10**9, "tomorrow": now + 86_400 * 10**9,
             "last-int64": 2**63 - 1}  # fmt: skip
    samples = [
        Sample(
            measurement="link",
            tags={"site": "pavilion-2", "agent": "pi1", "target": target},
            fields={"loss_pct": 0.0},
            time=at,
        )
        for target, at in times.items()
    ]
    payload = encode(Envelope(site="pavilion-2", agent="pi1", seq=7, sent_at=now, samples=samples))
    pipeline.handle(_Message(TOPIC, payload, mid=3))
    asyncio.run(pipeline.flush())

    assert sorted(line.split("target=")[1].split(" ")[0] for line in writer.stored) == [
        "in-a-minute",
        "now",
    ]
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert sorted(d["line"].split("target=")[1].split(" ")[0] for d in dead) == [
        "last-int64",
        "tomorrow",
    ]
    assert "ahead of the collector's clock" in dead[0]["reason"]
    assert "'pi1'" in dead[0]["reason"]
    ahead = _counter(metrics, "fieldmon_samples_time_ahead_total", site="pavilion-2", agent="pi1")
    assert ahead == 2
    assert _counter(metrics, "fieldmon_points_dead_lettered_total") == 2
    # The envelope is handled: acked to the broker and to the agent, which must not re-send it.
    assert link.client.acked == [3]
    assert [topic for topic, _ in link.client.published] == ["fieldmon/v1/pavilion-2/pi1/ack"]
    # The board and the alert engine see only what was stored.
    assert [len(envelope.samples) for envelope in seen] == [2]


def test_retryable_errors_are_retried_until_stored(tmp_path: Path) -> None:
    writer = _Writer(outages=3)
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    pipeline.handle(_Message(TOPIC, _envelope(1, ["a"]), mid=1))
    asyncio.run(pipeline.flush())
    assert writer.calls == 4
    assert len(writer.stored) == 1
    assert link.client.acked == [1]
    assert _counter(metrics, "fieldmon_write_errors_total", kind="retryable") == 3


def test_deliveries_from_an_earlier_connection_are_not_acked(tmp_path: Path) -> None:
    writer = _Writer()
    pipeline, link, _metrics = _pipeline(writer, tmp_path)
    pipeline.handle(_Message(TOPIC, _envelope(1, ["a"]), mid=1))
    link.generation += 1  # reconnected: the broker will re-deliver mid 1 itself
    pipeline.handle(_Message(TOPIC, _envelope(2, ["b"]), mid=1))
    asyncio.run(pipeline.flush())
    assert link.client.acked == [1]
    assert len(writer.stored) == 2


def test_seq_accounting_counts_resends_and_writes_agent_rows(tmp_path: Path) -> None:
    writer = _Writer()
    pipeline, _link, metrics = _pipeline(writer, tmp_path)
    pipeline._seqs = SeqTracker(loss_grace=3600)
    for mid, seq in enumerate([0, 1, 1, 4]):
        pipeline.handle(_Message(TOPIC, _envelope(seq, ["a"]), mid=mid))
    labels = {"site": "pavilion-2", "agent": "pi1"}
    assert _counter(metrics, "fieldmon_envelopes_duplicate_total", **labels) == 1
    assert _counter(metrics, "fieldmon_envelopes_missing", **labels) == 2
    pipeline.account_rows(1_800_000_000_000_000_000)
    asyncio.run(pipeline.flush())
    [row] = [line for line in writer.stored if line.startswith("agent,")]
    assert row == (
        "agent,agent=pi1,site=pavilion-2 envelopes_received=3i,envelopes_duplicate=1i,"
        "envelopes_lost=0i,envelopes_missing=2i 1800000000000000000"
    )


def _coalesced(parts: list[tuple[int, list[str]]], *, compress: bool = False) -> bytes:
    """One envelope carrying several, each seq with its own targets (as an agent's backlog)."""
    samples = [
        Sample(
            measurement="link",
            tags={"site": "pavilion-2", "agent": "pi1", "target": target},
            fields={"loss_pct": 0.0},
            time=1_700_000_000_000_000_000 + seq,
        )
        for seq, targets in parts
        for target in targets
    ]
    envelope = Envelope(
        site="pavilion-2",
        agent="pi1",
        seq=parts[0][0],
        sent_at=1,
        parts=[(seq, len(targets)) for seq, targets in parts],
        samples=samples,
    )
    payload = encode(envelope)
    return zlib.compress(payload) if compress else payload


@pytest.mark.parametrize("compress", [False, True], ids=["json", "zlib"])
def test_a_coalesced_envelope_is_stored_and_every_part_acknowledged(
    tmp_path: Path, compress: bool
) -> None:
    writer = _Writer()
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    pipeline._seqs = SeqTracker(loss_grace=3600)
    pipeline.handle(_Message(TOPIC, _envelope(3, ["before"]), mid=1))  # before the outage
    pipeline.handle(_Message(TOPIC, _envelope(9, ["live"]), mid=2))  # fresh-first: the newest
    backlog = [(4, ["a", "b"]), (5, ["c"]), (7, []), (8, ["d"])]
    pipeline.handle(_Message(TOPIC, _coalesced(backlog, compress=compress), mid=3))
    pipeline.handle(_Message(TOPIC, _envelope(6, ["e"]), mid=4))
    asyncio.run(pipeline.flush())
    assert sorted(line.split("target=")[1].split(" ")[0] for line in writer.stored) == [
        "a", "b", "before", "c", "d", "e", "live"
    ]  # fmt: skip
    assert link.client.acked == [1, 2, 3, 4]
    [(_topic, payload)] = link.client.published
    assert AckMessage.model_validate_json(payload).ranges == [(3, 9)]
    # Each part counted as one envelope: none lost, none duplicated, none missing.
    labels = {"site": "pavilion-2", "agent": "pi1"}
    assert _counter(metrics, "fieldmon_envelopes_duplicate_total", **labels) == 0
    assert _counter(metrics, "fieldmon_envelopes_missing", **labels) == 0
    assert _counter(metrics, "fieldmon_envelopes_lost_total", **labels) == 0
    state = pipeline._seqs.agents[("pavilion-2", "pi1")]
    assert (state.received, state.contiguous) == (7, 9)


def test_a_coalesced_resend_counts_each_part_already_received_as_a_duplicate(
    tmp_path: Path,
) -> None:
    writer = _Writer()
    pipeline, link, metrics = _pipeline(writer, tmp_path)
    pipeline._seqs = SeqTracker(loss_grace=3600)
    pipeline.handle(_Message(TOPIC, _envelope(3, ["a"]), mid=1))
    pipeline.handle(_Message(TOPIC, _coalesced([(4, ["b"]), (5, ["c"])]), mid=2))
    # The agent's ack timed out; it sends 4..6 again, joined differently.
    pipeline.handle(_Message(TOPIC, _coalesced([(4, ["b"]), (5, ["c"]), (6, ["d"])]), mid=3))
    asyncio.run(pipeline.flush())
    labels = {"site": "pavilion-2", "agent": "pi1"}
    assert _counter(metrics, "fieldmon_envelopes_duplicate_total", **labels) == 2
    [(_topic, payload)] = link.client.published
    assert AckMessage.model_validate_json(payload).ranges == [(3, 6)]


def test_acks_say_what_the_collector_reads_beyond_plain_envelopes(tmp_path: Path) -> None:
    writer = _Writer()
    pipeline, link, _metrics = _pipeline(writer, tmp_path)
    pipeline.handle(_Message(TOPIC, _envelope(1, ["a"]), mid=1))
    asyncio.run(pipeline.flush())
    [properties] = link.client.properties
    assert properties is not None
    assert dict(properties.UserProperty) == {
        "accept": "parts,zlib",
        "max_payload_bytes": str(64 * 1024),
    }
