"""A generic JSON webhook, signed with HMAC-SHA256 so the receiver can trust and date it.

Headers on every request:
    X-Fieldmon-Delivery: <32 hex digits>, the same on every retry of one notification (the same
        batch of transitions), so a receiver can drop a repeat it already handled;
and with signing secrets (`secret_file`, plus `secret_files` while rotating):
    X-Fieldmon-Signatures: t=<unix seconds>, v1=<hex>[, v1=<hex> ...], one v1 per secret, each
        HMAC-SHA256(secret, t + "." + raw body);
    X-Fieldmon-Timestamp: <t> and X-Fieldmon-Signature: sha256=<hex> (the first secret's v1), as
        before X-Fieldmon-Signatures existed.
The timestamp is part of the signed material, and a receiver rejects one older than its replay
window (docs/contract.md: 5 minutes), so a captured request cannot be replayed later; each retry
is signed afresh. docs/contract.md holds a receiver's check, run by the tests.

Sends one POST per batch of transitions to each configured `url` (or the URL in `url_file`), the
body `{"version": 1, "delivery": id, "sent_at": RFC 3339, "alerts": [...]}`, each alert as
`describe()` gives it: alertname, state, severity, site, site_name, parent_hospital, link,
summary, description, measured (the measured values), value, since, ended, dashboard, labels and
annotations.
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

DELIVERY_HEADER = "X-Fieldmon-Delivery"
SIGNATURES_HEADER = "X-Fieldmon-Signatures"
SIGNATURE_HEADER = "X-Fieldmon-Signature"
TIMESTAMP_HEADER = "X-Fieldmon-Timestamp"
# How old a signature a receiver should still accept (docs/contract.md, Webhook).
REPLAY_WINDOW_S = 300


def _hmac_hex(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Fieldmon-Signature value (one secret) for this timestamp and raw body."""
    return f"sha256={_hmac_hex(secret, timestamp, body)}"


def signatures(secrets: list[bytes], timestamp: str, body: bytes) -> str:
    """The X-Fieldmon-Signatures value: `t=<timestamp>, v1=<hex>` with one v1 per secret."""
    return ", ".join([f"t={timestamp}", *(f"v1={_hmac_hex(s, timestamp, body)}" for s in secrets)])


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """Receiver side of X-Fieldmon-Signature, in constant time (no replay window: see
    `verify_signatures`)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def verify_signatures(
    secrets: list[bytes],
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    window: float = REPLAY_WINDOW_S,
) -> bool:
    """Receiver side of X-Fieldmon-Signatures: one of `secrets` signed `body` at a time within
    `window` seconds of `now`."""
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    given = [value for key, _, value in fields if key == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not given:
        return False
    if abs((time.time() if now is None else now) - int(stamps[0])) > window:
        return False
    expected = [_hmac_hex(secret, stamps[0], body) for secret in secrets]
    return any(hmac.compare_digest(e, g) for e in expected for g in given)


def delivery_id(transitions: list[Transition]) -> str:
    """The same id for the same batch of transitions: the dispatcher retries a batch by sending
    it again, and a receiver recognises the repeat by this id."""
    identity = [
        [sorted(t.labels.items()), t.state.value, t.starts_at, t.ends_at] for t in transitions
    ]
    digest = hashlib.sha256(json.dumps(identity, separators=(",", ":")).encode("utf-8"))
    return digest.hexdigest()[:32]


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
        # Read once at start-up: a missing file is a config error, not a failed delivery. The URL
        # may carry a token: post() names it only redacted.
        self.url = config.target()
        self.timeout = config.timeout
        self.dashboard_url = dashboard_url
        self._secrets = [read_secret(path).encode("utf-8") for path in config.secrets]
        self._session: aiohttp.ClientSession | None = None

    def body(self, transitions: list[Transition]) -> bytes:
        """The JSON document for a batch."""
        document = {
            "version": 1,
            "delivery": delivery_id(transitions),
            "sent_at": iso_time(time.time_ns()),
            "alerts": [describe(t, self.dashboard_url) for t in transitions],
        }
        return json.dumps(document).encode("utf-8")

    def headers(self, body: bytes, delivery: str, now: float | None = None) -> dict[str, str]:
        """Content type, the delivery id and, with secrets, the timestamp and signatures."""
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery}
        if self._secrets:
            timestamp = str(int(time.time() if now is None else now))
            headers[SIGNATURES_HEADER] = signatures(self._secrets, timestamp, body)
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secrets[0], timestamp, body)
        return headers

    async def send(self, transitions: list[Transition]) -> None:
        """POST the batch; re-signed on every attempt so the timestamp stays fresh, under the
        same delivery id."""
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
            headers=self.headers(body, delivery_id(transitions)),
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
