"""The `if-mib` profile: interface status, traffic, errors and utilisation as `snmp_if` rows.

The ifName index is walked once and cached; each poll then GETs only the instances it needs
(about ten per interface), so no var-bind is wasted on rows the config filtered out. The index
is walked again when ifNumber, ifTableLastChange or a reboot (sysUpTime going backwards) says
the interfaces changed, or when a cached ifIndex stops answering.

Traffic comes twice: per poll (`in_bps`, `out_bps`, `util_pct`: the counters' delta since the
previous poll) and across the device's `rate_window` (`in_bps_window`, `out_bps_window`,
`util_pct_window`, over `window_s` seconds): devices answer from a cache of their counters, so
the per-poll figure of a steady link saw-tooths while the windowed one holds (counters.py,
CounterWindow).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldmon.agent.snmp.counters import (
    COUNTER32,
    COUNTER64,
    CounterWindow,
    Rate,
    Reading,
    counter_rate,
    util_pct,
)
from fieldmon.agent.snmp.values import Value

if TYPE_CHECKING:
    # Types only: loading a site file must not import pysnmp.
    from fieldmon.agent.snmp.client import SnmpTarget

logger = logging.getLogger(__name__)

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_NUMBER = "1.3.6.1.2.1.2.1.0"
IF_TABLE_LAST_CHANGE = "1.3.6.1.2.1.31.1.5.0"
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"
IF_HIGH_SPEED = "1.3.6.1.2.1.31.1.1.1.15"
IF_DISCONTINUITY = "1.3.6.1.2.1.31.1.1.1.19"
IF_HC_IN = "1.3.6.1.2.1.31.1.1.1.6"
IF_HC_OUT = "1.3.6.1.2.1.31.1.1.1.10"
IF_IN = "1.3.6.1.2.1.2.2.1.10"
IF_OUT = "1.3.6.1.2.1.2.2.1.16"
# (field, 64-bit column, 32-bit fallback column): octets/s become bits/s.
OCTETS = (("in_bps", IF_HC_IN, IF_IN), ("out_bps", IF_HC_OUT, IF_OUT))
# Error and discard counters exist only as Counter32; their fields are events per second.
EVENTS = {
    "in_errors": "1.3.6.1.2.1.2.2.1.14",
    "out_errors": "1.3.6.1.2.1.2.2.1.20",
    "in_discards": "1.3.6.1.2.1.2.2.1.13",
    "out_discards": "1.3.6.1.2.1.2.2.1.19",
}
IF_OPER_UP = 1
DEFAULT_RATE_WINDOW_S = 120.0  # the site file's `rate_window` default (core.site.snmp)
_GET_CHUNK = 40  # var-binds per GET: the answer stays under a 1500-byte MTU on real devices


@dataclass
class _Interface:
    index: str
    name: str
    hc: bool  # ifHCIn/OutOctets answer; otherwise the 32-bit ifIn/OutOctets
    previous: dict[str, Reading] = field(default_factory=dict)  # counter column -> last reading
    windows: dict[str, CounterWindow] = field(default_factory=dict)  # in_bps/out_bps -> window


@dataclass
class InterfaceRow:
    """One interface's fields for an `snmp_if` row (ifname is the tag)."""

    ifname: str
    fields: dict[str, int | float]


@dataclass
class IfMibPoller:
    """Polls one device's IF-MIB; keeps the index cache and last counter readings."""

    target: SnmpTarget
    interfaces: list[str] | None = None  # ifName filter; None keeps all
    rate_window: float = DEFAULT_RATE_WINDOW_S  # seconds the *_window fields span
    index_walks: int = 0  # how often the ifName index was walked (tests check the cache)
    # Interface polls whose counters restarted (reboot, reset, discontinuity time changed).
    discontinuities: int = 0
    _cache: dict[str, _Interface] = field(default_factory=dict)
    _signature: tuple[Value | None, Value | None] | None = None
    _uptime: int | None = None
    _restarted_now: bool = False

    async def poll(self) -> list[InterfaceRow]:
        """One poll: scalars, the index if it changed, then the per-interface instances."""
        scalars = await self.target.get([SYS_UPTIME, IF_NUMBER, IF_TABLE_LAST_CHANGE])
        uptime = _int(scalars.get(SYS_UPTIME))
        signature = (scalars.get(IF_NUMBER), scalars.get(IF_TABLE_LAST_CHANGE))
        rebooted = uptime is not None and self._uptime is not None and uptime < self._uptime
        self._uptime = uptime
        if not self._cache or signature != self._signature or rebooted:
            self._signature = signature
            await self._walk_index()
        values = await self._get_instances()
        if any(_missing(values, iface) for iface in self._cache.values()):
            # An ifIndex we cached is gone: the table changed under us. Re-index at once.
            await self._walk_index()
            values = await self._get_instances()
        now = time.monotonic()
        return [
            row
            for iface in self._cache.values()
            if (row := self._row(iface, values, now, uptime)) is not None
        ]

    async def _walk_index(self) -> None:
        self.index_walks += 1
        count = _int(self._signature[0]) if self._signature else None
        repetitions = min(count + 1, 50) if count else None
        columns = await self.target.walk([IF_NAME, IF_HC_IN], max_repetitions=repetitions)
        names, hc_in = columns[IF_NAME], columns[IF_HC_IN]
        wanted = set(self.interfaces) if self.interfaces is not None else None
        fresh: dict[str, _Interface] = {}
        for index, raw in names.items():
            name = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
            if not name or (wanted is not None and name not in wanted):
                continue
            old = self._cache.get(index)
            same = old is not None and old.name == name
            fresh[index] = _Interface(
                index,
                name,
                index in hc_in,
                old.previous if same and old is not None else {},
                old.windows if same and old is not None else {},
            )
        if wanted is not None:
            absent = wanted - {iface.name for iface in fresh.values()}
            if absent:
                logger.warning(
                    "%s: interfaces not found by ifName: %s",
                    self.target.device,
                    ", ".join(sorted(absent)),
                )
        self._cache = fresh

    async def _get_instances(self) -> dict[str, Value]:
        oids = [oid for iface in self._cache.values() for oid in _instance_oids(iface)]
        values: dict[str, Value] = {}
        for start in range(0, len(oids), _GET_CHUNK):
            values.update(await self.target.get(oids[start : start + _GET_CHUNK]))
        return values

    def _row(
        self, iface: _Interface, values: dict[str, Value], now: float, uptime: int | None
    ) -> InterfaceRow | None:
        status = _int(values.get(f"{IF_OPER_STATUS}.{iface.index}"))
        if status is None:
            return None
        fields: dict[str, int | float] = {"oper_up": int(status == IF_OPER_UP)}
        self._restarted_now = False
        speed = _int(values.get(f"{IF_HIGH_SPEED}.{iface.index}"))
        discontinuity = _int(values.get(f"{IF_DISCONTINUITY}.{iface.index}"))
        spans: list[float] = []
        for name, hc_column, column in OCTETS:
            col, width = (hc_column, COUNTER64) if iface.hc else (column, COUNTER32)
            # A "wrap" implying over twice the line rate was a reset, not a wrap.
            limit = speed * 1e6 / 8 * 2 if speed else None
            rate = self._rate(iface, col, values, now, uptime, discontinuity, width, limit)
            if rate is None:
                continue
            if rate.per_second is not None:
                fields[name] = rate.per_second * 8
            window = iface.windows.setdefault(name, CounterWindow(self.rate_window))
            windowed = _advance(window, rate, now)
            if windowed is not None:
                fields[f"{name}_window"] = windowed[0] * 8
                spans.append(windowed[1])
        for name, col in EVENTS.items():
            rate = self._rate(iface, col, values, now, uptime, discontinuity, COUNTER32, None)
            if rate is not None and rate.per_second is not None:
                fields[name] = rate.per_second
        _utilisation(fields, speed, spans)
        if self._restarted_now:
            self.discontinuities += 1
            logger.info(
                "%s %s: counters restarted (reboot, reset or discontinuity); no rates this poll",
                self.target.device,
                iface.name,
            )
        return InterfaceRow(iface.name, fields)

    def _rate(  # noqa: PLR0917  (private helper; call sites read left to right)
        self,
        iface: _Interface,
        column: str,
        values: dict[str, Value],
        now: float,
        uptime: int | None,
        discontinuity: int | None,
        width: int,
        limit: float | None,
    ) -> Rate | None:
        """The column's rate since the last poll; None when the device did not return it."""
        value = _int(values.get(f"{column}.{iface.index}"))
        if value is None:
            return None
        reading = Reading(value, now, uptime, discontinuity)
        rate = counter_rate(iface.previous.get(column), reading, width=width, max_per_second=limit)
        iface.previous[column] = reading
        self._restarted_now = self._restarted_now or rate.discontinuity
        return rate


def _advance(window: CounterWindow, rate: Rate, now: float) -> tuple[float, float] | None:
    """Take one poll's increase into the window; (per second, span) across it."""
    if rate.increase is None:  # the first reading, or nothing before it counts
        window.restart(now)
    else:
        window.add(now, rate.increase)
    return window.rate()


def _utilisation(fields: dict[str, int | float], speed: int | None, spans: list[float]) -> None:
    """util_pct per poll and across the window, and the window's span, where known."""
    # The busier direction: links are full duplex, each way has the whole speed.
    if speed and "in_bps" in fields and "out_bps" in fields:
        fields["util_pct"] = util_pct(max(fields["in_bps"], fields["out_bps"]), speed) or 0.0
    if "in_bps_window" in fields and "out_bps_window" in fields:
        fields["window_s"] = round(max(spans), 3)
        if speed:
            busier = max(fields["in_bps_window"], fields["out_bps_window"])
            fields["util_pct_window"] = util_pct(busier, speed) or 0.0


def _instance_oids(iface: _Interface) -> list[str]:
    octet_columns = [hc if iface.hc else plain for _name, hc, plain in OCTETS]
    columns = [IF_OPER_STATUS, IF_HIGH_SPEED, IF_DISCONTINUITY, *octet_columns, *EVENTS.values()]
    return [f"{column}.{iface.index}" for column in columns]


def _missing(values: dict[str, Value], iface: _Interface) -> bool:
    return f"{IF_OPER_STATUS}.{iface.index}" not in values


def _int(value: Value | None) -> int | None:
    return value if isinstance(value, int) else None
