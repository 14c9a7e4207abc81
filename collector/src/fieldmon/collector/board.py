"""What the status page shows: per site last seen, each link's latest round and recent history,
the summary of the agent's latest path trace of it, each service's latest run, and each polled
interface's traffic."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fieldmon.collector.alerts.model import SERVICE_ALERTS, AlertName, Transition
from fieldmon.collector.inventory import Inventory
from fieldmon.core.wire.models import Envelope, FieldValue, Sample

# Points of parent-link history kept per link for the sparkline (an hour at 10 s rounds).
HISTORY_POINTS = 360


@dataclass
class LinkView:
    """The latest round of one link and its recent loss / RTT history."""

    role: str
    latest: dict[str, float] = field(default_factory=dict)
    latest_at: int = 0
    history: deque[tuple[int, float, float | None]] = field(
        default_factory=lambda: deque(maxlen=HISTORY_POINTS)
    )
    path: str | None = None  # the summary of the agent's latest path trace of the link
    path_at: int = 0


# What an interface row shows: status and traffic, across the agent's window when it sends one
# (devices answer from a counter cache, so a per-poll rate saw-tooths), else per poll.
_WINDOWED = (
    ("in_bps", "in_bps_window"),
    ("out_bps", "out_bps_window"),
    ("util_pct", "util_pct_window"),
)


@dataclass
class InterfaceView:
    """The latest poll of one interface (`snmp_if`): status and traffic."""

    device: str
    ifname: str
    oper_up: int | None = None
    rates: dict[str, float] = field(default_factory=dict)  # in_bps, out_bps, util_pct
    window_s: float | None = None  # what `rates` span; None: per poll (an older agent)
    latest_at: int = 0


@dataclass
class ServiceView:
    """The latest run of one service the site file names."""

    kind: str
    latest: dict[str, FieldValue] = field(default_factory=dict)
    latest_at: int = 0

    def to_json(self, name: str, alerts: list[Transition]) -> dict[str, Any]:
        """The service's row: its state (from its firing alerts), and its latest run's figures."""
        firing = {
            str(alert.alertname)
            for alert in alerts
            if alert.alertname in SERVICE_ALERTS and alert.labels.get("target") == name
        }
        if AlertName.SERVICE_DOWN in firing:
            state = "down"
        elif firing:
            state = "degraded"
        else:
            state = "ok" if self.latest else "unknown"
        return {
            "name": name,
            "kind": self.kind,
            "state": state,
            "alerts": sorted(firing),
            "latest": self.latest,
            "latest_at": self.latest_at,
        }


@dataclass
class SiteView:
    """One site as the NOC sees it."""

    name: str
    parent_hospital: str
    last_seen: float | None = None  # collector clock, seconds
    links: dict[str, LinkView] = field(default_factory=dict)
    services: dict[str, ServiceView] = field(default_factory=dict)
    interfaces: dict[str, InterfaceView] = field(default_factory=dict)  # "device/ifname"
    devices: set[str] = field(default_factory=set)  # the SNMP devices the site file names


class StatusBoard:
    """Kept up to date from accepted envelopes; read by the HTTP handlers."""

    def __init__(self, inventory: Inventory) -> None:
        self.sites: dict[str, SiteView] = {}
        self.replace_inventory(inventory)

    def replace_inventory(self, inventory: Inventory) -> None:
        """Sites added or removed by a reload; what was seen of the others stays."""
        fresh = {}
        for site, config in inventory.sites.items():
            view = self.sites.get(site) or SiteView(config.name, config.parent_hospital)
            # Exactly the links and services the site file names: one no longer named is dropped.
            view.links = {
                link.name: view.links.get(link.name) or LinkView(role=link.role.value)
                for link in config.links
            }
            view.services = {
                service.name: view.services.get(service.name) or ServiceView(service.kind)
                for service in config.services
            }
            # So do interfaces: those of a device no longer named are dropped.
            view.devices = {device.name for device in config.snmp_devices}
            view.interfaces = {
                key: interface
                for key, interface in view.interfaces.items()
                if interface.device in view.devices
            }
            fresh[site] = view
        self.sites = fresh

    def observe(self, envelope: Envelope) -> None:
        """Take the `link`, `service`, `snmp_if` and path `event` rows of one envelope (replayed
        history lands in its place; a service or device the site file does not name is left
        out)."""
        view = self.sites.get(envelope.site)
        if view is None:
            return
        view.last_seen = time.time()
        for sample in envelope.samples:
            if sample.measurement != "link":
                if sample.measurement == "service":
                    self._service(view, sample.tags.get("target", ""), sample.fields, sample.time)
                elif sample.measurement == "event" and sample.tags.get("kind") == "path":
                    self._path(view, sample)
                elif sample.measurement == "snmp_if":
                    self._interface(view, sample)
                continue
            link = view.links.get(sample.tags.get("target", ""))
            if link is None:
                continue  # a link the site file does not name gets no entry (ingest refuses it)
            # On the ingest hot path: keep references, convert nothing (samples are immutable).
            fields = sample.fields
            if sample.time >= link.latest_at:
                link.latest, link.latest_at = fields, sample.time  # type: ignore[assignment]
            history = link.history
            history.append((sample.time, fields.get("loss_pct", 0.0), fields.get("rtt_p95_ms")))  # type: ignore[arg-type]
            if len(history) > 1 and history[-2][0] > sample.time:
                link.history = deque(sorted(history), maxlen=HISTORY_POINTS)

    @staticmethod
    def _interface(view: SiteView, sample: Sample) -> None:
        device, ifname = sample.tags.get("device", ""), sample.tags.get("ifname", "")
        if device not in view.devices:
            return  # a device the site file does not name: not shown
        key = f"{device}/{ifname}"
        interface = view.interfaces.get(key)
        if interface is None:
            interface = view.interfaces[key] = InterfaceView(device, ifname)
        if sample.time < interface.latest_at:
            return  # replayed history: the board shows the latest poll
        fields = sample.fields
        windowed = "window_s" in fields
        rates: dict[str, float] = {}
        for per_poll, across in _WINDOWED:
            value = fields.get(across if windowed else per_poll)
            if isinstance(value, int | float) and not isinstance(value, bool):
                rates[per_poll] = float(value)
        oper_up = fields.get("oper_up")
        interface.oper_up = int(oper_up) if isinstance(oper_up, int | float) else None
        interface.rates = rates
        window = fields.get("window_s")
        interface.window_s = float(window) if isinstance(window, int | float) else None
        interface.latest_at = sample.time

    @staticmethod
    def _path(view: SiteView, sample: Sample) -> None:
        target = sample.fields.get("target")
        summary = sample.fields.get("summary", sample.fields.get("message"))
        link = view.links.get(target) if isinstance(target, str) else None
        if link is not None and isinstance(summary, str) and sample.time >= link.path_at:
            link.path, link.path_at = summary, sample.time

    @staticmethod
    def _service(view: SiteView, target: str, fields: dict[str, FieldValue], at: int) -> None:
        service = view.services.get(target)
        if service is not None and at >= service.latest_at:
            service.latest, service.latest_at = fields, at
