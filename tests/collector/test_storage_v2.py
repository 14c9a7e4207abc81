"""The v2 writer (influxdb-client) against VictoriaMetrics' /api/v2/write, and its error classes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from conftest import FakeInflux
from test_storage_v1 import link_rows

from fieldmon.collector.storage.base import RejectedWriteError, RetryableWriteError, WriteError
from fieldmon.collector.storage.config import InfluxV2Config
from fieldmon.collector.storage.lineprotocol import encode_samples
from fieldmon.collector.storage.registry import make_writer
from fieldmon.lab.servers import VictoriaMetricsServer, free_port


def v2_config(url: str, **extra: object) -> InfluxV2Config:
    base = {"api": "v2", "url": url, "org": "field-org", "bucket": "fieldmon"}
    return InfluxV2Config.model_validate(base | extra)


async def _write(config: InfluxV2Config, body: bytes, points: int) -> None:
    writer = make_writer(config)
    try:
        await writer.write(body, points)
    finally:
        await writer.close()


def _series(server: VictoriaMetricsServer, site: str) -> dict[tuple[str, str], dict[int, float]]:
    """{(metric name, target): {time in ms: value}} for one site."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    for item in server.export(f'{{site="{site}"}}'):
        key = (item["metric"]["__name__"], item["metric"]["target"])
        found[key] = dict(zip(item["timestamps"], item["values"], strict=True))
    return found


def test_link_rows_reach_victoria_metrics(victoria_metrics: VictoriaMetricsServer) -> None:
    site = f"v2-{uuid.uuid4().hex[:8]}"  # the VictoriaMetrics server is shared by the session
    samples = link_rows(site, rounds=20)
    asyncio.run(_write(v2_config(victoria_metrics.url), encode_samples(samples), len(samples)))
    series = _series(victoria_metrics, site)
    expected: dict[tuple[str, str], dict[int, float]] = {}
    for sample in samples:
        for field, value in sample.fields.items():
            # VictoriaMetrics names a field `{measurement}_{field}` and keeps milliseconds.
            key = (f"link_{field}", sample.tags["target"])
            expected.setdefault(key, {})[sample.time // 10**6] = float(value)
    assert series == expected
    labels = victoria_metrics.export(f'{{site="{site}", target="parent-gw"}}')[0]["metric"]
    assert labels["agent"] == f"{site}-pi1"
    assert labels["role"] == "parent"


def test_ping_and_prepare_against_a_real_server(victoria_metrics: VictoriaMetricsServer) -> None:
    async def both() -> None:
        writer = make_writer(v2_config(victoria_metrics.url))
        try:
            await writer.prepare()
            await writer.ping()
        finally:
            await writer.close()

    asyncio.run(both())


def test_a_closed_port_is_retryable() -> None:
    config = v2_config(f"http://127.0.0.1:{free_port()}", timeout="2s")
    with pytest.raises(RetryableWriteError):
        asyncio.run(_write(config, b"link,site=s f=1 1", 1))

    async def ping() -> None:
        writer = make_writer(config)
        try:
            await writer.ping()
        finally:
            await writer.close()

    with pytest.raises(RetryableWriteError):
        asyncio.run(ping())


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "7"}, 7.0),
        (500, {}, None),
        (401, {}, None),
        (403, {}, None),
        (404, {}, None),
    ],
)
def test_retryable_answers(
    fake_influx: FakeInflux, status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    body = '{"code":"unavailable","message":"try later"}'
    fake_influx.answer(status, body, {"Content-Type": "application/json"} | headers)
    with pytest.raises(RetryableWriteError) as caught:
        asyncio.run(_write(v2_config(fake_influx.url), b"m f=1 1", 1))
    assert caught.value.retry_after == retry_after
    assert str(status) in str(caught.value)
    assert "try later" in str(caught.value)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_rejected_answers(fake_influx: FakeInflux, status: int) -> None:
    body = '{"code":"invalid","message":"failure writing points: field type conflict"}'
    fake_influx.answer(status, body, {"Content-Type": "application/json"})
    with pytest.raises(RejectedWriteError) as caught:
        asyncio.run(_write(v2_config(fake_influx.url), b'm f="x" 1', 1))
    assert caught.value.status == status
    assert "field type conflict" in str(caught.value)


def test_a_slow_server_times_out_as_retryable(fake_influx: FakeInflux) -> None:
    fake_influx.answer(204, delay=5)
    with pytest.raises(RetryableWriteError):
        asyncio.run(_write(v2_config(fake_influx.url, timeout="200ms"), b"m f=1 1", 1))


def test_request_shape(fake_influx: FakeInflux, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken-value\n")
    asyncio.run(_write(v2_config(fake_influx.url, token_file=token), b"m f=1 1\nm f=2 2", 2))
    [seen] = fake_influx.requests
    assert (seen.method, seen.path) == ("POST", "/api/v2/write")
    assert seen.query == {"org": "field-org", "bucket": "fieldmon", "precision": "ns"}
    assert seen.headers["Authorization"] == "Token t0ken-value"
    assert seen.body == b"m f=1 1\nm f=2 2"


def test_every_error_is_a_write_error(fake_influx: FakeInflux) -> None:
    fake_influx.answer(418, "I'm a teapot")
    with pytest.raises(WriteError):
        asyncio.run(_write(v2_config(fake_influx.url), b"m f=1 1", 1))
