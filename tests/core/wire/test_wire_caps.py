"""The caps on what one message may carry: past each, decode rejects (`over_limit`) naming it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from fieldmon.core.site.config import AgentSection
from fieldmon.core.wire.codec import Rejection, RejectReason, decode_envelope
from fieldmon.core.wire.models import (
    MAX_FIELD_STRING_CHARS,
    MAX_FIELDS_PER_SAMPLE,
    MAX_KEY_CHARS,
    MAX_MEASUREMENT_CHARS,
    MAX_SAMPLES_PER_ENVELOPE,
    MAX_STATUS_REASON_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS_PER_SAMPLE,
    Envelope,
    StatusMessage,
)

BIG = 64 * 1024 * 1024  # no payload-size limit in these tests: the caps alone decide


def _sample(**changes: Any) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "measurement": "link",
        "tags": {"site": "pavilion-2", "agent": "pi1", "target": "parent-gw", "role": "parent"},
        "fields": {"sent": 10, "received": 10, "loss_pct": 0.0},
        "time": 1_700_000_000_000_000_000,
    }
    sample.update(changes)
    return sample


def _payload(samples: list[dict[str, Any]]) -> bytes:
    document = {"schema": 1, "site": "pavilion-2", "agent": "pi1", "seq": 1, "sent_at": 1}
    return json.dumps({**document, "samples": samples}).encode()


def _tags(count: int) -> dict[str, str]:
    return {f"t{n}": "v" for n in range(count)}


def _fields(count: int) -> dict[str, int]:
    return {f"f{n}": n for n in range(count)}


AT_THE_CAPS = [
    pytest.param([_sample()] * MAX_SAMPLES_PER_ENVELOPE, id="samples"),
    pytest.param([_sample(tags=_tags(MAX_TAGS_PER_SAMPLE))], id="tags"),
    pytest.param([_sample(fields=_fields(MAX_FIELDS_PER_SAMPLE))], id="fields"),
    pytest.param([_sample(measurement="m" * MAX_MEASUREMENT_CHARS)], id="measurement"),
    pytest.param([_sample(tags={"k" * MAX_KEY_CHARS: "v"})], id="tag-key"),
    pytest.param([_sample(tags={"k": "v" * MAX_TAG_VALUE_CHARS})], id="tag-value"),
    pytest.param([_sample(fields={"k" * MAX_KEY_CHARS: 1})], id="field-key"),
    pytest.param([_sample(fields={"message": "x" * MAX_FIELD_STRING_CHARS})], id="field-string"),
]

PAST_THE_CAPS = [
    pytest.param(
        [_sample()] * (MAX_SAMPLES_PER_ENVELOPE + 1),
        f"samples: over the cap: at most {MAX_SAMPLES_PER_ENVELOPE} samples per envelope",
        id="samples",
    ),
    pytest.param(
        [_sample(tags=_tags(MAX_TAGS_PER_SAMPLE + 1))],
        f"samples.0.tags: over the cap: at most {MAX_TAGS_PER_SAMPLE} tags per sample",
        id="tags",
    ),
    pytest.param(
        [_sample(fields=_fields(MAX_FIELDS_PER_SAMPLE + 1))],
        f"samples.0.fields: over the cap: at most {MAX_FIELDS_PER_SAMPLE} fields per sample",
        id="fields",
    ),
    pytest.param(
        [_sample(measurement="m" * (MAX_MEASUREMENT_CHARS + 1))],
        f"over the cap: `measurement` has at most {MAX_MEASUREMENT_CHARS} characters",
        id="measurement",
    ),
    pytest.param(
        [_sample(tags={"k" * (MAX_KEY_CHARS + 1): "v"})],
        f"over the cap: a tag key has at most {MAX_KEY_CHARS} characters",
        id="tag-key",
    ),
    pytest.param(
        [_sample(tags={"k": "v" * (MAX_TAG_VALUE_CHARS + 1)})],
        f"samples.0.tags.k: over the cap: a tag value has at most {MAX_TAG_VALUE_CHARS} characters",
        id="tag-value",
    ),
    pytest.param(
        [_sample(fields={"k" * (MAX_KEY_CHARS + 1): 1})],
        f"over the cap: a field key has at most {MAX_KEY_CHARS} characters",
        id="field-key",
    ),
    pytest.param(
        [_sample(fields={"message": "x" * (MAX_FIELD_STRING_CHARS + 1)})],
        "samples.0.fields.message: over the cap: a string field value has at most "
        f"{MAX_FIELD_STRING_CHARS} characters",
        id="field-string",
    ),
]


@pytest.mark.parametrize("samples", AT_THE_CAPS)
def test_at_each_cap_the_envelope_is_accepted(samples: list[dict[str, Any]]) -> None:
    assert isinstance(decode_envelope(_payload(samples), max_bytes=BIG), Envelope)


@pytest.mark.parametrize(("samples", "detail"), PAST_THE_CAPS)
def test_past_each_cap_the_envelope_is_rejected_naming_the_cap(
    samples: list[dict[str, Any]], detail: str
) -> None:
    result = decode_envelope(_payload(samples), max_bytes=BIG)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.OVER_LIMIT
    assert detail in result.detail
    assert len(result.detail) <= 300


def test_a_cap_is_the_headline_even_beside_other_problems() -> None:
    samples = [_sample(time=-1), _sample(tags=_tags(MAX_TAGS_PER_SAMPLE + 1))]
    result = decode_envelope(_payload(samples), max_bytes=BIG)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.OVER_LIMIT
    assert result.detail.startswith("samples.1.tags: over the cap")
    assert result.detail.endswith("(+1 more)")


def test_other_problems_stay_invalid() -> None:
    result = decode_envelope(_payload([_sample(tags={"k": ""})]), max_bytes=BIG)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.INVALID


def test_status_reason_is_capped() -> None:
    status = {"state": "offline", "site": "pavilion-2", "agent": "pi1"}
    reason = "r" * MAX_STATUS_REASON_CHARS
    assert StatusMessage.model_validate({**status, "reason": reason}).reason == reason
    with pytest.raises(ValidationError, match=f"at most {MAX_STATUS_REASON_CHARS} characters"):
        StatusMessage.model_validate({**status, "reason": reason + "r"})


def test_an_agent_cannot_be_configured_past_the_samples_cap() -> None:
    broker = {"host": "127.0.0.1"}
    section = {"id": "pi1", "broker": broker, "max_samples_per_envelope": MAX_SAMPLES_PER_ENVELOPE}
    assert AgentSection.model_validate(section).max_samples_per_envelope == 10_000
    with pytest.raises(ValidationError, match="less than or equal to 10000"):
        AgentSection.model_validate({**section, "max_samples_per_envelope": 10_001})
