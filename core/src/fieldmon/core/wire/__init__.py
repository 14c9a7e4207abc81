"""The contract agent and collector both import: topics, message models, schema version."""

from fieldmon.core.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES, Rejection, decode_envelope, encode
from fieldmon.core.wire.models import (
    AGENT_MEASUREMENTS,
    ID_PATTERN,
    SCHEMA_VERSION,
    AckMessage,
    Envelope,
    FieldValue,
    Sample,
    StatusMessage,
)
from fieldmon.core.wire.topics import TOPIC_ROOT, Topic, TopicKind, parse_topic

__all__ = [
    "AGENT_MEASUREMENTS",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ID_PATTERN",
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "AckMessage",
    "Envelope",
    "FieldValue",
    "Rejection",
    "Sample",
    "StatusMessage",
    "Topic",
    "TopicKind",
    "decode_envelope",
    "encode",
    "parse_topic",
]
