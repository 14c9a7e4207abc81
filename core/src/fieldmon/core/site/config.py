"""The site config: one YAML per site, the agent's whole configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.config.loader import load_model
from fieldmon.core.config.types import Duration, StrictModel
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.dns import DnsServiceConfig
from fieldmon.core.site.hooks import HooksConfig
from fieldmon.core.site.host import HostConfig
from fieldmon.core.site.http import HttpServiceConfig
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.site.outbox import OutboxConfig
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.site.tcp import TcpServiceConfig
from fieldmon.core.wire.models import MAX_SAMPLES_PER_ENVELOPE, RESERVED_IDS, Identifier

Named = IcmpLinkConfig | SnmpDeviceConfig | DnsServiceConfig | HttpServiceConfig | TcpServiceConfig


def _not_reserved(value: str) -> str:
    if value in RESERVED_IDS:
        raise ValueError(f"{value!r} is reserved: it names the site's alert topic")
    return value


class AgentSection(StrictModel):
    """Who the agent is and where it sends."""

    id: Identifier  # also its MQTT username
    broker: BrokerConfig
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    # At most the wire's cap, which the collector enforces (it rejects bigger envelopes whole).
    max_samples_per_envelope: Annotated[int, Field(ge=1, le=MAX_SAMPLES_PER_ENVELOPE)] = 500
    # Rounds finishing within this long of each other share an envelope (fewer MQTT messages).
    linger: Annotated[Duration, Field(ge=0, le=60)] = 1.0

    _reserved_id = field_validator("id")(_not_reserved)

    @model_validator(mode="after")
    def _username_is_id(self) -> AgentSection:
        username = self.broker.username
        if username is not None and username != self.id:
            raise FieldValueError(
                ("broker", "username"),
                f"{username!r} must equal agent.id {self.id!r}: "
                "the broker ACL lets an agent write only under its own username",
            )
        return self


class SiteAlerting(StrictModel):
    """This site's overrides of the collector's alert defaults (collector `alerting` section)."""

    ap_down_polls: Annotated[int, Field(ge=1, le=100)] | None = None
    interface_down_polls: Annotated[int, Field(ge=1, le=100)] | None = None
    uplink_util_pct: Annotated[float, Field(gt=0, le=100)] | None = None
    uplink_saturated_for: Annotated[Duration, Field(ge=0)] | None = None
    backlog_depth: Annotated[int, Field(ge=1)] | None = None  # samples in the outbox
    backlog_age: Annotated[Duration, Field(gt=0)] | None = None  # oldest unacked sample
    backlog_for: Annotated[Duration, Field(ge=0)] | None = None
    power_for: Annotated[Duration, Field(ge=0)] | None = None


# One entry of `services`: its `kind` key says which model reads it.
ServiceEntry = Annotated[
    DnsServiceConfig | HttpServiceConfig | TcpServiceConfig, Field(discriminator="kind")
]


class SiteConfig(StrictModel):
    """A field hospital site: its agent, links, SNMP devices, services and host checks."""

    site: Identifier
    name: Annotated[str, Field(min_length=1)]
    parent_hospital: Identifier
    agent: AgentSection
    links: list[IcmpLinkConfig] = Field(default_factory=list)
    snmp_devices: list[SnmpDeviceConfig] = Field(default_factory=list)
    services: list[ServiceEntry] = Field(default_factory=list)  # DNS, HTTP(S) and TCP checks
    host: HostConfig = Field(default_factory=HostConfig)
    hooks: HooksConfig | None = None
    alerting: SiteAlerting | None = None  # read by the collector's alert engine

    _reserved_site = field_validator("site")(_not_reserved)

    @field_validator("links", "snmp_devices", "services")
    @classmethod
    def _unique_names(cls, items: list[Named], info: ValidationInfo) -> list[Named]:
        first_index: dict[str, int] = {}
        for index, item in enumerate(items):
            if item.name in first_index:
                raise FieldValueError(
                    (index, "name"),
                    f"{item.name!r} is already the name of "
                    f"{info.field_name}[{first_index[item.name]}]; names must be unique "
                    "(they become the target / device tag)",
                )
            first_index[item.name] = index
        return items


def load_site_config(
    path: Path | str, *, check_files: bool = True, shape_only: bool = False
) -> SiteConfig:
    """Load and validate a site file; raises ConfigError naming file, field and line.

    `check_files=False` is for the collector's inventory, which does not hold agents' secrets;
    `shape_only=True` for the repository's examples, whose secrets are placeholders.
    """
    return load_model(path, SiteConfig, check_files=check_files, shape_only=shape_only)
