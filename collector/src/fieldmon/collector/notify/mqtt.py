"""Retained current alerts per site on `fieldmon/v1/{site}/alerts` (JSON list, QoS 1).

The topic always holds the site's whole firing set, so a dashboard or a phone app that
subscribes later sees the present state at once; an empty list means all clear. The notifier
owns no connection: it is given the collector's publish function.

Sends, whenever a site's firing set changes (and on each refresh where it differs from the
alert engine's), one retained QoS 1 message on `fieldmon/v1/{site}/alerts`: a JSON list of the
site's firing alerts, each as `describe()` gives it, sorted by alert; `[]` when all is clear.
"""

from __future__ import annotations

import json

from fieldmon.collector.alerts.model import AlertState, Transition
from fieldmon.collector.config import MqttAlertsConfig
from fieldmon.collector.notify.base import (
    Notifier,
    NotifierContext,
    NotifierKind,
    Publish,
    describe,
)
from fieldmon.core.wire.topics import alerts_topic

__all__ = ["KIND", "MqttAlertsNotifier", "Publish"]


class MqttAlertsNotifier:
    """Keeps the firing set per site and publishes it, retained, whenever it changes."""

    name = "mqtt"

    def __init__(
        self,
        publish: Publish,
        *,
        dashboard_url: str | None = None,
        refresh_interval: float = 300.0,
    ) -> None:
        self._publish = publish
        self.dashboard_url = dashboard_url
        # After a restart the first refresh rebuilds the sets from the engine's restored state.
        self.refresh_interval = refresh_interval
        self._firing: dict[str, dict[tuple[str, ...], Transition]] = {}
        self._published: dict[str, bytes] = {}

    def current(self, site: str) -> list[Transition]:
        """The firing set of a site as this notifier holds it."""
        return list(self._firing.get(site, {}).values())

    async def send(self, transitions: list[Transition]) -> None:
        """Apply the transitions to the per-site sets and publish each site that changed."""
        touched: list[str] = []
        for transition in transitions:
            site = transition.labels["site"]
            alerts = self._firing.setdefault(site, {})
            if transition.state is AlertState.FIRING:
                alerts[transition.key] = transition
            else:
                alerts.pop(transition.key, None)
            if site not in touched:
                touched.append(site)
        for site in touched:
            self._publish_site(site, force=True)

    async def refresh(self, active: list[Transition]) -> None:
        """Rebuild the per-site sets from the engine's firing alerts; publish those that differ."""
        rebuilt: dict[str, dict[tuple[str, ...], Transition]] = {site: {} for site in self._firing}
        for transition in active:
            if transition.state is AlertState.FIRING:
                rebuilt.setdefault(transition.labels["site"], {})[transition.key] = transition
        self._firing = rebuilt
        for site in rebuilt:
            self._publish_site(site, force=False)

    def payload(self, site: str) -> bytes:
        """The JSON list published for a site."""
        alerts = sorted(self.current(site), key=lambda t: t.key)
        body = [describe(t, self.dashboard_url) for t in alerts]
        return json.dumps(body, sort_keys=True).encode("utf-8")

    def _publish_site(self, site: str, *, force: bool) -> None:
        payload = self.payload(site)
        if not force and self._published.get(site) == payload:
            return
        self._publish(alerts_topic(site), payload, True)
        self._published[site] = payload

    async def close(self) -> None:
        """Nothing to release: the connection belongs to the collector."""


def _build(config: MqttAlertsConfig, context: NotifierContext) -> list[Notifier]:
    # Only a collector with a broker connection of its own (the daemon) can publish.
    if not config.enabled or context.mqtt_publish is None:
        return []
    return [
        MqttAlertsNotifier(
            context.mqtt_publish,
            dashboard_url=context.dashboard_url,
            refresh_interval=config.refresh_interval,
        )
    ]


KIND = NotifierKind(
    name="mqtt",
    config_model=MqttAlertsConfig,
    section="mqtt",
    notifier=MqttAlertsNotifier,
    build=_build,
)
