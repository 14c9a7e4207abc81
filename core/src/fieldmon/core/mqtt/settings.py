"""Where the MQTT broker is and how to log in: the settings both agent and collector files hold."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fieldmon.core.config.types import Duration, SecretFile, StrictModel


class TlsConfig(StrictModel):
    """TLS to the broker; the CA file pins who we trust."""

    ca_file: SecretFile | None = None  # CA bundle; None uses the system store
    cert_file: SecretFile | None = None  # client certificate, for brokers that require one
    key_file: SecretFile | None = None
    insecure_skip_verify: bool = False  # only for a lab; never on a real site


class BrokerConfig(StrictModel):
    """Where the MQTT broker is and how to log in."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: SecretFile | None = None
    keepalive: Duration = 30.0
    connect_timeout: Duration = 10.0
