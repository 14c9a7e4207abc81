"""The writer contract: every storage backend in the registry passes the same tests.

Each backend writes to its real server (influxd 1.6.7 for `v1`; VictoriaMetrics standing in for
an InfluxDB 2.x for `v2`) and is read back through that server's own query API; answers a real
server will not give (429, 503, Retry-After, a hung request) come from `fake_influx`.

A backend joins by one entry in BACKENDS: its config, the server fixture that stands in for its
database, how to read back what that server stored, and a point that server refuses. A writer in
`storage.registry.WRITERS` without an entry fails every test here. Per-backend details (auth,
URL and query parameters, v1's CREATE DATABASE and partial writes) stay in test_storage_v1.py and
test_storage_v2.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import FakeInflux
from pydantic import TypeAdapter

from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import PointWriter
from fieldmon.collector.storage.base import (
    RejectedWriteError,
    RetryableWriteError,
    RetryCause,
    WriteError,
    Writer,
)
from fieldmon.collector.storage.config import InfluxConfig, InfluxV1Config, InfluxV2Config
from fieldmon.collector.storage.lineprotocol import encode_sample, encode_samples
from fieldmon.collector.storage.registry import WRITERS, make_writer
from fieldmon.core.wire.models import FieldValue, Sample
from fieldmon.lab.servers import InfluxdServer, VictoriaMetricsServer, free_port

T = TypeVar("T")
Config = InfluxV1Config | InfluxV2Config

# 2023-11-14: long past, so no server takes it for a clock error (VictoriaMetrics drops rows
# dated more than two days ahead). Sub-millisecond digits, so a lost `precision=ns` shows.
START = 1_700_000_000_123_456_789
MS = 10**6
ROLES = {"parent-gw": "parent", "internet": "internet", "gateway": "gateway", "ap-hall-a": "ap"}

# One stored value as a server holds it: (series, sorted tags, time, field, value).
Entry = tuple[Any, ...]


# -- the batch every writer must store exactly -------------------------------------------------


def link_rows(run: str, site: str, rounds: int, seed: int) -> list[Sample]:
    """`link` rows like an agent's: every target each 10 s round, full statistics."""
    rng = random.Random(seed)
    rows = []
    for round_no in range(rounds):
        for target, role in ROLES.items():
            rtts = sorted(round(rng.uniform(0.5, 90), 3) for _ in range(5))
            received = rng.choice([10, 10, 10, 9, 0])
            fields: dict[str, FieldValue] = {
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
            tags = {"run": run, "site": site, "agent": f"{site}-pi1", "target": target}
            rows.append(
                Sample(
                    measurement="link",
                    tags=tags | {"role": role},
                    fields=fields,
                    time=START + round_no * 10 * 10**9,
                )
            )
    return rows


def every_kind_of_value(run: str) -> list[Sample]:
    """Every line-protocol type and the characters line protocol has to escape.

    Floats have at most 12 significant digits: VictoriaMetrics keeps no more (influxd keeps all
    17, which test_lineprotocol.py holds it to).
    """
    return [
        Sample(
            measurement="event",
            tags={"run": run, "site": "pavilion 2", "kind": "hook=ok,ran", "agent": "pi 1"},
            fields={
                "message": 'the 17" screen said "no", a back\\slash,\na new line, = and ,',
                "ok": True,
                "failed": False,
                "code": -3,
            },
            time=START + 1,
        ),
        Sample(
            measurement="host",
            tags={"run": run, "site": "hôpital-de-campagne", "agent": "π-1 ✓", "k=v": "a,b c"},
            fields={
                "temp_c": 51.5,
                "mem_pct": 0.1,
                "tiny": 1e-300,
                "integral_float": 2.0,
                "int_max": 2**63 - 1,
                "int_min": -(2**63),
                "zero": 0,
                "note": "ünïcödé ✓ 漢字",
                "empty": "",
            },
            time=START + 7 * MS + 999_999,  # the last nanosecond of a millisecond
        ),
    ]


def contract_batch(run: str) -> list[Sample]:
    """A realistic batch: two sites' link rows, plus every kind of value."""
    return (
        link_rows(run, "pavilion-2", rounds=10, seed=1)
        + link_rows(run, "hotel-nord", rounds=10, seed=2)
        + every_kind_of_value(run)
    )


# -- the backends ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadPoint:
    """A point the backend's server refuses as bad data, and the words it refuses it with."""

    setup: list[Sample]  # written first: what makes the point bad
    point: Sample
    reason: str


@dataclass(frozen=True)
class Kind:
    """A backend as far as tests without its server need it (a fake server, a closed port)."""

    api: str  # its `influxdb.api`, the key of storage.registry.WRITERS
    settings: dict[str, object]  # its config keys beyond `api` and `url`
    gzip: dict[str, object]  # the config keys that gzip every body
    error_body: Callable[[str], str]  # an error message, worded as this API's servers word it
    connect: Callable[[pytest.FixtureRequest, str], Backend]  # to its real server, for a run

    def config(self, url: str, **extra: object) -> Config:
        data = {"api": self.api, "url": url} | self.settings | extra
        return TypeAdapter(InfluxConfig).validate_python(data)


@dataclass(frozen=True)
class Backend:
    """A backend connected to the real server that stands in for its database, for one run."""

    kind: Kind
    url: str
    settings: dict[str, object]  # on top of the kind's (the test's own database, say)
    stored: Callable[[], list[Entry]]  # what the server holds for this run, sorted
    expected: Callable[[Iterable[Sample]], list[Entry]]  # what it holds for exactly these
    bad: BadPoint

    def config(self, **extra: object) -> Config:
        return self.kind.config(self.url, **(self.settings | extra))


# influxd 1.6.7: InfluxQL reads every point back with its field types.

_INFLUX_TYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "float", str: "string"}
_PYTHON_TYPES: dict[str, Callable[[Any], object]] = {
    "boolean": bool,
    "integer": int,
    "float": float,  # JSON drops ".0": 2.0 comes back as 2
    "string": str,
}


def _influx_value(value: FieldValue) -> tuple[str, object]:
    if isinstance(value, str):
        # Line protocol has no newline inside a value: the encoder writes it as `\n`, which
        # InfluxDB keeps as a backslash and an n (lineprotocol.py).
        value = value.replace("\n", "\\n")
    return _INFLUX_TYPES[type(value)], value


def _influx_expected(samples: Iterable[Sample]) -> list[Entry]:
    return sorted(
        (s.measurement, tuple(sorted(s.tags.items())), s.time, key, _influx_value(value))
        for s in samples
        for key, value in s.fields.items()
    )


def _influx_stored(server: InfluxdServer, db: str) -> list[Entry]:
    entries: list[Entry] = []
    for measurement in [row["name"] for row in server.query("SHOW MEASUREMENTS", db=db)]:
        source = f'"{measurement}"'
        types = {
            row["fieldKey"]: row["fieldType"]
            for row in server.query(f"SHOW FIELD KEYS FROM {source}", db=db)
        }
        tag_keys = [row["tagKey"] for row in server.query(f"SHOW TAG KEYS FROM {source}", db=db)]
        for row in server.query(f"SELECT * FROM {source} GROUP BY *", db=db):
            # GROUP BY * gives a series without a tag key that tag as "".
            tags = tuple(sorted((key, row[key]) for key in tag_keys if row.get(key)))
            entries.extend(
                (measurement, tags, row["time"], key, (kind, _PYTHON_TYPES[kind](row[key])))
                for key, kind in types.items()
                if row.get(key) is not None
            )
    return sorted(entries)


def _connect_v1(request: pytest.FixtureRequest, run: str) -> Backend:
    """influxd 1.6.7 (session), a database of the test's own."""
    server: InfluxdServer = request.getfixturevalue("influxd")
    db: str = request.getfixturevalue("influx_db")  # a new database per test
    # influxd refuses a value of another type than the field already holds (in that shard).
    tags = {"run": run, "site": "pavilion-2", "agent": "pavilion-2-pi1", "target": "conflict"}
    conflict = BadPoint(
        setup=[Sample(measurement="link", tags=tags, fields={"loss_pct": 1.5}, time=START)],
        point=Sample(measurement="link", tags=tags, fields={"loss_pct": "high"}, time=START + 1),
        reason="field type conflict",
    )
    return Backend(
        kind=BACKENDS["v1"],
        url=server.url,
        settings={"database": db},
        stored=lambda: _influx_stored(server, db),
        expected=_influx_expected,
        bad=conflict,
    )


# VictoriaMetrics: one series per field, named {measurement}_{field}, of float values at
# millisecond times; booleans are 1/0, strings 0 (a string still proves its line parsed).


def _vm_value(value: FieldValue) -> float:
    return 0.0 if isinstance(value, str) else float(value)


def _vm_expected(samples: Iterable[Sample]) -> list[Entry]:
    return sorted(
        (f"{s.measurement}_{key}", tuple(sorted(s.tags.items())), s.time // MS, _vm_value(value))
        for s in samples
        for key, value in s.fields.items()
    )


def _vm_stored(server: VictoriaMetricsServer, run: str) -> list[Entry]:
    entries: list[Entry] = []
    for series in server.export(f'{{run="{run}"}}'):
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        tags = tuple(sorted(labels.items()))
        entries.extend(
            (name, tags, time, float(value))
            for time, value in zip(series["timestamps"], series["values"], strict=True)
        )
    return sorted(entries)


def _unchecked_sample(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], time: int
) -> Sample:
    """A Sample past the wire's caps (a 600 kB string), which no decoded envelope can carry:
    built without validation, to see what the database does with a line that long."""
    sample = object.__new__(Sample)
    for name, value in (
        ("measurement", measurement),
        ("tags", tags),
        ("fields", fields),
        ("time", time),
    ):
        object.__setattr__(sample, name, value)
    return sample


def _connect_v2(request: pytest.FixtureRequest, run: str) -> Backend:
    """VictoriaMetrics (session) standing in for InfluxDB 2.x; a run reads its own rows."""
    server: VictoriaMetricsServer = request.getfixturevalue("victoria_metrics")
    # VictoriaMetrics takes any line it can parse, and refuses one over its 256 KiB limit; a line
    # up to twice that may still fit its read buffer beside the lines before it.
    tags = {"run": run, "site": "pavilion-2", "agent": "pavilion-2-pi1", "kind": "hook"}
    too_long = BadPoint(
        setup=[],
        point=_unchecked_sample("event", tags, {"message": "x" * 600_000}, START),
        reason="too long line",
    )
    return Backend(
        kind=BACKENDS["v2"],
        url=server.url,
        settings={},
        stored=lambda: _vm_stored(server, run),
        expected=_vm_expected,
        bad=too_long,
    )


def _v1_error(message: str) -> str:
    return json.dumps({"error": message})


def _v2_error(message: str) -> str:
    return json.dumps({"code": "invalid", "message": message})


BACKENDS: dict[str, Kind] = {
    kind.api: kind
    for kind in [
        Kind("v1", {"database": "fieldmon"}, {"gzip_min_bytes": 0}, _v1_error, _connect_v1),
        Kind(
            "v2", {"org": "field-org", "bucket": "fieldmon"}, {"gzip": True}, _v2_error, _connect_v2
        ),
    ]
}


@pytest.fixture(params=sorted(WRITERS))
def storage_kind(request: pytest.FixtureRequest) -> Kind:
    """Each backend the storage registry serves."""
    api = request.param
    kind = BACKENDS.get(api)
    if kind is None:
        pytest.fail(
            f"storage backend {api!r} is in storage.registry.WRITERS but has no entry in "
            "BACKENDS of tests/collector/test_writer_contract.py: add its server and read-back"
        )
    return kind


@pytest.fixture
def run() -> str:
    """A tag value no other test writes: the VictoriaMetrics server is shared by the session."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def storage_backend(storage_kind: Kind, run: str, request: pytest.FixtureRequest) -> Backend:
    """The backend connected to its real server (started once per session)."""
    return storage_kind.connect(request, run)


async def _using(config: Config, use: Callable[[Writer], Awaitable[T]]) -> T:
    writer = make_writer(config)
    try:
        return await use(writer)
    finally:
        await writer.close()


def write(config: Config, body: bytes, points: int) -> None:
    asyncio.run(_using(config, lambda writer: writer.write(body, points)))


def write_samples(config: Config, samples: list[Sample]) -> None:
    write(config, encode_samples(samples), len(samples))


def _counter(metrics: CollectorMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- the contract ------------------------------------------------------------------------------


def test_every_registered_backend_has_an_entry() -> None:
    # The fixture fails each test of a backend without an entry; this also catches the reverse,
    # an entry left behind for a backend the registry no longer has.
    assert set(BACKENDS) == set(WRITERS)


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_a_batch_is_stored_exactly(storage_backend: Backend, run: str, gzip: bool) -> None:
    samples = contract_batch(run)
    extra = storage_backend.kind.gzip if gzip else {}
    write_samples(storage_backend.config(**extra), samples)
    stored = storage_backend.stored()
    assert stored == storage_backend.expected(samples)
    assert len(stored) == sum(len(sample.fields) for sample in samples)


def test_prepare_is_idempotent_and_the_writer_then_writes(
    storage_backend: Backend, run: str
) -> None:
    samples = every_kind_of_value(run)

    async def prepare_twice_ping_write(writer: Writer) -> None:
        await writer.prepare()
        await writer.prepare()
        await writer.ping()
        await writer.write(encode_samples(samples), len(samples))

    asyncio.run(_using(storage_backend.config(), prepare_twice_ping_write))
    assert storage_backend.stored() == storage_backend.expected(samples)


def test_a_resent_batch_is_stored_once(storage_backend: Backend, run: str) -> None:
    # An agent re-sends after a lost ack, and the drainer re-writes a spooled batch: the same
    # measurement, tags and time must overwrite, so a dashboard shows each point once.
    samples = contract_batch(run)
    config = storage_backend.config()
    write_samples(config, samples)
    write_samples(config, samples)
    write_samples(config, samples[:5])
    assert storage_backend.stored() == storage_backend.expected(samples)


def test_an_empty_batch_stores_nothing(storage_backend: Backend, run: str) -> None:
    write(storage_backend.config(), b"", 0)
    assert storage_backend.stored() == []


def test_an_empty_batch_sends_no_request(storage_kind: Kind, fake_influx: FakeInflux) -> None:
    # InfluxDB 2.x refuses an empty body ("writing requires points"); nothing to write is no call.
    fake_influx.answer(400, storage_kind.error_body("writing requires points"))
    write(storage_kind.config(fake_influx.url), b"", 0)
    assert fake_influx.requests == []


def test_a_bad_point_is_refused_with_the_servers_reason(storage_backend: Backend, run: str) -> None:
    bad = storage_backend.bad
    config = storage_backend.config()
    if bad.setup:
        write_samples(config, bad.setup)
    with pytest.raises(RejectedWriteError) as caught:
        write_samples(config, [bad.point])
    assert caught.value.status == 400
    assert bad.reason in caught.value.detail
    assert storage_backend.stored() == storage_backend.expected(bad.setup)


def test_one_bad_point_in_a_batch_is_dead_lettered_and_the_rest_stored(
    storage_backend: Backend, run: str, tmp_path: Path
) -> None:
    """The PointWriter bisects a refused batch; the writer must refuse each half that holds the
    bad point and write each half that does not, so only that point is left out."""
    bad = storage_backend.bad
    good = contract_batch(run)
    config = storage_backend.config()
    if bad.setup:
        write_samples(config, bad.setup)
    lines = [encode_sample(sample) for sample in good]
    lines.insert(len(lines) // 3, encode_sample(bad.point))
    metrics = CollectorMetrics()
    dead_letter = DeadLetterFile(tmp_path / "dead-letter.jsonl")

    async def store(writer: Writer) -> list[str]:
        return await PointWriter(writer, metrics, dead_letter).store_within(lines, budget=30)

    assert asyncio.run(_using(config, store)) == []
    assert storage_backend.stored() == storage_backend.expected(bad.setup + good)
    [refused] = [json.loads(line) for line in dead_letter.path.read_text().splitlines()]
    assert refused["line"] == encode_sample(bad.point)
    assert bad.reason in refused["reason"]
    assert _counter(metrics, "fieldmon_points_dead_lettered_total") == 1
    assert _counter(metrics, "fieldmon_points_written_total") == len(good)


def test_a_server_that_is_down_is_a_retryable_error(storage_kind: Kind) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = storage_kind.config(url, timeout="2s")

    async def write_and_ping(writer: Writer) -> list[WriteError]:
        errors = []
        for call in (lambda: writer.write(b"link,site=s f=1 1", 1), writer.ping):
            try:
                await call()
            except WriteError as exc:
                errors.append(exc)
        return errors

    errors = asyncio.run(_using(config, write_and_ping))
    assert [type(error) for error in errors] == [RetryableWriteError, RetryableWriteError]
    for error in errors:
        assert isinstance(error, RetryableWriteError)  # for the type checker
        assert (error.cause, error.retry_after, error.status) == (
            RetryCause.UNREACHABLE,
            None,
            None,
        )
        assert url in error.detail  # says which server


def test_a_hung_server_times_out_as_retryable(storage_kind: Kind, fake_influx: FakeInflux) -> None:
    fake_influx.answer(204, delay=1)  # 5x the timeout; the fake holds its teardown that long
    config = storage_kind.config(fake_influx.url, timeout="200ms")
    with pytest.raises(RetryableWriteError) as caught:
        write(config, b"m f=1 1", 1)
    assert caught.value.cause is RetryCause.TIMEOUT
    assert "timed out" in caught.value.detail


@pytest.mark.parametrize(
    ("status", "retry_after", "cause"),
    [
        (503, "7", RetryCause.SERVER),
        (429, "7", RetryCause.THROTTLED),
        (429, None, RetryCause.THROTTLED),
        (500, None, RetryCause.SERVER),
        (502, None, RetryCause.SERVER),
        (401, None, RetryCause.AUTH),
        (403, None, RetryCause.AUTH),
        (404, None, RetryCause.NOT_FOUND),
        (408, None, RetryCause.TIMEOUT),
    ],
)
def test_answers_that_are_retried(
    storage_kind: Kind,
    fake_influx: FakeInflux,
    status: int,
    retry_after: str | None,
    cause: RetryCause,
) -> None:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    fake_influx.answer(status, storage_kind.error_body("try later"), headers)
    with pytest.raises(RetryableWriteError) as caught:
        write(storage_kind.config(fake_influx.url), b"m f=1 1", 1)
    error = caught.value
    assert (error.status, error.cause) == (status, cause)
    assert error.retry_after == (None if retry_after is None else float(retry_after))
    assert f"HTTP {status}: try later" in error.detail


@pytest.mark.parametrize("status", [400, 413, 418, 422])
def test_answers_that_refuse_the_data(
    storage_kind: Kind, fake_influx: FakeInflux, status: int
) -> None:
    reason = "unable to parse 'm f=': missing field value"
    fake_influx.answer(
        status, storage_kind.error_body(reason), {"Content-Type": "application/json"}
    )
    with pytest.raises(RejectedWriteError) as caught:
        write(storage_kind.config(fake_influx.url), b"m f= 1", 1)
    assert caught.value.status == status
    assert f"HTTP {status}: {reason}" in caught.value.detail


def test_retry_after_as_an_http_date(storage_kind: Kind, fake_influx: FakeInflux) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    fake_influx.answer(503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(RetryableWriteError) as caught:
        write(storage_kind.config(fake_influx.url), b"m f=1 1", 1)
    assert caught.value.retry_after is not None
    assert 60 < caught.value.retry_after <= 120


@pytest.mark.parametrize("status", [429, 503])
def test_the_point_writer_waits_as_long_as_retry_after_says(
    storage_kind: Kind, fake_influx: FakeInflux, tmp_path: Path, status: int
) -> None:
    # Its own first backoff is 1 s (+-20 %); Retry-After: 2 must make it wait 2 s (+-20 %).
    fake_influx.answer_next(status, storage_kind.error_body("slow down"), {"Retry-After": "2"})
    fake_influx.answer(204)
    config = storage_kind.config(fake_influx.url)
    metrics = CollectorMetrics()

    async def store(writer: Writer) -> None:
        points = PointWriter(writer, metrics, DeadLetterFile(tmp_path / "dead-letter.jsonl"))
        await points.store(["m f=1 1"])

    asyncio.run(_using(config, store))
    first, second = fake_influx.requests
    assert 1.6 <= second.at - first.at < 2.4 + 0.5  # the jitter, and room for a slow machine
    assert second.body == b"m f=1 1"
    assert _counter(metrics, "fieldmon_write_errors_total", kind="retryable") == 1
    assert _counter(metrics, "fieldmon_points_written_total") == 1


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_ping_is_retryable_on_any_error(
    storage_kind: Kind, fake_influx: FakeInflux, status: int
) -> None:
    fake_influx.answer(status, storage_kind.error_body("not now"))

    async def ping(writer: Writer) -> None:
        await writer.ping()

    with pytest.raises(RetryableWriteError) as caught:
        asyncio.run(_using(storage_kind.config(fake_influx.url), ping))
    assert caught.value.status == status
    assert "not now" in caught.value.detail
    assert [(seen.method, seen.path) for seen in fake_influx.requests] == [("GET", "/ping")]


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_bodies_are_gzipped_only_where_configured(
    storage_kind: Kind, fake_influx: FakeInflux, gzip: bool
) -> None:
    body = encode_samples(every_kind_of_value("gzip"))
    write(storage_kind.config(fake_influx.url, **(storage_kind.gzip if gzip else {})), body, 2)
    [seen] = fake_influx.requests
    assert seen.headers.get("Content-Encoding") == ("gzip" if gzip else None)
    assert seen.body == body  # as the server reads it (aiohttp inflates a gzip body)
