"""Message models carried over MQTT: Sample, Envelope, status, ack."""

from __future__ import annotations

import re
from dataclasses import field as dataclass_field
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

SCHEMA_VERSION: Final = 1
ID_PATTERN = r"^[a-z0-9-]+$"
_ID_RE = re.compile(ID_PATTERN)
RESERVED_IDS = frozenset({"alerts"})

# Caps on what one message may carry: an agent's own topic is the only place a stolen Pi can
# write, so what the collector decodes from it is bounded. Real envelopes are far inside them:
# an agent sends at most `agent.max_samples_per_envelope` (default 500) samples, a sample has up
# to 5 tags and 12 fields, an event message is a sentence. decode_envelope names the cap a
# payload breaks (reason `over_limit`).
MAX_SAMPLES_PER_ENVELOPE: Final = 10_000
MAX_TAGS_PER_SAMPLE: Final = 16
MAX_FIELDS_PER_SAMPLE: Final = 64
MAX_MEASUREMENT_CHARS: Final = 64
MAX_KEY_CHARS: Final = 128  # a tag key or a field key
MAX_TAG_VALUE_CHARS: Final = 256
MAX_FIELD_STRING_CHARS: Final = 4096  # InfluxDB takes 64 KiB; a line must stay well under 256 KiB
MAX_STATUS_REASON_CHARS: Final = 256  # a birth's or last will's `reason`
MAX_VERSION_CHARS: Final = 64

# What agents may send: each measurement an agent probe emits (docs/contract.md, InfluxDB). The
# collector refuses any other measurement on an agent's topic (`alert`, `outage` and `agent`
# are the collector's own rows), so a stolen Pi cannot forge alert history.
AGENT_MEASUREMENTS: Final = frozenset({"link", "snmp_if", "ap", "host", "event", "service", "path"})

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=64)]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Field values map one-to-one onto InfluxDB line-protocol types (bool, int, float, string).
# Strict members keep 1.0 a float, 1 an integer and true a boolean. Floats must be finite and
# integers fit 64 bits, or InfluxDB refuses the whole batch. Finiteness is a constraint checked
# in pydantic-core; the integer range is checked in Sample._storable, because a range
# constraint here would make the union fall through to the float member, which takes a
# too-big integer as a float instead of refusing it.
FieldValue = (
    Annotated[bool, Strict()]
    | Annotated[int, Strict()]
    | Annotated[float, Strict(), Field(allow_inf_nan=False)]
    | Annotated[str, Strict(), StringConstraints(max_length=MAX_FIELD_STRING_CHARS)]
)
# Nanoseconds since the Unix epoch: exact in JSON integers, a signed 64-bit integer in SQLite
# and InfluxDB. The contract knows no storage backend's limits; the collector judges a time
# against its own clock (ingest.split_by_clock) and refuses one far in the future long before
# any backend's last instant.
TimestampNs = Annotated[int, Field(ge=0, lt=2**63)]
# Envelope sequence numbers: stored as SQLite / InfluxDB 64-bit integers on both sides.
Seq = Annotated[int, Field(ge=0, lt=2**63)]
# Most envelopes one coalesced envelope may carry (`Envelope.parts`): the collector's work per
# message stays bounded whatever an agent claims. An agent joins far fewer (bounded by size).
MAX_PARTS = 4096

_TAG_KEY = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS)]
_TAG_VALUE = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_VALUE_CHARS)]


def is_valid_id(value: str) -> bool:
    """True when `value` may name a site or an agent (and is not reserved)."""
    # fullmatch: with match(), `$` also matches before a trailing newline ("site\n").
    return bool(_ID_RE.fullmatch(value)) and value not in RESERVED_IDS


# A pydantic dataclass rather than a BaseModel: it validates the same way on construction,
# but the collector decodes every sample of every site, and pydantic-core builds slotted
# dataclass instances about twice as fast as model instances (bench/ingest). A copy with
# changes is `dataclasses.replace(sample, time=...)`, which validates again.
@pydantic_dataclass(frozen=True, slots=True, kw_only=True, config=ConfigDict(extra="forbid"))
class Sample:
    """One measurement row, shaped like an InfluxDB point."""

    measurement: Annotated[
        str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=MAX_MEASUREMENT_CHARS)
    ]
    tags: Annotated[dict[_TAG_KEY, _TAG_VALUE], Field(max_length=MAX_TAGS_PER_SAMPLE)] = (
        dataclass_field(default_factory=dict)
    )
    fields: Annotated[
        dict[_TAG_KEY, FieldValue], Field(min_length=1, max_length=MAX_FIELDS_PER_SAMPLE)
    ]
    time: TimestampNs

    @field_validator("fields")
    @classmethod
    def _storable(cls, fields: dict[str, FieldValue]) -> dict[str, FieldValue]:
        # On the collector's hot path: one tight loop over the values, integers only.
        for key, value in fields.items():
            if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"field {key!r} does not fit a 64-bit integer")
        return fields


class Envelope(BaseModel):
    """A batch of samples from one agent, numbered so the collector can count loss and replays.

    A coalesced envelope (an agent replaying its backlog) carries several envelopes committed
    under their own seqs: `parts` lists each one's seq and how many of `samples`, in order, are
    its own; `seq` is the first part's. Acknowledging it means acknowledging every part's seq.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    site: Identifier
    agent: Identifier
    seq: Seq
    sent_at: TimestampNs
    # Declared before `samples` so that the encoding of a coalesced envelope is its header
    # followed by the samples of its parts, spliced together (fieldmon.agent.coalesce).
    parts: (
        Annotated[
            list[tuple[Seq, Annotated[int, Field(ge=0)]]],
            Field(min_length=1, max_length=MAX_PARTS),
        ]
        | None
    ) = None
    # The cap holds for a coalesced envelope too: an agent joins at most 256 KiB of JSON
    # (fieldmon.agent.coalesce), a few thousand samples.
    samples: Annotated[list[Sample], Field(max_length=MAX_SAMPLES_PER_ENVELOPE)]

    @field_validator("schema_", mode="before")
    @classmethod
    def _integer_schema(cls, value: object) -> object:
        # Literal[1] alone accepts true and 1.0, which no agent of ours sends.
        if type(value) is not int:
            raise ValueError(f"schema must be an integer, got {type(value).__name__}")
        return value

    @field_validator("site", "agent")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_IDS:
            raise ValueError(f"{value!r} is reserved")
        return value

    @model_validator(mode="after")
    def _parts_add_up(self) -> Envelope:
        parts = self.parts
        if parts is None:
            return self
        if parts[0][0] != self.seq:
            raise ValueError(f"parts: the first part's seq {parts[0][0]} is not seq {self.seq}")
        total, previous = 0, -1
        for seq, count in parts:
            if seq <= previous:
                raise ValueError(f"parts: seq {seq} does not follow {previous}")
            previous = seq
            total += count
        if total != len(self.samples):
            raise ValueError(
                f"parts: they count {total} samples, the envelope has {len(self.samples)}"
            )
        return self

    def carried_seqs(self) -> list[int]:
        """The seqs this envelope stands for: its parts' (ascending), or its own seq."""
        if self.parts is None:
            return [self.seq]
        return [seq for seq, _count in self.parts]


class StatusMessage(BaseModel):
    """Retained birth / last-will payload on the status topic."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["online", "offline"]
    site: Identifier
    agent: Identifier
    at: TimestampNs | None = None
    version: Annotated[str, StringConstraints(max_length=MAX_VERSION_CHARS)] | None = None
    reason: Annotated[str, StringConstraints(max_length=MAX_STATUS_REASON_CHARS)] | None = None


class AckMessage(BaseModel):
    """Seqs the collector has durably written, as inclusive [first, last] ranges."""

    model_config = ConfigDict(extra="forbid")

    ranges: list[tuple[Seq, Seq]]

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for first, last in ranges:
            if first > last:
                raise ValueError(f"range [{first}, {last}] is reversed")
        return ranges

    def covers(self, seq: int) -> bool:
        """True when one of the ranges names `seq` (cheap even for a range of millions)."""
        return any(first <= seq <= last for first, last in self.ranges)

    def seqs(self) -> set[int]:
        """Every seq the ranges name; for small acks only (a range may span millions)."""
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
