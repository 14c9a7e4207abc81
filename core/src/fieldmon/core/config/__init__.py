"""Shared config machinery: durations, secret files, YAML loading with line-numbered errors."""

from fieldmon.core.config.errors import ConfigError, ConfigIssue
from fieldmon.core.config.loader import load_model, load_yaml
from fieldmon.core.config.types import Duration, SecretFile, StrictModel, parse_duration

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "SecretFile",
    "StrictModel",
    "load_model",
    "load_yaml",
    "parse_duration",
]
