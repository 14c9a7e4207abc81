"""A TCP service: a host and port that must accept a connection, optionally with a TLS handshake."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.site.service import (
    ReadableFile,
    ServiceConfig,
    host_name,
    ip_literal,
    is_ip_literal,
)


class TcpServiceConfig(ServiceConfig):
    """Connects to `address`:`port`; with `tls`, also completes a TLS handshake and checks it."""

    kind: Literal["tcp"]
    address: str  # an IPv4 / IPv6 literal, or a host name (the system's resolver finds it)
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: bool = False  # complete a TLS handshake after connecting
    server_name: str | None = None  # TLS: the name sent (SNI) and checked; default: address
    ca_file: ReadableFile | None = None  # TLS: CA bundle (PEM); unset: the system's store
    # TLS: fewer days left on the certificate than this is a WARN in `check` and
    # CertificateExpiring at the collector.
    cert_warn_days: Annotated[int, Field(ge=0, le=3650)] = 14

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return ip_literal(value) if is_ip_literal(value) else host_name(value)

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return ip_literal(value) if is_ip_literal(value) else host_name(value)

    @model_validator(mode="after")
    def _tls_keys_need_tls(self) -> TcpServiceConfig:
        if not self.tls:
            for key in ("server_name", "ca_file", "cert_warn_days"):
                if key in self.model_fields_set:
                    raise FieldValueError((key,), f"{key} needs tls: true")
        return self

    @property
    def tls_name(self) -> str:
        """The name the certificate must hold: `server_name`, else the address."""
        return self.server_name or self.address
