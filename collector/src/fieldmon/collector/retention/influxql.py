"""Retention and rollups on InfluxDB 1.x: retention policies, continuous queries, and the rows
that tell the dashboards which policy covers a range.

What the section asks for is compared with what the database holds, and only the difference
is changed, so a second run changes nothing:
- the raw rows' policy (`influxdb.retention_policy`, or the database's default) is altered to
  `raw`; each rollup level is a policy of its own (`rollup_5m`), created or altered;
- one continuous query per level and measurement, `fieldmon_<policy>_<measurement>_<digest>`:
  the digest is of the query's text, so a changed query (other aggregates, `every`,
  `recompute`) is a new name: the old one is dropped and the new one created (a continuous
  query cannot be altered). Continuous queries named `fieldmon_...` that the section no longer
  asks for are dropped; a policy it no longer names is left alone (dropping it deletes data);
- `fieldmon_meta.rp_config`: one row per level with the range widths it serves, which the
  dashboards' `rp` variable reads (dashboards/README.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from fieldmon.collector.retention.config import RetentionConfig, RollupLevel
from fieldmon.collector.retention.rollups import ROLLUPS, Output

META_POLICY = "fieldmon_meta"  # infinite: holds rp_config
RP_CONFIG = "rp_config"
CQ_PREFIX = "fieldmon_"
# The widest range a dashboard can ask for, in ms: beyond the last level's `keep` it still
# reads that level (what is left of it).
_FOREVER_MS = 100 * 365 * 86400 * 1000
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class InfluxQL(Protocol):
    """What the plan needs from a server.

    `query` runs one statement and gives its rows (column -> value, with the series' tags
    merged in and its name as `_series`); `write` posts line protocol into one policy.
    """

    def query(self, statement: str) -> list[dict[str, object]]: ...

    def write(self, lines: str, policy: str) -> None: ...


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def duration_literal(seconds: float) -> str:
    """An InfluxQL duration: whole days, hours, minutes or seconds."""
    whole = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def parse_go_duration(text: str) -> float:
    """Seconds from InfluxDB's Go spelling (`720h0m0s`; `0s` is infinite)."""
    return sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_DURATION.findall(text))


def shard_duration(seconds: float) -> float:
    """InfluxDB's own choice of shard group length for a policy of this duration."""
    if seconds == 0 or seconds > 180 * 86400:
        return 7 * 86400.0
    return 86400.0 if seconds >= 2 * 86400 else 3600.0


@dataclass(frozen=True)
class Policy:
    """A retention policy as wanted or as found (seconds; 0 is infinite)."""

    name: str
    duration: float
    shard: float
    default: bool = False


@dataclass(frozen=True)
class Step:
    """One statement of a plan and why it is there, in words."""

    why: str
    statement: str


def _aggregate(output: Output) -> str:
    return f"{output.agg.value}({ident(output.source)}) AS {ident(output.name)}"


def rollup_select(
    database: str, raw_policy: str, level: RollupLevel, measurement: str, where: str = ""
) -> str:
    """The SELECT ... INTO that rolls `measurement`'s raw rows up into `level` (every tag kept)."""
    outputs = ", ".join(_aggregate(output) for output in ROLLUPS[measurement])
    into = f"{ident(database)}.{ident(level.policy)}.{ident(measurement)}"
    source = f"{ident(database)}.{ident(raw_policy)}.{ident(measurement)}"
    condition = f" WHERE {where}" if where else ""
    group = f"GROUP BY time({duration_literal(level.every)}), *"
    return f"SELECT {outputs} INTO {into} FROM {source}{condition} {group}"


def _cq_body(
    database: str, raw_policy: str, config: RetentionConfig, level: RollupLevel, measurement: str
) -> str:
    every = duration_literal(level.every)
    recompute = duration_literal(max(config.recompute, level.every))
    select = rollup_select(database, raw_policy, level, measurement)
    return f"RESAMPLE EVERY {every} FOR {recompute} BEGIN {select} END"


def cq_name(
    database: str, raw_policy: str, config: RetentionConfig, level: RollupLevel, measurement: str
) -> str:
    """`fieldmon_<policy>_<measurement>_<digest of the query>`."""
    body = _cq_body(database, raw_policy, config, level, measurement)
    digest = hashlib.sha256(body.encode()).hexdigest()[:8]
    return f"{CQ_PREFIX}{level.policy}_{measurement}_{digest}"


def continuous_queries(database: str, raw_policy: str, config: RetentionConfig) -> dict[str, str]:
    """Every continuous query the section asks for: name -> CREATE statement."""
    wanted: dict[str, str] = {}
    for level in config.rollups:
        for measurement in ROLLUPS:
            name = cq_name(database, raw_policy, config, level, measurement)
            body = _cq_body(database, raw_policy, config, level, measurement)
            wanted[name] = f"CREATE CONTINUOUS QUERY {ident(name)} ON {ident(database)} {body}"
    return wanted


def rp_rows(raw_policy: str, config: RetentionConfig) -> list[dict[str, object]]:
    """The dashboards' table: the finest level that still holds a range of this width (ms)."""
    rows: list[dict[str, object]] = []
    start = 0
    levels = [(raw_policy, config.raw), *((level.policy, level.keep) for level in config.rollups)]
    for index, (policy, keep) in enumerate(levels):
        end = _FOREVER_MS if index == len(levels) - 1 else round(keep * 1000)
        rows.append({"level": str(index), "rp": policy, "from_ms": start, "to_ms": end})
        start = end
    return rows


def rp_rows_line_protocol(rows: Iterable[dict[str, object]]) -> str:
    """rp_config rows as line protocol, dated at the epoch (the variable has no time filter)."""
    return "\n".join(
        f'{RP_CONFIG},level={row["level"]} rp="{row["rp"]}",'
        f"from_ms={row['from_ms']}i,to_ms={row['to_ms']}i 0"
        for row in rows
    )


def _policy_steps(
    database: str, wanted: Policy, found: Policy | None, *, create_only: bool = False
) -> list[Step]:
    duration = "INF" if wanted.duration == 0 else duration_literal(wanted.duration)
    shard = duration_literal(wanted.shard)
    if found is None:
        return [
            Step(
                f"create retention policy {wanted.name} ({duration})",
                f"CREATE RETENTION POLICY {ident(wanted.name)} ON {ident(database)} "
                f"DURATION {duration} REPLICATION 1 SHARD DURATION {shard}",
            )
        ]
    if create_only or (found.duration, found.shard) == (wanted.duration, wanted.shard):
        return []
    was = "INF" if found.duration == 0 else duration_literal(found.duration)
    return [
        Step(
            f"retention policy {wanted.name}: {was} -> {duration} "
            f"(shard groups {duration_literal(found.shard)} -> {shard})",
            f"ALTER RETENTION POLICY {ident(wanted.name)} ON {ident(database)} "
            f"DURATION {duration} SHARD DURATION {shard}",
        )
    ]


@dataclass
class Plan:
    """What `retention` would change, in order, and what it leaves alone."""

    raw_policy: str
    steps: list[Step]
    rp_rows: list[dict[str, object]]  # written when `write_rp_rows`
    write_rp_rows: bool
    notes: list[str]

    @property
    def changes(self) -> bool:
        """Whether applying it changes anything."""
        return bool(self.steps) or self.write_rp_rows


def plan(server: InfluxQL, database: str, config: RetentionConfig, raw_policy: str | None) -> Plan:
    """Compare the section with the database; the steps that make them agree."""
    steps: list[Step] = []
    exists = any(row.get("name") == database for row in server.query("SHOW DATABASES"))
    if not exists:
        steps.append(Step(f"create database {database}", f"CREATE DATABASE {ident(database)}"))
        # What CREATE DATABASE makes (InfluxDB's retention-autocreate): altered below.
        policies = {"autogen": Policy("autogen", 0, 7 * 86400.0, default=True)}
    else:
        policies = {
            str(row["name"]): Policy(
                str(row["name"]),
                parse_go_duration(str(row["duration"])),
                parse_go_duration(str(row["shardGroupDuration"])),
                bool(row.get("default")),
            )
            for row in server.query(f"SHOW RETENTION POLICIES ON {ident(database)}")
        }
    if raw_policy is None:
        raw_policy = next((p.name for p in policies.values() if p.default), "autogen")
    wanted = [
        Policy(raw_policy, config.raw, shard_duration(config.raw)),
        *(Policy(lvl.policy, lvl.keep, shard_duration(lvl.keep)) for lvl in config.rollups),
    ]
    for policy in wanted:
        steps.extend(_policy_steps(database, policy, policies.get(policy.name)))
    steps.extend(_policy_steps(database, Policy(META_POLICY, 0, 7 * 86400.0),
                               policies.get(META_POLICY), create_only=True))  # fmt: skip
    notes = [
        f"retention policy {name} is not in the retention section; left as it is (drop it by "
        "hand to delete its data)"
        for name in sorted(set(policies) - {p.name for p in wanted} - {META_POLICY})
        if name.startswith("rollup_")
    ]
    steps.extend(_cq_steps(server, database, raw_policy, config, exists=exists))
    rows = rp_rows(raw_policy, config)
    found_meta = exists and META_POLICY in policies
    write = not found_meta or _found_rp_rows(server, database) != rows
    if write and found_meta:
        steps.append(
            Step(
                "replace the dashboards' rp_config rows",
                f"DROP SERIES FROM {ident(RP_CONFIG)}",
            )
        )
    return Plan(raw_policy, steps, rows, write, notes)


def _cq_steps(
    server: InfluxQL, database: str, raw_policy: str, config: RetentionConfig, *, exists: bool
) -> list[Step]:
    found: set[str] = set()
    if exists:
        for row in server.query("SHOW CONTINUOUS QUERIES"):
            if row.get("_series") == database:  # the statement lists every database's
                found.add(str(row["name"]))
    wanted = continuous_queries(database, raw_policy, config)
    steps = [
        Step(f"drop continuous query {name} (no longer asked for)",
             f"DROP CONTINUOUS QUERY {ident(name)} ON {ident(database)}")
        for name in sorted(found - set(wanted))
        if name.startswith(CQ_PREFIX)
    ]  # fmt: skip
    steps.extend(
        Step(f"create continuous query {name}", statement)
        for name, statement in wanted.items()
        if name not in found
    )
    return steps


def _found_rp_rows(server: InfluxQL, database: str) -> list[dict[str, object]]:
    rows = server.query(
        f'SELECT * FROM {ident(database)}.{ident(META_POLICY)}.{ident(RP_CONFIG)} GROUP BY "level"'
    )
    return sorted(
        (
            {"level": row["level"], "rp": row["rp"], "from_ms": row["from_ms"],
             "to_ms": row["to_ms"]}
            for row in rows
        ),
        key=lambda row: int(str(row["level"])),
    )  # fmt: skip


def apply(server: InfluxQL, steps: Plan) -> None:
    """Run the plan's statements in order, then write the rp_config rows it asks for."""
    for step in steps.steps:
        server.query(step.statement)
    if steps.write_rp_rows:
        server.write(rp_rows_line_protocol(steps.rp_rows), META_POLICY)


def backfill(
    database: str,
    raw_policy: str,
    config: RetentionConfig,
    start_ns: int,
    end_ns: int,
    *,
    chunk_s: float = 3600.0,
) -> list[Step]:
    """The continuous queries' SELECT ... INTO over [start, end): rolls up what raw rows hold
    there (history older than `recompute`, or rows from before the rollups existed), one
    `chunk_s` of rows per statement so that none runs for long."""
    steps = []
    for level in config.rollups:
        # Whole buckets only: a bucket cut at `start` would overwrite its rollup with a part;
        # the one still filling is the continuous query's.
        every = round(level.every * 1e9)
        chunk = max(every, round(chunk_s * 1e9) // every * every)
        first, last = start_ns - start_ns % every, end_ns - end_ns % every
        for begin in range(first, last, chunk):
            where = f"time >= {begin} AND time < {min(begin + chunk, last)}"
            steps.extend(
                Step(
                    f"roll up {measurement} into {level.policy}",
                    rollup_select(database, raw_policy, level, measurement, where),
                )
                for measurement in ROLLUPS
            )
    return steps
