"""The site config: one YAML per site, the agent's whole configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from fieldmon.agent.outbox_config import OutboxConfig
from fieldmon.agent.probes.host import HostConfig
from fieldmon.agent.probes.icmp import IcmpLinkConfig
from fieldmon.agent.probes.snmp import SnmpDeviceConfig
from fieldmon.config.loader import load_model
from fieldmon.config.types import Duration, StrictModel
from fieldmon.firmware_hooks.hooks import HooksConfig
from fieldmon.mqtt import BrokerConfig
from fieldmon.wire.models import Identifier


class AgentSection(StrictModel):
    """Who the agent is and where it sends."""

    id: Identifier  # also its MQTT username
    broker: BrokerConfig
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    max_samples_per_envelope: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Rounds finishing within this long of each other share an envelope (fewer MQTT messages).
    linger: Annotated[Duration, Field(ge=0, le=60)] = 1.0


class SiteConfig(StrictModel):
    """A field hospital site: its agent, links, SNMP devices and host checks."""

    site: Identifier
    name: Annotated[str, Field(min_length=1)]
    parent_hospital: Identifier
    agent: AgentSection
    links: list[IcmpLinkConfig] = Field(default_factory=list)
    snmp_devices: list[SnmpDeviceConfig] = Field(default_factory=list)
    host: HostConfig = Field(default_factory=HostConfig)
    hooks: HooksConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SiteConfig:
        if self.site == "alerts" or self.agent.id == "alerts":
            raise ValueError("'alerts' is reserved: it names the site's alert topic")
        _unique("links", [link.name for link in self.links])
        _unique("snmp_devices", [device.name for device in self.snmp_devices])
        username = self.agent.broker.username
        if username is not None and username != self.agent.id:
            raise ValueError(
                f"agent.broker.username {username!r} must equal agent.id {self.agent.id!r}: "
                "the broker ACL lets an agent write only under its own username"
            )
        return self


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{section}: name {name!r} is used twice; names must be unique")
        seen.add(name)


def load_site_config(path: Path | str) -> SiteConfig:
    """Load and validate a site file; raises ConfigError naming file, field and line."""
    return load_model(path, SiteConfig)
