"""Dispatcher: bounded per-notifier queues, retries, refresh, close deadline; and the registry."""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import replace
from pathlib import Path

from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
)
from fieldmon.collector.config import NotifyConfig
from fieldmon.collector.notify import (
    NOTIFIER_KINDS,
    Dispatcher,
    PermanentNotifyError,
    RetryableNotifyError,
    build_notifiers,
)
from fieldmon.collector.notify.base import Refreshing, headline
from fieldmon.lab.secretfiles import write_secret

WAIT = 20.0


def _t(index: int, *, page: bool = True, state: AlertState = AlertState.FIRING) -> Transition:
    return Transition(
        alertname=AlertName.LINK_DEGRADED,
        labels=alert_labels(AlertName.LINK_DEGRADED, "pavilion-2", f"l{index}", Severity.WARNING),
        annotations={"summary": f"pavilion-2: link l{index} degraded"},
        state=state,
        starts_at=index,
        ends_at=None,
        value=float(index),
        page=page,
    )


class Recorder:
    """A notifier seam: records batches; `gate` holds sends; `errors` are raised in turn."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.errors: list[Exception] = []
        self.closed = False

    async def send(self, transitions: list[Transition]) -> None:
        await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append([int(t.value) for t in transitions])

    async def close(self) -> None:
        self.closed = True


class RefreshingRecorder(Recorder):
    refresh_interval = 3600.0

    def __init__(self) -> None:
        super().__init__("refreshing")
        self.refreshed: list[list[int]] = []

    async def refresh(self, active: list[Transition]) -> None:
        self.refreshed.append([int(t.value) for t in active])


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    async def run() -> tuple[Recorder, Dispatcher]:
        stuck = Recorder()
        stuck.gate.clear()
        dispatcher = Dispatcher([stuck], queue_size=3)
        dispatcher.start()
        dispatcher.submit([_t(0)])
        await asyncio.sleep(0)  # the worker takes transition 0 and waits at the gate
        dispatcher.submit([_t(i) for i in range(1, 6)])
        assert dispatcher.pending() == {"recorder": 3}
        stuck.gate.set()
        await _until(lambda: sum(map(len, stuck.batches)) == 4, "the deliveries")
        await dispatcher.close()
        return stuck, dispatcher

    stuck, dispatcher = asyncio.run(run())
    assert stuck.batches == [[0], [3, 4, 5]]
    assert dispatcher.stats()["recorder"].dropped_overflow == 2
    assert stuck.closed


def test_history_never_reaches_a_notifier() -> None:
    async def run() -> Recorder:
        recorder = Recorder()
        dispatcher = Dispatcher([recorder])
        dispatcher.start()
        dispatcher.submit([_t(1, page=False), _t(2)])
        await _until(lambda: recorder.batches, "the delivery")
        await dispatcher.close()
        return recorder

    assert asyncio.run(run()).batches == [[2]]


def test_permanent_errors_drop_the_batch_and_retryable_ones_retry() -> None:
    async def run() -> tuple[Recorder, Dispatcher]:
        recorder = Recorder()
        recorder.errors = [
            PermanentNotifyError("recorder", "400 bad alert"),
            RetryableNotifyError("recorder", "503", retry_after=0.01),
            RetryableNotifyError("recorder", "timeout"),
        ]
        dispatcher = Dispatcher([recorder], backoff_base=0.01, backoff_max=0.05)
        dispatcher.start()
        dispatcher.submit([_t(1)])
        await _until(lambda: not recorder.errors or len(recorder.errors) < 3, "the first error")
        dispatcher.submit([_t(2)])
        await _until(lambda: recorder.batches, "the retried delivery")
        await dispatcher.close()
        return recorder, dispatcher

    recorder, dispatcher = asyncio.run(run())
    stats = dispatcher.stats()["recorder"]
    assert recorder.batches == [[2]]
    assert (stats.dropped_failed, stats.failed_attempts, stats.sent) == (1, 3, 1)


def test_attempts_are_bounded() -> None:
    async def run() -> Dispatcher:
        recorder = Recorder()
        recorder.errors = [RetryableNotifyError("recorder", "down")] * 3
        dispatcher = Dispatcher([recorder], max_attempts=3, backoff_base=0.01, backoff_max=0.02)
        dispatcher.start()
        dispatcher.submit([_t(1)])
        await _until(lambda: dispatcher.stats()["recorder"].dropped_failed == 1, "the give-up")
        await dispatcher.close()
        return dispatcher

    assert asyncio.run(run()).stats()["recorder"].failed_attempts == 3


def test_a_hung_notifier_is_cut_off_at_the_close_deadline_and_others_flush() -> None:
    async def run() -> tuple[Recorder, Recorder]:
        hung, fine = Recorder("hung"), Recorder("fine")
        hung.gate.clear()
        dispatcher = Dispatcher([hung, fine], attempt_timeout=3600)
        dispatcher.start()
        dispatcher.submit([_t(1)])
        await dispatcher.close(deadline=0.2)
        return hung, fine

    hung, fine = asyncio.run(run())
    assert fine.batches == [[1]]
    assert hung.batches == []
    assert hung.closed and fine.closed


def test_refresh_runs_at_start_with_the_paged_active_set() -> None:
    async def run() -> RefreshingRecorder:
        recorder = RefreshingRecorder()
        dispatcher = Dispatcher([recorder], active_provider=lambda: [_t(7), _t(8, page=False)])
        dispatcher.start()
        await _until(lambda: recorder.refreshed, "the first refresh")
        dispatcher.refresh_now()
        await _until(lambda: len(recorder.refreshed) == 2, "the requested refresh")
        await dispatcher.close()
        return recorder

    assert asyncio.run(run()).refreshed == [[7], [7]]


def test_registry_builds_every_configured_notifier(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    write_secret(secret)
    config = NotifyConfig.model_validate(
        {
            "alertmanager": {"url": "http://127.0.0.1:9093"},
            "webhook": [
                {"url": "http://127.0.0.1:1/a", "secret_file": str(secret)},
                {"url": "http://127.0.0.1:1/b"},
            ],
            "email": {"smtp_host": "127.0.0.1", "from": "a@b.test", "to": ["c@d.test"]},
            "dashboard_url": "http://dash.test/d/f",
        }
    )
    built = build_notifiers(config, mqtt_publish=lambda _t, _p, _r: None)
    names = [n.name for n in built]
    assert names == ["alertmanager", "mqtt", "webhook-1", "webhook-2", "email"]
    assert [n.name for n in build_notifiers(NotifyConfig())] == []
    assert [isinstance(n, Refreshing) for n in built] == [True, True, False, False, False]
    # Every registered notifier is documented, and sends and closes asynchronously.
    for kind in NOTIFIER_KINDS:
        cls = kind.notifier
        assert inspect.getdoc(cls) and inspect.getdoc(inspect.getmodule(cls))
        assert inspect.iscoroutinefunction(cls.send) and inspect.iscoroutinefunction(cls.close)


def test_mqtt_alerts_can_be_turned_off_and_refreshed_at_their_own_pace() -> None:
    publish = lambda _t, _p, _r: None  # noqa: E731 - a stand-in for the broker connection
    [notifier] = build_notifiers(
        NotifyConfig.model_validate({"mqtt": {"refresh_interval": "1m"}}), mqtt_publish=publish
    )
    assert (notifier.name, getattr(notifier, "refresh_interval", None)) == ("mqtt", 60.0)
    disabled = NotifyConfig.model_validate({"mqtt": {"enabled": False}})
    assert build_notifiers(disabled, mqtt_publish=publish) == []


def test_headline_fits_a_lock_screen() -> None:
    firing = _t(1)
    assert headline(firing) == "[WARNING] pavilion-2: link l1 degraded"
    resolved = _t(1, state=AlertState.RESOLVED)
    assert headline(resolved).startswith("[RESOLVED] ")
    # A link that went from degraded to down is worse, not resolved, on the lock screen.
    handed_over = replace(
        resolved, annotations={**resolved.annotations, "superseded_by": "LinkDown"}
    )
    assert headline(handed_over).startswith("[REPLACED] ")
