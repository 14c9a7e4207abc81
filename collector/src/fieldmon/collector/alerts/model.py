"""What the alert engine hands out: transitions (firing / resolved) and outage reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fieldmon.core.wire.models import Sample


class AlertName(StrEnum):
    """The alerts this engine raises; the value is the `alertname` label."""

    LINK_DEGRADED = "LinkDegraded"
    LINK_DOWN = "LinkDown"
    LINK_FLAPPING = "LinkFlapping"
    SITE_UNREACHABLE = "SiteUnreachable"
    AP_DOWN = "ApDown"
    INTERFACE_DOWN = "InterfaceDown"
    UPLINK_SATURATED = "UplinkSaturated"
    AGENT_POWER = "AgentPower"
    AGENT_BACKLOG = "AgentBacklog"
    AGENT_DATA_LOSS = "AgentDataLoss"
    SERVICE_DOWN = "ServiceDown"
    SERVICE_SLOW = "ServiceSlow"
    CERTIFICATE_EXPIRING = "CertificateExpiring"


# Their target is a service of the site file, their extra label its `kind`.
SERVICE_ALERTS = frozenset(
    {AlertName.SERVICE_DOWN, AlertName.SERVICE_SLOW, AlertName.CERTIFICATE_EXPIRING}
)


class Severity(StrEnum):
    """Alert severity, the `severity` label Alertmanager routes on."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class AlertState(StrEnum):
    """Whether a transition opens or closes an alert."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Transition:
    """One alert changing state; `page` is False for history that must not notify anyone.

    Identity is `labels` (alertname, site, target, severity, plus a fixed set per alertname
    such as device and radio for ApDown), never a measured value;
    measured values live in `annotations` (strings, as Alertmanager wants them) and `value`.
    Times are ns since the epoch, in sample time.
    """

    alertname: AlertName
    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertState
    starts_at: int
    ends_at: int | None
    value: float
    page: bool

    @property
    def key(self) -> tuple[str, ...]:
        """The alert's identity: its label values in a fixed order."""
        return tuple(self.labels[name] for name in LABEL_NAMES)

    @property
    def at(self) -> int:
        """When this transition happened: the start when firing, the end when resolved."""
        if self.state is AlertState.RESOLVED and self.ends_at is not None:
            return self.ends_at
        return self.starts_at

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what a webhook body or the status API can carry)."""
        return {
            "alertname": self.alertname.value,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "state": self.state.value,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "value": self.value,
            "page": self.page,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transition:
        """Rebuild from `to_dict` output."""
        return cls(
            **{
                **data,
                "alertname": AlertName(data["alertname"]),
                "state": AlertState(data["state"]),
            }
        )

    def to_sample(self) -> Sample:
        """The `alert` measurement row (docs/contract.md, InfluxDB) at the transition's time."""
        return Sample(
            measurement="alert",
            tags={name: self.labels[name] for name in ("site", "alertname", "target", "severity")},
            fields={"state": self.state.value, "value": float(self.value)},
            time=self.at,
        )


LABEL_NAMES = ("alertname", "site", "target", "severity")


def alert_labels(
    alertname: AlertName, site: str, target: str, severity: Severity
) -> dict[str, str]:
    """The fixed label set that identifies an alert."""
    return {
        "alertname": alertname.value,
        "site": site,
        "target": target,
        "severity": severity.value,
    }


@dataclass(frozen=True)
class OutageReport:
    """An episode seen only in replayed history: reported once, never paged."""

    site: str
    link: str
    start: int  # ns, first bad round
    end: int  # ns, first round of the clearing streak
    worst_loss_pct: float
    worst_rtt_ms: float | None
    samples_backfilled: int
    alertnames: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a log, a notification or the status page."""
        rtt = "n/a" if self.worst_rtt_ms is None else f"{self.worst_rtt_ms:.0f} ms"
        return (
            f"{self.site}: link {self.link} outage {clock_text(self.start)} to "
            f"{clock_text(self.end)} (worst loss {self.worst_loss_pct:.0f} %, worst rtt {rtt}, "
            f"{self.samples_backfilled} rounds backfilled)"
        )


def iso_time(ns: int) -> str:
    """RFC 3339 UTC, as Alertmanager and humans read it."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def clock_text(ns: int) -> str:
    """HH:MM:SS UTC, short enough for a phone lock screen."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%H:%M:%S UTC")
