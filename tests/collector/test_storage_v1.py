"""What only the InfluxDB 1.x writer does: CREATE DATABASE, partial writes, the database and
retention-policy parameters, basic auth and its gzip threshold. What every writer does is in
test_writer_contract.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from conftest import FakeInflux

from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError, RetryCause
from fieldmon.collector.storage.config import InfluxV1Config
from fieldmon.collector.storage.registry import make_writer
from fieldmon.lab.secretfiles import write_secret
from fieldmon.lab.servers import InfluxdServer, free_port


def v1_config(url: str, database: str, **extra: object) -> InfluxV1Config:
    return InfluxV1Config.model_validate({"api": "v1", "url": url, "database": database} | extra)


async def _write(config: InfluxV1Config, body: bytes, points: int) -> None:
    writer = make_writer(config)
    try:
        await writer.write(body, points)
    finally:
        await writer.close()


def test_prepare_creates_the_database_and_is_idempotent(influxd: InfluxdServer) -> None:
    name = f"prep_{uuid.uuid4().hex[:10]}"
    config = v1_config(influxd.url, name)

    async def prepare_twice_then_write() -> None:
        writer = make_writer(config)
        try:
            await writer.prepare()
            await writer.prepare()
            await writer.write(
                b"link,site=s,target=t sent=10i 1\nlink,site=s,target=u sent=9i 1", 2
            )
        finally:
            await writer.close()

    try:
        asyncio.run(prepare_twice_then_write())
        databases = {row["name"] for row in influxd.query("SHOW DATABASES")}
        assert name in databases
        rows = influxd.query('SELECT "sent" FROM "link" GROUP BY "target"', db=name)
        assert sorted((row["target"], row["sent"]) for row in rows) == [("t", 10), ("u", 9)]
    finally:
        influxd.query(f'DROP DATABASE "{name}"')


def test_prepare_names_the_database_it_could_not_create(fake_influx: FakeInflux) -> None:
    # /query answers 200 even when the statement fails; the error is inside `results`.
    fake_influx.answer(200, '{"results":[{"statement_id":0,"error":"disk full"}]}')

    async def prepare() -> None:
        writer = make_writer(v1_config(fake_influx.url, "fieldmon"))
        try:
            await writer.prepare()
        finally:
            await writer.close()

    with pytest.raises(RetryableWriteError, match=r"creating database 'fieldmon'.*disk full"):
        asyncio.run(prepare())
    [seen] = fake_influx.requests
    assert (seen.method, seen.path) == ("POST", "/query")
    assert seen.body == b"q=CREATE+DATABASE+%22fieldmon%22"


def test_prepare_on_a_server_that_is_down_is_retryable() -> None:
    config = v1_config(f"http://127.0.0.1:{free_port()}", "fieldmon", timeout="2s")

    async def prepare() -> None:
        writer = make_writer(config)
        try:
            await writer.prepare()
        finally:
            await writer.close()

    with pytest.raises(RetryableWriteError, match="creating database 'fieldmon'") as caught:
        asyncio.run(prepare())
    assert caught.value.cause is RetryCause.UNREACHABLE


def test_a_partial_write_keeps_the_good_points(influxd: InfluxdServer, influx_db: str) -> None:
    # InfluxDB 1.x writes the rest of a batch and refuses only the bad points: `partial`.
    config = v1_config(influxd.url, influx_db)
    asyncio.run(_write(config, b"link,site=s,target=t loss_pct=1.5 1", 1))
    body = b'link,site=s,target=t loss_pct=2.5 2\nlink,site=s,target=t loss_pct="x" 3'
    with pytest.raises(RejectedWriteError) as caught:
        asyncio.run(_write(config, body, 2))
    assert caught.value.partial
    times = [row["time"] for row in influxd.query('SELECT * FROM "link"', db=influx_db)]
    assert times == [1, 2]


def test_a_missing_database_is_retryable_not_dropped(influxd: InfluxdServer) -> None:
    config = v1_config(influxd.url, f"missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(RetryableWriteError, match="database not found") as caught:
        asyncio.run(_write(config, b"link,site=s f=1 1", 1))
    assert (caught.value.status, caught.value.cause) == (404, RetryCause.NOT_FOUND)


def test_request_shape(fake_influx: FakeInflux, tmp_path: Path) -> None:
    password = tmp_path / "influx.pass"
    write_secret(password, "s3cret")
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


def test_without_a_username_no_credentials_are_sent(fake_influx: FakeInflux) -> None:
    asyncio.run(_write(v1_config(fake_influx.url, "db"), b"m f=1 1", 1))
    [seen] = fake_influx.requests
    assert "Authorization" not in seen.headers
    assert seen.query == {"db": "db", "precision": "ns"}


def test_small_bodies_are_not_compressed(fake_influx: FakeInflux) -> None:
    asyncio.run(_write(v1_config(fake_influx.url, "db", gzip_min_bytes=1000), b"m f=1 1", 1))
    [seen] = fake_influx.requests
    assert "Content-Encoding" not in seen.headers
