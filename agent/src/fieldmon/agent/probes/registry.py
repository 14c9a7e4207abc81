"""Which probes a site file asks for: one builder per probe kind, one line each in PROBE_KINDS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fieldmon.agent.probes.base import Probe
from fieldmon.agent.probes.host import HostProbe
from fieldmon.agent.probes.icmp import IcmpProbe
from fieldmon.agent.probes.icmp_socket import IcmpPinger
from fieldmon.agent.probes.snmp import SnmpProbe
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.core.site.config import SiteConfig


@dataclass(frozen=True)
class ProbeResources:
    """What probes of one agent share: sockets, clients, and the outbox's depth."""

    pinger: IcmpPinger
    snmp: SnmpClient
    outbox_depth: Callable[[], int]
    outbox_dropped: Callable[[], int] | None = None  # samples dropped at the cap, cumulative
    outbox_age_s: Callable[[], float] | None = None  # age of the oldest waiting envelope


def icmp_probes(config: SiteConfig, resources: ProbeResources) -> list[Probe]:
    """One ICMP probe per link."""
    return [
        IcmpProbe(link, pinger=resources.pinger, site=config.site, agent=config.agent.id)
        for link in config.links
    ]


def snmp_probes(config: SiteConfig, resources: ProbeResources) -> list[Probe]:
    """One SNMP probe per device, polled with its profile (if-mib or an AP profile file)."""
    return [
        SnmpProbe(device, site=config.site, agent=config.agent.id, client=resources.snmp)
        for device in config.snmp_devices
    ]


def host_probes(config: SiteConfig, resources: ProbeResources) -> list[Probe]:
    """The agent's own host and Pi firmware."""
    return [
        HostProbe(
            config.host,
            site=config.site,
            agent=config.agent.id,
            outbox_depth=resources.outbox_depth,
            outbox_dropped=resources.outbox_dropped,
            outbox_age_s=resources.outbox_age_s,
        )
    ]


PROBE_KINDS: dict[str, Callable[[SiteConfig, ProbeResources], list[Probe]]] = {
    "icmp": icmp_probes,
    "snmp": snmp_probes,
    "host": host_probes,
}


def build_probes(config: SiteConfig, resources: ProbeResources) -> list[Probe]:
    """Every probe the site file asks for."""
    return [probe for build in PROBE_KINDS.values() for probe in build(config, resources)]
