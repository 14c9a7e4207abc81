"""Where the MQTT broker is and how to log in: the settings both agent and collector files hold."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from fieldmon.core.config.errors import FieldValueError
from fieldmon.core.config.hosts import is_loopback_host
from fieldmon.core.config.types import CertFile, Duration, SecretFile, StrictModel


class TlsConfig(StrictModel):
    """TLS to the broker; the CA file pins who we trust."""

    ca_file: CertFile | None = None  # CA bundle; None uses the system store
    cert_file: CertFile | None = None  # client certificate, for brokers that require one
    key_file: SecretFile | None = None  # its private key (private to this user, like a password)
    insecure_skip_verify: bool = False  # only for a broker on this machine (a lab)

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise FieldValueError(
                ("cert_file",),
                "key_file is given without cert_file: a client certificate needs both "
                "(cert_file alone is enough when it holds the key too)",
            )
        return self


class BrokerConfig(StrictModel):
    """Where the MQTT broker is and how to log in."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: SecretFile | None = None
    keepalive: Duration = 30.0
    connect_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _verify_beyond_loopback(self) -> BrokerConfig:
        skips = self.tls is not None and self.tls.insecure_skip_verify
        if skips and not is_loopback_host(self.host):
            raise FieldValueError(
                ("tls", "insecure_skip_verify"),
                f"is only allowed for a broker on this machine (127.0.0.1, ::1, localhost), "
                f"not {self.host!r}: without verification anyone on the path can pose as the "
                "broker and collect the password; give tls.ca_file the CA that signed the "
                "broker's certificate instead",
            )
        return self
