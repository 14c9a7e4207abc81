"""JSON encoding of wire messages, and a decoder that never raises.

A payload whose first byte is 0x78 is a zlib stream (RFC 1950, as `zlib.compress` writes it) of
the JSON document: JSON itself never starts with that byte (`x`), so the payload says which it is.
Agents compress only coalesced backlog envelopes, and only for a collector whose acks say it
reads them (`ACCEPT_PROPERTY`); live envelopes stay plain JSON.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from fieldmon.core.wire.models import (
    MAX_FIELDS_PER_SAMPLE,
    MAX_SAMPLES_PER_ENVELOPE,
    MAX_TAGS_PER_SAMPLE,
    SCHEMA_VERSION,
    Envelope,
    Sample,
)

DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# The first byte of a zlib stream with the default 32 KiB window (CMF 0x78).
ZLIB_FIRST_BYTE = 0x78
# The MQTT v5 user property a collector puts on its acks to say what it reads beyond plain
# envelopes, comma-separated: `parts` (coalesced envelopes) and `zlib` (compressed payloads). An
# agent sends either only after an ack on the current connection said so; older agents ignore
# the property, and older collectors do not send it.
ACCEPT_PROPERTY = "accept"
ACCEPT_PARTS = "parts"
ACCEPT_ZLIB = "zlib"
# Beside it, `max_payload_bytes`: the largest payload (inflated) the collector decodes.
MAX_PAYLOAD_PROPERTY = "max_payload_bytes"
# Longest rejection detail kept: it goes to logs and the dead-letter record, and a hostile
# payload can put a megabyte-long key into pydantic's error location.
_MAX_DETAIL_CHARS = 300


class RejectReason(StrEnum):
    """Why a payload was not accepted; used as a metric label, so the set is fixed."""

    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    INVALID = "invalid"
    OVER_LIMIT = "over_limit"  # valid in shape, but past one of the caps in wire.models
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_AGENT = "unknown_agent"


@dataclass(frozen=True)
class Rejection:
    """A payload that is not a valid Envelope: a fixed reason code plus a human detail."""

    reason: RejectReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _rejection(reason: RejectReason, detail: str) -> Rejection:
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return Rejection(reason, detail)


_SAMPLE_ADAPTER: TypeAdapter[Sample] = TypeAdapter(Sample)


def encode(message: BaseModel | Sample) -> bytes:
    """Compact JSON, with field aliases (the Envelope's `schema`)."""
    if isinstance(message, Sample):
        return _SAMPLE_ADAPTER.dump_json(message)
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def _schema_version(payload: bytes) -> object:
    """Best-effort read of the `schema` key, to tell a newer agent from a broken one."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return document.get("schema") if isinstance(document, dict) else None


# pydantic names the member of FieldValue's union that each error came from; one bad value
# gives one error per member. Those are folded into one problem per value.
_UNION_MEMBERS = frozenset({"bool", "int", "float", "str", "constrained-float", "constrained-str"})
_FIELD_VALUE_HINT = "must be a boolean, a 64-bit integer, a finite number or a string"
# Errors that mean "valid, but more than a cap allows" (reason `over_limit`).
_CAP_ERRORS = frozenset({"too_long", "string_too_long"})
# The collection caps by the last element of the error's location.
_COLLECTION_CAPS = {
    "samples": f"at most {MAX_SAMPLES_PER_ENVELOPE} samples per envelope",
    "tags": f"at most {MAX_TAGS_PER_SAMPLE} tags per sample",
    "fields": f"at most {MAX_FIELDS_PER_SAMPLE} fields per sample",
}


def _cap_message(loc: tuple[int | str, ...], error: ErrorDetails) -> str:
    """Which cap a too-long value breaks, in words ("... is over the cap: at most 16 tags ...")."""
    limit = (error.get("ctx") or {}).get("max_length")
    if error["type"] == "too_long":
        cap = _COLLECTION_CAPS.get(str(loc[-1]) if loc else "", f"at most {limit} items")
        return f"over the cap: {cap}"
    what = "a string"
    if loc and loc[-1] == "[key]":
        what = "a tag key" if "tags" in loc else "a field key"
    elif "tags" in loc:
        what = "a tag value"
    elif "fields" in loc:
        what = "a string field value"
    elif loc and loc[-1] in ("measurement", "reason", "version"):
        what = f"`{loc[-1]}`"
    return f"over the cap: {what} has at most {limit} characters"


def _problems(errors: list[ErrorDetails]) -> list[tuple[str, str]]:
    """(location, message) per invalid value, union members folded together, in order."""
    problems: dict[str, str] = {}
    for error in errors:
        loc = error["loc"]
        folded = bool(loc) and loc[-1] in _UNION_MEMBERS
        where = ".".join(str(part) for part in (loc[:-1] if folded else loc)) or "(document)"
        if error["type"] in _CAP_ERRORS:
            problems[where] = _cap_message(loc[:-1] if folded else loc, error)
        elif not folded:
            problems.setdefault(where, error["msg"])
        elif error["type"] == "finite_number":
            problems[where] = f"{error['msg']} (NaN and infinity cannot be stored)"
        else:
            problems.setdefault(where, _FIELD_VALUE_HINT)
    return list(problems.items())


class InflatedTooLargeError(ValueError):
    """A compressed payload whose document is larger than the limit."""


def inflate(payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """The JSON document of a payload: itself, or what its zlib stream holds.

    Raises ValueError when the stream is broken, InflatedTooLargeError when it holds more than
    `max_bytes` (a small payload may hold a huge document; at most `max_bytes` + 1 bytes are
    ever inflated).
    """
    if not payload or payload[0] != ZLIB_FIRST_BYTE:
        return payload
    inflater = zlib.decompressobj()
    try:
        document = inflater.decompress(payload, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(f"broken zlib stream: {exc}") from exc
    if len(document) > max_bytes or inflater.unconsumed_tail:
        raise InflatedTooLargeError(f"inflates past the limit of {max_bytes} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("broken zlib stream: truncated, or data after its end")
    return document


def payload_document(payload: bytes, max_bytes: int) -> bytes | Rejection:
    """The JSON text of a payload no larger than `max_bytes`, compressed or not."""
    if len(payload) > max_bytes:
        return _rejection(RejectReason.OVERSIZED, f"{len(payload)} bytes > limit {max_bytes}")
    try:
        return inflate(payload, max_bytes=max_bytes)
    except InflatedTooLargeError as exc:
        return _rejection(RejectReason.OVERSIZED, f"zlib payload {exc}")
    except ValueError as exc:
        return _rejection(RejectReason.NOT_JSON, str(exc))


def decode_envelope(
    payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Envelope | Rejection:
    """Turn any bytes into an Envelope or a Rejection with a reason; never raises.

    `max_bytes` bounds the payload and, when it is compressed, what it inflates to.
    """
    document = payload_document(payload, max_bytes)
    if isinstance(document, Rejection):
        return document
    return validate_document(document)


def validate_document(payload: bytes) -> Envelope | Rejection:
    """The Envelope validated from a JSON document, or the Rejection that words what is wrong
    (the collector tries its fast path, fieldmon.collector.fastdecode, first)."""
    try:
        # by_name=False: on the wire the key is `schema`; `schema_` is only the Python name.
        return Envelope.model_validate_json(payload, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in errors):
            return _rejection(RejectReason.NOT_JSON, errors[0]["msg"])
        version = _schema_version(payload)
        # Only an integer other than ours is a newer (or older) agent; anything else is broken.
        if type(version) is int and version != SCHEMA_VERSION:
            return _rejection(
                RejectReason.UNSUPPORTED_SCHEMA,
                f"schema {version!r}, this collector reads {SCHEMA_VERSION}",
            )
        problems = _problems(errors)
        # A cap broken anywhere is the headline: the payload is too much, whatever else is wrong.
        capped = [problem for problem in problems if problem[1].startswith("over the cap")]
        reason = RejectReason.OVER_LIMIT if capped else RejectReason.INVALID
        where, message = (capped or problems)[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return _rejection(reason, f"{where}: {message}{more}")
    except (RecursionError, MemoryError) as exc:
        return _rejection(RejectReason.INVALID, f"unparseable document: {type(exc).__name__}")
