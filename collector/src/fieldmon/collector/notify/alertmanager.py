"""Prometheus Alertmanager API v2: POST {url}/api/v2/alerts, re-sending firing alerts.

Labels are the transition's fixed identity (alertname, site, target, severity) plus the site's
parent_hospital (static config, never a measured value), so two collectors sending the same
alert produce identical label sets and Alertmanager deduplicates them. Measured values go in
annotations, as strings.

Timing: every firing alert is re-sent each `resend_interval` (default 60 s) with
endsAt = now + 4 x resend_interval, so up to three missed re-sends (a collector restart, a
broker hiccup) never resolve it. Alertmanager's own `resolve_timeout` (default 5 m) only applies
to alerts posted without endsAt, which we never do; keep 4 x resend_interval at or under it so
that a collector that dies for good lets its alerts expire in about the same time. A resolve
is sent with endsAt = now.

Sends one POST per batch of transitions, and per re-send, to `{url}/api/v2/alerts`: a JSON list
of API v2 `postableAlert`s, each with labels (alertname, site, target, severity,
parent_hospital), annotations (summary, description, the measured values, `value`, `dashboard`),
startsAt, endsAt and generatorURL (the dashboard link, when `dashboard_url` is set).
"""

from __future__ import annotations

import json
import time

import aiohttp

from fieldmon.collector.alerts.model import AlertState, Transition, iso_time
from fieldmon.collector.config import AlertmanagerConfig
from fieldmon.collector.notify.base import Notifier, NotifierContext, NotifierKind, dashboard_link
from fieldmon.collector.notify.http import post

END_MARGIN_FACTOR = 4  # endsAt of a firing alert = now + this many re-send intervals
_EXTRA_LABELS = ("parent_hospital",)


class AlertmanagerNotifier:
    """Posts alerts to one Alertmanager (or one of an HA pair: give each collector the pair)."""

    def __init__(
        self,
        config: AlertmanagerConfig,
        *,
        name: str = "alertmanager",
        dashboard_url: str | None = None,
    ) -> None:
        self.name = name
        self.url = str(config.url).rstrip("/") + "/api/v2/alerts"
        self.refresh_interval = config.resend_interval
        self.timeout = config.timeout
        self.dashboard_url = dashboard_url
        self._session: aiohttp.ClientSession | None = None

    def payload(self, transition: Transition, now_ns: int | None = None) -> dict[str, object]:
        """One alert in the API v2 `postableAlert` shape."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        labels = dict(transition.labels)
        for name in _EXTRA_LABELS:
            if transition.annotations.get(name):
                labels[name] = transition.annotations[name]
        if transition.state is AlertState.RESOLVED:
            ends_at = now_ns
        else:
            ends_at = now_ns + int(END_MARGIN_FACTOR * self.refresh_interval * 1e9)
        link = dashboard_link(self.dashboard_url, transition)
        annotations = {**transition.annotations, "value": f"{transition.value:g}"}
        if link:
            annotations["dashboard"] = link
        alert: dict[str, object] = {
            "labels": labels,
            "annotations": annotations,
            # Alertmanager rejects startsAt after endsAt; a resolve judged by sample time may
            # carry a start a little ahead of our clock.
            "startsAt": iso_time(min(transition.starts_at, ends_at)),
            "endsAt": iso_time(ends_at),
        }
        if link:
            alert["generatorURL"] = link
        return alert

    async def send(self, transitions: list[Transition]) -> None:
        """Post these transitions in one request."""
        if transitions:
            await self._post([self.payload(t) for t in transitions])

    async def refresh(self, active: list[Transition]) -> None:
        """Re-send every firing alert, pushing its endsAt ahead again."""
        firing = [t for t in active if t.state is AlertState.FIRING]
        if firing:
            await self._post([self.payload(t) for t in firing])

    async def _post(self, alerts: list[dict[str, object]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = json.dumps(alerts).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        await post(self._session, self.name, self.url, body, headers=headers, seconds=self.timeout)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _build(config: AlertmanagerConfig | None, context: NotifierContext) -> list[Notifier]:
    if config is None:
        return []
    return [AlertmanagerNotifier(config, dashboard_url=context.dashboard_url)]


KIND = NotifierKind(
    name="alertmanager",
    config_model=AlertmanagerConfig,
    section="alertmanager",
    notifier=AlertmanagerNotifier,
    build=_build,
)
