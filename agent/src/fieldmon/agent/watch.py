"""The agent's own judgement of links, services, power and the broker, for hooks that act alone.

Pure logic on the agent's own rows and clocks (no I/O); fieldmon.agent.events turns what these
find into hook events and `event` rows.

- `LinkWatch`: each ICMP link's rounds, as they complete, through the same state machine and
  the same defaults as the collector's alert engine (fieldmon.core.linkstate) with the link's
  own thresholds from the site file. A change of state is an event (link_down, link_degraded,
  link_up). A link's first judgement after the agent starts is announced too, once it is
  established (ok after `clear_rounds` good rounds, or the first change), so hooks learn where
  every link stands after a restart; `previous` is then None.
- `ServiceWatch`: `service` rows (their `up` field) with the links' debounce: service_down after
  `for_rounds` failed runs in a row, service_up after `clear_rounds` good ones. Any probe whose
  rows are `service` rows with `up` gets these events without code of its own.
- `PowerWatch`: `host` rows; `power` when under-voltage or throttling starts.
- `BrokerWatch`: the MQTT connection, debounced: broker_down once it has been down for
  `down_after`, broker_up once it has been back for `up_after` after a broker_down; a link that
  flaps faster than that says nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fieldmon.core.linkstate import (
    DEFAULT_RULES,
    ChangeKind,
    LinkMachine,
    LinkState,
    Round,
    Rules,
    Thresholds,
    link_thresholds,
)
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.wire.models import FieldValue, Sample
from fieldmon.firmware_hooks.hooks import EventName

BROKER_DOWN_AFTER_S = 30.0  # disconnected this long before broker_down
BROKER_UP_AFTER_S = 30.0  # connected again this long (after a broker_down) before broker_up

_LINK_EVENT = {
    LinkState.OK: EventName.LINK_UP,
    LinkState.DEGRADED: EventName.LINK_DEGRADED,
    LinkState.DOWN: EventName.LINK_DOWN,
}


@dataclass(frozen=True)
class Seen:
    """Something one of the watches found: the event, what it is about, when, and details."""

    event: EventName
    at: int  # ns since the epoch: the sample time that decided it, or the clock's
    target: str | None = None
    details: dict[str, FieldValue | None] = field(default_factory=dict)


@dataclass
class _Link:
    config: IcmpLinkConfig
    thresholds: Thresholds
    machine: LinkMachine = field(default_factory=LinkMachine)
    announced: bool = False  # the first judgement since the agent started has been reported


class LinkWatch:
    """Judges each ICMP link of the site file from its `link` rows."""

    def __init__(self, links: Iterable[IcmpLinkConfig], rules: Rules = DEFAULT_RULES) -> None:
        self.rules = rules
        self._links = {link.name: _Link(link, link_thresholds(link.thresholds)) for link in links}

    def adopt(self, old: LinkWatch) -> None:
        """Keep the judgement of each link `old` also watched with the same address and
        thresholds (a reload that changes other links must not re-announce this one)."""
        for name, link in self._links.items():
            before = old._links.get(name)
            if (
                before is not None
                and before.config.address == link.config.address
                and before.thresholds == link.thresholds
            ):
                link.machine, link.announced = before.machine, before.announced

    def state(self, name: str) -> LinkState:
        """The link's judged state now (ok until judged otherwise)."""
        return self._links[name].machine.state

    def thresholds(self, name: str) -> Thresholds:
        """What the link is judged against."""
        return self._links[name].thresholds

    def observe(self, sample: Sample) -> list[Seen]:
        """One `link` row (others are ignored); what changed."""
        if sample.measurement != "link":
            return []
        link = self._links.get(sample.tags.get("target", ""))
        round_ = Round.from_sample(sample)
        if link is None or round_ is None:
            return []
        newest = link.machine.newest
        if newest is not None and round_.time <= newest:
            return []  # rounds of one link complete in order; an older one is no news
        # Before its first judgement the link's state is unknown, whatever the machine assumes.
        previous = link.machine.state if link.announced else None
        changes = link.machine.judge(round_, link.thresholds, self.rules)
        if any(change.kind is ChangeKind.STATE for change in changes):
            link.announced = True
            return [self._seen(link, round_, previous)]
        if not link.announced and link.machine.streaks.good.count >= self.rules.clear_rounds:
            link.announced = True
            return [self._seen(link, round_, None)]
        return []

    @staticmethod
    def _seen(link: _Link, round_: Round, previous: LinkState | None) -> Seen:
        machine = link.machine
        details: dict[str, FieldValue | None] = {
            "state": machine.state.value,
            "previous": previous.value if previous is not None else None,
            "since": machine.since if machine.since is not None else round_.time,
            "role": link.config.role.value,
            "address": link.config.address,
            "interface": link.config.interface,
            "loss_pct": round_.loss_pct,
            "rtt_p95_ms": round_.rtt_p95_ms,
            "jitter_ms": round_.jitter_ms,
            "flapping": machine.flapping,
        }
        return Seen(_LINK_EVENT[machine.state], round_.time, link.config.name, details)


@dataclass
class _Service:
    up: bool | None = None  # None: not established since the agent started
    failed: int = 0
    good: int = 0


class ServiceWatch:
    """Debounces `service` rows into service_down / service_up."""

    def __init__(self, rules: Rules = DEFAULT_RULES) -> None:
        self.rules = rules
        self._services: dict[str, _Service] = {}

    def observe(self, sample: Sample) -> list[Seen]:
        """One `service` row (others are ignored); what changed."""
        up = sample.fields.get("up")
        target = sample.tags.get("target")
        if sample.measurement != "service" or not isinstance(up, bool) or not target:
            return []
        return self.result(target, up, sample.time, kind=sample.tags.get("kind"))

    def result(self, target: str, up: bool, at: int, **details: FieldValue | None) -> list[Seen]:
        """One run of a service probe: did `target` answer as it should?"""
        service = self._services.setdefault(target, _Service())
        service.failed, service.good = (0, service.good + 1) if up else (service.failed + 1, 0)
        if service.up is not False and service.failed >= self.rules.for_rounds:
            service.up = False
            return [Seen(EventName.SERVICE_DOWN, at, target, {"failed_runs": service.failed})]
        if service.up is not True and service.good >= self.rules.clear_rounds:
            service.up = True
            return [Seen(EventName.SERVICE_UP, at, target, dict(details))]
        return []


class PowerWatch:
    """`power` when the Pi firmware reports under-voltage or throttling, once per episode."""

    def __init__(self) -> None:
        self._short = False

    def observe(self, sample: Sample) -> list[Seen]:
        """One `host` row (others are ignored)."""
        if sample.measurement != "host":
            return []
        undervoltage = sample.fields.get("undervoltage") is True
        throttled = sample.fields.get("throttled") is True
        short, self._short = self._short, undervoltage or throttled
        if self._short and not short:
            details = {"undervoltage": undervoltage, "throttled": throttled}
            return [Seen(EventName.POWER, sample.time, None, dict(details))]
        return []


class BrokerWatch:
    """The MQTT connection's state, debounced (see the module docstring); times in seconds."""

    def __init__(
        self,
        started: float,
        *,
        down_after: float = BROKER_DOWN_AFTER_S,
        up_after: float = BROKER_UP_AFTER_S,
    ) -> None:
        self.down_after = down_after
        self.up_after = up_after
        self.reported_down = False
        self._connected = False
        self._since = started  # when the current connected / disconnected spell began

    def observe(self, connected: bool, now: float) -> EventName | None:
        """The connection's state now; broker_down / broker_up when one is due."""
        if connected != self._connected:
            self._connected, self._since = connected, now
        held = now - self._since
        if not connected and not self.reported_down and held >= self.down_after:
            self.reported_down = True
            return EventName.BROKER_DOWN
        if connected and self.reported_down and held >= self.up_after:
            self.reported_down = False
            return EventName.BROKER_UP
        return None

    def held(self, now: float) -> float:
        """Seconds the connection has been in its current state (up or down)."""
        return now - self._since
