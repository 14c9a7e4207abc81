"""SNMP polling of interfaces (IF-MIB) and access points (vendor profiles as data files).

Emits `snmp_if` (tags: site, agent, device, ifname | fields: oper_up, in_bps, out_bps,
in_errors, out_errors, in_discards, out_discards, util_pct) and `ap` (tags: site, agent,
device, radio | fields: up, clients, channel, channel_util_pct, noise_dbm).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fieldmon.agent.snmp.ap import ApPoller
from fieldmon.agent.snmp.client import SnmpClient
from fieldmon.agent.snmp.errors import SnmpError
from fieldmon.agent.snmp.ifmib import IfMibPoller
from fieldmon.agent.snmp.profiles import PROFILES_DIR, ApProfile, load_profile
from fieldmon.core.site.snmp import SnmpDeviceConfig
from fieldmon.core.wire.models import Sample

logger = logging.getLogger(__name__)


class SnmpProbe:
    """Polls one device with its profile: `if-mib` -> `snmp_if` rows, AP profiles -> `ap` rows.

    A device that does not answer (timeout, auth failure, error status) gives no rows and a
    warning naming it; `last_error` keeps the reason for `fieldmon-agent check`. Credentials
    and the profile file are read here, at start-up, so mistakes fail before the first poll.
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
        from fieldmon.agent.snmp.client import auth_data

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
            logger.warning("SNMP poll failed: %s", exc, extra={"target": self.name})
            return []
        self.last_error = None
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
