"""Webhook notifier against real aiohttp receivers: signature, retry after a 500, slow receiver."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookNotifier,
    verify,
)
from fieldmon.lab.secretfiles import write_secret

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
    # Every attempt carries the same alerts.
    assert len({json.dumps(json.loads(b)["alerts"]) for _, b in receiver.bodies}) == 1


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
