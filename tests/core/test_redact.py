"""Redaction: URLs lose userinfo, token-like path segments and query; registered secrets vanish."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fieldmon.core.logsetup import JsonFormatter, RedactingFilter
from fieldmon.core.redact import redact_text, redact_url, register_secret, strip_urls
from fieldmon.lab.secretfiles import new_secret


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("http://127.0.0.1:9093/api/v2/alerts", "http://127.0.0.1:9093/api/v2/alerts"),
        (
            "https://hooks.slack.com/services/T0AB12CD3/B0EF45GH6/XyZ123abcDEF456ghiJKL789",
            "https://hooks.slack.com/services/***/***/***",
        ),
        ("https://user:pa55@influx.example.org:8086/", "https://***@influx.example.org:8086/"),
        ("https://oncall.example.org/hook?token=abc&x=1", "https://oncall.example.org/hook?***"),
        ("https://example.org/a#frag", "https://example.org/a#***"),
        ("http://[::1]:8480/index.html", "http://[::1]:8480/index.html"),
        ("https://x.example/hooks/0123456789abcdef0123", "https://x.example/hooks/***"),
        ("http://[::1", "<unparsable URL ***>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_urls_in_sentences_keep_their_punctuation() -> None:
    text = "POST https://u:p@h.example/hook/abc123def456: timed out (see http://h.example/x?y)."
    assert redact_text(text) == (
        "POST https://***@h.example/hook/***: timed out (see http://h.example/x?***)."
    )
    assert strip_urls(text, "the receiver") == "POST the receiver: timed out (see the receiver)."


def test_registered_secrets_are_masked_everywhere() -> None:
    secret = new_secret("redact")
    register_secret(secret)
    assert redact_text(f"password {secret}!") == "password ***!"
    assert strip_urls(f"db {secret}") == "db ***"


def test_the_log_filter_cleans_message_extras_and_traceback() -> None:
    secret = new_secret("logged")
    register_secret(secret)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("fieldmon.tests.redact")
    logger.addHandler(handler)
    logger.propagate = False  # the raw record, secret and all, must not reach pytest's capture
    try:
        try:
            raise ValueError(f"bad answer from https://h.example/t0k3n123abc456?key={secret}")
        except ValueError:
            logger.exception(
                "POST %s failed",
                "https://u:pw@h.example/hook/s3cr3tt0k3n99",
                extra={"url": "http://u:pw@db.example:8086/", "errors": [f"pw {secret}"]},
            )
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    document = json.loads(output)
    assert document["msg"] == "POST https://***@h.example/hook/*** failed"
    assert document["url"] == "http://***@db.example:8086/"
    assert document["errors"] == ["pw ***"]
    assert "https://h.example/***?***" in document["exc"]
    assert secret not in output and "s3cr3tt0k3n99" not in output and "u:pw" not in output
