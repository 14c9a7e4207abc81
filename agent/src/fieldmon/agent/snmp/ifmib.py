"""The `if-mib` profile: interface status, traffic, errors and utilisation as `snmp_if` rows.

The ifName index is walked once and cached; each poll then GETs only the instances it needs
(about ten per interface), so no var-bind is wasted on rows the config filtered out. The index
is walked again when ifNumber, ifTableLastChange or a reboot (sysUpTime going backwards) says
the interfaces changed, or when a cached ifIndex stops answering.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldmon.agent.snmp.counters import COUNTER32, COUNTER64, Rate, Reading, counter_rate, util_pct
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
_GET_CHUNK = 40  # var-binds per GET: the answer stays under a 1500-byte MTU on real devices


@dataclass
class _Interface:
    index: str
    name: str
    hc: bool  # ifHCIn/OutOctets answer; otherwise the 32-bit ifIn/OutOctets
    previous: dict[str, Reading] = field(default_factory=dict)  # counter column -> last reading


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
            keep = old.previous if old is not None and old.name == name else {}
            fresh[index] = _Interface(index, name, index in hc_in, keep)
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
        for name, hc_column, column in OCTETS:
            col, width = (hc_column, COUNTER64) if iface.hc else (column, COUNTER32)
            # A "wrap" implying over twice the line rate was a reset, not a wrap.
            limit = speed * 1e6 / 8 * 2 if speed else None
            rate = self._rate(iface, col, values, now, uptime, discontinuity, width, limit)
            if rate.per_second is not None:
                fields[name] = rate.per_second * 8
        for name, col in EVENTS.items():
            rate = self._rate(iface, col, values, now, uptime, discontinuity, COUNTER32, None)
            if rate.per_second is not None:
                fields[name] = rate.per_second
        if speed and "in_bps" in fields and "out_bps" in fields:
            # The busier direction: links are full duplex, each way has the whole speed.
            busier = max(fields["in_bps"], fields["out_bps"])
            fields["util_pct"] = util_pct(busier, speed) or 0.0
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
    ) -> Rate:
        value = _int(values.get(f"{column}.{iface.index}"))
        if value is None:
            return Rate(None)
        reading = Reading(value, now, uptime, discontinuity)
        rate = counter_rate(iface.previous.get(column), reading, width=width, max_per_second=limit)
        iface.previous[column] = reading
        self._restarted_now = self._restarted_now or rate.discontinuity
        return rate


def _instance_oids(iface: _Interface) -> list[str]:
    octet_columns = [hc if iface.hc else plain for _name, hc, plain in OCTETS]
    columns = [IF_OPER_STATUS, IF_HIGH_SPEED, IF_DISCONTINUITY, *octet_columns, *EVENTS.values()]
    return [f"{column}.{iface.index}" for column in columns]


def _missing(values: dict[str, Value], iface: _Interface) -> bool:
    return f"{IF_OPER_STATUS}.{iface.index}" not in values


def _int(value: Value | None) -> int | None:
    return value if isinstance(value, int) else None
