"""Alert engine core: link state machine, site silence, device and agent alerts, persistence."""

from fieldmon.collector.alerts.engine import AlertEngine
from fieldmon.collector.alerts.model import (
    AlertName,
    AlertState,
    OutageReport,
    Severity,
    Transition,
)
from fieldmon.collector.alerts.store import AlertStateError, AlertStateStore
from fieldmon.core.linkstate import LinkState

__all__ = [
    "AlertEngine",
    "AlertName",
    "AlertState",
    "AlertStateError",
    "AlertStateStore",
    "LinkState",
    "OutageReport",
    "Severity",
    "Transition",
]
