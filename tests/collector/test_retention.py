"""Retention and rollups on a real influxd 1.6: `fieldmon-collector retention` creates the
policies, continuous queries and the dashboards' rows, changes nothing the second time, alters
what the section changes, and the continuous queries' SELECT ... INTO rolls raw rows up right."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bench.disk import site_day
from fieldmon.collector.retention import influxql
from fieldmon.collector.retention.config import RetentionConfig
from fieldmon.collector.retention.rollups import ROLLUPS, Agg
from fieldmon.collector.storage.lineprotocol import encode_samples
from fieldmon.core.wire.models import Sample
from fieldmon.lab.process import script
from fieldmon.lab.servers import InfluxdServer

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
NS = 10**9
DAY = 86400


# --- the rollup table and the config -----------------------------------------------------------


def _contract_measurements() -> set[str]:
    text = CONTRACT.read_text(encoding="utf-8")
    section = text[text.index("## InfluxDB") : text.index("## Alerts")]
    return set(re.findall(r"^- `(\w+)` — ", section, flags=re.MULTILINE))


def test_every_measurement_of_the_contract_has_a_rollup() -> None:
    assert set(ROLLUPS) == _contract_measurements()


def test_every_rollup_counts_its_rows_and_names_each_output_once() -> None:
    for measurement, outputs in ROLLUPS.items():
        names = [output.name for output in outputs]
        assert len(names) == len(set(names)), measurement
        assert ("samples", Agg.COUNT) in {(o.name, o.agg) for o in outputs}, measurement


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rollups": [{"every": "5m", "keep": "7d"}], "raw": "30d"}, "must keep longer than 30d"),
        ({"rollups": [{"every": "1h"}, {"every": "5m", "keep": "1000d"}]}, "must be longer"),
        (
            {"rollups": [{"every": "5m"}, {"every": "10m", "keep": "1000d", "name": "rollup_5m"}]},
            "distinct names",
        ),
        ({"raw": "10m"}, "greater than or equal to 3600"),
        ({"rollups": [{"every": "10s"}]}, "greater than or equal to 60"),
    ],
)
def test_a_section_that_makes_no_sense_is_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetentionConfig.model_validate(section)


def test_defaults_and_names() -> None:
    config = RetentionConfig()
    assert (config.raw, config.recompute) == (30 * DAY, 3600.0)
    assert [(level.policy, level.every, level.keep) for level in config.rollups] == [
        ("rollup_5m", 300.0, 730 * DAY)
    ]
    assert RetentionConfig.model_validate({"rollups": [{"every": "1h"}]}).rollups[0].policy == (
        "rollup_1h"
    )


def test_durations_both_ways() -> None:
    assert [influxql.duration_literal(s) for s in (300, 3600, 30 * DAY, 90)] == [
        "5m",
        "1h",
        "30d",
        "90s",
    ]
    assert influxql.parse_go_duration("720h0m0s") == 30 * DAY
    assert influxql.parse_go_duration("0s") == 0


def test_the_dashboards_rows_pick_the_finest_level_holding_the_range() -> None:
    config = RetentionConfig.model_validate(
        {
            "raw": "30d",
            "rollups": [{"every": "5m", "keep": "730d"}, {"every": "1h", "keep": "1825d"}],
        }
    )
    rows = influxql.rp_rows("autogen", config)
    assert [(row["rp"], row["from_ms"], row["to_ms"]) for row in rows] == [
        ("autogen", 0, 30 * DAY * 1000),
        ("rollup_5m", 30 * DAY * 1000, 730 * DAY * 1000),
        ("rollup_1h", 730 * DAY * 1000, influxql._FOREVER_MS),
    ]


def test_a_query_changes_name_exactly_when_its_text_does() -> None:
    config = RetentionConfig()
    names = influxql.continuous_queries("fieldmon", "autogen", config)
    assert len(names) == len(ROLLUPS)
    assert influxql.continuous_queries("fieldmon", "autogen", RetentionConfig()) == names
    longer = RetentionConfig.model_validate({"raw": "60d", "rollups": [{"keep": "1000d"}]})
    assert set(influxql.continuous_queries("fieldmon", "autogen", longer)) == set(names)
    other = RetentionConfig.model_validate({"recompute": "2h"})
    assert not set(influxql.continuous_queries("fieldmon", "autogen", other)) & set(names)


def test_the_continuous_query_runs_the_backfills_select() -> None:
    config = RetentionConfig()
    level = config.rollups[0]
    statement = influxql.continuous_queries("db", "autogen", config)[
        influxql.cq_name("db", "autogen", config, level, "link")
    ]
    select = influxql.rollup_select("db", "autogen", level, "link")
    assert statement.endswith(f"RESAMPLE EVERY 5m FOR 1h BEGIN {select} END")
    [backfill] = [
        step.statement
        for step in influxql.backfill("db", "autogen", config, 1_000 * NS, 2_000 * NS)
        if '"link"' in step.statement.split(" INTO ")[1].split(" FROM ")[0]
    ]
    # The same SELECT, whole buckets of [start, end): 900 s to 1800 s.
    assert backfill == select.replace(
        " GROUP BY", f" WHERE time >= {900 * NS} AND time < {1800 * NS} GROUP BY"
    )


def test_a_backfill_runs_an_hour_of_rows_per_statement() -> None:
    config = RetentionConfig()
    steps = influxql.backfill("db", "autogen", config, 0, 3 * 3600 * NS + 1)
    assert len(steps) == 3 * len(ROLLUPS)
    spans = {
        re.search(r"time >= (\d+) AND time < (\d+)", step.statement).groups() for step in steps
    }  # type: ignore[union-attr]
    hour = 3600 * NS
    assert spans == {(str(h * hour), str((h + 1) * hour)) for h in range(3)}


# --- on a real influxd -------------------------------------------------------------------------


def _collector_file(tmp_path: Path, influxd: InfluxdServer, db: str, section: str) -> Path:
    sites = tmp_path / "site_configs"
    sites.mkdir(exist_ok=True)
    path = tmp_path / "collector.yaml"
    path.write_text(
        "broker: {host: 127.0.0.1}\n"
        f'influxdb: {{api: v1, url: "{influxd.url}", database: {db}}}\n'
        f"site_configs: ./site_configs\nretention: {section}\n",
        encoding="utf-8",
    )
    return path


def _retention(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("fieldmon-collector"), "retention", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _state(influxd: InfluxdServer, db: str) -> tuple[dict[str, Any], set[str], list[Any]]:
    policies = {
        row["name"]: (row["duration"], row["shardGroupDuration"], row["default"])
        for row in influxd.query(f'SHOW RETENTION POLICIES ON "{db}"')
    }
    queries = {
        row["name"]
        for row in influxd.query("SHOW CONTINUOUS QUERIES")
        if row["name"]
        and row["query"].startswith(f"CREATE CONTINUOUS QUERY {row['name']} ON {db} ")
    }
    if "fieldmon_meta" not in policies:
        return policies, queries, []
    rows = influxd.query('SELECT * FROM "fieldmon_meta"."rp_config" GROUP BY "level"', db=db)
    return policies, queries, [(r["level"], r["rp"], r["from_ms"], r["to_ms"]) for r in rows]


@pytest.mark.integration
def test_apply_creates_everything_and_a_second_run_changes_nothing(
    tmp_path: Path, influxd: InfluxdServer, influx_db: str
) -> None:
    config = _collector_file(
        tmp_path, influxd, influx_db, "{raw: 30d, rollups: [{every: 5m, keep: 730d}]}"
    )
    dry = _retention(config)
    assert dry.returncode == 0, dry.stderr
    assert "create retention policy rollup_5m (730d)" in dry.stdout
    assert "dry run: changes" in dry.stdout
    assert set(_state(influxd, influx_db)[0]) == {"autogen"}  # a dry run changes nothing

    first = _retention(config, "--apply")
    assert first.returncode == 0, first.stderr
    policies, queries, rows = _state(influxd, influx_db)
    assert policies == {
        "autogen": ("720h0m0s", "24h0m0s", True),  # still where the collector writes
        "rollup_5m": ("17520h0m0s", "168h0m0s", False),
        "fieldmon_meta": ("0s", "168h0m0s", False),
    }
    assert len(queries) == len(ROLLUPS)
    assert all(name.startswith("fieldmon_rollup_5m_") for name in queries)
    assert rows == [
        ("0", "autogen", 0, 30 * DAY * 1000),
        ("1", "rollup_5m", 30 * DAY * 1000, influxql._FOREVER_MS),
    ]

    second = _retention(config, "--apply")
    assert second.returncode == 0, second.stderr
    assert "nothing to change" in second.stdout
    assert "  - " not in second.stdout
    assert _state(influxd, influx_db) == (policies, queries, rows)


@pytest.mark.integration
def test_changed_durations_alter_policies_and_a_new_bucket_replaces_the_queries(
    tmp_path: Path, influxd: InfluxdServer, influx_db: str
) -> None:
    config = _collector_file(tmp_path, influxd, influx_db, "{}")
    assert _retention(config, "--apply").returncode == 0
    _, before, _ = _state(influxd, influx_db)

    config = _collector_file(tmp_path, influxd, influx_db, "{raw: 14d, rollups: [{keep: 365d}]}")
    longer = _retention(config, "--apply")
    assert longer.returncode == 0, longer.stderr
    assert "retention policy autogen: 30d -> 14d" in longer.stdout
    assert "retention policy rollup_5m: 730d -> 365d" in longer.stdout
    policies, queries, rows = _state(influxd, influx_db)
    assert policies["autogen"][0] == "336h0m0s" and policies["rollup_5m"][0] == "8760h0m0s"
    assert queries == before  # durations are not in the queries' text
    assert rows[0][3] == 14 * DAY * 1000

    config = _collector_file(
        tmp_path, influxd, influx_db, "{rollups: [{every: 10m, name: rollup_5m}]}"
    )
    coarser = _retention(config, "--apply")
    assert coarser.returncode == 0, coarser.stderr
    _, queries, _ = _state(influxd, influx_db)
    assert len(queries) == len(ROLLUPS) and not queries & before
    assert coarser.stdout.count("drop continuous query fieldmon_rollup_5m_") == len(ROLLUPS)


def _link(at_s: int, site: str, target: str, fields: dict[str, float | int]) -> Sample:
    return Sample(
        measurement="link",
        tags={"site": site, "agent": f"{site}-pi", "target": target, "role": "parent"},
        fields=fields,  # type: ignore[arg-type]
        time=at_s * NS,
    )


@pytest.mark.integration
def test_the_rollup_of_known_rows(tmp_path: Path, influxd: InfluxdServer, influx_db: str) -> None:
    config = _collector_file(tmp_path, influxd, influx_db, "{}")
    bucket = (int(time.time()) // 300 - 3) * 300  # a whole 5-minute bucket, 10-15 min ago
    rows = [
        _link(
            bucket + 10 * i,
            "hall-a",
            "wan",
            {
                "sent": 10,
                "received": 10 - i % 2,
                "loss_pct": 10.0 * (i % 2),
                "rtt_p95_ms": 20.0 + i,
                "mos": 4.0 + i / 100,
            },
        )
        for i in range(30)
    ] + [_link(bucket + 30, "hall-b", "wan", {"sent": 10, "received": 0, "loss_pct": 100.0})]
    rows.append(
        Sample(
            measurement="service",
            tags={"site": "hall-a", "target": "his", "kind": "http"},
            fields={"up": False, "error": "timeout", "duration_ms": 5000.0},
            time=(bucket + 60) * NS,
        )
    )
    rows.append(
        Sample(
            measurement="service",
            tags={"site": "hall-a", "target": "his", "kind": "http"},
            fields={"up": True, "duration_ms": 40.0, "status_code": 200},
            time=(bucket + 90) * NS,
        )
    )
    influxd.write(encode_samples(rows).decode(), db=influx_db)

    filled = _retention(config, "--apply", "--backfill", "1h")
    assert filled.returncode == 0, filled.stderr
    assert "rolled up the last 1h" in filled.stdout
    link = influxd.query('SELECT * FROM "rollup_5m"."link" GROUP BY *', db=influx_db)
    by_site = {row["site"]: row for row in link}
    a = by_site["hall-a"]
    assert (a["time"], a["target"], a["role"], a["agent"]) == (
        bucket * NS,
        "wan",
        "parent",
        "hall-a-pi",
    )
    assert (a["samples"], a["sent"], a["received"]) == (30, 300, 285)
    assert (a["loss_pct"], a["loss_pct_max"], a["loss_pct_min"]) == (5.0, 10.0, 0.0)
    assert (a["rtt_p95_ms"], a["rtt_p95_ms_max"], a["rtt_p95_ms_min"]) == (34.5, 49.0, 20.0)
    assert a["mos"] == pytest.approx(4.145) and a["mos_min"] == 4.0
    b = by_site["hall-b"]
    assert (b["samples"], b["received"], b["loss_pct"], b["rtt_p95_ms"]) == (1, 0, 100.0, None)
    [service] = influxd.query('SELECT * FROM "rollup_5m"."service"', db=influx_db)
    assert (service["samples"], service["failures"], service["up"]) == (2, 1, True)
    assert (service["duration_ms"], service["duration_ms_max"], service["status_code"]) == (
        2520.0,
        5000.0,
        200,
    )

    again = _retention(config, "--apply", "--backfill", "1h")  # the same rows: the same rollup
    assert again.returncode == 0, again.stderr
    assert influxd.query('SELECT * FROM "rollup_5m"."link" GROUP BY *', db=influx_db) == link


@pytest.mark.integration
def test_every_rollup_query_runs_on_every_field_a_site_writes(
    tmp_path: Path, influxd: InfluxdServer, influx_db: str
) -> None:
    config = _collector_file(tmp_path, influxd, influx_db, "{}")
    start = (time.time_ns() // (300 * NS) - 4) * 300 * NS
    for minute in site_day("hall-a", "hall-a-pi", start, hours=0.5, links=4, devices=2):
        influxd.write(encode_samples(minute).decode(), db=influx_db)
    influxd.write(
        encode_samples(
            [
                Sample(
                    measurement="alert",
                    tags={
                        "site": "hall-a",
                        "alertname": "LinkDown",
                        "target": "link-000",
                        "severity": "critical",
                    },
                    fields={"state": "firing", "value": 100.0},
                    time=start + NS,
                ),
                Sample(
                    measurement="outage",
                    tags={"site": "hall-a", "link": "link-000"},
                    fields={
                        "duration_s": 540.0,
                        "worst_loss_pct": 30.0,
                        "worst_rtt_ms": 212.5,
                        "samples_backfilled": 27,
                    },
                    time=start + NS,
                ),
            ]
        ).decode(),
        db=influx_db,
    )

    filled = _retention(config, "--apply", "--backfill", "1h")  # an error in any query fails
    assert filled.returncode == 0, filled.stderr
    written = {
        series["name"]: {row[0] for row in series["values"]}
        for series in _field_keys(influxd, influx_db, "rollup_5m")
    }
    for measurement, outputs in ROLLUPS.items():
        raw = _raw_fields(influxd, influx_db, measurement)
        expected = {output.name for output in outputs if output.source in raw}
        assert written.get(measurement, set()) == expected, measurement


def _field_keys(influxd: InfluxdServer, db: str, policy: str) -> list[dict[str, Any]]:
    import json
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"q": f'SHOW FIELD KEYS FROM "{policy}"./.*/', "db": db})
    with urllib.request.urlopen(f"{influxd.url}/query?{query}", timeout=30) as reply:
        return json.loads(reply.read())["results"][0].get("series", [])  # type: ignore[no-any-return]


def _raw_fields(influxd: InfluxdServer, db: str, measurement: str) -> set[str]:
    return {
        row["fieldKey"] for row in influxd.query(f'SHOW FIELD KEYS FROM "{measurement}"', db=db)
    }


def test_no_retention_section_or_no_influxd_is_said_in_words(tmp_path: Path) -> None:
    sites = tmp_path / "site_configs"
    sites.mkdir()
    bare = tmp_path / "bare.yaml"
    bare.write_text(
        'broker: {host: 127.0.0.1}\ninfluxdb: {api: v1, url: "http://127.0.0.1:9", '
        "database: fieldmon}\nsite_configs: ./site_configs\n",
        encoding="utf-8",
    )
    missing = _retention(bare)
    assert missing.returncode == 2
    assert "no retention: section" in missing.stderr
    unreachable = bare.with_name("unreachable.yaml")
    unreachable.write_text(bare.read_text(encoding="utf-8") + "retention: {}\n", encoding="utf-8")
    refused = _retention(unreachable, "--apply")
    assert refused.returncode == 1
    assert "retention: running 'SHOW DATABASES' at http://127.0.0.1:9" in refused.stderr
    assert "does not answer" in refused.stderr
    both = _retention(unreachable, "--apply", "--dry-run")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
