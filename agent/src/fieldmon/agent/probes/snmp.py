"""SNMP polling of interfaces (IF-MIB) and access points (vendor profiles as data files).

Emits `snmp_if` (tags: site, agent, device, ifname | fields: oper_up, in_bps, out_bps,
in_errors, out_errors, in_discards, out_discards, util_pct, and across the device's
`rate_window`: in_bps_window, out_bps_window, util_pct_window, window_s) and `ap` (tags: site,
agent, device, radio | fields: up, clients, channel, channel_util_pct, noise_dbm).
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
    SnmpSecurityError,
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

    A device that does not answer (timeout, refused SNMPv3 user or keys, error status) gives no
    rows; `last_error` keeps the reason for its verdict. The warning is logged once per episode:
    when polls start failing and when the reason changes, not at every poll, and one line says
    when the device answers again. Credentials and the profile file are read here, at
    start-up, so mistakes fail before the first poll.
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
        self.last_refused = False  # the last poll failed on SNMPv3 security: last_error says why
        self._episode: str | None = None  # what the current run of failed polls is about
        self._failed_polls = 0
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
                self._poller = IfMibPoller(
                    target, self.config.interfaces, rate_window=self.config.rate_window
                )
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
            self._failed(exc)
            return []
        if self._episode is not None:
            logger.info(
                "SNMP device %s answers again after %d failed polls",
                self.name,
                self._failed_polls,
                extra={"target": self.name},
            )
        self._episode = None
        self._failed_polls = 0
        self.last_error = None
        self.last_timed_out = self.last_refused = False
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

    def _failed(self, exc: SnmpError) -> None:
        self.last_error = str(exc)
        self.last_timed_out = isinstance(exc, SnmpTimeoutError)
        self.last_refused = isinstance(exc, SnmpSecurityError)
        self._failed_polls += 1
        # A timeout's text names the request that went unanswered, which may differ from poll
        # to poll; the episode is "no answer" all the same.
        episode = "timeout" if self.last_timed_out else self.last_error
        if episode == self._episode:
            return
        self._episode = episode
        logger.warning("SNMP poll failed: %s", exc, extra={"target": self.name})

    def verdict(self, run: Run) -> Verdict:
        """FAIL when the device does not answer or answers with an error, WARN on no rows."""
        device = self.config
        if not run.timed_out and self.last_refused and self.last_error is not None:
            return Verdict(Status.FAIL, self.last_error)  # already in words, naming the device
        if run.timed_out or self.last_timed_out:
            return Verdict(Status.FAIL, _timeout_reason(device), silent=True)
        if self.last_error is not None:
            return Verdict(Status.FAIL, f"SNMP error from {device.name}: {self.last_error}")
        if not run.samples:
            return Verdict(
                Status.WARN,
                f"{device.name} answers SNMP but reports nothing for profile {device.profile!r} - "
                "is that the right profile (or interfaces filter) for this device?",
            )
        count = len(run.samples)
        what = "interface" if device.profile == "if-mib" else "radio"
        return Verdict(Status.OK, f"{count} {what}{'' if count == 1 else 's'} polled")


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
