"""ICMP echo rounds to a link's far end.

Emits one `link` row per round, timestamped at the round's start (ns since the epoch):
- tags: site, agent, target (the link's name), role (parent, internet, gateway, ap)
- fields: sent, received (integer echoes); loss_pct (percent); rtt_min_ms, rtt_avg_ms,
  rtt_p50_ms, rtt_p95_ms, rtt_max_ms (milliseconds, left out when nothing answered);
  jitter_ms (milliseconds, left out with fewer than two replies); mos (E-model score,
  1.0 to 4.5). Definitions: fieldmon.agent.stats.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator, model_validator

from fieldmon.agent.stats import summarize
from fieldmon.config.types import Duration, StrictModel
from fieldmon.wire.models import FieldValue, Identifier, Sample

if TYPE_CHECKING:
    # Only a type here: loading site files (`fieldmon-agent validate`) must not import scapy.
    from fieldmon.agent.probes.icmp_socket import IcmpPinger

logger = logging.getLogger(__name__)


class LinkRole(StrEnum):
    """What a link connects the site to; dashboards and alert severity key on it."""

    PARENT = "parent"
    INTERNET = "internet"
    GATEWAY = "gateway"
    AP = "ap"


class LinkThresholds(StrictModel):
    """When a link counts as degraded; unset keys fall back to the collector's defaults."""

    loss_pct: Annotated[float, Field(gt=0, le=100)] | None = None
    rtt_ms: Annotated[float, Field(gt=0)] | None = None
    jitter_ms: Annotated[float, Field(gt=0)] | None = None


class IcmpLinkConfig(StrictModel):
    """One link probed by ICMP: a round of `count` echoes `spacing` apart every `interval`."""

    name: Identifier  # the `target` tag
    address: str  # IPv4 or IPv6 literal of the far end
    role: LinkRole
    interval: Annotated[Duration, Field(gt=0)] = 10.0
    count: Annotated[int, Field(ge=1, le=1000)] = 10
    spacing: Annotated[Duration, Field(gt=0)] = 0.1
    timeout: Annotated[Duration, Field(gt=0)] = 1.0  # per echo: later replies count as lost
    size: Annotated[int, Field(ge=0, le=65000)] = 56  # ICMP payload bytes, as ping -s
    tos: Annotated[int, Field(ge=0, le=255)] = 0  # DSCP << 2; 184 (EF) measures the voice queue
    ttl: Annotated[int, Field(ge=1, le=255)] = 64
    interface: str | None = None  # bind to this device (SO_BINDTODEVICE) to measure its own path
    thresholds: LinkThresholds = Field(default_factory=LinkThresholds)

    @field_validator("address")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc

    @model_validator(mode="after")
    def _round_fits_interval(self) -> IcmpLinkConfig:
        round_time = (self.count - 1) * self.spacing + self.timeout
        if round_time > self.interval:
            raise ValueError(
                f"a round of {self.count} echoes {self.spacing:g}s apart plus the "
                f"{self.timeout:g}s timeout takes {round_time:g}s, "
                f"longer than the interval {self.interval:g}s"
            )
        return self


class IcmpProbe:
    """Measures one link: each `collect()` is one round of echoes, summarised as a `link` row."""

    def __init__(
        self, config: IcmpLinkConfig, *, pinger: IcmpPinger, site: str, agent: str
    ) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval
        self._pinger = pinger
        self._tags = {
            "site": site,
            "agent": agent,
            "target": config.name,
            "role": config.role.value,
        }

    async def collect(self) -> list[Sample]:
        """One round; a dead or unreachable target gives loss 100, not an exception."""
        config = self.config
        started_ns = time.time_ns()
        result = await self._pinger.round(
            config.address,
            count=config.count,
            spacing=config.spacing,
            timeout=config.timeout,
            size=config.size,
            tos=config.tos,
            ttl=config.ttl,
            interface=config.interface,
            # Share the pinger's send clock when waiting up to one spacing still fits.
            align=config.count * config.spacing + config.timeout <= config.interval,
        )
        if result.errors:
            logger.warning(
                "echoes to %s could not be sent",
                config.name,
                extra={
                    "target": config.name,
                    "address": config.address,
                    "interface": config.interface,
                    "errors": result.errors,
                },
            )
        fields: dict[str, FieldValue] = {**summarize(result.sent, result.rtts_ms).as_fields()}
        return [Sample(measurement="link", tags=dict(self._tags), fields=fields, time=started_ns)]
