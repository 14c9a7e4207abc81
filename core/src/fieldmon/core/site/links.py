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


class TraceProtocol(StrEnum):
    """What a path trace sends with a limited TTL; `auto` is ICMP, then TCP where ICMP stops."""

    AUTO = "auto"
    ICMP = "icmp"
    UDP = "udp"
    TCP = "tcp"


class TraceConfig(StrictModel):
    """Path traces of a parent or internet link: mtr-like cycles of TTL-limited probes.

    The agent traces when its own judgement of the link turns degraded or down (and once it is
    up, for the route to compare later traces with), one trace at a time, at most one trace of
    a bad state every `min_interval`; `fieldmon-agent check --trace` traces on demand.
    """

    enabled: bool = True  # parent and internet links only; other roles are never traced
    protocol: TraceProtocol = TraceProtocol.AUTO
    # The destination port of TCP SYNs (default 443) and UDP datagrams (default 33434, as
    # traceroute's: a closed port, so the far end answers "port unreachable").
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    cycles: Annotated[int, Field(ge=1, le=1000)] = 10  # probes per hop, as mtr's report cycles
    interval: Annotated[Duration, Field(gt=0)] = 0.5  # between cycles (mtr: 1s)
    timeout: Annotated[Duration, Field(gt=0)] = 1.0  # per probe: later answers count as lost
    max_hops: Annotated[int, Field(ge=1, le=64)] = 30
    min_interval: Annotated[Duration, Field(ge=0)] = 300.0  # between traces of a bad state

    @property
    def duration(self) -> float:
        """How long one trace of one protocol takes at most, in seconds."""
        return (self.cycles - 1) * self.interval + self.timeout


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
    trace: TraceConfig = Field(default_factory=TraceConfig)  # path traces (parent, internet)

    @property
    def traced(self) -> bool:
        """True when the agent traces this link's path (a parent or internet link)."""
        return self.trace.enabled and self.role in (LinkRole.PARENT, LinkRole.INTERNET)

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
