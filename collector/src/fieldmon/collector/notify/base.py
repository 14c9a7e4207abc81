"""The notifier contract, its errors, its registry record, and what every notification carries."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from fieldmon.collector.alerts.model import (
    SERVICE_ALERTS,
    AlertState,
    Transition,
    clock_text,
    iso_time,
)

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain); QoS 1 is the caller's

# Annotations that are not measurements: everything else in `annotations` is a measured value.
_TEXT_ANNOTATIONS = frozenset(
    {
        "summary",
        "description",
        "since",
        "parent_hospital",
        "site_name",
        "agent",
        "role",
        "thresholds",
        "history",
        "cause",
        "superseded_by",
        "path",
    }
)


class NotifyError(Exception):
    """A notifier could not deliver; `notifier` names it, the message says why."""

    def __init__(self, notifier: str, message: str) -> None:
        super().__init__(f"{notifier}: {message}")
        self.notifier = notifier


class RetryableNotifyError(NotifyError):
    """Worth trying again: timeout, refused connection, 5xx, 429 (`retry_after` in seconds)."""

    def __init__(self, notifier: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(notifier, message)
        self.retry_after = retry_after


class PermanentNotifyError(NotifyError):
    """Trying again cannot help (a 4xx, a rejected address): the batch is dropped and logged."""


class Notifier(Protocol):
    """One destination. `send` raises NotifyError subclasses only; the dispatcher retries."""

    name: str

    async def send(self, transitions: list[Transition]) -> None:
        """Deliver these transitions (already filtered to those that page)."""
        ...

    async def close(self) -> None:
        """Release connections; called once, after the last send."""
        ...


@runtime_checkable
class Refreshing(Protocol):
    """Optional ability: a notifier that must re-send the firing set every `refresh_interval` s."""

    refresh_interval: float

    async def refresh(self, active: list[Transition]) -> None:
        """Re-send (or re-publish) every alert firing now."""
        ...


@dataclass(frozen=True)
class NotifierContext:
    """What a notifier may be given besides its own config section."""

    dashboard_url: str | None = None  # base link put in every notification
    mqtt_publish: Publish | None = None  # the collector's own broker connection, when it has one


@dataclass(frozen=True)
class NotifierKind:
    """Everything the collector and the meta-test need to know about one kind of notifier.

    Each notifier module defines its `KIND`; `fieldmon.collector.notify.registry` lists them.
    """

    name: str  # alertmanager, mqtt, webhook, email
    config_model: type[BaseModel]  # its settings: a model in fieldmon.collector.config
    section: str  # the `notify` key (NotifyConfig field) holding them
    notifier: type  # the notifier class; its module's docstring ends with what it sends
    # The notifiers that section asks for (none when it is absent or disabled).
    build: Callable[[Any, NotifierContext], list[Notifier]]


def dashboard_link(base: str | None, transition: Transition) -> str | None:
    """The dashboard URL with `site` and `link` (a service alert: `service`) query parameters
    added, or None without a base."""
    if not base:
        return None
    parts = urllib.parse.urlsplit(base)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    what = "service" if transition.alertname in SERVICE_ALERTS else "link"
    query += [("site", transition.labels["site"]), (what, transition.labels["target"])]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def measured_values(transition: Transition) -> dict[str, str]:
    """The measured values among the annotations (loss_pct, rtt_p95_ms, silent_s, ...)."""
    return {k: v for k, v in transition.annotations.items() if k not in _TEXT_ANNOTATIONS}


def describe(transition: Transition, dashboard_url: str | None) -> dict[str, Any]:
    """One alert as JSON for the webhook and MQTT: who, what, how bad, since when, where to look."""
    labels = transition.labels
    notes = transition.annotations
    return {
        "alertname": labels["alertname"],
        "state": transition.state.value,
        "severity": labels["severity"],
        "site": labels["site"],
        "site_name": notes.get("site_name", ""),
        "parent_hospital": notes.get("parent_hospital", ""),
        "link": labels["target"],
        "summary": notes.get("summary", ""),
        "description": notes.get("description", ""),
        "measured": measured_values(transition),
        "value": transition.value,
        "since": iso_time(transition.starts_at),
        "ended": iso_time(transition.ends_at) if transition.ends_at is not None else None,
        "dashboard": dashboard_link(dashboard_url, transition),
        "labels": dict(labels),
        "annotations": dict(notes),
    }


def headline(transition: Transition) -> str:
    """A phone-lock-screen line: `[CRITICAL] pavilion-2: parent link wan down since 14:02 ...`.

    A resolve is `[RESOLVED]`, or `[REPLACED]` when another alert of the same link takes over
    (degraded -> down), so a lock screen never shows a worse link as resolved.
    """
    labels = transition.labels
    summary = transition.annotations.get("summary") or (
        f"{labels['site']}: {labels['alertname']} on {labels['target']} "
        f"since {clock_text(transition.starts_at)}"
    )
    if transition.state is not AlertState.RESOLVED:
        tag = labels["severity"].upper()
    elif transition.annotations.get("superseded_by"):
        tag = "REPLACED"  # by the alert named there, which fires now: not a recovery
    else:
        tag = "RESOLVED"
    return f"[{tag}] {summary}"
