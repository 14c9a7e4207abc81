"""Is the collector making progress? Judged before every ping of systemd's watchdog.

The watchdog (fieldmon.core.systemd) runs on the event loop, so a blocked loop stops it by
itself. What a running loop can still hide is ingest that no longer moves while messages wait:
a flush whose database write or spool append never returns (a hung disk, a call without a
timeout), a batch that waits with no flush starting (the ingest loop is stuck elsewhere), or a
role's task that ended with an exception. Each makes `judge` name the problem; the watchdog then
stops pinging and systemd restarts the collector, and the broker re-delivers what was not acked.

What is not a stall: an idle collector (no agent sends anything, so nothing waits), and a
database that refuses or does not answer: every write attempt ends (the writer's timeout),
retries wait on purpose (backoff, Retry-After) and batches go to the spool, or are held with
their acks while the spool is full. Ingest is moving then, just not to the database.
"""

from __future__ import annotations

from fieldmon.core.mqtt.link import SubscriptionState, SubscriptionStatus

# Past this, a flush with no sign of life or a batch with no flush is stuck. It is longer than
# any single step that moves (a write times out after influxdb.timeout, 10 s by default; the
# spool appends one segment record), so only a step that never returns gets there.
INGEST_STALL_S = 120.0


def judge(
    now: float,
    *,
    flushing_since: float | None,
    last_activity: float,
    waiting_since: float | None,
    ended: list[str],
    window: float = INGEST_STALL_S,
) -> str | None:
    """The collector's problem in words, or None while ingest makes progress or is idle.

    `flushing_since`: when the flush under way began (None: none); `last_activity`: the latest
    sign of life of the writes (an attempt ended, or a deliberate wait lasts until then);
    `waiting_since`: when the batch waiting for the next flush opened (None: nothing waits);
    `ended`: words for the background tasks that ended. Times are time.monotonic().
    """
    problems = list(ended)
    if flushing_since is not None:
        quiet = now - max(flushing_since, last_activity)
        if quiet > window:
            problems.append(
                f"ingest: a batch has waited {now - flushing_since:.0f} s to be stored with no "
                f"write returning for {quiet:.0f} s - the database write or the spool's disk "
                "does not return"
            )
    elif waiting_since is not None and now - waiting_since > window:
        problems.append(
            f"ingest: messages have waited {now - waiting_since:.0f} s and no flush started"
        )
    return "; ".join(problems) or None


def status_line(
    subscriptions: list[SubscriptionStatus],
    *,
    connected: bool,
    broker_error: str | None,
    database_error: str | None,
    pending_points: int,
    holding: bool,
) -> str:
    """The collector's STATUS= line for `systemctl status`."""
    if not connected:
        broker = "broker not connected" + (f" ({broker_error})" if broker_error else "")
    else:
        states = [s.state for s in subscriptions]
        refused = states.count(SubscriptionState.REFUSED)
        pending = states.count(SubscriptionState.PENDING)
        broker = f"subscribed to {states.count(SubscriptionState.GRANTED)} of {len(states)} topics"
        if refused:
            broker += f", {refused} refused"
        if pending:
            broker += f", {pending} unanswered"
    database = "database ok" if database_error is None else f"database failing ({database_error})"
    parts = [broker, database, f"{pending_points} points pending"]
    if holding:
        parts.append("spool full: holding acks")
    return "; ".join(parts)
