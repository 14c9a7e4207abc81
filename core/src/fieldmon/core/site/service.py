"""What every service probe (dns, http, tcp) shares: its name, timing, source and thresholds."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.config.types import CertFile, Duration, StrictModel
from fieldmon.core.wire.models import Identifier

IFNAME_MAX = 15  # Linux IFNAMSIZ - 1


def ip_literal(value: str) -> str:
    """An IPv4 or IPv6 address in its canonical spelling; ValueError for anything else."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc


def is_ip_literal(value: str) -> bool:
    """True for an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def host_name(value: str) -> str:
    """A DNS host name (letters, digits, '-', '_', dots), lowercase, without a trailing dot."""
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or any(not 1 <= len(label) <= 63 for label in labels):
        raise ValueError(f"{value!r} is not a host name")
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    if any(set(label) - allowed or label.startswith("-") for label in labels):
        raise ValueError(
            f"{value!r} is not a host name: use letters, digits, '-' and dots "
            "(write an internationalised name in its xn-- form)"
        )
    return name


# A file the agent reads that is not a secret (a CA bundle): it must exist and be readable, and
# not be an example's placeholder; `credential:NAME` works as for secrets (config.secrets).
ReadableFile = CertFile


class ServiceConfig(StrictModel):
    """Keys every service takes; each kind (dns, http, tcp) adds its own."""

    name: Identifier  # the `target` tag; unique among the site's services
    interval: Annotated[Duration, Field(gt=0)] = 30.0  # between the starts of two runs
    # The whole run: resolving, connecting, TLS and the answer. Over it the service is down.
    timeout: Annotated[Duration, Field(gt=0)] = 5.0
    interface: str | None = None  # send from this device (SO_BINDTODEVICE), as links do
    source: str | None = None  # send from this local address (IPv4 or IPv6 literal)
    # Slower than this (duration_ms) is a WARN in `check` and ServiceSlow at the collector;
    # unset: never slow.
    slow_ms: Annotated[float, Field(gt=0)] | None = None
    # ServiceDown's severity at the collector: critical for a service the hospital cannot work
    # without (it pages like a down parent link), info for a nice-to-have. ServiceSlow and
    # CertificateExpiring are warning (info for an info service).
    severity: Literal["critical", "warning", "info"] = "warning"

    @field_validator("interface")
    @classmethod
    def _interface_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not 1 <= len(value) <= IFNAME_MAX or "/" in value or any(c.isspace() for c in value):
            raise ValueError(
                f"{value!r} is not a network interface name "
                f"(1 to {IFNAME_MAX} characters, no '/' or spaces; e.g. eth0, wwan0)"
            )
        return value

    @field_validator("source")
    @classmethod
    def _source_address(cls, value: str | None) -> str | None:
        return None if value is None else ip_literal(value)

    @model_validator(mode="after")
    def _timeout_fits_interval(self) -> ServiceConfig:
        if self.timeout > self.interval:
            raise FieldValueError(
                ("timeout",),
                f"{self.timeout:g}s is longer than the interval {self.interval:g}s: "
                "a run must end before the next one starts",
            )
        return self
