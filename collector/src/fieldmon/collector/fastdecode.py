"""The collector's envelope decoder: msgspec decodes and checks well-formed envelopes, pydantic
judges the rest.

Every sample of every site is decoded on the collector, and pydantic's validation of each one
(a dataclass built through pydantic-core, a Python validator per sample) was the largest part of
its CPU per sample (bench/ingest_steps). msgspec parses the same JSON into structs whose
constraints are the wire caps of wire.models, checked in C. The fast path only ever *accepts*:
whatever it does not take (any error, a measurement agents do not send, an identifier or a `parts`
list that needs a look, JSON that msgspec reads more strictly than pydantic, such as a lone
surrogate or a float written for an integer) goes to wire.codec's validation, which accepts it
or words the rejection exactly as before. So what is accepted, and every rejection message, stay
wire.codec's; a test holds the fast path to returning what it returns. msgspec is the collector's
alone: the agent (on a Pi, within its memory budget) never loads it.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from fieldmon.core.wire.codec import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Rejection,
    payload_document,
    validate_document,
)
from fieldmon.core.wire.models import (
    AGENT_MEASUREMENTS,
    MAX_FIELD_STRING_CHARS,
    MAX_FIELDS_PER_SAMPLE,
    MAX_KEY_CHARS,
    MAX_PARTS,
    MAX_SAMPLES_PER_ENVELOPE,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS_PER_SAMPLE,
    RESERVED_IDS,
    SCHEMA_VERSION,
    Envelope,
    Sample,
)

_INT64_MAX: Final = 2**63 - 1
_Key = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_CHARS)]
_TagValue = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_VALUE_CHARS)]
# msgspec keeps JSON's types apart as pydantic's strict members do (true, 1 and 1.0), refuses
# floats past the double range (pydantic: not finite) and, here, integers past 64 bits.
_FieldValue = (
    bool
    | Annotated[int, Meta(ge=-(2**63), le=_INT64_MAX)]
    | float
    | Annotated[str, Meta(max_length=MAX_FIELD_STRING_CHARS)]
)
_NonNegative64 = Annotated[int, Meta(ge=0, le=_INT64_MAX)]
# `\Z`, not `$`: Python's `$` also matches before a final newline; pydantic's (Rust) does not.
_Identifier = Annotated[str, Meta(pattern=r"^[a-z0-9-]+\Z", min_length=1, max_length=64)]
# A Literal is one hash look-up; any other measurement (refused by the collector's screen
# anyway) is judged by pydantic against the measurement pattern.
_AgentMeasurement = Literal[tuple(sorted(AGENT_MEASUREMENTS))]  # type: ignore[valid-type]


class _FastSample(Struct, forbid_unknown_fields=True):
    measurement: _AgentMeasurement
    fields: Annotated[dict[_Key, _FieldValue], Meta(min_length=1, max_length=MAX_FIELDS_PER_SAMPLE)]
    time: _NonNegative64
    tags: Annotated[dict[_Key, _TagValue], Meta(max_length=MAX_TAGS_PER_SAMPLE)] = {}


class _FastEnvelope(Struct, forbid_unknown_fields=True):
    site: _Identifier
    agent: _Identifier
    seq: _NonNegative64
    sent_at: _NonNegative64
    samples: Annotated[list[_FastSample], Meta(max_length=MAX_SAMPLES_PER_ENVELOPE)]
    # UNSET when absent, so the Envelope's fields_set is the one validation would give.
    schema: Literal[1] | UnsetType = UNSET  # type: ignore[valid-type]
    parts: (
        Annotated[
            list[tuple[_NonNegative64, _NonNegative64]],
            Meta(min_length=1, max_length=MAX_PARTS),
        ]
        | UnsetType
        | None
    ) = UNSET


_DECODER: Final = msgspec.json.Decoder(_FastEnvelope)
# Sample is a frozen, slotted dataclass: its slots' own setters fill an instance that msgspec
# has already checked, without validating it a second time.
_new_sample = Sample.__new__
_set_measurement = Sample.measurement.__set__  # type: ignore[attr-defined]
_set_tags = Sample.tags.__set__  # type: ignore[attr-defined]
_set_fields = Sample.fields.__set__  # type: ignore[attr-defined]
_set_time = Sample.time.__set__  # type: ignore[attr-defined]


def _samples(decoded: list[_FastSample]) -> list[Sample]:
    out = []
    append = out.append
    for wire in decoded:  # a plain loop: this runs for every sample the collector ingests
        sample = _new_sample(Sample)
        _set_measurement(sample, wire.measurement)
        _set_tags(sample, wire.tags)
        _set_fields(sample, wire.fields)
        _set_time(sample, wire.time)
        append(sample)
    return out


def _parts_add_up(decoded: _FastEnvelope, parts: list[tuple[int, int]]) -> bool:
    """Envelope._parts_add_up's rule, as a yes / no (pydantic words a no)."""
    if parts[0][0] != decoded.seq:
        return False
    total, previous = 0, -1
    for seq, count in parts:
        if seq <= previous:
            return False
        previous = seq
        total += count
    return total == len(decoded.samples)


def fast_envelope(document: bytes) -> Envelope | None:
    """The Envelope of a well-formed JSON document, equal to what validation gives; None when
    the fast path does not vouch for it (then `Envelope.model_validate_json` judges it)."""
    try:
        decoded = _DECODER.decode(document)
    except msgspec.MsgspecError:
        return None
    if decoded.site in RESERVED_IDS or decoded.agent in RESERVED_IDS:
        return None
    fields_set = {"site", "agent", "seq", "sent_at", "samples"}
    if decoded.schema is not UNSET:
        fields_set.add("schema_")
    parts = decoded.parts
    if parts is UNSET:
        parts = None
    else:
        fields_set.add("parts")
        if parts is not None and not _parts_add_up(decoded, parts):
            return None
    return Envelope.model_construct(
        fields_set,
        schema_=SCHEMA_VERSION,
        site=decoded.site,
        agent=decoded.agent,
        seq=decoded.seq,
        sent_at=decoded.sent_at,
        parts=parts,
        samples=_samples(decoded.samples),
    )


def decode_envelope(
    payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Envelope | Rejection:
    """wire.codec.decode_envelope, the same answer for every payload, faster for good ones."""
    document = payload_document(payload, max_bytes)
    if isinstance(document, Rejection):
        return document
    envelope = fast_envelope(document)
    return envelope if envelope is not None else validate_document(document)
