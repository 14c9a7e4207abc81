"""Webhook notifier against real aiohttp receivers: signatures and rotation, delivery ids across
retries, url_file, slow receivers, and the receiver's check in docs/contract.md run as written."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
    iso_time,
)
from fieldmon.collector.config import WebhookConfig
from fieldmon.collector.notify import Dispatcher, PermanentNotifyError, RetryableNotifyError
from fieldmon.collector.notify.webhook import (
    DELIVERY_HEADER,
    REPLAY_WINDOW_S,
    SIGNATURE_HEADER,
    SIGNATURES_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    verify,
    verify_signatures,
)
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.config.loader import load_model
from fieldmon.lab.secretfiles import new_secret, write_secret

SECRET = "s3cret-for-tests"
WAIT = 30.0


@dataclass
class Receiver:
    """An aiohttp server in the test's loop; answers with `statuses` in turn (the last repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses[min(len(self.bodies), len(self.statuses)) - 1]
        return web.Response(status=status, text="receiver says so")

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def _transition(state: AlertState = AlertState.FIRING) -> Transition:
    starts = time.time_ns() - 120 * 10**9
    return Transition(
        alertname=AlertName.LINK_DEGRADED,
        labels=alert_labels(AlertName.LINK_DEGRADED, "pavilion-2", "parent-gw", Severity.WARNING),
        annotations={
            "summary": "pavilion-2: parent link parent-gw degraded since 14:02:00 UTC (loss 30 %)",
            "loss_pct": "30.0",
            "rtt_p95_ms": "42.0",
            "since": iso_time(starts),
            "parent_hospital": "city-general",
            "site_name": "Pavilion 2",
        },
        state=state,
        starts_at=starts,
        ends_at=None,
        value=30.0,
        page=True,
    )


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    write_secret(path, SECRET)
    return path


def test_body_carries_every_detail_and_the_signature_verifies(tmp_path: Path) -> None:
    sent = _transition()

    async def run() -> Receiver:
        async with Receiver() as receiver:
            config = WebhookConfig(url=receiver.url, secret_file=_secret(tmp_path))
            notifier = WebhookNotifier(config, dashboard_url="http://dash.test/d/x?orgId=1")
            try:
                await notifier.send([sent])
            finally:
                await notifier.close()
            return receiver

    receiver = asyncio.run(run())
    ((headers, body),) = receiver.bodies
    assert verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    # The timestamp is signed: the same body under another timestamp does not verify.
    other = str(int(headers[TIMESTAMP_HEADER]) - 3600)
    assert not verify(SECRET.encode(), other, body, headers[SIGNATURE_HEADER])
    (alert,) = json.loads(body)["alerts"]
    assert alert["site"] == "pavilion-2"
    assert alert["parent_hospital"] == "city-general"
    assert alert["link"] == "parent-gw"
    assert alert["severity"] == "warning"
    assert alert["measured"] == {"loss_pct": "30.0", "rtt_p95_ms": "42.0"}
    assert alert["since"] == iso_time(sent.starts_at)
    assert alert["dashboard"] == "http://dash.test/d/x?orgId=1&site=pavilion-2&link=parent-gw"


def test_a_500_is_retried_until_the_200() -> None:
    async def run() -> tuple[Receiver, Dispatcher]:
        async with Receiver(statuses=[500, 503, 200]) as receiver:
            notifier = WebhookNotifier(WebhookConfig(url=receiver.url))
            with_errors = Dispatcher([notifier], backoff_base=0.05, backoff_max=0.2)
            with_errors.start()
            with_errors.submit([_transition()])
            await _until(lambda: with_errors.stats()["webhook"].sent == 1, "the delivery")
            await with_errors.close()
            return receiver, with_errors

    receiver, dispatcher = asyncio.run(run())
    assert len(receiver.bodies) == 3
    assert dispatcher.stats()["webhook"].failed_attempts == 2
    # Every attempt carries the same alerts, under the same delivery id.
    assert len({json.dumps(json.loads(b)["alerts"]) for _, b in receiver.bodies}) == 1
    ids = {headers[DELIVERY_HEADER] for headers, _ in receiver.bodies}
    assert len(ids) == 1 and len(next(iter(ids))) == 32
    assert {json.loads(body)["delivery"] for _, body in receiver.bodies} == ids


def test_another_notification_has_another_delivery_id(tmp_path: Path) -> None:
    async def run() -> Receiver:
        async with Receiver() as receiver:
            notifier = WebhookNotifier(WebhookConfig(url=receiver.url))
            try:
                await notifier.send([_transition()])
                await notifier.send([_transition(AlertState.RESOLVED)])
            finally:
                await notifier.close()
            return receiver

    first, second = asyncio.run(run()).bodies
    assert first[0][DELIVERY_HEADER] != second[0][DELIVERY_HEADER]


def test_each_secret_signs_so_receivers_rotate_at_their_own_pace(tmp_path: Path) -> None:
    old, new = tmp_path / "old.secret", tmp_path / "new.secret"
    old_value, new_value = write_secret(old).encode(), write_secret(new).encode()

    async def run() -> Receiver:
        async with Receiver() as receiver:
            config = WebhookConfig(url=receiver.url, secret_file=old, secret_files=[new])
            notifier = WebhookNotifier(config)
            try:
                await notifier.send([_transition()])
            finally:
                await notifier.close()
            return receiver

    ((headers, body),) = asyncio.run(run()).bodies
    header = headers[SIGNATURES_HEADER]
    assert header.startswith(f"t={headers[TIMESTAMP_HEADER]}, v1=")
    assert header.count("v1=") == 2
    assert verify_signatures([old_value], header, body)
    assert verify_signatures([new_value], header, body)
    assert not verify_signatures([b"another-secret"], header, body)
    assert not verify_signatures([new_value], header, body + b" ")
    # The header from before rotation existed: the first secret's signature.
    assert verify(old_value, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    # Outside the replay window the same signature is refused.
    signed_at = int(headers[TIMESTAMP_HEADER])
    assert verify_signatures([old_value], header, body, now=signed_at + REPLAY_WINDOW_S)
    assert not verify_signatures([old_value], header, body, now=signed_at + REPLAY_WINDOW_S + 1)


def test_the_url_may_come_from_a_secret_file_and_is_logged_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = new_secret("hook-token")

    async def run() -> tuple[Receiver, Dispatcher]:
        async with Receiver() as receiver:
            url_file = tmp_path / "webhook.url"
            write_secret(url_file, f"{receiver.url}?token={token}")
            config = WebhookConfig(url_file=url_file)
            delivered = WebhookNotifier(config)
            try:
                await delivered.send([_transition()])
            finally:
                await delivered.close()
        # The receiver is gone: delivery fails, and the failure is logged.
        failing = Dispatcher([WebhookNotifier(config)], max_attempts=1)
        failing.start()
        failing.submit([_transition()])
        await _until(lambda: failing.stats()["webhook"].dropped_failed == 1, "the failure")
        await failing.close()
        return receiver, failing

    with caplog.at_level(logging.WARNING, logger="fieldmon.collector.notify.dispatch"):
        receiver, failing = asyncio.run(run())
    assert len(receiver.bodies) == 1
    error = failing.stats()["webhook"].last_error or ""
    assert error.startswith(f"webhook: POST {receiver.url}?***: ")
    errors = [str(getattr(record, "error", "")) for record in caplog.records]
    assert errors and all(f"POST {receiver.url}?***: " in text for text in errors)
    assert token not in error and not any(token in text for text in errors)


def _webhook_config(folder: Path, entry: str) -> Path:
    path = folder / "hook.yaml"
    path.write_text(entry, encoding="utf-8")
    return path


def test_url_and_url_file_are_one_or_the_other(tmp_path: Path) -> None:
    write_secret(tmp_path / "webhook.url", "https://hooks.example.org/abc123def456")
    for text in ("timeout: 5s\n", "url: https://a.example/h\nurl_file: webhook.url\n"):
        with pytest.raises(ConfigError) as raised:
            load_model(_webhook_config(tmp_path, text), WebhookConfig)
        (issue,) = raised.value.issues
        assert issue.path == "url"
        assert issue.message == "give url or url_file (a secret file holding the URL), not both"
    config = load_model(_webhook_config(tmp_path, "url_file: webhook.url\n"), WebhookConfig)
    assert config.target() == "https://hooks.example.org/abc123def456"


def test_a_url_file_without_a_url_says_so_without_quoting_it(tmp_path: Path) -> None:
    content = write_secret(tmp_path / "webhook.url")  # a token, but no URL
    with pytest.raises(ConfigError) as raised:
        load_model(_webhook_config(tmp_path, "url_file: webhook.url\n"), WebhookConfig)
    (issue,) = raised.value.issues
    assert issue.path == "url_file"
    assert issue.message.endswith("does not hold an http:// or https:// URL on its first line")
    assert content not in str(raised.value)


def test_a_4xx_is_permanent_and_a_closed_port_retryable() -> None:
    async def run() -> None:
        async with Receiver(statuses=[400]) as receiver:
            notifier = WebhookNotifier(WebhookConfig(url=receiver.url))
            try:
                try:
                    await notifier.send([_transition()])
                except PermanentNotifyError as exc:
                    assert "400" in str(exc)
                else:
                    raise AssertionError("a 400 must raise PermanentNotifyError")
            finally:
                await notifier.close()
        # The receiver is gone now: its port refuses connections.
        gone = WebhookNotifier(WebhookConfig(url=receiver.url))
        try:
            try:
                await gone.send([_transition()])
            except RetryableNotifyError:
                pass
            else:
                raise AssertionError("a refused connection must be retryable")
        finally:
            await gone.close()

    asyncio.run(run())


def test_a_slow_receiver_times_out_without_blocking_the_others() -> None:
    async def run() -> tuple[Dispatcher, Receiver, Receiver]:
        async with Receiver(delay=3.0) as slow, Receiver() as fast:
            dispatcher = Dispatcher(
                [
                    WebhookNotifier(WebhookConfig(url=slow.url, timeout=0.3), name="slow"),
                    WebhookNotifier(WebhookConfig(url=fast.url), name="fast"),
                ],
                backoff_base=0.05,
                backoff_max=0.1,
            )
            dispatcher.start()
            dispatcher.submit([_transition()])
            await _until(lambda: dispatcher.stats()["fast"].sent == 1, "the fast receiver")
            await _until(lambda: dispatcher.stats()["slow"].failed_attempts >= 2, "timeouts")
            dispatcher.submit([_transition(AlertState.RESOLVED)])
            await _until(lambda: dispatcher.stats()["fast"].sent == 2, "the second delivery")
            await dispatcher.close(deadline=1.0)
            return dispatcher, slow, fast

    dispatcher, slow, fast = asyncio.run(run())
    assert len(fast.bodies) == 2
    assert dispatcher.stats()["slow"].sent == 0
    assert "no answer within 0.3 s" in (dispatcher.stats()["slow"].last_error or "")
    assert len(slow.bodies) >= 2


# -- the receiver's check in docs/contract.md, run as written against real deliveries -----------

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"
SNIPPET = re.compile(r"<!-- webhook-receiver -->\n```python\n(.*?)```", re.DOTALL)


def _receiver_check() -> dict[str, Any]:
    (code,) = SNIPPET.findall(CONTRACT.read_text(encoding="utf-8"))
    namespace: dict[str, Any] = {}
    exec(compile(code, f"{CONTRACT}:webhook-receiver", "exec"), namespace)
    return namespace


def _deliver(config: WebhookConfig) -> tuple[dict[str, str], bytes]:
    async def run() -> Receiver:
        async with Receiver() as receiver:
            notifier = WebhookNotifier(config.model_copy(update={"url": receiver.url}))
            try:
                await notifier.send([_transition()])
            finally:
                await notifier.close()
            return receiver

    ((headers, body),) = asyncio.run(run()).bodies
    return headers, body


def test_the_documented_check_accepts_a_delivery_and_refuses_the_rest(tmp_path: Path) -> None:
    check = _receiver_check()
    verify = check["verify_fieldmon_webhook"]
    assert check["REPLAY_WINDOW_S"] == REPLAY_WINDOW_S
    old = write_secret(tmp_path / "old.secret").encode()
    new = write_secret(tmp_path / "new.secret").encode()
    config = WebhookConfig(
        url="http://127.0.0.1:1/hook",
        secret_file=tmp_path / "old.secret",
        secret_files=[tmp_path / "new.secret"],
    )
    headers, body = _deliver(config)
    assert verify(headers, body, [old])
    assert verify(headers, body, [new])  # a receiver already moved to the new secret
    assert verify({k.lower(): v for k, v in headers.items()}, body, [new])  # any header case
    assert not verify(headers, body, [b"not-the-secret"])
    assert not verify(headers, body.replace(b"pavilion-2", b"pavilion-3"), [old])
    assert not verify({}, body, [old])
    signed_at = int(headers[TIMESTAMP_HEADER])
    assert verify(headers, body, [old], now=signed_at + REPLAY_WINDOW_S)
    assert not verify(headers, body, [old], now=signed_at + REPLAY_WINDOW_S + 1)  # a replay
    assert not verify(headers, body, [old], now=signed_at - REPLAY_WINDOW_S - 1)
    assert abs(time.time() - signed_at) < 60


def test_without_secrets_nothing_verifies(tmp_path: Path) -> None:
    verify = _receiver_check()["verify_fieldmon_webhook"]
    headers, body = _deliver(WebhookConfig(url="http://127.0.0.1:1/hook"))
    assert "X-Fieldmon-Signatures" not in headers
    assert not verify(headers, body, [b"anything"])
