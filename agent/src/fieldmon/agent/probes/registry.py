"""The probe kinds the agent knows, one line each; the daemon, `check` and the meta-test read it.

Each kind's module defines its `KIND` (fieldmon.agent.probes.base.ProbeKind): config model,
site-file section, probe class, what it emits, how one probe is built and shown in `check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fieldmon.agent.probes import dns, host, http, icmp, snmp, tcp
from fieldmon.agent.probes.base import Probe, ProbeKind, ProbeResources
from fieldmon.core.site.config import SiteConfig

PROBE_KINDS: tuple[ProbeKind[Any], ...] = (
    icmp.KIND,
    snmp.KIND,
    host.KIND,
    dns.KIND,
    http.KIND,
    tcp.KIND,
)


def setup_errors() -> tuple[type[Exception], ...]:
    """What building probes from a valid site file can raise, over every kind."""
    errors: list[type[Exception]] = []
    for kind in PROBE_KINDS:
        errors += [error for error in kind.setup_errors if error not in errors]
    return tuple(errors)


@dataclass(frozen=True)
class Planned:
    """One target of the site file: its probe, or why it could not be built."""

    kind: ProbeKind[Any]
    config: Any  # an instance of kind.config_model
    probe: Probe | None
    error: Exception | None = None

    @property
    def name(self) -> str:
        """The target's name (the probe's, or the config's when there is no probe)."""
        return self.probe.name if self.probe is not None else self.kind.target_name(self.config)


def plan_probes(config: SiteConfig, resources: ProbeResources) -> list[Planned]:
    """Every target the site file asks for, in registry order; a setup error is kept, not raised."""
    planned = []
    for kind in PROBE_KINDS:
        for target in kind.configs(config):
            try:
                planned.append(Planned(kind, target, kind.build(target, config, resources)))
            except kind.setup_errors as exc:
                planned.append(Planned(kind, target, None, exc))
    return planned


def build_probes(config: SiteConfig, resources: ProbeResources) -> list[Probe]:
    """Every probe the site file asks for; raises the first setup error (see setup_errors())."""
    return [
        kind.build(target, config, resources)
        for kind in PROBE_KINDS
        for target in kind.configs(config)
    ]
