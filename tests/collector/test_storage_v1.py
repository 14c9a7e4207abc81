"""The InfluxDB 1.x writer against a real influxd, and its error classification on a fake one."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from conftest import FakeInflux

from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError, WriteError
from fieldmon.collector.storage.config import InfluxV1Config
from fieldmon.collector.storage.lineprotocol import encode_samples
from fieldmon.collector.storage.registry import make_writer
from fieldmon.core.wire.models import Sample
from fieldmon.lab.servers import InfluxdServer, free_port

START = 1_790_000_000_000_000_000
ROLES = {"parent-gw": "parent", "internet": "internet", "gateway": "gateway", "ap-hall-a": "ap"}


def link_rows(site: str, rounds: int, seed: int = 1) -> list[Sample]:
    """`link` rows like an agent's: every target each 10 s round, full statistics."""
    rng = random.Random(seed)
    rows = []
    for round_no in range(rounds):
        for target, role in ROLES.items():
            rtts = sorted(round(rng.uniform(0.5, 90), 3) for _ in range(5))
            received = rng.choice([10, 10, 10, 9, 0])
            fields: dict[str, bool | int | float | str] = {
                "sent": 10,
                "received": received,
                "loss_pct": (10 - received) * 10.0,
            }
            if received:
                fields |= {
                    "rtt_min_ms": rtts[0],
                    "rtt_avg_ms": round(sum(rtts) / 5, 3),
                    "rtt_p50_ms": rtts[2],
                    "rtt_p95_ms": rtts[3],
                    "rtt_max_ms": rtts[4],
                    "jitter_ms": round(rng.uniform(0, 8), 3),
                    "mos": round(rng.uniform(3.0, 4.4), 2),
                }
            rows.append(
                Sample(
                    measurement="link",
                    tags={"site": site, "agent": f"{site}-pi1", "target": target, "role": role},
                    fields=fields,
                    time=START + round_no * 10 * 10**9,
                )
            )
    return rows


def v1_config(url: str, database: str, **extra: object) -> InfluxV1Config:
    return InfluxV1Config.model_validate({"api": "v1", "url": url, "database": database} | extra)


async def _write(config: InfluxV1Config, body: bytes, points: int) -> None:
    writer = make_writer(config)
    try:
        await writer.write(body, points)
    finally:
        await writer.close()


def _stored(influxd: InfluxdServer, db: str) -> dict[tuple[str, str, int], dict[str, object]]:
    rows = influxd.query('SELECT * FROM "link" GROUP BY *', db=db)
    return {(row["site"], row["target"], row["time"]): row for row in rows}


def _expected(sample: Sample) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(
        ["rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms", "rtt_p95_ms", "rtt_max_ms", "jitter_ms", "mos"]
    )
    return row | sample.fields | sample.tags | {"time": sample.time}


@pytest.mark.parametrize("gzip_min_bytes", [None, 0])
def test_link_rows_are_stored_exactly(
    influxd: InfluxdServer, influx_db: str, gzip_min_bytes: int | None
) -> None:
    samples = link_rows("pavilion-2", rounds=25) + link_rows("hotel-nord", rounds=25, seed=2)
    config = v1_config(influxd.url, influx_db, gzip_min_bytes=gzip_min_bytes)
    asyncio.run(_write(config, encode_samples(samples), len(samples)))
    stored = _stored(influxd, influx_db)
    assert len(stored) == len(samples) == 200
    for sample in samples:
        row = stored[(sample.tags["site"], sample.tags["target"], sample.time)]
        assert row == _expected(sample)
        assert type(row["sent"]) is int
        assert type(row["loss_pct"]) in (int, float)  # JSON drops ".0"; the column is a float


def test_a_replayed_batch_leaves_one_row_per_series_and_time(
    influxd: InfluxdServer, influx_db: str
) -> None:
    samples = link_rows("pavilion-2", rounds=10)
    body = encode_samples(samples)
    config = v1_config(influxd.url, influx_db)
    asyncio.run(_write(config, body, len(samples)))
    asyncio.run(_write(config, body, len(samples)))
    [count] = influxd.query('SELECT COUNT("sent") FROM "link"', db=influx_db)
    assert count["count"] == len(samples) == 40
    assert len(_stored(influxd, influx_db)) == 40


def test_prepare_creates_the_database_and_is_idempotent(influxd: InfluxdServer) -> None:
    name = f"prep_{uuid.uuid4().hex[:10]}"
    config = v1_config(influxd.url, name)

    async def prepare_twice_then_write() -> None:
        writer = make_writer(config)
        try:
            await writer.prepare()
            await writer.prepare()
            await writer.ping()
            await writer.write(encode_samples(link_rows("s", 1)), 4)
        finally:
            await writer.close()

    try:
        asyncio.run(prepare_twice_then_write())
        databases = {row["name"] for row in influxd.query("SHOW DATABASES")}
        assert name in databases
        assert len(_stored(influxd, name)) == 4
    finally:
        influxd.query(f'DROP DATABASE "{name}"')


def test_a_field_type_conflict_is_rejected_with_the_servers_words(
    influxd: InfluxdServer, influx_db: str
) -> None:
    config = v1_config(influxd.url, influx_db)
    asyncio.run(_write(config, b"link,site=s,target=t loss_pct=1.5 1", 1))
    with pytest.raises(RejectedWriteError) as caught:
        asyncio.run(_write(config, b'link,site=s,target=t loss_pct="high" 2', 1))
    assert caught.value.status == 400
    assert "field type conflict" in str(caught.value)
    assert "loss_pct" in str(caught.value)


def test_a_partial_write_keeps_the_good_points(influxd: InfluxdServer, influx_db: str) -> None:
    config = v1_config(influxd.url, influx_db)
    asyncio.run(_write(config, b"link,site=s,target=t loss_pct=1.5 1", 1))
    body = b'link,site=s,target=t loss_pct=2.5 2\nlink,site=s,target=t loss_pct="x" 3'
    with pytest.raises(RejectedWriteError) as caught:
        asyncio.run(_write(config, body, 2))
    assert "partial write" in str(caught.value)
    times = [row["time"] for row in influxd.query('SELECT * FROM "link"', db=influx_db)]
    assert times == [1, 2]


def test_a_missing_database_is_retryable_not_dropped(influxd: InfluxdServer) -> None:
    config = v1_config(influxd.url, f"missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(RetryableWriteError, match="database not found"):
        asyncio.run(_write(config, b"link,site=s f=1 1", 1))


def test_a_closed_port_is_retryable() -> None:
    config = v1_config(f"http://127.0.0.1:{free_port()}", "fieldmon", timeout="2s")
    with pytest.raises(RetryableWriteError) as caught:
        asyncio.run(_write(config, b"link,site=s f=1 1", 1))
    assert caught.value.retry_after is None

    async def prepare_and_ping() -> list[WriteError]:
        writer = make_writer(config)
        errors: list[WriteError] = []
        try:
            for call in (writer.prepare, writer.ping):
                try:
                    await call()
                except WriteError as exc:
                    errors.append(exc)
        finally:
            await writer.close()
        return errors

    errors = asyncio.run(prepare_and_ping())
    assert [type(error) for error in errors] == [RetryableWriteError, RetryableWriteError]


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "7"}, 7.0),
        (500, {}, None),
        (502, {}, None),
        (401, {}, None),
        (403, {}, None),
        (404, {}, None),
    ],
)
def test_retryable_answers(
    fake_influx: FakeInflux, status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    fake_influx.answer(
        status, '{"error":"try later"}', {"Content-Type": "application/json"} | headers
    )
    with pytest.raises(RetryableWriteError) as caught:
        asyncio.run(_write(v1_config(fake_influx.url, "fieldmon"), b"m f=1 1", 1))
    assert caught.value.retry_after == retry_after
    assert str(status) in str(caught.value)
    assert "try later" in str(caught.value)


def test_retry_after_as_an_http_date(fake_influx: FakeInflux) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    fake_influx.answer(503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(RetryableWriteError) as caught:
        asyncio.run(_write(v1_config(fake_influx.url, "fieldmon"), b"m f=1 1", 1))
    assert caught.value.retry_after is not None
    assert 60 < caught.value.retry_after <= 120


@pytest.mark.parametrize("status", [400, 413, 422])
def test_rejected_answers(fake_influx: FakeInflux, status: int) -> None:
    fake_influx.answer(status, '{"error":"unable to parse \'m f=\': missing field value"}')
    with pytest.raises(RejectedWriteError) as caught:
        asyncio.run(_write(v1_config(fake_influx.url, "fieldmon"), b"m f= 1", 1))
    assert caught.value.status == status
    assert "unable to parse 'm f=': missing field value" in str(caught.value)


def test_a_slow_server_times_out_as_retryable(fake_influx: FakeInflux) -> None:
    fake_influx.answer(204, delay=5)
    config = v1_config(fake_influx.url, "fieldmon", timeout="200ms")
    with pytest.raises(RetryableWriteError, match="timed out"):
        asyncio.run(_write(config, b"m f=1 1", 1))


def test_request_shape(fake_influx: FakeInflux, tmp_path: Path) -> None:
    password = tmp_path / "influx.pass"
    password.write_text("s3cret\n")
    config = v1_config(
        fake_influx.url,
        "field mon",
        retention_policy="autogen",
        username="collector",
        password_file=password,
        gzip_min_bytes=10,
    )
    asyncio.run(_write(config, b"m f=1 1\nm f=2 2", 2))
    [seen] = fake_influx.requests
    assert (seen.method, seen.path) == ("POST", "/write")
    assert seen.query == {"db": "field mon", "rp": "autogen", "precision": "ns"}
    assert seen.headers["Authorization"] == "Basic Y29sbGVjdG9yOnMzY3JldA=="  # collector:s3cret
    assert seen.headers["Content-Encoding"] == "gzip"
    assert seen.body == b"m f=1 1\nm f=2 2"


def test_small_bodies_are_not_compressed(fake_influx: FakeInflux) -> None:
    asyncio.run(_write(v1_config(fake_influx.url, "db", gzip_min_bytes=1000), b"m f=1 1", 1))
    [seen] = fake_influx.requests
    assert "Content-Encoding" not in seen.headers
