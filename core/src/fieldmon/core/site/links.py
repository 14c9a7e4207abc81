"""Links probed by ICMP: the far end, the round's shape and when the link counts as degraded."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from fieldmon.core.config.types import Duration, StrictModel
from fieldmon.core.wire.models import Identifier


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
