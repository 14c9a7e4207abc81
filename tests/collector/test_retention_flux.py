"""Retention on InfluxDB 2.x: the generated Flux tasks and the plan, on a fake server.

The project's influxd (1.6.7) has neither Flux nor the v2 API, and VictoriaMetrics (its stand-in
for v2 writes) runs no tasks: what a real InfluxDB 2.x does with these is not tested here.
"""

from __future__ import annotations

import re

from fieldmon.collector.retention import flux
from fieldmon.collector.retention.config import RetentionConfig
from fieldmon.collector.retention.rollups import ROLLUPS

DAY = 86400.0


class FakeV2:
    """Buckets and tasks kept in dicts, as InfluxDB 2.x keeps them for one org."""

    def __init__(self) -> None:
        self.buckets: dict[str, float] = {"fieldmon": 0.0}  # made by the operator: forever
        self.tasks: dict[str, str] = {"someone-elses-task": "..."}
        self.calls: list[str] = []

    def bucket_retention(self, name: str) -> float | None:
        return self.buckets.get(name)

    def set_bucket_retention(self, name: str, seconds: float) -> None:
        self.calls.append(f"bucket {name}")
        self.buckets[name] = seconds

    def task_names(self) -> list[str]:
        return list(self.tasks)

    def create_task(self, name: str, flux: str) -> None:
        self.calls.append(f"create {name}")
        self.tasks[name] = flux

    def delete_task(self, name: str) -> None:
        self.calls.append(f"delete {name}")
        del self.tasks[name]


def test_a_task_rolls_up_whole_buckets_into_the_rollup_bucket() -> None:
    config = RetentionConfig()
    tasks = flux.tasks("noc", "fieldmon", config)
    [(name, text)] = [(n, t) for n, t in tasks.items() if n.startswith("fieldmon_rollup_5m_link_")]
    assert re.fullmatch(r"fieldmon_rollup_5m_link_[0-9a-f]{8}", name)
    assert f'option task = {{name: "{name}", every: 5m, offset: 30s}}' in text
    assert 'from(bucket: "fieldmon")' in text
    assert (
        "range(start: date.truncate(t: -1h, unit: 5m), stop: date.truncate(t: now(), unit: 5m))"
        in text
    )
    assert 'filter(fn: (r) => r._measurement == "link")' in text
    assert '|> to(bucket: "fieldmon_rollup_5m", org: "noc")' in text
    # One union member per output: the same aggregates as the 1.x continuous query.
    for output in ROLLUPS["link"]:
        member = (
            f'data |> filter(fn: (r) => r._field == "{output.source}") |> aggregateWindow('
            f'every: 5m, fn: {output.agg.value}, createEmpty: false, timeSrc: "_start")'
        )
        if output.name != output.source:
            member += f' |> set(key: "_field", value: "{output.name}")'
        assert member + "," in text, output
    assert text.count("(") == text.count(")") and text.count("{") == text.count("}")
    assert text.count("[") == text.count("]")


def test_one_task_per_level_and_measurement_named_after_its_text() -> None:
    config = RetentionConfig.model_validate(
        {"rollups": [{"every": "5m"}, {"every": "1h", "keep": "1825d"}]}
    )
    tasks = flux.tasks("noc", "fieldmon", config)
    assert len(tasks) == 2 * len(ROLLUPS)
    assert flux.tasks("noc", "fieldmon", config) == tasks
    other = RetentionConfig.model_validate({"recompute": "3h"})
    assert not set(flux.tasks("noc", "fieldmon", other)) & set(tasks)


def test_apply_then_nothing_to_change_then_only_what_changed() -> None:
    api = FakeV2()
    config = RetentionConfig()
    steps = flux.plan_v2(api, "noc", "fieldmon", config)
    assert [step.why for step in steps[:2]] == [
        "bucket fieldmon: forever -> 30d",
        "bucket fieldmon_rollup_5m: missing -> 730d",
    ]
    flux.apply_v2(api, steps)
    assert api.buckets == {"fieldmon": 30 * DAY, "fieldmon_rollup_5m": 730 * DAY}
    assert len(api.tasks) == len(ROLLUPS) + 1  # someone else's task is left alone
    assert flux.plan_v2(api, "noc", "fieldmon", config) == []

    api.calls.clear()
    shorter = RetentionConfig.model_validate({"raw": "14d", "rollups": [{"keep": "365d"}]})
    flux.apply_v2(api, flux.plan_v2(api, "noc", "fieldmon", shorter))
    assert api.calls == ["bucket fieldmon", "bucket fieldmon_rollup_5m"]  # the tasks stay

    api.calls.clear()
    hourly = RetentionConfig.model_validate({"rollups": [{"every": "1h", "name": "rollup_5m"}]})
    flux.apply_v2(api, flux.plan_v2(api, "noc", "fieldmon", hourly))
    deleted = [call for call in api.calls if call.startswith("delete ")]
    created = [call for call in api.calls if call.startswith("create ")]
    assert len(deleted) == len(created) == len(ROLLUPS)
    assert "someone-elses-task" in api.tasks
