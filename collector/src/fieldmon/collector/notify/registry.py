"""The notifier registry: config section name -> notifier class, and the builder."""

from __future__ import annotations

from fieldmon.collector.config import NotifyConfig
from fieldmon.collector.notify.alertmanager import AlertmanagerNotifier
from fieldmon.collector.notify.base import Notifier
from fieldmon.collector.notify.email import EmailNotifier
from fieldmon.collector.notify.mqtt import MqttAlertsNotifier, Publish
from fieldmon.collector.notify.webhook import WebhookNotifier

NOTIFIERS: dict[str, type] = {
    "alertmanager": AlertmanagerNotifier,
    "mqtt": MqttAlertsNotifier,
    "webhook": WebhookNotifier,
    "email": EmailNotifier,
}


def build_notifiers(config: NotifyConfig, *, mqtt_publish: Publish | None = None) -> list[Notifier]:
    """One notifier per configured destination; MQTT only when given a publish function."""
    dashboard = str(config.dashboard_url) if config.dashboard_url else None
    notifiers: list[Notifier] = []
    if config.alertmanager is not None:
        notifiers.append(AlertmanagerNotifier(config.alertmanager, dashboard_url=dashboard))
    if mqtt_publish is not None:
        notifiers.append(MqttAlertsNotifier(mqtt_publish, dashboard_url=dashboard))
    for index, hook in enumerate(config.webhook):
        name = "webhook" if len(config.webhook) == 1 else f"webhook-{index + 1}"
        notifiers.append(WebhookNotifier(hook, name=name, dashboard_url=dashboard))
    if config.email is not None:
        notifiers.append(EmailNotifier(config.email, dashboard_url=dashboard))
    return notifiers
