"""Notifiers: Alertmanager, MQTT alerts topic, signed webhook, e-mail; and their dispatcher."""

from fieldmon.collector.notify.base import (
    Notifier,
    NotifyError,
    PermanentNotifyError,
    RetryableNotifyError,
)
from fieldmon.collector.notify.dispatch import Dispatcher
from fieldmon.collector.notify.registry import NOTIFIER_KINDS, build_notifiers

__all__ = [
    "NOTIFIER_KINDS",
    "Dispatcher",
    "Notifier",
    "NotifyError",
    "PermanentNotifyError",
    "RetryableNotifyError",
    "build_notifiers",
]
