"""Logging for daemons: one JSON object per line by default, `--log-format text` for humans."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from fieldmon.core.redact import redact_text

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
            document["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def _redacted(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    return value


class RedactingFilter(logging.Filter):
    """Redacts every URL (userinfo, path tokens, query) and every secret this process read, in
    the message, the `extra` fields and the traceback, before any formatter sees the record.

    The last line of defence: code redacts URLs where it builds a message, too, so that what
    tests capture and /healthz shows is clean as well.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a broken %-format: the formatter reports it as logging always does
        record.msg, record.args = redact_text(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                setattr(record, key, _redacted(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def add_logging_arguments(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    """`--log-format json|text` and `--log-level`."""
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default=default_level
    )


def configure_logging(log_format: str, level: str) -> None:
    """Send logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
