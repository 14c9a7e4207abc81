"""The collector's progress, judged for the watchdog: ingest stuck while messages wait is a
stall; an idle collector, or one waiting for its database, is not."""

from __future__ import annotations

import pytest

from fieldmon.collector.health import INGEST_STALL_S, judge, status_line
from fieldmon.core.mqtt.link import SubscriptionState, SubscriptionStatus

NOW = 10_000.0
W = INGEST_STALL_S


@pytest.mark.parametrize(
    ("flushing_since", "last_activity", "waiting_since", "expected"),
    [
        # Idle: no agent sends anything, nothing waits. Healthy however long it lasts.
        (None, NOW - 86400, None, None),
        # A batch waits for its flush, which starts within flush_interval.
        (None, NOW - 86400, NOW - 0.5, None),
        # A flush that writes now.
        (NOW - 2, NOW - 3, None, None),
        # The database is down for an hour: every attempt ends (timeout) and is retried.
        (NOW - 3600, NOW - 15, NOW - 3590, None),
        # Retry-After: 300 s, a wait on purpose that ends in the future.
        (NOW - 200, NOW + 100, NOW - 190, None),
        # A flush whose write (or spool append) never returns.
        (
            NOW - W - 30,
            NOW - W - 30,
            NOW - W,
            "ingest: a batch has waited 150 s to be stored with no write returning for 150 s - "
            "the database write or the spool's disk does not return",
        ),
        (
            NOW - 3600,
            NOW - W - 1,
            None,
            "ingest: a batch has waited 3600 s to be stored with no write returning for 121 s - "
            "the database write or the spool's disk does not return",
        ),
        # Messages wait and no flush starts: the ingest loop does not come round.
        (None, NOW - 5, NOW - W - 5, "ingest: messages have waited 125 s and no flush started"),
    ],
)
def test_judge(
    flushing_since: float | None,
    last_activity: float,
    waiting_since: float | None,
    expected: str | None,
) -> None:
    problem = judge(
        NOW,
        flushing_since=flushing_since,
        last_activity=last_activity,
        waiting_since=waiting_since,
        ended=[],
    )
    assert problem == expected


def test_an_ended_task_is_a_problem_even_when_idle() -> None:
    problem = judge(
        NOW,
        flushing_since=None,
        last_activity=NOW,
        waiting_since=None,
        ended=["the ingest task ended (KeyError: 'x')"],
    )
    assert problem == "the ingest task ended (KeyError: 'x')"


def _subscriptions(*states: SubscriptionState) -> list[SubscriptionStatus]:
    return [SubscriptionStatus(f"t/{n}", state) for n, state in enumerate(states)]


@pytest.mark.parametrize(
    ("subscriptions", "connected", "database_error", "holding", "expected"),
    [
        (
            _subscriptions(SubscriptionState.GRANTED, SubscriptionState.GRANTED),
            True,
            None,
            False,
            "subscribed to 2 of 2 topics; database ok; 12 points pending",
        ),
        (
            _subscriptions(SubscriptionState.GRANTED, SubscriptionState.REFUSED),
            True,
            "503 from http://db",
            True,
            "subscribed to 1 of 2 topics, 1 refused; database failing (503 from http://db); "
            "12 points pending; spool full: holding acks",
        ),
        (
            _subscriptions(SubscriptionState.PENDING, SubscriptionState.PENDING),
            True,
            None,
            False,
            "subscribed to 0 of 2 topics, 2 unanswered; database ok; 12 points pending",
        ),
        (
            _subscriptions(SubscriptionState.PENDING),
            False,
            None,
            False,
            "broker not connected (refused); database ok; 12 points pending",
        ),
    ],
)
def test_status_line(
    subscriptions: list[SubscriptionStatus],
    connected: bool,
    database_error: str | None,
    holding: bool,
    expected: str,
) -> None:
    line = status_line(
        subscriptions,
        connected=connected,
        broker_error="refused",
        database_error=database_error,
        pending_points=12,
        holding=holding,
    )
    assert line == expected
