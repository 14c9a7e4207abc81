"""What a rollup row holds, per measurement: the same measurement and tags, each field summarised.

A rollup row is one bucket (`every` long, dated at its start) of one series (every tag kept).
Each field keeps its own name for the aggregate that reads like the raw value in a dashboard
(the mean of a gauge, the sum of a count, the last of a state, the worst of a depth), so one
panel query reads raw rows and rollups alike; other aggregates get a suffix (`_max`, `_min`).
`samples` counts the raw rows in the bucket. docs/contract.md (InfluxDB, Rollups) lists them.

Booleans and strings have no mean, max or min in InfluxQL: they keep their last value, and a
failure is counted where the raw row says so (`service.failures`: rows with an `error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Agg(StrEnum):
    """An aggregate, named as InfluxQL and Flux both name it."""

    MEAN = "mean"
    MAX = "max"
    MIN = "min"
    SUM = "sum"
    LAST = "last"
    COUNT = "count"


@dataclass(frozen=True)
class Output:
    """One field of a rollup row: `name` = `agg`(`source`) over the bucket."""

    name: str
    agg: Agg
    source: str


def _field(source: str, first: Agg, *more: Agg) -> list[Output]:
    """`source` under its own name for `first`, then `source_<agg>` for each of `more`."""
    return [Output(source, first, source)] + [
        Output(f"{source}_{agg}", agg, source) for agg in more
    ]


def _fields(sources: tuple[str, ...], first: Agg, *more: Agg) -> list[Output]:
    return [output for source in sources for output in _field(source, first, *more)]


def _samples(source: str) -> Output:
    """How many raw rows the bucket summarises (a field every row of the measurement has)."""
    return Output("samples", Agg.COUNT, source)


MEAN, MAX, MIN, SUM, LAST, COUNT = Agg.MEAN, Agg.MAX, Agg.MIN, Agg.SUM, Agg.LAST, Agg.COUNT
_RTT = ("rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms", "rtt_p95_ms", "rtt_max_ms")
_PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "redirect_ms")
_TRAFFIC = ("in_bps", "out_bps", "util_pct", "in_bps_window", "out_bps_window", "util_pct_window")
_EVENTS = ("in_errors", "out_errors", "in_discards", "out_discards")

# measurement -> the fields of its rollup rows. Every measurement of docs/contract.md is here
# (tests/collector/test_retention.py holds the two together).
ROLLUPS: dict[str, tuple[Output, ...]] = {
    "link": (
        _samples("sent"),
        # Loss over the bucket is 1 - received / sent of the sums, exactly.
        *_fields(("sent", "received"), SUM),
        *_field("loss_pct", MEAN, MAX, MIN),
        *_fields(_RTT, MEAN, MAX, MIN),
        *_field("jitter_ms", MEAN, MAX),
        *_field("mos", MEAN, MIN),
    ),
    "snmp_if": (
        _samples("oper_up"),
        *_field("oper_up", LAST, MIN),  # oper_up_min 0: it was down at some poll
        *_fields(_TRAFFIC, MEAN, MAX),  # util_pct_max: the busiest poll, util_pct_window_max
        *_fields(_EVENTS, MEAN, MAX),
    ),
    "ap": (
        _samples("up"),
        *_field("up", LAST, MIN),
        *_field("clients", MEAN, MAX),
        *_field("channel", LAST),
        *_fields(("channel_util_pct", "noise_dbm"), MEAN, MAX),
    ),
    "host": (
        _samples("cpu_pct"),
        *_fields(("cpu_pct", "mem_pct", "disk_pct", "temp_c"), MEAN, MAX),
        *_fields(("undervoltage", "throttled"), LAST),  # booleans
        *_fields(("outbox_depth", "outbox_age_s"), MAX),
        *_fields(("outbox_dropped", "uptime_s"), LAST),  # cumulative / a clock
    ),
    "service": (
        _samples("duration_ms"),
        Output("failures", COUNT, "error"),  # `error` is there only when `up` is false
        *_fields(("up", "error"), LAST),  # a boolean; `error` only in a bucket with a failure
        *_field("duration_ms", MEAN, MAX, MIN),
        *_fields(_PHASES, MEAN, MAX),
        *_field("cert_days_left", MIN),
        *_fields(("status_code", "redirects", "rcode", "answers", "tcp"), LAST),
    ),
    "path": (
        _samples("loss_pct"),
        *_fields(("address", "protocol", "trace_id"), LAST),  # strings
        *_fields(("sent", "received"), SUM),
        *_field("loss_pct", MEAN, MAX),
        *_fields(("rtt_p50_ms", "rtt_p95_ms", "rtt_avg_ms"), MEAN, MAX),
    ),
    "event": (_samples("message"), *_field("message", LAST)),
    "alert": (_samples("state"), *_field("state", LAST), *_field("value", LAST, MAX)),
    "outage": (
        _samples("duration_s"),
        *_fields(("duration_s", "samples_backfilled"), SUM),
        *_fields(("worst_loss_pct", "worst_rtt_ms"), MAX),
    ),
    "agent": (
        _samples("envelopes_received"),
        # Counts since the collector started: the last of a bucket is where it stood.
        *_fields(
            ("envelopes_received", "envelopes_duplicate", "envelopes_lost", "envelopes_missing"),
            LAST,
        ),
    ),
}
