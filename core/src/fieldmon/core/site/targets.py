"""Which targets a site's agent may report: per agent measurement, the tag that names the target
and the names the site file gives it.

The collector reads this to refuse a sample about something the site file does not name (a link,
device or service a stolen Pi invents), so that no row, status-board entry or alert exists for
it. Built once per site file (the collector keeps it per site and rebuilds it on SIGHUP); a
sample is then judged with two dictionary look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fieldmon.core.site.config import SiteConfig


@dataclass(frozen=True, slots=True)
class TargetRule:
    """A measurement's target: the tag that names it and the names the site file allows."""

    tag: str
    allowed: frozenset[str]


def _names(items: object) -> frozenset[str]:
    return frozenset(item.name for item in items or ())  # type: ignore[attr-defined]


def target_rules(config: SiteConfig) -> dict[str, TargetRule | None]:
    """Per agent measurement (wire.AGENT_MEASUREMENTS, one key each): its TargetRule, or None
    when its rows name no target (`host`, `event`). A measurement not here is not an agent's.

    - `link`: `target` is one of `links`;
    - `path`: `target` is a link or a service (a trace towards either);
    - `snmp_if`, `ap`: `device` is one of `snmp_devices`;
    - `service`: `target` is one of `services`.
    """
    links = _names(config.links)
    devices = _names(config.snmp_devices)
    services = _names(config.services)
    return {
        "link": TargetRule("target", links),
        "path": TargetRule("target", links | services),
        "snmp_if": TargetRule("device", devices),
        "ap": TargetRule("device", devices),
        "service": TargetRule("target", services),
        "host": None,
        "event": None,
    }
