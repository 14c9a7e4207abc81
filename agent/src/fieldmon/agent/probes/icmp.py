"""ICMP echo rounds to a link's far end.

Emits one `link` row per round, timestamped at the round's start (ns since the epoch):
- tags: site, agent, target (the link's name), role (parent, internet, gateway, ap)
- fields: sent, received (integer echoes); loss_pct (percent); rtt_min_ms, rtt_avg_ms,
  rtt_p50_ms, rtt_p95_ms, rtt_max_ms (milliseconds, left out when nothing answered);
  jitter_ms (milliseconds, left out with fewer than two replies); mos (E-model score,
  1.0 to 4.5). Definitions: fieldmon.agent.stats.
"""

from __future__ import annotations

import logging
import time

from fieldmon.agent.probes.icmp_socket import IcmpPinger
from fieldmon.agent.stats import summarize
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.core.wire.models import FieldValue, Sample

logger = logging.getLogger(__name__)


class IcmpProbe:
    """Measures one link: each `collect()` is one round of echoes, summarised as a `link` row."""

    def __init__(
        self, config: IcmpLinkConfig, *, pinger: IcmpPinger, site: str, agent: str
    ) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval
        self._pinger = pinger
        self._tags = {
            "site": site,
            "agent": agent,
            "target": config.name,
            "role": config.role.value,
        }

    async def collect(self) -> list[Sample]:
        """One round; a dead or unreachable target gives loss 100, not an exception."""
        config = self.config
        started_ns = time.time_ns()
        result = await self._pinger.round(
            config.address,
            count=config.count,
            spacing=config.spacing,
            timeout=config.timeout,
            size=config.size,
            tos=config.tos,
            ttl=config.ttl,
            interface=config.interface,
            # Share the pinger's send clock when waiting up to one spacing still fits.
            align=config.count * config.spacing + config.timeout <= config.interval,
        )
        if result.errors:
            logger.warning(
                "echoes to %s could not be sent",
                config.name,
                extra={
                    "target": config.name,
                    "address": config.address,
                    "interface": config.interface,
                    "errors": result.errors,
                },
            )
        fields: dict[str, FieldValue] = {**summarize(result.sent, result.rtts_ms).as_fields()}
        return [Sample(measurement="link", tags=dict(self._tags), fields=fields, time=started_ns)]
