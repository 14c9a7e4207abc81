"""Device, agent and service alerts judged from `ap`, `snmp_if`, `host` and `service` rows by
sample time.

- ApDown (`ap`, per device + radio): `up=0` for `ap_down_polls` polls in a row, or no row at all
  for that many poll intervals while the rest of the site still reports. A radio counts only
  once it was seen up (a radio disabled from the start is not an outage). Clears after
  `device_clear_polls` polls up.
- InterfaceDown (`snmp_if`, per device + ifname): `oper_up=0` for `interface_down_polls` polls,
  for an interface the agent polls (the device's `interfaces` list, or all of them without one)
  once it was seen up: a standby LTE modem or a switch port never used stays quiet.
- UplinkSaturated (`snmp_if`): `util_pct_window` (the utilisation across the agent's
  `rate_window`, from the counters' increase over it) at or over `uplink_util_pct` for
  `uplink_saturated_for`. Devices answer from a cache of their counters, so the per-poll
  `util_pct` of a steady link saw-tooths (0, 0, 3x when polled faster than the cache): judged
  per poll, a saturated uplink never holds for long enough and one near the threshold flaps.
  Rows from agents that do not send the window fields are judged on `util_pct`.
- AgentPower (`host`): `undervoltage` or `throttled` true for `power_for`.
- AgentBacklog (`host`): `outbox_depth` at or over `backlog_depth` samples, or `outbox_age_s`
  (the oldest unacknowledged sample's age, where the agent reports it) at or over `backlog_age`,
  for `backlog_for`; it clears once both are under 80 %.
- ServiceDown (`service`, per service the site file names): `up=false` for `for_rounds` runs
  in a row; clears after `clear_rounds` runs up, as a link does. Severity: the service's own
  `severity` key (default warning).
- ServiceSlow (`service`): `duration_ms` at or over the service's `slow_ms` for `for_rounds`
  runs; clears after `clear_rounds` runs under 80 % of it. A failed run says nothing about speed
  (ServiceDown judges it): it neither fires nor clears.
- CertificateExpiring (`service`): `cert_days_left` under the service's `cert_warn_days` for
  `for_rounds` runs; clears after `clear_rounds` runs at or over `cert_warn_days` / 0.8.
  ServiceSlow and CertificateExpiring are warning (info for a service marked info).
  A `service` row whose target the site file does not name is ignored: it creates no state.

Numeric device and agent conditions clear under 80 % of the threshold held for
`condition_clear_for` (hysteresis); every duration needs at least two samples, so one odd sample
never fires or clears anything. Their thresholds come from the collector's `alerting` section,
overridden per site by the site file's `alerting` section; a service's thresholds are its own
keys in the site file, its run counts the collector's `for_rounds` and `clear_rounds`. Like the
link alerts, a sample older than the newest judged goes to a separate history track (alert rows
at its own time, never a page), and a sample arriving later than its interval plus `late_after`
fires without paging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fieldmon.collector.alerts.condition import (
    Change,
    ConditionTrack,
    Debounce,
    Firing,
    Verdict,
    floor_verdict,
    numeric_verdict,
)
from fieldmon.collector.alerts.model import (
    SERVICE_ALERTS,
    AlertName,
    AlertState,
    Severity,
    Transition,
    alert_labels,
    clock_text,
    iso_time,
)
from fieldmon.collector.config import AlertingConfig
from fieldmon.core.wire.models import FieldValue, Sample

if TYPE_CHECKING:
    from fieldmon.core.site.config import SiteConfig

NS = 10**9
DEFAULT_POLL_INTERVAL = 30.0  # seconds, for a device the site file no longer lists
MISSING_SLACK = 0.5  # poll intervals of slack before a silent radio counts as missing

SEVERITY = {
    AlertName.AP_DOWN: Severity.WARNING,
    AlertName.INTERFACE_DOWN: Severity.WARNING,
    AlertName.UPLINK_SATURATED: Severity.WARNING,
    AlertName.AGENT_POWER: Severity.WARNING,
    AlertName.AGENT_BACKLOG: Severity.WARNING,
    # Service alerts take the service's severity (ServiceDown) or at most warning; see ServiceInfo.
    AlertName.SERVICE_DOWN: Severity.WARNING,
    AlertName.SERVICE_SLOW: Severity.WARNING,
    AlertName.CERTIFICATE_EXPIRING: Severity.WARNING,
}
# A "peak" means nothing for these: up is 0 while down, and fewer days left is worse, not more.
_NO_PEAK = frozenset({AlertName.SERVICE_DOWN, AlertName.CERTIFICATE_EXPIRING})


@dataclass(frozen=True)
class Limits:
    """One site's effective thresholds: collector defaults with the site's overrides."""

    ap_down_polls: int
    interface_down_polls: int
    device_clear_polls: int
    uplink_util_pct: float
    uplink_saturated_for: float
    backlog_depth: int
    backlog_age: float
    backlog_for: float
    power_for: float
    clear_for: float
    for_rounds: int  # service alerts: runs in a row to fire, as links' rounds
    clear_rounds: int  # ...and to clear

    @classmethod
    def for_site(cls, config: AlertingConfig, site: SiteConfig) -> Limits:
        """Site overrides (the site file's `alerting` section) over the collector's defaults."""
        own = site.alerting

        def pick(name: str) -> Any:
            value = getattr(own, name) if own is not None else None
            return getattr(config, name) if value is None else value

        return cls(
            ap_down_polls=pick("ap_down_polls"),
            interface_down_polls=pick("interface_down_polls"),
            device_clear_polls=config.device_clear_polls,
            uplink_util_pct=pick("uplink_util_pct"),
            uplink_saturated_for=pick("uplink_saturated_for"),
            backlog_depth=pick("backlog_depth"),
            backlog_age=pick("backlog_age"),
            backlog_for=pick("backlog_for"),
            power_for=pick("power_for"),
            clear_for=config.condition_clear_for,
            for_rounds=config.for_rounds,
            clear_rounds=config.clear_rounds,
        )

    def debounce(self, alertname: AlertName) -> Debounce:
        """How long each kind must hold to fire and be gone to clear."""
        if alertname is AlertName.AP_DOWN:
            return Debounce(self.ap_down_polls, 0.0, self.device_clear_polls, 0.0)
        if alertname is AlertName.INTERFACE_DOWN:
            return Debounce(self.interface_down_polls, 0.0, self.device_clear_polls, 0.0)
        if alertname in SERVICE_ALERTS:
            return Debounce(self.for_rounds, 0.0, self.clear_rounds, 0.0)
        held = {
            AlertName.UPLINK_SATURATED: self.uplink_saturated_for,
            AlertName.AGENT_POWER: self.power_for,
            AlertName.AGENT_BACKLOG: self.backlog_for,
        }[alertname]
        return Debounce(2, held, 2, self.clear_for)


@dataclass(frozen=True)
class Reading:
    """One sample's say on one alert: which alert, how it compares, and the measured values."""

    alertname: AlertName
    target: str
    extra_labels: dict[str, str]
    verdict: Verdict
    value: float
    measured: dict[str, str]
    interval: float
    arms: bool = False  # a GOOD reading arms the track (device alerts)
    armed_from_start: bool = True
    cause: str = ""


@dataclass(frozen=True)
class ServiceInfo:
    """One service of a site file, as its alerts need it."""

    kind: str  # dns, http, tcp: the `kind` label
    interval: float  # seconds between runs
    slow_ms: float | None  # ServiceSlow's threshold; None: never slow
    cert_warn_days: float | None  # CertificateExpiring's threshold; None: no certificate
    severity: Severity  # ServiceDown's

    @property
    def lesser_severity(self) -> Severity:
        """ServiceSlow's and CertificateExpiring's: warning, or info for an info service."""
        return Severity.INFO if self.severity is Severity.INFO else Severity.WARNING


@dataclass(frozen=True)
class SiteView:
    """What a site's readings and texts need from its config."""

    site: str
    agent: str
    parent_hospital: str
    site_name: str
    limits: Limits
    devices: dict[str, float]  # name -> poll interval (seconds)
    host_interval: float
    services: dict[str, ServiceInfo]

    @classmethod
    def build(cls, config: SiteConfig, alerting: AlertingConfig) -> SiteView:
        """From a site file and the collector's alert defaults."""
        return cls(
            site=config.site,
            agent=config.agent.id,
            parent_hospital=config.parent_hospital,
            site_name=config.name,
            limits=Limits.for_site(alerting, config),
            devices={device.name: device.interval for device in config.snmp_devices},
            host_interval=config.host.interval,
            services={
                service.name: ServiceInfo(
                    kind=service.kind,
                    interval=service.interval,
                    slow_ms=service.slow_ms,
                    cert_warn_days=getattr(service, "cert_warn_days", None),
                    severity=Severity(service.severity),
                )
                for service in config.services
            },
        )

    def interval(self, device: str) -> float:
        """A device's poll interval (seconds)."""
        return self.devices.get(device, DEFAULT_POLL_INTERVAL)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _fmt(value: float) -> str:
    return f"{value:g}"


def readings(view: SiteView, sample: Sample) -> list[Reading]:
    """What one `ap`, `snmp_if`, `host` or `service` row says about the alerts; [] for others."""
    reader = _READERS.get(sample.measurement)
    return reader(view, sample) if reader is not None else []


def _ap(view: SiteView, sample: Sample) -> list[Reading]:
    device, radio = sample.tags.get("device"), sample.tags.get("radio")
    up = _number(sample.fields.get("up"))
    if device not in view.devices or not radio or up is None:
        return []  # a device the site file does not name gets no alert state
    measured = {"up": _fmt(up)}
    for name in ("clients", "channel", "channel_util_pct", "noise_dbm"):
        value = _number(sample.fields.get(name))
        if value is not None:
            measured[name] = _fmt(value)
    return [
        Reading(
            AlertName.AP_DOWN,
            f"{device}/{radio}",
            {"device": device, "radio": radio},
            Verdict.GOOD if up >= 1 else Verdict.BAD,
            up,
            measured,
            view.interval(device),
            arms=True,
            armed_from_start=False,
            cause="down",
        )
    ]


def _snmp_if(view: SiteView, sample: Sample) -> list[Reading]:
    device, ifname = sample.tags.get("device"), sample.tags.get("ifname")
    if device not in view.devices or not ifname:
        return []
    interval = view.interval(device)
    extra = {"device": device, "ifname": ifname}
    target = f"{device}/{ifname}"
    out: list[Reading] = []
    oper_up = _number(sample.fields.get("oper_up"))
    if oper_up is not None:
        out.append(
            Reading(
                AlertName.INTERFACE_DOWN,
                target,
                extra,
                Verdict.GOOD if oper_up >= 1 else Verdict.BAD,
                oper_up,
                {"oper_up": _fmt(oper_up)},
                interval,
                arms=True,
                armed_from_start=False,
                cause="down",
            )
        )
    # Across the agent's window when it sends one; per poll from agents that do not.
    windowed = "util_pct_window" in sample.fields
    suffix = "_window" if windowed else ""
    util = _number(sample.fields.get(f"util_pct{suffix}"))
    if util is not None:
        measured = {"util_pct": f"{util:.1f}"}
        for name in ("in_bps", "out_bps"):
            value = _number(sample.fields.get(f"{name}{suffix}"))
            if value is not None:
                measured[name] = f"{value:.0f}"
        window = _number(sample.fields.get("window_s")) if windowed else None
        if window is not None:
            measured["window_s"] = f"{window:.0f}"
        out.append(
            Reading(
                AlertName.UPLINK_SATURATED,
                target,
                extra,
                numeric_verdict(util, view.limits.uplink_util_pct),
                util,
                measured,
                interval,
                cause="saturated",
            )
        )
    return out


def _host(view: SiteView, sample: Sample) -> list[Reading]:
    agent = sample.tags.get("agent") or view.agent
    if agent != view.agent:
        return []  # the site's own agent only: another name would open alert state per name
    fields = sample.fields
    out: list[Reading] = []
    flags = {name: fields[name] for name in ("undervoltage", "throttled") if name in fields}
    if flags:
        on = [name for name, value in flags.items() if bool(value)]
        out.append(
            Reading(
                AlertName.AGENT_POWER,
                agent,
                {"agent": agent},
                Verdict.BAD if on else Verdict.GOOD,
                float(len(on)),
                {name: "true" if value else "false" for name, value in flags.items()},
                view.host_interval,
                cause=" and ".join(_POWER_WORDS[name] for name in on),
            )
        )
    backlog = _backlog(view, agent, fields)
    return out if backlog is None else [*out, backlog]


def _backlog(view: SiteView, agent: str, fields: dict[str, FieldValue]) -> Reading | None:
    limits = view.limits
    checks = {
        "outbox_depth": (_number(fields.get("outbox_depth")), float(limits.backlog_depth)),
        "outbox_age_s": (_number(fields.get("outbox_age_s")), limits.backlog_age),
    }
    present = {name: (value, limit) for name, (value, limit) in checks.items() if value is not None}
    if not present:
        return None
    verdicts = [numeric_verdict(value, limit) for value, limit in present.values()]
    if Verdict.BAD in verdicts:
        verdict = Verdict.BAD
    elif all(v is Verdict.GOOD for v in verdicts):
        verdict = Verdict.GOOD
    else:
        verdict = Verdict.HOVER
    over = [name for name, (value, limit) in present.items() if value >= limit]
    depth = present.get("outbox_depth", (0.0, 0.0))[0] or 0.0
    return Reading(
        AlertName.AGENT_BACKLOG,
        agent,
        {"agent": agent},
        verdict,
        depth,
        {name: f"{value:.0f}" for name, (value, _) in present.items()},
        view.host_interval,
        cause=" and ".join(_BACKLOG_WORDS[name] for name in over),
    )


# What a service alert's annotations carry from its row, and how each is written.
_SERVICE_MEASURED = {
    "duration_ms": "{:.1f}",
    "dns_ms": "{:.1f}",
    "connect_ms": "{:.1f}",
    "tls_ms": "{:.1f}",
    "ttfb_ms": "{:.1f}",
    "status_code": "{:.0f}",
    "cert_days_left": "{:.1f}",
    "rcode": "{}",
    "answers": "{:.0f}",
    "error": "{}",
}


def _service(view: SiteView, sample: Sample) -> list[Reading]:
    target = sample.tags.get("target", "")
    service = view.services.get(target)
    up = sample.fields.get("up")
    if service is None or not isinstance(up, bool):
        return []  # a service the site file does not name: no state for it, ever
    fields = sample.fields
    measured = {
        name: pattern.format(fields[name])
        for name, pattern in _SERVICE_MEASURED.items()
        if name in fields and not isinstance(fields[name], bool)
    }
    error = fields.get("error")
    out = [
        Reading(
            AlertName.SERVICE_DOWN,
            target,
            {"kind": service.kind, "severity": service.severity.value},
            Verdict.GOOD if up else Verdict.BAD,
            1.0 if up else 0.0,
            measured,
            service.interval,
            cause=error if isinstance(error, str) else "failed",
        )
    ]
    lesser = {"kind": service.kind, "severity": service.lesser_severity.value}
    duration = _number(fields.get("duration_ms"))
    if service.slow_ms is not None and duration is not None:
        out.append(
            Reading(
                AlertName.SERVICE_SLOW,
                target,
                lesser,
                # A failed run is ServiceDown's business: it says nothing about speed.
                numeric_verdict(duration, service.slow_ms) if up else Verdict.HOVER,
                duration,
                measured,
                service.interval,
                cause="slow",
            )
        )
    days = _number(fields.get("cert_days_left"))
    if service.cert_warn_days is not None and days is not None:
        out.append(
            Reading(
                AlertName.CERTIFICATE_EXPIRING,
                target,
                lesser,
                floor_verdict(days, service.cert_warn_days),
                days,
                measured,
                service.interval,
                cause="expired" if days < 0 else "expiring",
            )
        )
    return out


_POWER_WORDS = {"undervoltage": "under-voltage", "throttled": "throttled"}
_BACKLOG_WORDS = {"outbox_depth": "depth", "outbox_age_s": "age"}
_READERS: dict[str, Callable[[SiteView, Sample], list[Reading]]] = {
    "ap": _ap,
    "snmp_if": _snmp_if,
    "host": _host,
    "service": _service,
}


# --- texts ------------------------------------------------------------------------------------


def _what(alertname: AlertName, labels: dict[str, str], agent: str) -> str:
    if alertname in SERVICE_ALERTS:
        return f"service {labels['target']} ({labels.get('kind', '?')})"
    if alertname is AlertName.AP_DOWN:
        return f"AP {labels['device']} radio {labels['radio']}"
    if alertname in (AlertName.INTERFACE_DOWN, AlertName.UPLINK_SATURATED):
        return f"interface {labels['ifname']} on {labels['device']}"
    return f"agent {agent}"


def _threshold_text(alertname: AlertName, view: SiteView, target: str) -> str:
    limits = view.limits
    if alertname in SERVICE_ALERTS:
        return _service_threshold_text(alertname, limits, view.services.get(target))
    return {
        AlertName.AP_DOWN: f"down for {limits.ap_down_polls} polls",
        AlertName.INTERFACE_DOWN: f"down for {limits.interface_down_polls} polls",
        AlertName.UPLINK_SATURATED: (
            f"util >= {limits.uplink_util_pct:g} % for {limits.uplink_saturated_for:g} s"
        ),
        AlertName.AGENT_POWER: f"under-voltage or throttled for {limits.power_for:g} s",
        AlertName.AGENT_BACKLOG: (
            f"outbox >= {limits.backlog_depth} samples or oldest >= {limits.backlog_age:g} s, "
            f"for {limits.backlog_for:g} s"
        ),
    }[alertname]


def _service_threshold_text(
    alertname: AlertName, limits: Limits, service: ServiceInfo | None
) -> str:
    runs = f"for {limits.for_rounds} runs, clears after {limits.clear_rounds}"
    if alertname is AlertName.SERVICE_DOWN:
        return f"failed {runs} up"
    if alertname is AlertName.SERVICE_SLOW:
        slow = "?" if service is None or service.slow_ms is None else f"{service.slow_ms:g}"
        return f"duration >= {slow} ms (slow_ms) {runs} under 80 %"
    days = None if service is None else service.cert_warn_days
    warn = "?" if days is None else f"{days:g}"
    return f"certificate under {warn} days left (cert_warn_days) {runs}"


def _service_headline(
    alertname: AlertName, what: str, firing: Firing, measured: dict[str, str]
) -> str:
    since = clock_text(firing.starts_at)
    if alertname is AlertName.SERVICE_DOWN:
        cause = firing.cause or "failed"
        if cause == "status" and "status_code" in measured:
            cause = f"status {measured['status_code']}"
        return f"{what} down since {since} ({cause})"
    if alertname is AlertName.SERVICE_SLOW:
        return f"{what} slow since {since} ({measured.get('duration_ms', '?')} ms)"
    days = measured.get("cert_days_left", "?")
    if firing.cause == "expired":
        return f"{what} certificate expired {days.lstrip('-')} days ago"
    return f"{what} certificate expires in {days} days (since {since})"


def _headline(alertname: AlertName, what: str, firing: Firing, measured: dict[str, str]) -> str:
    if alertname in SERVICE_ALERTS:
        return _service_headline(alertname, what, firing, measured)
    since = clock_text(firing.starts_at)
    if alertname is AlertName.AP_DOWN and firing.cause == "missing":
        return f"{what} not reporting since {since}"
    if alertname in (AlertName.AP_DOWN, AlertName.INTERFACE_DOWN):
        return f"{what} down since {since}"
    if alertname is AlertName.UPLINK_SATURATED:
        over = f" over {measured['window_s']} s" if "window_s" in measured else ""
        return f"{what} saturated since {since} (util {measured.get('util_pct', '?')} %{over})"
    if alertname is AlertName.AGENT_POWER:
        return f"{what} power problem since {since}: {firing.cause or 'flags set'}"
    held = [
        pattern.format(measured[name])
        for name, pattern in (("outbox_depth", "{} samples"), ("outbox_age_s", "oldest {} s"))
        if name in measured
    ]
    return f"{what} outbox backlog since {since} ({', '.join(held)})"


def transition(
    view: SiteView,
    alertname: AlertName,
    change: Change,
    *,
    target: str,
    extra_labels: dict[str, str],
    measured: dict[str, str],
    value: float,
) -> Transition:
    """The alert a condition change makes, with the fixed labels and the measured values."""
    firing = change.firing
    labels = {**alert_labels(alertname, view.site, target, SEVERITY[alertname]), **extra_labels}
    what = _what(alertname, labels, view.agent)
    history = not firing.paged
    if change.state is AlertState.RESOLVED:
        summary = f"{view.site}: {what} recovered (was {alertname.value} since " + (
            f"{clock_text(firing.starts_at)})"
        )
        description = "back to normal" if not history else "replayed history; not live"
    else:
        summary = f"{view.site}: {_headline(alertname, what, firing, measured)}"
        description = (
            f"threshold: {_threshold_text(alertname, view, target)}"
            if not history
            else f"replayed history from {view.agent}; this episode is not live"
        )
    annotations = {
        "summary": summary,
        "description": description,
        **measured,
        "peak": _fmt(firing.peak),
        "since": iso_time(firing.starts_at),
        "thresholds": _threshold_text(alertname, view, target),
        "cause": firing.cause,
        "agent": view.agent,
        "parent_hospital": view.parent_hospital,
        "site_name": view.site_name,
        "history": "true" if history else "false",
    }
    if alertname in _NO_PEAK:
        del annotations["peak"]
    resolved = change.state is AlertState.RESOLVED
    return Transition(
        alertname=alertname,
        labels=labels,
        annotations=annotations,
        state=change.state,
        starts_at=firing.starts_at,
        ends_at=change.at if resolved else None,
        value=value,
        page=change.page,
    )


# --- the book of condition tracks ---------------------------------------------------------------


@dataclass
class KindTrack:
    """One alert's live track, its history (backfill) track, and the labels it goes out with."""

    extra_labels: dict[str, str]
    live: ConditionTrack = field(default_factory=ConditionTrack)
    history: ConditionTrack | None = None
    arrived_at: float | None = None  # collector clock of the last row (not persisted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        return {
            "extra_labels": self.extra_labels,
            "live": self.live.to_dict(),
            "history": self.history.to_dict() if self.history else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KindTrack:
        """Rebuild from `to_dict` output."""
        history = ConditionTrack.from_dict(data["history"]) if data.get("history") else None
        return cls(dict(data["extra_labels"]), ConditionTrack.from_dict(data["live"]), history)


TrackKey = tuple[str, str, str]  # (alertname, site, target)


@dataclass
class SiteClock:
    """A site's newest sample time and since when it reports without a break (arrival)."""

    newest: int | None = None  # ns, sample time
    heard_at: float | None = None  # collector clock
    live_since: float | None = None  # collector clock: first arrival after a break


class ConditionAlerts:
    """Every ApDown, InterfaceDown, UplinkSaturated, AgentPower, AgentBacklog, ServiceDown,
    ServiceSlow and CertificateExpiring track."""

    def __init__(
        self,
        sites: dict[str, SiteConfig],
        config: AlertingConfig,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        self.views = {name: SiteView.build(site, config) for name, site in sites.items()}
        self._config = config
        self._clock = clock
        self._started = started
        self.tracks: dict[TrackKey, KindTrack] = {}
        self._sites: dict[str, SiteClock] = {}

    def heard(self, site: str, now: float) -> None:
        """An envelope from `site` arrived (for the missing-radio rule's break detection)."""
        if site not in self.views:
            return
        clock = self._sites.setdefault(site, SiteClock())
        if clock.heard_at is None or now - clock.heard_at > self._config.late_after:
            clock.live_since = now
        clock.heard_at = now

    def judge(
        self, site: str, sample: Sample, late: Callable[[int, float], bool]
    ) -> list[Transition]:
        """One sample of `site`; `late(time, interval)` says whether it arrived too late to page."""
        view = self.views.get(site)
        if view is None:
            return []
        clock = self._sites.setdefault(site, SiteClock())
        if clock.newest is None or sample.time > clock.newest:
            clock.newest = sample.time
        out: list[Transition] = []
        for reading in readings(view, sample):
            out.extend(self._judge_reading(view, reading, sample.time, late))
        return out

    def _judge_reading(
        self, view: SiteView, reading: Reading, at: int, late: Callable[[int, float], bool]
    ) -> list[Transition]:
        key = (reading.alertname.value, view.site, reading.target)
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = KindTrack(dict(reading.extra_labels))
            track.live.armed = reading.armed_from_start
        elif track.live.firing is None and (track.history is None or not track.history.firing):
            # Between episodes the labels follow the site file (a service's new severity); an
            # open alert keeps the labels it fired with, so its resolve matches it.
            track.extra_labels = dict(reading.extra_labels)
        track.arrived_at = self._clock()
        debounce = view.limits.debounce(reading.alertname)
        live = track.live
        if live.newest is None or at > live.newest:
            changes = self._feed(live, reading, at, debounce, late=late(at, reading.interval))
        elif at == live.newest:
            return []  # an exact resend
        else:
            history = track.history
            if history is None or _restarts_backfill(history, at):
                armed = live.armed or reading.armed_from_start
                history = track.history = ConditionTrack(armed=armed)
            if history.newest is not None and at <= history.newest:
                return []  # out of order even within the backfill: stored, not judged
            changes = self._feed(history, reading, at, debounce, late=True)
        return [
            transition(
                view,
                reading.alertname,
                change,
                target=reading.target,
                extra_labels=track.extra_labels,
                measured=reading.measured,
                value=reading.value,
            )
            for change in changes
        ]

    @staticmethod
    def _feed(
        track: ConditionTrack, reading: Reading, at: int, debounce: Debounce, *, late: bool
    ) -> list[Change]:
        verdict = reading.verdict
        if not track.armed:
            if reading.arms and verdict is Verdict.GOOD:
                track.armed = True
            else:
                verdict = Verdict.HOVER  # never seen working: not an outage, and not a clear
        return track.judge(at, verdict, reading.value, debounce, late=late, cause=reading.cause)

    def tick(self, now: float) -> list[Transition]:
        """ApDown for radios that stopped reporting while their site still reports."""
        out: list[Transition] = []
        for key, track in self.tracks.items():
            if key[0] != AlertName.AP_DOWN.value:
                continue
            change = self._missing(key[1], track, now)
            if change is not None:
                view = self.views[key[1]]
                target = key[2]
                out.append(
                    transition(
                        view,
                        AlertName.AP_DOWN,
                        change,
                        target=target,
                        extra_labels=track.extra_labels,
                        measured={"polls_missing": _fmt(self._polls_missing(view, track))},
                        value=0.0,
                    )
                )
        return out

    def _missing(self, site: str, track: KindTrack, now: float) -> Change | None:
        view = self.views.get(site)
        clock = self._sites.get(site)
        live = track.live
        if view is None or clock is None or clock.newest is None or live.newest is None:
            return None
        if live.firing is not None or not live.armed:
            return None
        device = track.extra_labels.get("device", "")
        if device not in view.devices:
            return None  # no longer polled: not an outage
        interval = view.interval(device)
        needed = (view.limits.ap_down_polls + MISSING_SLACK) * interval
        if (clock.newest - live.newest) / NS < needed:
            return None  # by sample time the site has not moved on far enough
        # ...and for as long by arrival, so a fresh-first replay's newest rows arriving ahead of
        # this radio's rows is not mistaken for it having gone.
        reference = max(track.arrived_at or 0.0, clock.live_since or 0.0, self._started)
        if now - reference < needed:
            return None
        changes = live.force_fire(live.newest + int(interval * NS), 0.0, "missing")
        return changes[0] if changes else None

    def _polls_missing(self, view: SiteView, track: KindTrack) -> float:
        clock = self._sites[view.site]
        interval = view.interval(track.extra_labels.get("device", ""))
        if clock.newest is None or track.live.newest is None:
            return 0.0
        return float(int((clock.newest - track.live.newest) / NS / interval))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready snapshot."""
        return {"/".join(key): track.to_dict() for key, track in self.tracks.items()}

    def restore(self, data: dict[str, Any]) -> None:
        """Resume from `to_dict` output; sites no longer in the inventory are dropped."""
        self.tracks = {}
        for text, track in data.items():
            alertname, site, target = text.split("/", 2)
            if site in self.views:
                self.tracks[(alertname, site, target)] = KindTrack.from_dict(track)

    def active(self) -> list[tuple[TrackKey, KindTrack]]:
        """Tracks with a live alert firing (paged or not)."""
        return [(key, track) for key, track in self.tracks.items() if track.live.firing]


def _restarts_backfill(track: ConditionTrack, at: int) -> bool:
    """A new backfill batch that starts before an idle previous one is judged afresh."""
    return track.firing is None and at < (track.newest or 0)
