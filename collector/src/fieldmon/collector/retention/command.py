"""`fieldmon-collector retention`: show or apply what the `retention:` section asks of InfluxDB."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TextIO

from fieldmon.collector.config import CollectorConfig
from fieldmon.collector.retention import flux, influxql
from fieldmon.collector.retention.config import RetentionConfig
from fieldmon.collector.storage.config import InfluxV1Config, InfluxV2Config
from fieldmon.core.config.types import format_duration, read_secret
from fieldmon.core.redact import redact_url


class RetentionError(Exception):
    """InfluxDB refused or did not answer; the message says what was being done."""


class InfluxV1Http:
    """influxql.InfluxQL over the 1.x HTTP API (/query, /write), with the writer's credentials."""

    def __init__(self, config: InfluxV1Config) -> None:
        self._url = str(config.url).rstrip("/")
        self.shown_url = redact_url(self._url)
        self._database = config.database
        self._headers: dict[str, str] = {}
        if config.username is not None:
            password = read_secret(config.password_file) if config.password_file else ""
            token = base64.b64encode(f"{config.username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._timeout = config.timeout

    def _post(
        self,
        path: str,
        params: dict[str, str],
        body: bytes,
        what: str,
        timeout: float | None = None,
    ) -> bytes:
        url = f"{self._url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self._timeout) as reply:
                return bytes(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace").strip()
            hint = " (retention policies and continuous queries need an admin user)" * (
                exc.code == 403
            )
            raise RetentionError(f"{what}: HTTP {exc.code}{hint}: {detail}") from exc
        except OSError as exc:
            raise RetentionError(f"{what}: {self.shown_url} does not answer: {exc}") from exc

    def query(self, statement: str, timeout: float | None = None) -> list[dict[str, object]]:
        what = f"running {statement[:80]!r} at {self.shown_url}"
        params = {"db": self._database, "epoch": "ns"}
        body = urllib.parse.urlencode({"q": statement}).encode()
        answer = json.loads(self._post("/query", params, body, what, timeout))
        rows: list[dict[str, object]] = []
        for result in answer.get("results", []):
            if "error" in result:
                raise RetentionError(f"{what}: {result['error']}")
            for series in result.get("series", []):
                for values in series.get("values", []):
                    row: dict[str, object] = dict(zip(series["columns"], values, strict=True))
                    row.update(series.get("tags") or {})
                    row["_series"] = series.get("name", "")
                    rows.append(row)
        return rows

    def write(self, lines: str, policy: str) -> None:
        what = f"writing into {self._database}.{policy} at {self.shown_url}"
        params = {"db": self._database, "rp": policy, "precision": "ns"}
        self._post("/write", params, lines.encode(), what)


def _summary(config: RetentionConfig, raw: str) -> str:
    levels = ", ".join(
        f"{level.policy} ({format_duration(level.every)} buckets, kept "
        f"{format_duration(level.keep)})"
        for level in config.rollups
    )
    return f"raw rows: {raw}, kept {format_duration(config.raw)}; rollups: {levels}"


def _print_steps(steps: list[influxql.Step], out: TextIO) -> None:
    for step in steps:
        print(f"  - {step.why}", file=out)
        print(f"      {step.statement}", file=out)


def run_retention(
    config: CollectorConfig, *, apply: bool, backfill: float | None, out: TextIO
) -> int:
    """Print the plan; with `apply`, make it so. 0 when done (or nothing to do)."""
    retention = config.retention
    if retention is None:
        raise RetentionError(
            "the collector file has no retention: section; add one (docs/contract.md, "
            "Collector config) to keep raw rows for a while and rollups for longer"
        )
    influx = config.influxdb
    if isinstance(influx, InfluxV2Config):
        return _run_v2(influx, retention, apply=apply, out=out)
    server = InfluxV1Http(influx)
    plan = influxql.plan(server, influx.database, retention, influx.retention_policy)
    print(f"database {influx.database} at {server.shown_url} (InfluxDB 1.x)", file=out)
    print(f"  {_summary(retention, plan.raw_policy)}", file=out)
    for note in plan.notes:
        print(f"  note: {note}", file=out)
    _print_steps(plan.steps, out)
    if plan.write_rp_rows:
        print(f"  - write the dashboards' rp_config rows into {influxql.META_POLICY}", file=out)
    fill: list[influxql.Step] = []
    if backfill is not None:
        end = time.time_ns()
        fill = influxql.backfill(
            influx.database, plan.raw_policy, retention, end - int(backfill * 1e9), end
        )
        print(
            f"  - roll up the last {format_duration(backfill)} of raw rows: {len(fill)} "
            "statements (each measurement, an hour at a time), the first:",
            file=out,
        )
        _print_steps(fill[:1], out)
    if not apply:
        verdict = "changes" if plan.changes else "no changes"
        print(f"dry run: {verdict}; --apply makes them", file=out)
        return 0
    influxql.apply(server, plan)
    for step in fill:
        server.query(step.statement, timeout=max(influx.timeout, 300.0))
    done = "applied" if plan.changes else "nothing to change: InfluxDB agrees with the section"
    print(done + (f"; rolled up the last {format_duration(backfill)}" if fill else ""), file=out)
    return 0


def _run_v2(influx: InfluxV2Config, retention: RetentionConfig, *, apply: bool, out: TextIO) -> int:
    from influxdb_client.rest import ApiException

    token = read_secret(influx.token_file) if influx.token_file else ""
    shown = redact_url(str(influx.url))
    client = flux.InfluxV2Client(str(influx.url), token, influx.org, influx.timeout)
    try:
        steps = flux.plan_v2(client, influx.org, influx.bucket, retention)
        print(f"bucket {influx.bucket} at {shown} (InfluxDB 2.x)", file=out)
        print(f"  {_summary(retention, influx.bucket)}", file=out)
        _print_steps(flux.as_steps(steps), out)
        if apply:
            flux.apply_v2(client, steps)
        print("applied" if apply else "dry run; --apply makes the changes", file=out)
    except ApiException as exc:
        raise RetentionError(
            f"InfluxDB 2.x at {shown} answered {exc.status}: {exc.reason}"
        ) from exc
    except OSError as exc:
        raise RetentionError(f"InfluxDB 2.x at {shown} does not answer: {exc}") from exc
    finally:
        client.close()
    return 0


def main(path: Path, *, apply: bool, backfill: float | None, out: TextIO) -> int:
    """Load the collector file and run; errors in words, exit 1 (InfluxDB) or 2 (the file)."""
    import sys

    from fieldmon.collector.config import load_collector_config
    from fieldmon.core.config.errors import ConfigError

    try:
        config = load_collector_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.retention is None:
        print(
            f"{path}: no retention: section; add one (docs/contract.md, Collector config) to "
            "keep raw rows for a while and rollups for longer",
            file=sys.stderr,
        )
        return 2
    try:
        return run_retention(config, apply=apply, backfill=backfill, out=out)
    except RetentionError as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 1
