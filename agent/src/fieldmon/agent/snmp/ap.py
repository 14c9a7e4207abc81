"""One generic path from a profile's walked columns to `ap` rows; vanished radios read down."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldmon.agent.snmp.profiles import ApProfile, FieldSpec
from fieldmon.agent.snmp.values import Column, Value

if TYPE_CHECKING:
    # Types only: loading a site file must not import pysnmp.
    from fieldmon.agent.snmp.client import SnmpTarget

logger = logging.getLogger(__name__)

Row = dict[str, Value]


@dataclass
class RadioRow:
    """One radio's fields for an `ap` row (radio is the tag)."""

    radio: str
    fields: dict[str, int]


def mhz_to_channel(mhz: int) -> int | None:
    """IEEE 802.11 channel number for a centre frequency in MHz (2.4, 5 and 6 GHz bands)."""
    if mhz == 2484:
        return 14
    if 2412 <= mhz <= 2472:
        return (mhz - 2407) // 5
    if 5150 <= mhz <= 5895:
        return (mhz - 5000) // 5
    if 5955 <= mhz <= 7115:
        return (mhz - 5950) // 5
    return None


def _text(value: Value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def rows_from_columns(
    profile: ApProfile, columns: dict[str, Column], parent: dict[str, Column]
) -> list[Row]:
    """Join walked columns into rows by index (parent columns by the index's first sub-ids)."""
    rows: list[Row] = []
    for index in columns.get(profile.rows_from, {}):
        row: Row = {name: col[index] for name, col in columns.items() if index in col}
        if profile.parent is not None:
            key = ".".join(index.split(".")[: profile.parent.index_length])
            row.update({name: col[key] for name, col in parent.items() if key in col})
        row["index"] = index
        row["index_last"] = index.rsplit(".", 1)[-1]
        if _kept(profile, row):
            rows.append(row)
    return rows


def _kept(profile: ApProfile, row: Row) -> bool:
    rule = profile.filter
    if rule is None:
        return True
    value = row.get(rule.column)
    if rule.keep is not None:
        return value in rule.keep
    return value not in (rule.drop or [])


def _field_value(spec: FieldSpec, row: Row) -> int | None:
    raw = next((row[name] for name in spec.sources if isinstance(row.get(name), int)), None)
    if not isinstance(raw, int):
        return None
    if spec.map is not None:
        return spec.map.get(raw, spec.otherwise)
    if spec.transform == "mhz_to_channel":
        return mhz_to_channel(raw)
    return raw


_AGGREGATES = {"sum": sum, "max": max, "min": min}


def radios(profile: ApProfile, rows: list[Row]) -> list[RadioRow]:
    """Radio rows: one per row, or one per group when the profile groups (UniFi VAPs)."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if profile.group_by is not None:
            if profile.group_by not in row:
                continue
            key = _text(row[profile.group_by])
            groups.setdefault(key, []).append({**row, "group": key})
        else:
            groups.setdefault(row["index"], []).append(row)  # type: ignore[arg-type]
    result = []
    for members in groups.values():
        name = _radio_name(profile, members[0])
        if name is None:
            continue
        result.append(RadioRow(name, _group_fields(profile, members)))
    return result


def _radio_name(profile: ApProfile, row: Row) -> str | None:
    try:
        name = profile.radio.format_map({key: _text(value) for key, value in row.items()})
    except KeyError:
        return None  # a column the name needs is missing from this row
    return name[:256] or None


def _group_fields(profile: ApProfile, members: list[Row]) -> dict[str, int]:
    fields: dict[str, int] = {}
    for name, spec in profile.fields.items():
        values = [v for row in members if (v := _field_value(spec, row)) is not None]
        if values:
            fields[name] = (
                values[0] if spec.aggregate == "first" else _AGGREGATES[spec.aggregate](values)
            )
    if "up" not in profile.fields:
        fields["up"] = 1  # present in the table and no status column: it is there
    fields.setdefault("up", 0)
    return fields


@dataclass
class ApPoller:
    """Polls one device with one profile; remembers radios so a vanished one reads `up=0`."""

    target: SnmpTarget
    profile: ApProfile
    seen: dict[str, None] = field(default_factory=dict)  # radio names, in first-seen order
    _rows: int = 0  # longest column last time: sizes GETBULK so one request usually suffices

    async def poll(self) -> list[RadioRow]:
        """Walk the profile's columns; rows for every radio present, and down rows for the rest."""
        profile = self.profile
        own = dict(profile.columns)
        above = dict(profile.parent.columns) if profile.parent is not None else {}
        # One GETBULK stream for both tables: each column drops out when its subtree ends.
        repetitions = min(self._rows + 1, 50) if self._rows else None
        walked = await self.target.walk(
            [*own.values(), *above.values()], max_repetitions=repetitions
        )
        self._rows = max((len(column) for column in walked.values()), default=0)
        columns = {name: walked[oid] for name, oid in own.items()}
        parent = {name: walked[oid] for name, oid in above.items()}
        present = radios(profile, rows_from_columns(profile, columns, parent))
        now = {row.radio for row in present}
        for row in present:
            self.seen.setdefault(row.radio, None)
        gone = [name for name in self.seen if name not in now]
        if gone:
            logger.warning(
                "%s: radios missing from the table, reported down: %s",
                self.target.device,
                ", ".join(gone),
            )
        return present + [RadioRow(name, {"up": 0}) for name in gone]
