"""The disk spool: order, restarts, torn and corrupt records, the size cap, kill -9; and the
DurableStore that spools what the database will not take and drains it when it answers again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.inventory import Inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.collector.spool import HEADER, Spool, SpoolError
from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.config import AgentSection, SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig, LinkRole
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import AckMessage, Envelope, Sample
from fieldmon.core.wire.topics import samples_topic


def _batch(number: int, size: int = 3) -> list[str]:
    return [
        f"link,target=t{i} seq={number}i {1_700_000_000_000_000_000 + number}" for i in range(size)
    ]


def _drain(spool: Spool) -> list[list[str]]:
    batches = []
    while (batch := spool.peek()) is not None:
        batches.append(batch.lines)
        spool.release(batch)
    return batches


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_batches_come_back_in_order_across_segments_and_the_drained_spool_is_empty(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=400)
    for number in range(10):
        assert spool.append(_batch(number))
    assert len(_segments(tmp_path)) > 2  # rolled over
    assert spool.bytes == sum(path.stat().st_size for path in _segments(tmp_path))
    assert _drain(spool) == [_batch(number) for number in range(10)]
    assert spool.empty and spool.bytes == 0
    assert _segments(tmp_path) == []
    assert spool.append(_batch(10))  # and it carries on after being empty
    assert _drain(spool) == [_batch(10)]


def test_a_restart_keeps_what_was_not_drained_and_forgets_what_was(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=400)
    for number in range(6):
        spool.append(_batch(number))
    for _ in range(4):
        batch = spool.peek()
        assert batch is not None
        spool.release(batch)
    spool.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=400)
    assert not reopened.empty
    reopened.append(_batch(6))
    assert _drain(reopened) == [_batch(4), _batch(5), _batch(6)]


def test_a_batch_peeked_but_not_released_before_a_restart_comes_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_batch(1))
    spool.append(_batch(2))
    assert spool.peek() == spool.peek()  # peek does not consume
    spool.close()
    assert _drain(Spool(tmp_path, max_bytes=1 << 20)) == [_batch(1), _batch(2)]


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, HEADER.size + 5])
def test_a_torn_last_record_is_skipped_and_the_records_before_it_kept(
    tmp_path: Path, cut: int
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for number in range(3):
        spool.append(_batch(number))
    spool.close()
    [segment] = _segments(tmp_path)
    whole = segment.stat().st_size
    with segment.open("ab") as handle:  # a fourth record cut off `cut` bytes in
        handle.write(_record(_batch(3))[:cut])
    assert segment.stat().st_size == whole + cut
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert _drain(reopened) == [_batch(number) for number in range(3)]
    assert reopened.torn_records == 1
    assert reopened.empty and _segments(tmp_path) == []


def test_new_batches_after_a_restart_never_follow_a_torn_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_batch(0))
    spool.close()
    [segment] = _segments(tmp_path)
    with segment.open("ab") as handle:
        handle.write(_record(_batch(1))[:30])
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    reopened.append(_batch(2))
    assert len(_segments(tmp_path)) == 2
    assert _drain(reopened) == [_batch(0), _batch(2)]


def test_a_corrupt_record_in_the_middle_is_skipped_and_the_ones_after_it_are_found(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for number in range(4):
        spool.append(_batch(number))
    spool.close()
    [segment] = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    second = len(_record(_batch(0)))
    data[second + HEADER.size + 3] ^= 0xFF  # one flipped bit of batch 1's payload
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert _drain(reopened) == [_batch(0), _batch(2), _batch(3)]
    assert reopened.torn_records == 1


def test_the_cap_refuses_batches_until_draining_frees_room(tmp_path: Path) -> None:
    record = len(_record(_batch(0)))
    spool = Spool(tmp_path, max_bytes=3 * record, segment_bytes=record)
    assert all(spool.append(_batch(number)) for number in range(3))
    assert not spool.append(_batch(3))
    assert spool.bytes == 3 * record
    batch = spool.peek()
    assert batch is not None
    spool.release(batch)  # its segment goes, and with it the room for one more
    assert spool.append(_batch(3))
    assert _drain(spool) == [_batch(1), _batch(2), _batch(3)]


def test_a_segment_drained_just_before_a_crash_is_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1)  # one record per segment
    spool.append(_batch(0))
    spool.append(_batch(1))
    first = _segments(tmp_path)[0]
    saved = first.read_bytes()
    batch = spool.peek()
    assert batch is not None and batch.lines == _batch(0)
    spool.release(batch)
    spool.close()
    assert not first.exists()
    first.write_bytes(saved)  # as if the crash came after the cursor moved, before the unlink
    assert _drain(Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1)) == [_batch(1)]
    assert not first.exists()


def test_a_failed_fsync_refuses_the_batch_and_keeps_the_spool_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(_batch(0))
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    assert not spool.append(_batch(1))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert spool.append(_batch(2))
    assert len(_segments(tmp_path)) == 2  # the failed file descriptor is not trusted again
    assert _drain(spool) == [_batch(0), _batch(2)]


def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match=r"spool directory .*file"):
        Spool(blocker / "spool", max_bytes=1 << 20)


_APPENDER = """
import sys
from pathlib import Path
from fieldmon.collector.spool import Spool
spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=64 * 1024)
number = int(sys.argv[2])
while True:
    lines = [f"link,target=t{i} seq={number}i {number}" for i in range(number % 300 + 1)]
    spool.append(lines)
    sys.stdout.write(f"{number}\\n")
    sys.stdout.flush()
    number += 1
"""


def test_kill_9_while_appending_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    """Everything append() returned for survives SIGKILL at arbitrary moments, in order."""
    acknowledged: list[int] = []
    start = 0
    for round_ in range(5):
        process = subprocess.Popen(
            [sys.executable, "-c", _APPENDER, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        # Read a while, then kill at a moment chosen by the clock, not by a record boundary.
        deadline = time.monotonic() + 0.3 + 0.1 * round_
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            acknowledged.append(int(line))
        process.send_signal(signal.SIGKILL)
        rest = process.stdout.read()
        process.wait()
        acknowledged.extend(int(line) for line in rest.split())
        start = acknowledged[-1] + 1 if acknowledged else start
    spool = Spool(tmp_path, max_bytes=1 << 30)
    found = []
    while (batch := spool.peek()) is not None:
        number = int(batch.lines[0].rsplit(" ", 1)[1])
        assert batch.lines == [
            f"link,target=t{i} seq={number}i {number}" for i in range(number % 300 + 1)
        ]
        found.append(number)
        spool.release(batch)
    assert len(acknowledged) > 50
    assert set(acknowledged) <= set(found)
    # Only a batch written but not yet reported when the kill came may be extra.
    assert len(set(found) - set(acknowledged)) <= 5
    assert found == sorted(found)


def _record(lines: list[str]) -> bytes:
    """The bytes Spool.append writes for `lines`."""
    payload = "\n".join(lines).encode()
    return HEADER.pack(b"FMSP", len(payload), len(lines), zlib.crc32(payload)) + payload


# -- DurableStore ---------------------------------------------------------------------------


class _Database:
    """A writer whose availability the test switches; refuses lines containing 'BAD'."""

    def __init__(self) -> None:
        self.up = True
        self.retry_after: float | None = None
        self.writes: list[list[str]] = []
        self.attempts = 0

    async def write(self, body: bytes, points: int) -> None:
        self.attempts += 1
        if not self.up:
            raise RetryableWriteError("HTTP 503: down for the test", retry_after=self.retry_after)
        lines = body.decode().split("\n")
        assert len(lines) == points
        if any("BAD" in line for line in lines):
            raise RejectedWriteError("HTTP 400: field type conflict", status=400)
        self.writes.append(lines)


def _store(
    tmp_path: Path, database: _Database, max_bytes: int = 1 << 20
) -> tuple[DurableStore, Spool, CollectorMetrics]:
    metrics = CollectorMetrics()
    points = PointWriter(database, metrics, DeadLetterFile(tmp_path / "dead.jsonl"))  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool", max_bytes=max_bytes)
    return DurableStore(points, metrics, spool, retry_budget=0.05), spool, metrics


def _metric(metrics: CollectorMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_database_outage_spools_then_drains_in_order(tmp_path: Path) -> None:
    database = _Database()

    async def scenario() -> None:
        store, spool, metrics = _store(tmp_path, database)
        drainer = asyncio.create_task(store.drain())
        assert await store.put(_batch(0))
        database.up = False
        database.retry_after = 0.01
        assert await store.put(_batch(1))  # after the retry budget: spooled, so durable
        attempts = database.attempts
        assert await store.put(_batch(2))  # the database is known down: straight to the spool
        assert await store.put(_batch(3))
        assert database.attempts - attempts <= 2  # only the drainer's probes, no budget each
        assert spool.bytes > 0
        assert _metric(metrics, "fieldmon_spool_bytes") == spool.bytes
        database.up = True
        await _until(lambda: spool.empty)
        assert await store.put(_batch(4))  # and straight to the database again
        drainer.cancel()
        assert database.writes == [_batch(n) for n in range(5)]
        assert _metric(metrics, "fieldmon_spool_batches_spooled_total") == 3
        assert _metric(metrics, "fieldmon_spool_batches_drained_total") == 3
        assert _metric(metrics, "fieldmon_spool_bytes") == 0

    asyncio.run(scenario())


def test_bad_points_in_a_spooled_batch_go_to_the_dead_letter_file(tmp_path: Path) -> None:
    database = _Database()
    database.up = False

    async def scenario() -> None:
        store, spool, _metrics = _store(tmp_path, database)
        lines = [*_batch(0), "link,target=x loss=BAD 1", *_batch(1)]
        assert await store.put(lines)
        database.up = True
        drainer = asyncio.create_task(store.drain())
        await _until(lambda: spool.empty)
        drainer.cancel()

    asyncio.run(scenario())
    assert sorted(line for write in database.writes for line in write) == sorted(
        _batch(0) + _batch(1)
    )
    assert "loss=BAD" in (tmp_path / "dead.jsonl").read_text()


def test_a_full_spool_holds_the_batch_until_draining_makes_room(tmp_path: Path) -> None:
    database = _Database()
    record = len(_record(_batch(0)))

    async def scenario() -> None:
        store, spool, metrics = _store(tmp_path, database, max_bytes=2 * record)
        database.up = False
        assert await store.put(_batch(0))
        assert await store.put(_batch(1))
        assert not await store.put(_batch(2))  # full: not durable, must not be acknowledged
        assert _metric(metrics, "fieldmon_spool_full") == 1
        assert store.holding  # /healthz reports it
        held = asyncio.create_task(store.keep(_batch(2)))
        await asyncio.sleep(0.2)
        assert not held.done()
        drainer = asyncio.create_task(store.drain())
        database.up = True
        await asyncio.wait_for(held, timeout=10)
        await _until(lambda: spool.empty)
        drainer.cancel()
        assert _metric(metrics, "fieldmon_spool_full") == 0
        assert not store.holding

    asyncio.run(scenario())
    assert sorted(line for write in database.writes for line in write) == sorted(
        _batch(0) + _batch(1) + _batch(2)
    )


def test_batches_spooled_before_a_restart_are_drained_after_it(tmp_path: Path) -> None:
    database = _Database()
    database.up = False

    async def first_run() -> None:
        store, spool, _ = _store(tmp_path, database)
        assert await store.put(_batch(0))
        assert await store.put(_batch(1))
        spool.close()

    async def second_run() -> None:
        store, spool, _ = _store(tmp_path, database)
        drainer = asyncio.create_task(store.drain())
        await _until(lambda: spool.empty)
        drainer.cancel()

    asyncio.run(first_run())
    database.up = True
    asyncio.run(second_run())
    assert database.writes == [_batch(0), _batch(1)]


# -- IngestPipeline with the spool ----------------------------------------------------------


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

    def ack(self, mid: int, _qos: int) -> None:
        self.acked.append(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, properties: object = None) -> None:
        self.published.append((topic, payload))


@dataclass
class _Link:
    client: _Client = field(default_factory=_Client)
    generation: int = 1


def _pipeline(store: DurableStore, metrics: CollectorMetrics) -> tuple[IngestPipeline, _Link]:
    site = SiteConfig(
        site="pavilion-2",
        name="Pavilion 2",
        parent_hospital="central",
        agent=AgentSection(id="pi1", broker=BrokerConfig(host="127.0.0.1")),
        links=[IcmpLinkConfig(name="gw", address="192.0.2.1", role=LinkRole.GATEWAY)],
    )
    link = _Link()
    pipeline = IngestPipeline(
        inventory=Inventory(sites={"pavilion-2": site}),
        points=None,  # type: ignore[arg-type]
        metrics=metrics,
        link=link,  # type: ignore[arg-type]
        batch_size=1000,
        flush_interval=0.05,
        max_payload_bytes=64 * 1024,
        max_deliveries=100,
        store=store,
    )
    return pipeline, link


def _message(seq: int, mid: int) -> _Message:
    sample = Sample(
        measurement="link",
        tags={"site": "pavilion-2", "agent": "pi1", "target": "gw"},
        fields={"loss_pct": 0.0},
        time=1_700_000_000_000_000_000 + seq,
    )
    envelope = Envelope(site="pavilion-2", agent="pi1", seq=seq, sent_at=1, samples=[sample])
    return _Message(samples_topic("pavilion-2", "pi1"), encode(envelope), mid)


def test_ingest_acknowledges_a_spooled_batch_and_holds_one_the_full_spool_refused(
    tmp_path: Path,
) -> None:
    database = _Database()
    database.up = False

    async def scenario() -> None:
        store, spool, metrics = _store(tmp_path, database, max_bytes=150)  # one record
        pipeline, link = _pipeline(store, metrics)
        pipeline.handle(_message(1, mid=11))
        await pipeline.flush()  # database down: spooled, so acknowledged
        assert link.client.acked == [11]
        [(topic, payload)] = link.client.published
        assert topic == "fieldmon/v1/pavilion-2/pi1/ack"
        assert AckMessage.model_validate_json(payload).ranges == [(1, 1)]
        assert not spool.empty
        pipeline.handle(_message(2, mid=12))
        flushing = asyncio.create_task(pipeline.flush())  # too big for what is left: held
        await asyncio.sleep(0.3)
        assert link.client.acked == [11] and not flushing.done()
        database.up = True
        drainer = asyncio.create_task(store.drain())
        await asyncio.wait_for(flushing, timeout=10)
        assert link.client.acked == [11, 12]
        await _until(lambda: spool.empty)
        drainer.cancel()

    asyncio.run(scenario())
    stored = [line for write in database.writes for line in write]
    assert len(stored) == 2 and len(set(stored)) == 2
