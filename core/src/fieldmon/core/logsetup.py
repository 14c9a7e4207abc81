"""Logging for daemons: one JSON object per line by default, `--log-format text` for humans."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else was passed with `extra=` and belongs in the JSON.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def add_logging_arguments(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    """`--log-format json|text` and `--log-level`."""
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default=default_level
    )


def configure_logging(log_format: str, level: str) -> None:
    """Send logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
