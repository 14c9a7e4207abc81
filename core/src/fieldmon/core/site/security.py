"""Settings that work but expose the site: warned by `validate` and `check`, never refused.

Plain MQTT to a broker on another machine sends the agent's password and every sample in clear
text; SNMPv3 without privacy sends the answers in clear text (authNoPriv) or unauthenticated
(noAuthNoPriv); MD5 and DES are broken. A field hospital may have no better choice for a day
(an old switch that only speaks authNoPriv), so these are warnings (WARN) that say what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from fieldmon.core.config.hosts import is_loopback_host
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.snmp import SnmpV3Credentials

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class SecurityWarning:
    """One exposing setting: where in the site file, what it concerns, and what to do."""

    at: Location  # the key in the site file, e.g. ("snmp_devices", 2, "snmp", "priv")
    target: str  # "broker" or the SNMP device's name
    message: str

    @property
    def path(self) -> str:
        """The key as an engineer writes it: snmp_devices[2].snmp.priv."""
        text = ""
        for part in self.at:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text


def _snmp_warnings(index: int, name: str, snmp: SnmpV3Credentials) -> list[SecurityWarning]:
    at: Location = ("snmp_devices", index, "snmp")
    if snmp.auth is None:
        return [
            SecurityWarning(
                at,
                name,
                "SNMPv3 noAuthNoPriv: anyone on the path can read the answers and forge them - "
                "set auth: sha256 with auth_key_file, and priv: aes with priv_key_file",
            )
        ]
    warnings = []
    if snmp.auth == "md5":
        warnings.append(
            SecurityWarning(
                (*at, "auth"),
                name,
                "SNMPv3 auth md5 is weak - use sha256 (or sha) if the device offers it",
            )
        )
    if snmp.priv is None:
        warnings.append(
            SecurityWarning(
                at,
                name,
                "SNMPv3 authNoPriv: the answers (and the user name) cross the network in clear "
                "text - add priv: aes with priv_key_file",
            )
        )
    elif snmp.priv == "des":
        warnings.append(
            SecurityWarning(
                (*at, "priv"),
                name,
                "SNMPv3 priv des is broken (56-bit keys) - use aes if the device offers it",
            )
        )
    return warnings


def security_warnings(config: SiteConfig) -> list[SecurityWarning]:
    """Every exposing setting of a valid site file, in file order."""
    warnings = []
    broker = config.agent.broker
    if broker.tls is None and not is_loopback_host(broker.host):
        warnings.append(
            SecurityWarning(
                ("agent", "broker", "tls"),
                "broker",
                f"plain MQTT to {broker.host}: the agent's password and every sample cross the "
                "network in clear text - use the broker's TLS listener (port 8883) with "
                "agent.broker.tls",
            )
        )
    for index, device in enumerate(config.snmp_devices):
        if isinstance(device.snmp, SnmpV3Credentials):
            warnings.extend(_snmp_warnings(index, device.name, device.snmp))
    return warnings
