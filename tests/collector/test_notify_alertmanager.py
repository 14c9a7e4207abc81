"""Alertmanager notifier against a real `prometheus-alertmanager` routing to a test receiver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
    iso_time,
)
from fieldmon.collector.config import AlertmanagerConfig, WebhookConfig
from fieldmon.collector.notify import Dispatcher, RetryableNotifyError
from fieldmon.collector.notify.alertmanager import END_MARGIN_FACTOR, AlertmanagerNotifier
from fieldmon.collector.notify.webhook import WebhookNotifier
from fieldmon.lab.servers import AlertmanagerServer, free_port

pytestmark = pytest.mark.integration

DASHBOARD = "http://grafana.test/d/fieldmon"
WAIT = 30.0  # generous: an assertion's deadline, not a measured latency


def _config(receiver_url: str) -> str:
    # Small group_wait / group_interval so the test sees the notification quickly;
    # a long repeat_interval so re-sends of an unchanged alert never notify again.
    return f"""
route:
  receiver: hook
  group_by: [site]
  group_wait: 100ms
  group_interval: 500ms
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {receiver_url}/hook
        send_resolved: true
"""


@pytest.fixture
def alertmanager(tmp_path: Path, fake_influx) -> Iterator[AlertmanagerServer]:
    """A fresh Alertmanager whose one route posts to the `fake_influx` HTTP receiver."""
    server = AlertmanagerServer(tmp_path / "alertmanager", _config(fake_influx.url))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _transition(
    state: AlertState, *, site: str = "pavilion-2", target: str = "parent-gw", loss: float = 100.0
) -> Transition:
    starts = time.time_ns() - 60 * 10**9
    return Transition(
        alertname=AlertName.LINK_DOWN,
        labels=alert_labels(AlertName.LINK_DOWN, site, target, Severity.CRITICAL),
        annotations={
            "summary": f"{site}: parent link {target} down since 14:02:00 UTC (loss {loss:.0f} %)",
            "description": "every probe lost; the agent still reports through a backup path",
            "loss_pct": f"{loss:.1f}",
            "rtt_p95_ms": "n/a",
            "jitter_ms": "n/a",
            "since": iso_time(starts),
            "parent_hospital": "city-general",
            "site_name": "Pavilion 2",
        },
        state=state,
        starts_at=starts,
        ends_at=None if state is AlertState.FIRING else time.time_ns(),
        value=loss,
        page=True,
    )


def _notifier(server: AlertmanagerServer, resend: float = 60.0) -> AlertmanagerNotifier:
    config = AlertmanagerConfig(url=server.url, resend_interval=resend, timeout=5)
    return AlertmanagerNotifier(config, dashboard_url=DASHBOARD)


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _ours(server: AlertmanagerServer, site: str = "pavilion-2") -> list[dict]:
    return [a for a in server.alerts() if a["labels"].get("site") == site]


def _notifications(fake_influx) -> list[dict]:
    return [json.loads(seen.body) for seen in fake_influx.requests if seen.path == "/hook"]


def _parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_firing_alert_has_labels_annotations_and_a_far_end(
    alertmanager: AlertmanagerServer, fake_influx
) -> None:
    async def run() -> None:
        notifier = _notifier(alertmanager, resend=60.0)
        try:
            await notifier.send([_transition(AlertState.FIRING)])
        finally:
            await notifier.close()
        await _until(lambda: _ours(alertmanager), "the alert in /api/v2/alerts")

    asyncio.run(run())
    (alert,) = _ours(alertmanager)
    assert alert["labels"] == {
        "alertname": "LinkDown",
        "site": "pavilion-2",
        "target": "parent-gw",
        "severity": "critical",
        "parent_hospital": "city-general",
    }
    notes = alert["annotations"]
    assert notes["loss_pct"] == "100.0"
    assert notes["summary"].startswith("pavilion-2: parent link parent-gw down since")
    assert notes["dashboard"] == f"{DASHBOARD}?site=pavilion-2&link=parent-gw"
    assert alert["status"]["state"] == "active"
    # A missed re-send must not resolve it: endsAt lies several re-send intervals ahead.
    assert _parse(alert["endsAt"]) - time.time() > (END_MARGIN_FACTOR - 1) * 60.0


def test_receiver_notified_once_then_resolved_alert_disappears(
    alertmanager: AlertmanagerServer, fake_influx
) -> None:
    async def run() -> None:
        notifier = _notifier(alertmanager)
        try:
            await notifier.send([_transition(AlertState.FIRING)])
            await _until(lambda: _notifications(fake_influx), "the firing notification")
            # Periodic re-sends of an unchanged alert only extend it; they never notify again.
            await notifier.refresh([_transition(AlertState.FIRING)])
            await notifier.refresh([_transition(AlertState.FIRING)])
            await notifier.send([_transition(AlertState.RESOLVED)])
            await _until(lambda: not _ours(alertmanager), "the resolved alert to leave the list")
            await _until(lambda: len(_notifications(fake_influx)) >= 2, "the resolve notification")
        finally:
            await notifier.close()

    asyncio.run(run())
    notes = _notifications(fake_influx)
    assert [n["status"] for n in notes] == ["firing", "resolved"]
    assert notes[0]["groupLabels"] == {"site": "pavilion-2"}
    assert notes[0]["alerts"][0]["annotations"]["parent_hospital"] == "city-general"


def test_two_collectors_sending_the_same_alert_make_one(
    alertmanager: AlertmanagerServer, fake_influx
) -> None:
    async def run() -> None:
        first, second = _notifier(alertmanager), _notifier(alertmanager)
        try:
            await asyncio.gather(
                first.send([_transition(AlertState.FIRING)]),
                second.send([_transition(AlertState.FIRING)]),
            )
            await first.refresh([_transition(AlertState.FIRING)])
            await second.refresh([_transition(AlertState.FIRING)])
            await _until(lambda: _notifications(fake_influx), "the notification")
        finally:
            await first.close()
            await second.close()

    asyncio.run(run())
    assert len(_ours(alertmanager)) == 1
    (note,) = _notifications(fake_influx)
    assert len(note["alerts"]) == 1


def test_down_alertmanager_is_retryable_and_never_blocks_the_others(
    alertmanager: AlertmanagerServer, fake_influx
) -> None:
    dead = AlertmanagerNotifier(
        AlertmanagerConfig(url=f"http://127.0.0.1:{free_port()}"), name="alertmanager-down"
    )

    async def run() -> Dispatcher:
        with pytest.raises(RetryableNotifyError):
            await dead.send([_transition(AlertState.FIRING, site="tent-1")])
        live = _notifier(alertmanager)
        hook = WebhookNotifier(WebhookConfig(url=f"{fake_influx.url}/direct"))
        dispatcher = Dispatcher(
            [dead, live, hook], max_attempts=1000, backoff_base=0.05, backoff_max=0.2
        )
        dispatcher.start()
        dispatcher.submit([_transition(AlertState.FIRING, site="tent-1")])
        await _until(lambda: _ours(alertmanager, "tent-1"), "the alert at the live Alertmanager")
        await _until(lambda: dispatcher.stats()["webhook"].sent == 1, "the webhook delivery")
        await _until(
            lambda: dispatcher.stats()["alertmanager-down"].failed_attempts >= 2,
            "failures at the dead one",
        )
        await dispatcher.close(deadline=2.0)
        return dispatcher

    dispatcher = asyncio.run(run())
    assert [s.path for s in fake_influx.requests].count("/direct") == 1
    stats = dispatcher.stats()
    assert stats["alertmanager-down"].sent == 0
    assert stats["alertmanager-down"].last_error is not None
    assert stats["alertmanager"].sent == 1


def test_deploy_example_inhibits_link_alerts_of_an_unreachable_site(
    tmp_path: Path, fake_influx
) -> None:
    example = Path(__file__).parents[2] / "deploy" / "alertmanager.yml"
    text = example.read_text(encoding="utf-8")
    # Same routing and inhibition; its receivers point at this test's HTTP server instead.
    text = text.replace("http://127.0.0.1:9099", fake_influx.url)
    text = text.replace("http://127.0.0.1:9098", fake_influx.url)
    unreachable = Transition(
        alertname=AlertName.SITE_UNREACHABLE,
        labels=alert_labels(AlertName.SITE_UNREACHABLE, "pavilion-2", "agent-1", Severity.CRITICAL),
        annotations={"summary": "pavilion-2: site silent", "parent_hospital": "city-general"},
        state=AlertState.FIRING,
        starts_at=time.time_ns(),
        ends_at=None,
        value=90.0,
        page=True,
    )
    with AlertmanagerServer(tmp_path / "am", text) as server:

        async def run() -> None:
            notifier = _notifier(server)
            try:
                await notifier.send(
                    [
                        _transition(AlertState.FIRING),
                        _transition(AlertState.FIRING, site="tent-1"),
                        unreachable,
                    ]
                )
            finally:
                await notifier.close()
            await _until(lambda: len(server.alerts()) == 3, "the three alerts")

        asyncio.run(run())
        states = {
            (a["labels"]["alertname"], a["labels"]["site"]): a["status"]["state"]
            for a in server.alerts()
        }
    assert states == {
        ("LinkDown", "pavilion-2"): "suppressed",
        ("LinkDown", "tent-1"): "active",
        ("SiteUnreachable", "pavilion-2"): "active",
    }


def _service_alert(alertname: AlertName, target: str, severity: Severity) -> Transition:
    return Transition(
        alertname=alertname,
        labels={**alert_labels(alertname, "pavilion-2", target, severity), "kind": "http"},
        annotations={"summary": f"pavilion-2: service {target} (http)", "duration_ms": "812.0"},
        state=AlertState.FIRING,
        starts_at=time.time_ns() - 60 * 10**9,
        ends_at=None,
        value=812.0,
        page=True,
    )


def test_deploy_example_inhibits_a_slow_service_that_is_down(tmp_path: Path, fake_influx) -> None:
    example = Path(__file__).parents[2] / "deploy" / "alertmanager.yml"
    text = example.read_text(encoding="utf-8")
    text = text.replace("http://127.0.0.1:9099", fake_influx.url)
    text = text.replace("http://127.0.0.1:9098", fake_influx.url)
    with AlertmanagerServer(tmp_path / "am", text) as server:

        async def run() -> None:
            notifier = _notifier(server)
            try:
                await notifier.send(
                    [
                        _service_alert(AlertName.SERVICE_DOWN, "his", Severity.CRITICAL),
                        _service_alert(AlertName.SERVICE_SLOW, "his", Severity.WARNING),
                        _service_alert(AlertName.SERVICE_SLOW, "pacs", Severity.WARNING),
                    ]
                )
            finally:
                await notifier.close()
            await _until(lambda: len(server.alerts()) == 3, "the three alerts")

        asyncio.run(run())
        states = {
            (a["labels"]["alertname"], a["labels"]["target"]): a["status"]["state"]
            for a in server.alerts()
        }
    assert states == {
        ("ServiceDown", "his"): "active",
        ("ServiceSlow", "his"): "suppressed",
        ("ServiceSlow", "pacs"): "active",
    }
