"""Message models carried over MQTT: Sample, Envelope, status, ack."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

SCHEMA_VERSION = 1
ID_PATTERN = r"^[a-z0-9-]+$"
_ID_RE = re.compile(ID_PATTERN)
RESERVED_IDS = frozenset({"alerts"})

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=64)]
# Field values map one-to-one onto InfluxDB line-protocol types (bool, int, float, string).
FieldValue = bool | int | float | str
# Nanoseconds since the Unix epoch: InfluxDB's native precision, and exact in JSON integers.
TimestampNs = Annotated[int, Field(ge=0, lt=2**63)]

_TAG_KEY = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_TAG_VALUE = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def is_valid_id(value: str) -> bool:
    """True when `value` may name a site or an agent (and is not reserved)."""
    return bool(_ID_RE.match(value)) and value not in RESERVED_IDS


class Sample(BaseModel):
    """One measurement row, shaped like an InfluxDB point."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measurement: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    tags: dict[_TAG_KEY, _TAG_VALUE] = Field(default_factory=dict)
    fields: dict[_TAG_KEY, FieldValue] = Field(min_length=1)
    time: TimestampNs

    @field_validator("fields")
    @classmethod
    def _finite_numbers(cls, fields: dict[str, FieldValue]) -> dict[str, FieldValue]:
        for key, value in fields.items():
            if isinstance(value, float) and (
                value != value or value in (float("inf"), float("-inf"))
            ):
                raise ValueError(f"field {key!r} is not a finite number")
        return fields


class Envelope(BaseModel):
    """A batch of samples from one agent, numbered so the collector can count loss and replays."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    site: Identifier
    agent: Identifier
    seq: Annotated[int, Field(ge=0)]
    sent_at: TimestampNs
    samples: list[Sample]

    @field_validator("site", "agent")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_IDS:
            raise ValueError(f"{value!r} is reserved")
        return value


class StatusMessage(BaseModel):
    """Retained birth / last-will payload on the status topic."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["online", "offline"]
    site: Identifier
    agent: Identifier
    at: TimestampNs | None = None
    version: str | None = None
    reason: str | None = None


class AckMessage(BaseModel):
    """Seqs the collector has durably written, as inclusive [first, last] ranges."""

    model_config = ConfigDict(extra="forbid")

    ranges: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]]

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for first, last in ranges:
            if first > last:
                raise ValueError(f"range [{first}, {last}] is reversed")
        return ranges

    def seqs(self) -> set[int]:
        """Every seq the ranges name."""
        return {seq for first, last in self.ranges for seq in range(first, last + 1)}

    @classmethod
    def from_seqs(cls, seqs: set[int] | list[int]) -> AckMessage:
        """Collapse seqs into the fewest inclusive ranges."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(set(seqs)):
            if ranges and seq == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        return cls(ranges=ranges)
