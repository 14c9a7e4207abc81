"""What only the v2 writer (influxdb-client) does: the org, bucket and precision parameters and
token auth. What every writer does is in test_writer_contract.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import FakeInflux

from fieldmon.collector.storage.config import InfluxV2Config
from fieldmon.collector.storage.registry import make_writer
from fieldmon.lab.secretfiles import write_secret


def v2_config(url: str, **extra: object) -> InfluxV2Config:
    base = {"api": "v2", "url": url, "org": "field-org", "bucket": "fieldmon"}
    return InfluxV2Config.model_validate(base | extra)


async def _write(config: InfluxV2Config, body: bytes, points: int) -> None:
    writer = make_writer(config)
    try:
        await writer.write(body, points)
    finally:
        await writer.close()


def test_request_shape(fake_influx: FakeInflux, tmp_path: Path) -> None:
    token = tmp_path / "token"
    write_secret(token, "t0ken-value")
    asyncio.run(_write(v2_config(fake_influx.url, token_file=token), b"m f=1 1\nm f=2 2", 2))
    [seen] = fake_influx.requests
    assert (seen.method, seen.path) == ("POST", "/api/v2/write")
    assert seen.query == {"org": "field-org", "bucket": "fieldmon", "precision": "ns"}
    assert seen.headers["Authorization"] == "Token t0ken-value"
    assert seen.body == b"m f=1 1\nm f=2 2"


def test_without_a_token_no_credentials_are_sent(fake_influx: FakeInflux) -> None:
    asyncio.run(_write(v2_config(fake_influx.url), b"m f=1 1", 1))
    [seen] = fake_influx.requests
    assert "Authorization" not in seen.headers
