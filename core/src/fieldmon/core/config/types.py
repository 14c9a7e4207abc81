"""Value types shared by every config model: durations, and secrets read from files."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

# Secret and certificate files live in their own module; these names are where callers find them.
from fieldmon.core.config.secrets import CertFile, SecretFile, read_secret

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_HINT = "write it like 10s, 100ms, 5m, 1h or 1d"


def parse_duration(value: object) -> float:
    """Seconds from `10s`, `100ms`, `5m`, `1h`, `1d` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError as exc:  # an int with hundreds of digits
            raise ValueError(f"{value} seconds is too long a duration") from exc
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
        number, unit = float(match.group(1)), match.group(2)
        # Divide for ms rather than multiply by 0.001, so "3ms" is exactly 3 / 1000 and
        # format_duration(parse_duration(s)) gives s back.
        seconds = number / 1000 if unit == "ms" else number * _UNIT_SECONDS[unit]
    else:
        raise ValueError(f"expected a duration; {_DURATION_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration; {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for round-tripping configs."""
    milliseconds = round(seconds * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds and milliseconds % factor == 0:
            return f"{milliseconds // factor}{unit}"
    return f"{milliseconds}ms"


# A duration in seconds (float) in Python, `10s` / `100ms` / `5m` in YAML.
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]


__all__ = [
    "CertFile",
    "Duration",
    "SecretFile",
    "StrictModel",
    "format_duration",
    "parse_duration",
    "read_secret",
]


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
