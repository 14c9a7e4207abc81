"""Retention and rollups on InfluxDB 2.x: bucket retention and Flux tasks (influxdb-client).

The raw bucket (`influxdb.bucket`) keeps `raw`; each rollup level is a bucket of its own,
`<bucket>_<policy>` (`fieldmon_rollup_5m`), kept `keep`, filled by one task per measurement,
`fieldmon_<policy>_<measurement>_<digest>`, whose Flux does what the InfluxDB 1.x continuous
query does (the same outputs, fieldmon.collector.retention.rollups; buckets dated at their
start; only whole buckets, recomputed `recompute` back). Tasks named `fieldmon_...` that the
section no longer asks for are deleted; a bucket it no longer names is left alone.

This project tests with InfluxDB 1.6, which has neither Flux nor the v2 API: the generated
Flux and the plan are tested (tests/collector/test_retention_flux.py), the calls to a real
InfluxDB 2.x are not. For the dashboards' InfluxQL over 2.x, map each rollup bucket to a
retention policy of the same name (`influx v1 dbrp create --db <bucket> --rp rollup_5m
--bucket-id ...`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from fieldmon.collector.retention.config import RetentionConfig, RollupLevel
from fieldmon.collector.retention.influxql import CQ_PREFIX, Step, duration_literal
from fieldmon.collector.retention.rollups import ROLLUPS, Output


def _flux_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rollup_bucket(bucket: str, level: RollupLevel) -> str:
    """The bucket a rollup level writes to."""
    return f"{bucket}_{level.policy}"


def _output(output: Output, every: str) -> str:
    pipe = (
        f"data |> filter(fn: (r) => r._field == {_flux_string(output.source)})"
        f" |> aggregateWindow(every: {every}, fn: {output.agg.value}, createEmpty: false,"
        ' timeSrc: "_start")'
    )
    if output.name != output.source:
        pipe += f' |> set(key: "_field", value: {_flux_string(output.name)})'
    return pipe


def task_flux(
    *, name: str, org: str, bucket: str, level: RollupLevel, recompute: float, measurement: str
) -> str:
    """The Flux of one rollup task: whole buckets from `recompute` back up to the last one."""
    every = duration_literal(level.every)
    back = duration_literal(max(recompute, level.every))
    outputs = ",\n        ".join(_output(output, every) for output in ROLLUPS[measurement])
    return f"""import "date"

option task = {{name: {_flux_string(name)}, every: {every}, offset: 30s}}

data =
    from(bucket: {_flux_string(bucket)})
        |> range(start: date.truncate(t: -{back}, unit: {every}), stop: date.truncate(t: now(), unit: {every}))
        |> filter(fn: (r) => r._measurement == {_flux_string(measurement)})

union(
    tables: [
        {outputs},
    ],
)
    |> to(bucket: {_flux_string(rollup_bucket(bucket, level))}, org: {_flux_string(org)})
"""  # noqa: E501  (Flux's own formatting)


def tasks(org: str, bucket: str, config: RetentionConfig) -> dict[str, str]:
    """Every task the section asks for: name -> Flux (the name carries a digest of it)."""
    wanted: dict[str, str] = {}
    for level in config.rollups:
        for measurement in ROLLUPS:
            stem = f"{CQ_PREFIX}{level.policy}_{measurement}"

            def script(
                name: str, level: RollupLevel = level, measurement: str = measurement
            ) -> str:
                return task_flux(
                    name=name,
                    org=org,
                    bucket=bucket,
                    level=level,
                    recompute=config.recompute,
                    measurement=measurement,
                )

            name = f"{stem}_{hashlib.sha256(script(stem).encode()).hexdigest()[:8]}"
            wanted[name] = script(name)
    return wanted


class V2Api(Protocol):
    """What the plan needs from an InfluxDB 2.x (InfluxV2Client below; a fake in tests)."""

    def bucket_retention(self, name: str) -> float | None:
        """The bucket's retention in seconds (0: forever), None when there is no such bucket."""
        ...

    def set_bucket_retention(self, name: str, seconds: float) -> None:
        """Create the bucket, or change its retention."""
        ...

    def task_names(self) -> list[str]:
        """The org's task names."""
        ...

    def create_task(self, name: str, flux: str) -> None:
        """An active task with this Flux."""
        ...

    def delete_task(self, name: str) -> None:
        """Delete every task of this name."""
        ...


@dataclass(frozen=True)
class V2Step:
    """One change and how to make it."""

    why: str
    kind: str  # bucket, create_task, delete_task
    name: str
    seconds: float = 0.0
    flux: str = ""


def plan_v2(api: V2Api, org: str, bucket: str, config: RetentionConfig) -> list[V2Step]:
    """What makes the server agree with the section."""
    steps: list[V2Step] = []
    wanted = [(bucket, config.raw)] + [
        (rollup_bucket(bucket, level), level.keep) for level in config.rollups
    ]
    for name, seconds in wanted:
        found = api.bucket_retention(name)
        if found != seconds:
            was = "missing" if found is None else duration_literal(found) if found else "forever"
            why = f"bucket {name}: {was} -> {duration_literal(seconds)}"
            steps.append(V2Step(why, "bucket", name, seconds=seconds))
    found_tasks = set(api.task_names())
    wanted_tasks = tasks(org, bucket, config)
    steps.extend(
        V2Step(f"delete task {name} (no longer asked for)", "delete_task", name)
        for name in sorted(found_tasks - set(wanted_tasks))
        if name.startswith(CQ_PREFIX)
    )
    steps.extend(
        V2Step(f"create task {name}", "create_task", name, flux=flux)
        for name, flux in wanted_tasks.items()
        if name not in found_tasks
    )
    return steps


def apply_v2(api: V2Api, steps: Iterable[V2Step]) -> None:
    """Make each change in order."""
    for step in steps:
        if step.kind == "bucket":
            api.set_bucket_retention(step.name, step.seconds)
        elif step.kind == "create_task":
            api.create_task(step.name, step.flux)
        else:
            api.delete_task(step.name)


def as_steps(steps: Iterable[V2Step]) -> list[Step]:
    """For printing beside the 1.x plan."""
    return [Step(step.why, step.flux or f"{step.kind} {step.name}") for step in steps]


class InfluxV2Client:
    """V2Api on influxdb-client's synchronous APIs (buckets, tasks) for one org."""

    def __init__(self, url: str, token: str, org: str, timeout: float) -> None:
        from influxdb_client import InfluxDBClient

        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout * 1000))
        self._org = org

    def bucket_retention(self, name: str) -> float | None:
        found = self._client.buckets_api().find_bucket_by_name(name)
        if found is None:
            return None
        rules = found.retention_rules or []
        return float(rules[0].every_seconds) if rules else 0.0

    def set_bucket_retention(self, name: str, seconds: float) -> None:
        from influxdb_client import BucketRetentionRules

        buckets = self._client.buckets_api()
        rules = [BucketRetentionRules(type="expire", every_seconds=int(seconds))]
        found = buckets.find_bucket_by_name(name)
        if found is None:
            buckets.create_bucket(bucket_name=name, retention_rules=rules, org=self._org)
        else:
            found.retention_rules = rules
            buckets.update_bucket(found)

    def task_names(self) -> list[str]:
        return [task.name for task in self._client.tasks_api().find_tasks()]

    def create_task(self, name: str, flux: str) -> None:
        from influxdb_client import TaskCreateRequest

        request = TaskCreateRequest(org=self._org, flux=flux, status="active", description=name)
        self._client.tasks_api().create_task(task_create_request=request)

    def delete_task(self, name: str) -> None:
        api = self._client.tasks_api()
        for task in api.find_tasks(name=name):
            api.delete_task(task.id)

    def close(self) -> None:
        """Release the client's connections."""
        self._client.close()
