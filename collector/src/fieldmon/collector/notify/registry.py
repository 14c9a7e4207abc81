"""The notifiers the collector knows, one line each; the daemon and the meta-test read it.

Each notifier module defines its `KIND` (fieldmon.collector.notify.base.NotifierKind): config
model, `notify` section, notifier class, and how the section becomes notifiers.
"""

from __future__ import annotations

from fieldmon.collector.config import NotifyConfig
from fieldmon.collector.notify import alertmanager, email, mqtt, webhook
from fieldmon.collector.notify.base import Notifier, NotifierContext, NotifierKind, Publish

NOTIFIER_KINDS: tuple[NotifierKind, ...] = (
    alertmanager.KIND,
    mqtt.KIND,
    webhook.KIND,
    email.KIND,
)


def build_notifiers(config: NotifyConfig, *, mqtt_publish: Publish | None = None) -> list[Notifier]:
    """One notifier per configured destination, in registry order; MQTT needs `mqtt_publish`."""
    context = NotifierContext(
        dashboard_url=str(config.dashboard_url) if config.dashboard_url else None,
        mqtt_publish=mqtt_publish,
    )
    return [
        notifier
        for kind in NOTIFIER_KINDS
        for notifier in kind.build(getattr(config, kind.section), context)
    ]
