"""SNMP devices (access points, controllers, routers): address, profile and credentials."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fieldmon.core.config.types import Duration, SecretFile, StrictModel
from fieldmon.core.wire.models import Identifier


class SnmpV2cCredentials(StrictModel):
    """SNMP v2c: a community string read from a file."""

    version: Literal["2c"]
    community_file: SecretFile
    port: Annotated[int, Field(ge=1, le=65535)] = 161
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1


class SnmpV3Credentials(StrictModel):
    """SNMP v3 USM; authPriv when both keys are given."""

    version: Literal[3]
    user: Annotated[str, Field(min_length=1)]
    auth: Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"] | None = None
    auth_key_file: SecretFile | None = None
    priv: Literal["des", "aes", "aes192", "aes256"] | None = None
    priv_key_file: SecretFile | None = None
    # How aes192/aes256 stretch a localized key shorter than the AES key (md5, sha; sha224 with
    # aes256): blumenthal (None, the default: draft-blumenthal-aes-usm-04, net-snmp's AES-192 /
    # AES-256) or reeder (Cisco IOS, net-snmp's AES-192-C / AES-256-C).
    aes_key_extension: Literal["blumenthal", "reeder"] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 161
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1

    @model_validator(mode="after")
    def _auth_priv_pairs(self) -> SnmpV3Credentials:
        if (self.auth is None) != (self.auth_key_file is None):
            raise ValueError("auth and auth_key_file go together: give both or neither")
        if (self.priv is None) != (self.priv_key_file is None):
            raise ValueError("priv and priv_key_file go together: give both or neither")
        if self.priv is not None and self.auth is None:
            raise ValueError("priv needs auth: SNMPv3 has no privacy without authentication")
        if self.aes_key_extension is not None and self.priv not in ("aes192", "aes256"):
            raise ValueError(
                "aes_key_extension applies only to priv aes192 or aes256 "
                f"(priv is {self.priv or 'not set'})"
            )
        return self


class SnmpDeviceConfig(StrictModel):
    """One SNMP device (AP, controller or router) polled with a profile."""

    name: Identifier  # the `device` tag
    address: str
    profile: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")]  # if-mib, generic-ap, unifi, ...
    interval: Annotated[Duration, Field(gt=0)] = 30.0
    interfaces: list[str] | None = None  # ifName filter for if-mib; None polls all
    # if-mib: the *_window traffic fields span this much of the latest polls (the counters'
    # increase across it), so a device's counter cache cannot make a steady link saw-tooth.
    rate_window: Annotated[Duration, Field(gt=0, le=3600)] = 120.0
    snmp: Annotated[SnmpV2cCredentials | SnmpV3Credentials, Field(discriminator="version")]
