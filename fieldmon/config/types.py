"""Value types shared by every config model: durations and secrets read from files."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationInfo

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `10s`, `100ms`, `5m`, `1h`, `1d` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 100ms or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration; write it like 10s, 100ms, 5m, 1h or 1d")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected a duration such as 10s, 100ms or 5m")
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


def _existing_file(value: object, info: ValidationInfo) -> Path:
    path = Path(str(value)).expanduser()
    # Relative paths are relative to the config file, so a site folder can be moved as a whole.
    config_dir = (info.context or {}).get("config_dir")
    if not path.is_absolute() and config_dir is not None:
        path = Path(config_dir) / path
    if not path.is_file():
        raise ValueError(f"secret file {str(path)!r} does not exist or is not a file")
    return path


# A path to a file holding a secret; the config never carries the secret itself.
SecretFile = Annotated[Path, BeforeValidator(_existing_file)]


def read_secret(path: Path) -> str:
    """The secret in `path`, without the trailing newline editors add."""
    return path.read_text(encoding="utf-8").strip("\r\n")


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
