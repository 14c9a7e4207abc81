"""bench/disk: InfluxDB disk per site per day, raw and rolled up.

Writes a realistic day of one site into a fresh influxd 1.6 (every measurement and field the
agent and collector write, at their real rates: 100 links every 10 s, 50 SNMP devices every
30 s with two interfaces and two radios each, the host every 30 s, 5 services every 30 s, a
few path traces and events, the collector's `agent` rows every minute), applies the retention
section (raw 30 d, 5-minute rollups), rolls the day up with the continuous queries' own
SELECT ... INTO, lets influxd snapshot and fully compact the shards (polling until the WAL is
empty and the TSM files stop changing), and measures the files of each retention policy.

`site_day()` is the generator, for other tools (a fleet simulator) to reuse: it yields the
day's `Sample`s in time order, deterministic for a seed.

Run: .venv/bin/python -m bench.disk [--links 100] [--devices 50] [--hours 24]
     [--rollups 5m:730d,1h:1825d] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench._report import print_result
from fieldmon.collector.retention import influxql
from fieldmon.collector.retention.config import RetentionConfig
from fieldmon.collector.storage.lineprotocol import encode_samples
from fieldmon.core.config.types import format_duration
from fieldmon.core.wire.models import Sample
from fieldmon.lab.servers import InfluxdServer

NS = 10**9
DAY_S = 86400
DATABASE = "fieldmon"
ROLES = ("parent", "parent", "internet", "gateway") + ("ap",) * 6  # a site's link mix
SERVICES = (("his", "http"), ("pacs", "tcp"), ("dns", "dns"), ("lab", "http"), ("voip", "tcp"))


class _LinkState:
    """One link's slowly drifting baseline, so consecutive rounds look like a real path."""

    def __init__(self, rng: random.Random, role: str) -> None:
        self.base = rng.uniform(1.0, 4.0) if role in ("gateway", "ap") else rng.uniform(15, 80)
        self.loss_rate = rng.choice((0.0, 0.0, 0.001, 0.01))


def _link(rng: random.Random, state: _LinkState) -> dict[str, float | int]:
    sent = 10
    received = sum(1 for _ in range(sent) if rng.random() >= state.loss_rate)
    state.base = max(0.5, state.base * rng.uniform(0.995, 1.005))
    fields: dict[str, float | int] = {
        "sent": sent,
        "received": received,
        "loss_pct": 100.0 * (sent - received) / sent,
    }
    if received:
        # RTTs to the microsecond, as kernel timestamps give them.
        rtts = sorted(round(state.base + rng.expovariate(1 / 2.0), 3) for _ in range(received))
        fields |= {
            "rtt_min_ms": rtts[0],
            "rtt_avg_ms": round(sum(rtts) / received, 3),
            "rtt_p50_ms": rtts[received // 2],
            "rtt_p95_ms": rtts[min(received - 1, int(received * 0.95))],
            "rtt_max_ms": rtts[-1],
            "mos": round(4.4 - 0.01 * rtts[-1] / 10 - 0.1 * (sent - received), 3),
        }
        if received > 1:
            fields["jitter_ms"] = round(
                sum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (received - 1), 3
            )
    return fields


def _interface(rng: random.Random, counters: list[float], speed_mbps: int) -> dict[str, float]:
    in_bps = counters[0] = max(0.0, counters[0] * rng.uniform(0.8, 1.25) + rng.uniform(0, 1e4))
    out_bps = counters[1] = max(0.0, counters[1] * rng.uniform(0.8, 1.25) + rng.uniform(0, 1e4))
    in_window, out_window = in_bps * rng.uniform(0.95, 1.05), out_bps * rng.uniform(0.95, 1.05)
    speed = speed_mbps * 1e6
    return {
        "oper_up": 1,
        "in_bps": in_bps,
        "out_bps": out_bps,
        "in_errors": 0.0,
        "out_errors": 0.0,
        "in_discards": rng.choice((0.0, 0.0, 0.0, 0.033)),
        "out_discards": 0.0,
        "util_pct": 100 * max(in_bps, out_bps) / speed,
        "in_bps_window": in_window,
        "out_bps_window": out_window,
        "util_pct_window": 100 * max(in_window, out_window) / speed,
        "window_s": 120.0 + rng.uniform(0, 1),
    }


def site_day(
    site: str,
    agent: str,
    start_ns: int,
    *,
    hours: float = 24,
    links: int = 100,
    devices: int = 50,
    seed: int = 17,
) -> Iterator[list[Sample]]:
    """One site's rows for `hours` from `start_ns`, a minute at a time, in time order."""
    rng = random.Random(seed)
    tags = {"site": site, "agent": agent}
    link_tags = [
        {**tags, "target": f"link-{index:03d}", "role": ROLES[index % len(ROLES)]}
        for index in range(links)
    ]
    link_states = [_LinkState(rng, tag["role"]) for tag in link_tags]
    traffic = [[rng.uniform(1e5, 5e6), rng.uniform(1e5, 2e6)] for _ in range(devices * 2)]
    clients = [rng.randint(0, 30) for _ in range(devices * 2)]
    received = 0
    for minute in range(int(hours * 60)):
        rows: list[Sample] = []
        base = start_ns + minute * 60 * NS
        for second in range(0, 60, 10):  # links every 10 s
            at = base + second * NS
            rows.extend(
                Sample(measurement="link", tags=link_tag, fields=_link(rng, state), time=at)
                for link_tag, state in zip(link_tags, link_states, strict=True)
            )
        for second in (0, 30):  # SNMP devices, host and services every 30 s
            at = base + second * NS
            for device in range(devices):
                name = f"ap-{device:02d}"
                for port, ifname in enumerate(("eth0", "eth1")):
                    rows.append(
                        Sample(
                            measurement="snmp_if",
                            tags={**tags, "device": name, "ifname": ifname},
                            fields=_interface(rng, traffic[device * 2 + port], 1000),
                            time=at,
                        )
                    )
                for slot, (radio, channel) in enumerate((("wlan0", 6), ("wlan1", 36))):
                    count = clients[device * 2 + slot] = max(
                        0, clients[device * 2 + slot] + rng.choice((-1, 0, 0, 1))
                    )
                    rows.append(
                        Sample(
                            measurement="ap",
                            tags={**tags, "device": name, "radio": radio},
                            fields={
                                "up": 1,
                                "clients": count,
                                "channel": channel,
                                "channel_util_pct": rng.randint(5, 60),
                                "noise_dbm": rng.randint(-97, -88),
                            },
                            time=at,
                        )
                    )
            rows.append(
                Sample(
                    measurement="host",
                    tags=tags,
                    fields={
                        "cpu_pct": round(rng.uniform(2, 30), 1),
                        "mem_pct": round(rng.uniform(30, 40), 1),
                        "disk_pct": 31.5,
                        "temp_c": round(rng.uniform(45, 70), 1),
                        "undervoltage": False,
                        "throttled": False,
                        "outbox_depth": rng.choice((0, 0, 10)),
                        "outbox_dropped": 0,
                        "outbox_age_s": 0.0,
                        "uptime_s": float((base + second * NS - start_ns) // NS + 86400),
                    },
                    time=at,
                )
            )
            for name, kind in SERVICES:
                rows.append(_service(rng, tags, name, kind, at))
        if minute % 60 == 30:  # a path trace of a parent link, its event, an hourly hook run
            rows.extend(_trace(tags, base))
        received += 60
        rows.append(
            Sample(
                measurement="agent",
                tags=tags,
                fields={
                    "envelopes_received": received,
                    "envelopes_duplicate": 0,
                    "envelopes_lost": 0,
                    "envelopes_missing": 0,
                },
                time=base,
            )
        )
        yield rows


def _service(rng: random.Random, tags: dict[str, str], name: str, kind: str, at: int) -> Sample:
    fields: dict[str, float | int | bool | str] = {
        "up": True,
        "duration_ms": round(rng.uniform(5, 80), 3),
    }
    if kind == "http":
        fields |= {
            "dns_ms": round(rng.uniform(0.5, 3), 3),
            "connect_ms": round(rng.uniform(3, 10), 3),
            "tls_ms": round(rng.uniform(10, 30), 3),
            "ttfb_ms": round(rng.uniform(30, 60), 3),
            "status_code": 200,
            "redirects": 0,
            "cert_days_left": 41.5,
        }
    elif kind == "tcp":
        fields |= {"connect_ms": round(rng.uniform(3, 10), 3)}
    else:
        fields |= {"rcode": "NOERROR", "answers": 1, "tcp": False}
    if rng.random() < 0.01:
        fields |= {"up": False, "error": "timeout"}
    return Sample(
        measurement="service", tags={**tags, "target": name, "kind": kind}, fields=fields, time=at
    )


def _trace(tags: dict[str, str], at: int) -> list[Sample]:
    rows = [
        Sample(
            measurement="path",
            tags={**tags, "target": "link-000", "hop": str(hop)},
            fields={
                "address": f"198.18.0.{hop}",
                "loss_pct": 0.0,
                "rtt_p50_ms": 2.0 * hop,
                "rtt_p95_ms": 2.5 * hop,
                "trace_id": f"t{at}",
                "sent": 10,
                "received": 10,
                "rtt_last_ms": 2.0 * hop,
                "rtt_avg_ms": 2.1 * hop,
                "rtt_best_ms": 1.9 * hop,
                "rtt_worst_ms": 2.6 * hop,
                "rtt_stdev_ms": 0.2,
                "protocol": "icmp",
            },
            time=at,
        )
        for hop in range(1, 6)
    ]
    rows.append(
        Sample(
            measurement="event",
            tags={**tags, "kind": "hook"},
            fields={
                "message": "10-diagnostics ran",
                "event": "link_degraded",
                "hook": "10-diagnostics",
                "exit_status": 0,
                "duration_ms": 120.0,
                "output": "ok",
                "timed_out": False,
            },
            time=at + 1,
        )
    )
    return rows


class CompactingInfluxd(InfluxdServer):
    """influxd that snapshots its cache and fully compacts a shard seconds after writes stop."""

    def config_text(self) -> str:
        return (
            super()
            .config_text()
            .replace(
                "[data]\n",
                '[data]\n  cache-snapshot-write-cold-duration = "2s"\n'
                '  compact-full-write-cold-duration = "5s"\n',
            )
        )


def _files(folder: Path) -> dict[str, int]:
    return {str(path): path.stat().st_size for path in folder.rglob("*") if path.is_file()}


def _settled(server: CompactingInfluxd, timeout: float = 600.0) -> None:
    """Poll until the WAL is empty and the TSM files have stayed the same for 15 s."""
    data, wal = server.directory / "data", server.directory / "wal"
    deadline, last, stable_since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        wal_bytes = sum(_files(wal).values()) if wal.exists() else 0
        now = _files(data)
        if now != last or wal_bytes:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 15:
            return
        time.sleep(1)  # polling the files, not waiting for a fixed time
    raise TimeoutError("influxd did not finish compacting in time")


def policy_bytes(server: InfluxdServer, database: str, policy: str) -> int:
    """Bytes on disk of one retention policy's shards (TSM files and their indexes)."""
    folder = server.directory / "data" / database / policy
    return sum(_files(folder).values()) if folder.exists() else 0


class _Server:
    """influxql.InfluxQL on the lab's InfluxdServer."""

    def __init__(self, server: InfluxdServer) -> None:
        self.server = server

    def query(self, statement: str) -> list[dict[str, object]]:
        return self.server.query(statement, db=DATABASE)  # type: ignore[return-value]

    def write(self, lines: str, policy: str) -> None:
        self.server.write(lines, DATABASE, rp=policy)


def measure(
    workdir: Path, *, hours: float, links: int, devices: int, retention: RetentionConfig
) -> dict[str, object]:
    """Write the day, roll it up, compact, measure."""
    day_start = (time.time_ns() // (DAY_S * NS) - 2) * DAY_S * NS  # two days ago, 00:00 UTC
    rows: Counter[str] = Counter()
    with CompactingInfluxd(workdir / "influxd") as server:
        server.create_database(DATABASE)
        client = _Server(server)
        plan = influxql.plan(client, DATABASE, retention, None)
        influxql.apply(client, plan)
        started = time.monotonic()
        batch: list[Sample] = []
        for minute in site_day(
            "bench-site", "bench-pi", day_start, hours=hours, links=links, devices=devices
        ):
            batch.extend(minute)
            rows.update(sample.measurement for sample in minute)
            if len(batch) >= 5000:
                server.write(encode_samples(batch).decode(), db=DATABASE)
                batch = []
        if batch:
            server.write(encode_samples(batch).decode(), db=DATABASE)
        write_s = time.monotonic() - started
        started = time.monotonic()
        end = day_start + int(hours * 3600 * NS)
        for step in influxql.backfill(DATABASE, plan.raw_policy, retention, day_start, end):
            server.query(step.statement, db=DATABASE)
        rollup_s = time.monotonic() - started
        _settled(server)
        raw = policy_bytes(server, DATABASE, plan.raw_policy)
        levels = {}
        for level in retention.rollups:
            counted = server.query(
                f'SELECT count("samples") FROM "{level.policy}"./.*/ GROUP BY *', db=DATABASE
            )
            levels[level.policy] = (
                level,
                sum(int(str(row["count"])) for row in counted),
                policy_bytes(server, DATABASE, level.policy),
            )
    total = sum(rows.values())
    scale = 24 / hours
    result: dict[str, object] = {
        "links": links,
        "snmp_devices": devices,
        "hours_written": hours,
        "raw_rows": total,
        "raw_rows_by_measurement": dict(rows),
        "raw_bytes": raw,
        "raw_bytes_per_row": round(raw / total, 2),
        "raw_mb_per_site_day": round(raw * scale / 1e6, 2),
        f"raw_gb_per_site_{format_duration(retention.raw)}": round(
            raw * scale * retention.raw / DAY_S / 1e9, 2
        ),
    }
    for name, (level, count, size) in levels.items():
        keep = format_duration(level.keep)
        result |= {
            f"{name}_rows": count,
            f"{name}_bytes": size,
            f"{name}_bytes_per_row": round(size / count, 1) if count else None,
            f"{name}_mb_per_site_day": round(size * scale / 1e6, 3),
            f"{name}_gb_per_site_{keep}": round(size * scale * level.keep / DAY_S / 1e9, 2),
        }
    return result | {"write_s": round(write_s, 1), "rollup_s": round(rollup_s, 1)}


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m bench.disk`."""
    parser = argparse.ArgumentParser(prog="bench.disk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument(
        "--rollups",
        default="5m:730d",
        help="rollup levels as EVERY:KEEP,... (default 5m:730d, the collector's default)",
    )
    parser.add_argument("--keep", type=Path, help="keep influxd's data here (default: removed)")
    args = parser.parse_args(argv)
    levels = [
        dict(zip(("every", "keep"), item.split(":"), strict=True))
        for item in args.rollups.split(",")
    ]
    retention = RetentionConfig.model_validate({"rollups": levels})
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="fieldmon-disk-"))
    try:
        result = measure(
            workdir, hours=args.hours, links=args.links, devices=args.devices, retention=retention
        )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
