"""A generic JSON webhook, signed with HMAC-SHA256 so the receiver can trust and date it.

Headers, when a secret_file is configured:
    X-Fieldmon-Timestamp: <unix seconds, integer>
    X-Fieldmon-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>
The timestamp is part of the signed material so a captured request cannot be replayed later:
a receiver recomputes the HMAC over `timestamp.body` and rejects timestamps far from its clock.

Sends one POST per batch of transitions to each configured `url`, the body
`{"version": 1, "sent_at": RFC 3339, "alerts": [...]}`, each alert as `describe()` gives it:
alertname, state, severity, site, site_name, parent_hospital, link, summary, description,
measured (the measured values), value, since, ended, dashboard, labels and annotations.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import aiohttp

from fieldmon.collector.alerts.model import Transition, iso_time
from fieldmon.collector.config import WebhookConfig
from fieldmon.collector.notify.base import Notifier, NotifierContext, NotifierKind, describe
from fieldmon.collector.notify.http import post
from fieldmon.core.config.types import read_secret

SIGNATURE_HEADER = "X-Fieldmon-Signature"
TIMESTAMP_HEADER = "X-Fieldmon-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for this timestamp and raw body."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """Receiver side, in constant time (for tests and for receivers written in Python)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier:
    """POSTs each batch of transitions as one signed JSON document."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        name: str = "webhook",
        dashboard_url: str | None = None,
    ) -> None:
        self.name = name
        self.url = str(config.url)
        self.timeout = config.timeout
        self.dashboard_url = dashboard_url
        # Read once at start-up: a missing file is a config error, not a failed delivery.
        self._secret = (
            read_secret(config.secret_file).encode("utf-8") if config.secret_file else None
        )
        self._session: aiohttp.ClientSession | None = None

    def body(self, transitions: list[Transition]) -> bytes:
        """The JSON document for a batch."""
        document = {
            "version": 1,
            "sent_at": iso_time(time.time_ns()),
            "alerts": [describe(t, self.dashboard_url) for t in transitions],
        }
        return json.dumps(document).encode("utf-8")

    def headers(self, body: bytes, now: float | None = None) -> dict[str, str]:
        """Content type plus, with a secret, the timestamp and signature headers."""
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            timestamp = str(int(time.time() if now is None else now))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        return headers

    async def send(self, transitions: list[Transition]) -> None:
        """POST the batch; re-signed on every attempt so the timestamp stays fresh."""
        if not transitions:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = self.body(transitions)
        await post(
            self._session,
            self.name,
            self.url,
            body,
            headers=self.headers(body),
            seconds=self.timeout,
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _build(configs: list[WebhookConfig], context: NotifierContext) -> list[Notifier]:
    # Named by position when there are several, so logs and metrics tell them apart.
    return [
        WebhookNotifier(
            config,
            name="webhook" if len(configs) == 1 else f"webhook-{index + 1}",
            dashboard_url=context.dashboard_url,
        )
        for index, config in enumerate(configs)
    ]


KIND = NotifierKind(
    name="webhook",
    config_model=WebhookConfig,
    section="webhook",
    notifier=WebhookNotifier,
    build=_build,
)
