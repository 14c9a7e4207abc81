"""The NOC dashboards: well-formed Grafana JSON, and every InfluxQL query returns data from influxd.

The data tests run each panel's query on two sites of hand-made rows covering every measurement,
then (as root) on what `fieldmon-lab demo` wrote through the real agent and collector.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from demo_run import DemoRun
from ruamel.yaml import YAML

from fieldmon.collector.retention import influxql
from fieldmon.collector.retention.config import RetentionConfig
from fieldmon.collector.storage.lineprotocol import encode_samples
from fieldmon.core.wire.models import FieldValue, Sample
from fieldmon.lab.demo import DATABASE as DEMO_DATABASE
from fieldmon.lab.servers import InfluxdServer, ServerQueryError

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
GRAFANA_FILES = sorted(DASHBOARDS.glob("*.json"))
INFLUX2_TEMPLATE = DASHBOARDS / "influxdb2" / "fieldmon-template.json"
EXPECTED_BOARDS = {"fleet-overview.json", "site-detail.json", "alerts-outages.json"}
DATASOURCE_REF = {"type": "influxdb", "uid": "${datasource}"}

# Grafana's own variables that an InfluxQL query may use, and what the test expands them to:
# the data test covers the last hour in one-minute buckets (${__from} and ${__to} are epoch ms).
_NOW_MS = int(time.time() * 1000)
BUILTINS = {
    "timeFilter": "time > now() - 1h",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__from": str(_NOW_MS - 3_600_000),
    "__to": str(_NOW_MS),
}
# What `fieldmon-collector retention` sets up by default: raw rows in the database's default
# policy, 5-minute rollups in rollup_5m; every panel reads the one the `rp` variable picks.
RETENTION = RetentionConfig()
RAW_RP, ROLLUP_RP = "autogen", RETENTION.rollups[0].policy
RP_QUERY = (
    'SELECT "rp" FROM "fieldmon_meta"."rp_config" '
    'WHERE ${__to} - ${__from} > "from_ms" AND ${__to} - ${__from} <= "to_ms"'
)
MEASUREMENT_RE = re.compile(r'FROM\s+("[^"]*"\.)?"(\w+)"')
# $name, ${name}, ${name:format} and the deprecated [[name]].
VARIABLE_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)\]\]")
GRID_WIDTH = 24

SITES = {
    "alpha-hall": "alpha-hall-pi1",
    "bravo-school": "bravo-school-pi1",
}
LINKS = (("parent-gw", "parent"), ("internet", "internet"), ("site-gateway", "gateway"))
SERVICES = (("his", "http"), ("hospital-dns", "dns"), ("pacs", "tcp"))
ROUNDS = 50  # one sample a minute for the last 50 minutes


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in board.get("templating", {}).get("list", [])}


@dataclass(frozen=True)
class PanelQuery:
    """One InfluxQL query found in a dashboard, with where it came from."""

    where: str  # "site-detail.json / Link RTT / A" or "site-detail.json / variable link"
    query: str


def _queries(path: Path) -> list[PanelQuery]:
    board = _load(path)
    found = [
        PanelQuery(f"{path.name} / {panel['title']} / {target['refId']}", target["query"])
        for panel in _all_panels(board)
        for target in panel.get("targets", [])
    ]
    found.extend(
        PanelQuery(f"{path.name} / variable {name}", var["query"])
        for name, var in _variables(board).items()
        if var["type"] == "query"
    )
    return found


def _every_query() -> list[PanelQuery]:
    found: list[PanelQuery] = []
    for path in GRAFANA_FILES:
        # A broken file must fail its own structural tests, not stop collection of all others.
        try:
            found.extend(_queries(path))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return found


ALL_QUERIES = _every_query()


def _used_variables(text: str) -> set[str]:
    return {next(name for name in match.groups() if name) for match in VARIABLE_RE.finditer(text)}


def expand(query: str, values: dict[str, str]) -> str:
    """The query as Grafana sends it, with `values` for the dashboard's own variables."""

    def one(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in BUILTINS:
            return BUILTINS[name]
        return values[name]

    return VARIABLE_RE.sub(one, query)


# --- structure -------------------------------------------------------------------------------


def test_every_dashboard_is_there() -> None:
    assert {path.name for path in GRAFANA_FILES} == EXPECTED_BOARDS


@pytest.mark.parametrize("path", [*GRAFANA_FILES, INFLUX2_TEMPLATE], ids=lambda path: path.name)
def test_valid_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        pytest.fail(f"{path.name}: {exc}")


@pytest.mark.parametrize("path", GRAFANA_FILES, ids=lambda path: path.name)
def test_dashboard_metadata(path: Path) -> None:
    board = _load(path)
    assert isinstance(board.get("schemaVersion"), int) and board["schemaVersion"] >= 36
    assert board.get("uid") and board.get("title")
    variables = _variables(board)
    source = variables.get("datasource")
    assert source is not None, "no `datasource` variable"
    assert (source["type"], source["query"]) == ("datasource", "influxdb")
    for name in ("site", "link", "service"):
        if name in variables:
            var = variables[name]
            assert var["type"] == "query" and var["query"].startswith("SHOW TAG VALUES"), name
            assert var["datasource"] == DATASOURCE_REF, name
    assert "site" in variables
    rp = variables.get("rp")
    assert rp is not None, "no `rp` variable: panels would read raw rows the retention dropped"
    assert (rp["type"], rp["query"], rp["refresh"]) == ("query", RP_QUERY, 2)
    assert rp["datasource"] == DATASOURCE_REF


@pytest.mark.parametrize("path", GRAFANA_FILES, ids=lambda path: path.name)
def test_every_panel_reads_the_policy_the_rp_variable_picks(path: Path) -> None:
    for query in _queries(path):
        if "variable" in query.where:
            continue
        sources = MEASUREMENT_RE.findall(query.query)
        assert sources, f"{query.where}: reads no measurement"
        for policy, measurement in sources:
            assert policy == '"$rp".', f"{query.where}: FROM {policy}{measurement!r}"


def test_dashboard_uids_are_unique() -> None:
    uids = [_load(path)["uid"] for path in GRAFANA_FILES]
    assert len(uids) == len(set(uids)), uids


@pytest.mark.parametrize("path", GRAFANA_FILES, ids=lambda path: path.name)
def test_panel_ids_are_unique(path: Path) -> None:
    ids = [panel["id"] for panel in _all_panels(_load(path))]
    assert all(isinstance(panel_id, int) for panel_id in ids), ids
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {sorted(ids)}"


def _cells(grid: dict[str, int]) -> set[tuple[int, int]]:
    return {
        (x, y)
        for x in range(grid["x"], grid["x"] + grid["w"])
        for y in range(grid["y"], grid["y"] + grid["h"])
    }


@pytest.mark.parametrize("path", GRAFANA_FILES, ids=lambda path: path.name)
def test_panels_fit_the_grid_without_overlap(path: Path) -> None:
    panels = list(_all_panels(_load(path)))
    for panel in panels:
        grid = panel.get("gridPos")
        assert grid is not None, f"{path.name} / {panel['title']}: no gridPos"
        assert {"x", "y", "w", "h"} <= grid.keys(), f"{panel['title']}: {grid}"
        assert all(isinstance(grid[key], int) for key in "xywh"), f"{panel['title']}: {grid}"
        assert 0 <= grid["x"] < GRID_WIDTH and grid["y"] >= 0, f"{panel['title']}: {grid}"
        assert grid["w"] >= 1 and grid["x"] + grid["w"] <= GRID_WIDTH, f"{panel['title']}: {grid}"
        assert 1 <= grid["h"] <= 50, f"{panel['title']}: {grid}"
    for first, second in combinations(panels, 2):
        shared = _cells(first["gridPos"]) & _cells(second["gridPos"])
        assert not shared, f"{path.name}: {first['title']!r} overlaps {second['title']!r}"


@pytest.mark.parametrize("path", GRAFANA_FILES, ids=lambda path: path.name)
def test_every_query_uses_the_datasource_variable(path: Path) -> None:
    for panel in _all_panels(_load(path)):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DATASOURCE_REF, f"{path.name} / {panel['title']}"
        assert panel.get("targets"), f"{path.name} / {panel['title']}: no queries"
        for target in panel["targets"]:
            where = f"{path.name} / {panel['title']} / {target.get('refId')}"
            assert target.get("datasource") == DATASOURCE_REF, where
            assert target.get("rawQuery") is True and target.get("query"), where


@pytest.mark.parametrize("path", GRAFANA_FILES, ids=lambda path: path.name)
def test_every_variable_in_a_query_exists(path: Path) -> None:
    known = set(_variables(_load(path))) | set(BUILTINS)
    for query in _queries(path):
        missing = _used_variables(query.query) - known
        assert not missing, f"{query.where}: unknown variables {sorted(missing)}"


def test_expand_replaces_every_variable() -> None:
    query = (
        'SELECT x FROM "link" WHERE "site" =~ /^$site$/ AND $timeFilter GROUP BY time($__interval)'
    )
    assert expand(query, {"site": "(a|b)"}) == (
        'SELECT x FROM "link" WHERE "site" =~ /^(a|b)$/ AND time > now() - 1h GROUP BY time(1m)'
    )
    assert (
        expand("${site:regex} [[link]] $__interval_ms", {"site": "s", "link": "l"}) == "s l 60000"
    )


def test_grafana_provisioning_files() -> None:
    yaml = YAML(typ="safe")
    sources = yaml.load(DASHBOARDS / "provisioning/datasources/fieldmon.yaml")
    assert sources["apiVersion"] == 1
    assert sources["datasources"] and all(
        source["type"] == "influxdb" and source["uid"] for source in sources["datasources"]
    )
    providers = yaml.load(DASHBOARDS / "provisioning/dashboards/fieldmon.yaml")
    assert providers["apiVersion"] == 1
    assert [provider["type"] for provider in providers["providers"]] == ["file"]
    assert providers["providers"][0]["options"]["path"]


def test_influxdb2_template_is_well_formed() -> None:
    resources = json.loads(INFLUX2_TEMPLATE.read_text(encoding="utf-8"))
    kinds = {resource["kind"] for resource in resources}
    assert {"Dashboard", "Variable"} <= kinds
    variables = {
        resource["metadata"]["name"]: resource
        for resource in resources
        if resource["kind"] == "Variable"
    }
    names = {resource["spec"]["name"] for resource in variables.values()}
    known = names | {"timeRangeStart", "timeRangeStop", "windowPeriod"}
    boards = [resource for resource in resources if resource["kind"] == "Dashboard"]
    assert len(boards) == len({board["metadata"]["name"] for board in boards})
    flux = [var["spec"]["query"] for var in variables.values() if var["spec"]["type"] == "query"]
    for board in boards:
        for chart in board["spec"]["charts"]:
            assert chart["width"] >= 1 and chart["height"] >= 1, chart["name"]
            assert chart["xPos"] + chart["width"] <= 12, chart["name"]
            for query in chart["queries"]:
                flux.append(query["query"])
                assert "from(bucket: v.bucket)" in query["query"], chart["name"]
                assert "|> range(start: " in query["query"], chart["name"]
    for text in flux:
        used = set(re.findall(r"\bv\.(\w+)", text))
        assert used <= known, f"unknown Flux variables {used - known} in {text!r}"
        assert text.count("(") == text.count(")"), text


# --- data ------------------------------------------------------------------------------------


def _site_samples(site: str, agent: str, now: int, rng: random.Random) -> list[Sample]:
    """Every measurement the dashboards read, one round a minute, as a site really sends it."""
    minute = 60 * 10**9
    rows: list[Sample] = []
    for step in range(ROUNDS):
        at = now - (ROUNDS - step) * minute
        for target, role in LINKS:
            sent = 20
            received = sent - rng.choice((0, 0, 0, 1, 4))
            rtts = sorted(rng.uniform(8, 60) for _ in range(received))
            rows.append(
                Sample(
                    measurement="link",
                    tags={"site": site, "agent": agent, "target": target, "role": role},
                    fields={
                        "sent": sent,
                        "received": received,
                        "loss_pct": 100.0 * (sent - received) / sent,
                        "rtt_min_ms": rtts[0],
                        "rtt_avg_ms": sum(rtts) / len(rtts),
                        "rtt_p50_ms": rtts[len(rtts) // 2],
                        "rtt_p95_ms": rtts[int(len(rtts) * 0.95) - 1],
                        "rtt_max_ms": rtts[-1],
                        "jitter_ms": rng.uniform(0.5, 12),
                        "mos": rng.uniform(3.2, 4.4),
                    },
                    time=at,
                )
            )
        rows.append(
            Sample(
                measurement="host",
                tags={"site": site, "agent": agent},
                fields={
                    "cpu_pct": rng.uniform(3, 40),
                    "mem_pct": rng.uniform(20, 50),
                    "disk_pct": 31.5,
                    "temp_c": rng.uniform(48, 75),
                    "undervoltage": step % 17 == 0,
                    "throttled": False,
                    "outbox_depth": rng.choice((0, 0, 12, 340)),
                    "uptime_s": 3600.0 + step * 60,
                },
                time=at,
            )
        )
        rows.append(
            Sample(
                measurement="agent",
                tags={"site": site, "agent": agent},
                fields={
                    "envelopes_received": 400 + step * 6,
                    "envelopes_duplicate": step // 10,
                    "envelopes_lost": step // 25,
                    "envelopes_missing": 0,
                },
                time=at,
            )
        )
        for device in ("ap-hall-a", "ap-hall-b"):
            for radio, channel in (("2g", 6), ("5g", 36)):
                rows.append(
                    Sample(
                        measurement="ap",
                        tags={"site": site, "agent": agent, "device": device, "radio": radio},
                        fields={
                            "up": int(not (device == "ap-hall-b" and step > 45)),
                            "clients": rng.randint(0, 30),
                            "channel": channel,
                            "channel_util_pct": rng.randint(5, 80),
                            "noise_dbm": rng.randint(-97, -85),
                        },
                        time=at,
                    )
                )
        for ifname, speed in (("wan0", 100e6), ("lte0", 50e6)):
            in_bps, out_bps = rng.uniform(0, speed / 2), rng.uniform(0, speed / 4)
            in_window, out_window = in_bps * rng.uniform(0.9, 1.1), out_bps
            rows.append(
                Sample(
                    measurement="snmp_if",
                    tags={
                        "site": site,
                        "agent": agent,
                        "device": "uplink-router",
                        "ifname": ifname,
                    },
                    fields={
                        "oper_up": 1,
                        "in_bps": in_bps,
                        "out_bps": out_bps,
                        "in_errors": rng.choice((0.0, 0.0, 0.2)),
                        "out_errors": 0.0,
                        "in_discards": rng.choice((0.0, 1.5)),
                        "out_discards": 0.0,
                        "util_pct": 100 * max(in_bps, out_bps) / speed,
                        "in_bps_window": in_window,
                        "out_bps_window": out_window,
                        "util_pct_window": 100 * max(in_window, out_window) / speed,
                        "window_s": 120.0,
                    },
                    time=at,
                )
            )
        rows.extend(_service_samples(site, agent, step, at, rng))
    rows.extend(_alert_and_outage_samples(site, now, minute))
    return rows


def _service_samples(site: str, agent: str, step: int, at: int, rng: random.Random) -> list[Sample]:
    """One run of each service: the HIS answers 503 for a few minutes, the PACS is refused once."""
    rows = []
    for target, kind in SERVICES:
        tags = {"site": site, "agent": agent, "target": target, "kind": kind}
        fields: dict[str, FieldValue]
        if kind == "http":
            dns = rng.uniform(0.5, 3)
            connect = dns + rng.uniform(2, 40)
            tls = connect + rng.uniform(5, 60)
            ttfb = tls + rng.uniform(5, 400)
            failing = 30 <= step < 34
            fields = {
                "up": not failing, "duration_ms": ttfb + rng.uniform(0.2, 5), "dns_ms": dns,
                "connect_ms": connect, "tls_ms": tls, "ttfb_ms": ttfb,
                "status_code": 503 if failing else 200, "redirects": 0,
                "cert_days_left": 40.0 - step * 0.01,
            }  # fmt: skip
            if failing:
                fields["error"] = "status"
        elif kind == "dns":
            fields = {"up": True, "duration_ms": rng.uniform(0.3, 20), "rcode": "NOERROR",
                      "answers": 1, "tcp": False}  # fmt: skip
        elif step == 40:
            fields = {"up": False, "duration_ms": 0.4, "error": "refused"}
        else:
            fields = {"up": True, "duration_ms": rng.uniform(2, 40)}
            fields["connect_ms"] = fields["duration_ms"]
        rows.append(Sample(measurement="service", tags=tags, fields=fields, time=at))
    return rows


def _alert_and_outage_samples(site: str, now: int, minute: int) -> list[Sample]:
    """A parent link that degraded and recovered, and one alert still firing."""

    def alert(
        name: str, target: str, severity: str, state: str, value: float, *, ago: int
    ) -> Sample:
        return Sample(
            measurement="alert",
            tags={"site": site, "alertname": name, "target": target, "severity": severity},
            fields={"state": state, "value": value},
            time=now - ago * minute,
        )

    return [
        alert("LinkDegraded", "parent-gw", "warning", "firing", 30.0, ago=40),
        alert("LinkDegraded", "parent-gw", "warning", "resolved", 0.0, ago=31),
        alert("LinkDown", "internet", "critical", "firing", 100.0, ago=5),
        alert("ServiceDown", "his", "critical", "firing", 0.0, ago=18),
        alert("ServiceDown", "his", "critical", "resolved", 1.0, ago=12),
        alert("CertificateExpiring", "his", "warning", "firing", 9.5, ago=3),
        Sample(
            measurement="outage",
            tags={"site": site, "link": "parent-gw"},
            fields={
                "duration_s": 540.0,
                "worst_loss_pct": 30.0,
                "worst_rtt_ms": 212.5,
                "samples_backfilled": 27,
            },
            time=now - 40 * minute,
        ),
    ]


def _series(influxd: InfluxdServer, query: str, db: str) -> list[dict[str, Any]]:
    """The raw series of an InfluxQL answer (tags kept apart from the columns)."""
    params = urllib.parse.urlencode({"q": query, "db": db, "epoch": "ns"})
    request = urllib.request.Request(f"{influxd.url}/query", data=params.encode(), method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer = json.loads(reply.read())
    series: list[dict[str, Any]] = []
    for result in answer.get("results", []):
        if "error" in result:
            raise ServerQueryError(result["error"])
        series.extend(result.get("series", []))
    return series


def _has_value(series: dict[str, Any]) -> bool:
    value_columns = [index for index, name in enumerate(series["columns"]) if name != "time"]
    return any(
        row[index] is not None for row in series.get("values", []) for index in value_columns
    )


class _InfluxQL:
    """fieldmon.collector.retention.influxql.InfluxQL on the test's influxd, for one database."""

    def __init__(self, influxd: InfluxdServer, db: str) -> None:
        self.influxd, self.db = influxd, db

    def query(self, statement: str) -> list[dict[str, object]]:
        return self.influxd.query(statement, db=self.db)

    def write(self, lines: str, policy: str) -> None:
        self.influxd.write(lines, self.db, rp=policy)


@pytest.fixture(scope="module")
def fleet_db(influxd: InfluxdServer) -> Iterator[str]:
    """A database holding the last hour of two sites, every measurement the dashboards read,
    raw and rolled up (the retention section's policies, continuous queries and rp_config)."""
    name = f"dash_{uuid.uuid4().hex[:12]}"
    influxd.create_database(name)
    rng = random.Random(6)
    now = time.time_ns()
    for site, agent in SITES.items():
        influxd.write(encode_samples(_site_samples(site, agent, now, rng)).decode(), db=name)
    server = _InfluxQL(influxd, name)
    influxql.apply(server, influxql.plan(server, name, RETENTION, None))
    for step in influxql.backfill(name, RAW_RP, RETENTION, now - 3600 * 10**9, now):
        server.query(step.statement)
    yield name
    if influxd.running():
        influxd.query(f'DROP DATABASE "{name}"')


def check_returns_data(
    influxd: InfluxdServer, db: str, query: PanelQuery, values: dict[str, str], sites: set[str]
) -> None:
    """Run the panel's query with `values` for its variables; fail naming the panel on no data."""
    text = expand(query.query, values)
    try:
        series = _series(influxd, text, db)
    except ServerQueryError as exc:
        pytest.fail(f"{query.where}: influxd refused {text!r}: {exc}")
    assert any(_has_value(one) for one in series), f"{query.where}: no data from {text!r}"
    # A panel grouped by site shows exactly the selected sites: none leaks in, none is lost.
    tagged = {(one.get("tags") or {}).get("site") for one in series if _has_value(one)} - {None}
    assert not tagged or tagged == sites, f"{query.where}: sites {tagged}, selected {sites}"


@pytest.mark.parametrize("rp", [RAW_RP, ROLLUP_RP])
@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda query: query.where)
def test_query_returns_data_for_one_site(
    influxd: InfluxdServer, fleet_db: str, query: PanelQuery, rp: str
) -> None:
    values = {
        "site": "bravo-school", "link": "parent-gw", "service": "his", "datasource": "fieldmon",
        "rp": rp,
    }  # fmt: skip
    check_returns_data(influxd, fleet_db, query, values, {"bravo-school"})


@pytest.mark.parametrize("rp", [RAW_RP, ROLLUP_RP])
@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda query: query.where)
def test_query_returns_data_for_all_sites(
    influxd: InfluxdServer, fleet_db: str, query: PanelQuery, rp: str
) -> None:
    # Grafana sends a multi-value / All selection to InfluxQL as a group of regex-escaped values
    # (its escaping turns `-` into `\-`).
    values = {
        "site": r"(alpha\-hall|bravo\-school)",
        "link": r"(parent\-gw|internet)",
        "service": r"(his|hospital\-dns|pacs)",
        "rp": rp,
    }
    check_returns_data(influxd, fleet_db, query, values, set(SITES))


@pytest.mark.parametrize(
    ("hours", "expected"),
    [(1, RAW_RP), (24 * 30, RAW_RP), (24 * 30 + 1, ROLLUP_RP), (24 * 90, ROLLUP_RP),
     (24 * 365 * 5, ROLLUP_RP)],
)  # fmt: skip
def test_the_rp_variable_picks_raw_rows_within_their_retention_and_the_rollup_beyond(
    influxd: InfluxdServer, fleet_db: str, hours: int, expected: str
) -> None:
    expanded = RP_QUERY.replace("${__from}", str(_NOW_MS - hours * 3_600_000))
    rows = influxd.query(expanded.replace("${__to}", str(_NOW_MS)), db=fleet_db)
    assert [row["rp"] for row in rows] == [expected]


def test_site_and_link_variables_list_what_was_written(
    influxd: InfluxdServer, fleet_db: str
) -> None:
    board = _load(DASHBOARDS / "site-detail.json")
    variables = _variables(board)
    sites = influxd.query(expand(variables["site"]["query"], {}), db=fleet_db)
    assert {row["value"] for row in sites} == set(SITES)
    links = influxd.query(expand(variables["link"]["query"], {"site": "alpha-hall"}), db=fleet_db)
    assert {row["value"] for row in links} == {name for name, _ in LINKS}
    query = expand(variables["service"]["query"], {"site": "alpha-hall"})
    assert {row["value"] for row in influxd.query(query, db=fleet_db)} == {n for n, _ in SERVICES}


# --- data the real pipeline wrote ------------------------------------------------------------

PIPELINE_MEASUREMENTS = {"link", "host", "alert", "agent", "ap", "snmp_if", "service"}
CONTRACT_FIELDS = {
    "link": {"sent", "received", "loss_pct", "rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms",
             "rtt_p95_ms", "rtt_max_ms", "jitter_ms", "mos"},
    "host": {"cpu_pct", "mem_pct", "disk_pct", "temp_c", "undervoltage", "throttled",
             "outbox_depth", "uptime_s"},
    "alert": {"state", "value"},
    "agent": {"envelopes_received", "envelopes_duplicate", "envelopes_lost", "envelopes_missing"},
    "ap": {"up", "clients", "channel", "channel_util_pct", "noise_dbm"},
    "snmp_if": {"oper_up", "in_bps", "out_bps", "in_errors", "out_errors", "in_discards",
                "out_discards", "util_pct", "in_bps_window", "out_bps_window", "util_pct_window",
                "window_s"},
    "outage": {"duration_s", "worst_loss_pct", "worst_rtt_ms", "samples_backfilled"},
    "service": {"up", "duration_ms", "dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "status_code",
                "redirects", "redirect_ms", "cert_days_left", "rcode", "answers", "tcp", "error"},
}  # fmt: skip
# The host probe leaves these out where it cannot measure them (not a Pi, no sensor).
PI_ONLY_FIELDS = {"temp_c", "undervoltage", "throttled"}
FROM_RE = re.compile(r'FROM\s+(?:"[^"]*"\.)?"(\w+)"')
QUOTED_RE = re.compile(r'"(\w+)"')


@dataclass(frozen=True)
class DemoData:
    """influxd restarted on the demo's data, and what the demo wrote."""

    influxd: InfluxdServer
    site: str
    link: str
    service: str  # the site's HTTPS service
    fields: dict[str, set[str]]  # measurement -> field keys written


@pytest.fixture(scope="module")
def demo_data(demo_run: DemoRun) -> Iterator[DemoData]:
    """Serve the InfluxDB data the session's demo run left behind."""
    assert demo_run.returncode == 0, demo_run.failure()
    # The demo stopped its influxd; a server of our own reopens the same data directory.
    with InfluxdServer(demo_run.data_dir / "influxd") as influxd:
        fields: dict[str, set[str]] = {}
        for series in _series(influxd, "SHOW FIELD KEYS", DEMO_DATABASE):
            fields[series["name"]] = {row[0] for row in series["values"]}
        parent = influxd.query(
            'SELECT last("loss_pct") FROM "link" WHERE "role" = \'parent\' '
            'GROUP BY "site", "target"',
            db=DEMO_DATABASE,
        )
        assert parent, "the demo wrote no parent link rows"
        site = parent[0]["site"]
        https = influxd.query(
            f'SELECT last("tls_ms") FROM "service" WHERE "site" = \'{site}\' GROUP BY "target"',
            db=DEMO_DATABASE,
        )
        assert https, f"the demo wrote no HTTPS service rows for {site}"
        yield DemoData(influxd, site, parent[0]["target"], https[0]["target"], fields)


@pytest.mark.integration
@pytest.mark.netns
def test_demo_writes_every_pipeline_measurement(demo_data: DemoData) -> None:
    assert demo_data.fields.keys() >= PIPELINE_MEASUREMENTS, sorted(demo_data.fields)


def _reads_pipeline_data(query: PanelQuery) -> bool:
    """Queries on what the demo writes: not `outage` (only after an uplink outage is replayed), and
    not the Pi-only host fields (this test host is no Pi, and the probe leaves them out)."""
    measurements = set(FROM_RE.findall(query.query))
    if not measurements or not measurements <= PIPELINE_MEASUREMENTS:
        return False
    read = {
        name
        for name in QUOTED_RE.findall(query.query)
        for measurement in measurements
        if name in CONTRACT_FIELDS[measurement]
    }
    return not (read and read <= PI_ONLY_FIELDS)


PIPELINE_QUERIES = [query for query in ALL_QUERIES if _reads_pipeline_data(query)]


@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.parametrize("query", PIPELINE_QUERIES, ids=lambda query: query.where)
def test_query_returns_pipeline_data(demo_data: DemoData, query: PanelQuery) -> None:
    # The demo set up its retention: the rp variable, asked as Grafana asks it, picks raw rows.
    [picked] = demo_data.influxd.query(expand(RP_QUERY, {}), db=DEMO_DATABASE)
    values = {
        "site": demo_data.site,
        "link": demo_data.link,
        "service": demo_data.service,
        "rp": str(picked["rp"]),
    }
    check_returns_data(demo_data.influxd, DEMO_DATABASE, query, values, {demo_data.site})
