"""SNMP polling of interfaces (IF-MIB) and access points (vendor profiles as data files).

Emits `snmp_if` (tags: site, agent, device, ifname | fields: oper_up, in_bps, out_bps,
in_errors, out_errors, in_discards, out_discards, util_pct) and `ap` (tags: site, agent,
device, radio | fields: up, clients, channel, channel_util_pct, noise_dbm).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fieldmon.agent.probes.base import ProbeKind, ProbeResources, Run, Status, Verdict
from fieldmon.agent.snmp.ap import ApPoller
from fieldmon.agent.snmp.client import SnmpClient, auth_data
from fieldmon.agent.snmp.errors import (
    CryptoBackendMissingError,
    ProfileError,
    SnmpError,
    SnmpTimeoutError,
)
from fieldmon.agent.snmp.ifmib import IfMibPoller
from fieldmon.agent.snmp.profiles import PROFILES_DIR, ApProfile, load_profile
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.wire.models import Sample

logger = logging.getLogger(__name__)


class SnmpProbe:
    """Polls one device with its profile: `if-mib` -> `snmp_if` rows, AP profiles -> `ap` rows.

    A device that does not answer (timeout, auth failure, error status) gives no rows and a
    warning naming it; `last_error` keeps the reason for its verdict. Credentials and the
    profile file are read here, at start-up, so mistakes fail before the first poll.
    """

    def __init__(
        self,
        config: SnmpDeviceConfig,
        *,
        site: str,
        agent: str,
        client: SnmpClient,
        profiles_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval
        self.client = client
        self.last_error: str | None = None
        self.last_timed_out = False  # the last poll failed because the device did not answer
        self._auth = auth_data(config)  # raises CryptoBackendMissingError for v3 priv without it
        self._profile: ApProfile | None = None
        if config.profile != "if-mib":
            self._profile = load_profile(config.profile, profiles_dir or PROFILES_DIR)
        self._tags = {"site": site, "agent": agent, "device": config.name}
        self._poller: IfMibPoller | ApPoller | None = None

    async def _ready_poller(self) -> IfMibPoller | ApPoller:
        if self._poller is None:
            target = await self.client.target(self.config, self._auth)
            if self._profile is None:
                self._poller = IfMibPoller(target, self.config.interfaces)
            else:
                self._poller = ApPoller(target, self._profile)
        return self._poller

    async def collect(self) -> list[Sample]:
        """One poll; [] (and a warning naming the device) when it does not answer."""
        started_ns = time.time_ns()
        try:
            poller = await self._ready_poller()
            rows = await poller.poll()
        except SnmpError as exc:
            self.last_error = str(exc)
            self.last_timed_out = isinstance(exc, SnmpTimeoutError)
            logger.warning("SNMP poll failed: %s", exc, extra={"target": self.name})
            return []
        self.last_error = None
        self.last_timed_out = False
        seconds = (time.time_ns() - started_ns) / 1e9
        if seconds > self.interval / 2:
            logger.warning(
                "SNMP device %s is slow: one poll took %.1fs of its %gs interval",
                self.name,
                seconds,
                self.interval,
                extra={"target": self.name},
            )
        if isinstance(poller, IfMibPoller):
            return [
                Sample(
                    measurement="snmp_if",
                    tags={**self._tags, "ifname": row.ifname},
                    fields=row.fields,
                    time=started_ns,
                )
                for row in rows
            ]
        return [
            Sample(
                measurement="ap",
                tags={**self._tags, "radio": row.radio},
                fields=row.fields,
                time=started_ns,
            )
            for row in rows
        ]

    def verdict(self, run: Run) -> Verdict:
        """FAIL when the device does not answer or answers with an error, WARN on no rows."""
        device = self.config
        if run.timed_out or self.last_timed_out:
            return Verdict(Status.FAIL, _timeout_reason(device))
        if self.last_error is not None:
            return Verdict(Status.FAIL, f"SNMP error from {device.name}: {self.last_error}")
        if not run.samples:
            return Verdict(
                Status.WARN,
                f"{device.name} answers SNMP but reports nothing for profile {device.profile!r} - "
                "is that the right profile (or interfaces filter) for this device?",
            )
        what = "interfaces" if device.profile == "if-mib" else "radios"
        return Verdict(Status.OK, f"{len(run.samples)} {what} polled")


def _timeout_reason(device: SnmpDeviceConfig) -> str:
    credentials = device.snmp
    what = "wrong community" if credentials.version == "2c" else "wrong SNMPv3 user or keys"
    return (
        f"SNMP timeout from {device.name} ({device.address}:{credentials.port}) - "
        f"{what} or SNMP disabled?"
    )


def _build(device: SnmpDeviceConfig, site: SiteConfig, resources: ProbeResources) -> SnmpProbe:
    return SnmpProbe(device, site=site.site, agent=site.agent.id, client=resources.snmp)


KIND = ProbeKind(
    name="snmp",
    config_model=SnmpDeviceConfig,
    site_section="snmp_devices",
    probe=SnmpProbe,
    measurements=("snmp_if", "ap"),
    build=_build,
    label="snmp",
    target=lambda device: device.address,
    # A profile file missing or malformed, SNMPv3 privacy without `cryptography`, a secret
    # file that cannot be read.
    setup_errors=(ProfileError, CryptoBackendMissingError, OSError),
)
