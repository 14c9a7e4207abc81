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

from fieldmon.agent.probes.base import ProbeKind, ProbeResources, Run, Status, Verdict
from fieldmon.agent.probes.icmp_socket import IcmpPinger, RoundResult
from fieldmon.agent.stats import RoundStats, summarize
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig, LinkRole
from fieldmon.core.wire.models import FieldValue, Sample

logger = logging.getLogger(__name__)

# What a silent link most likely means, by what it connects to.
SILENT_HINT = {
    LinkRole.PARENT: "check the cable or the parent hospital firewall",
    LinkRole.INTERNET: "check the uplink, and that the parent hospital routes to the internet",
    LinkRole.GATEWAY: "check the cable to the site router and that it is powered",
    LinkRole.AP: "is the access point powered and cabled?",
}
# Why echoes could not even leave this host, by errno name.
SEND_ERROR_HINT = {
    "ENODEV": "interface {interface} does not exist - is the NIC or modem plugged in?",
    "ENETUNREACH": "no route to {address} - is the interface up and does it have an address?",
    "EHOSTUNREACH": "host {address} unreachable - is it on this network?",
    "EPERM": "not permitted to send ICMP - run as root or allow net.ipv4.ping_group_range",
    "EACCES": "not permitted to send ICMP - run as root or allow net.ipv4.ping_group_range",
    "EADDRNOTAVAIL": "no source address for {address} - does the interface have one?",
}


class IcmpProbe:
    """Measures one link: each `collect()` is one round of echoes, summarised as a `link` row.

    `last_round` keeps the round's raw outcome (replies, send errors) for its verdict.
    """

    def __init__(
        self, config: IcmpLinkConfig, *, pinger: IcmpPinger, site: str, agent: str
    ) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval
        self.last_round: RoundResult | None = None
        self._pinger = pinger
        # Share the pinger's send clock when waiting up to one spacing still fits; the
        # scheduler then starts the rounds on that clock's ticks too (`start_grid`).
        self._align = config.count * config.spacing + config.timeout <= config.interval
        self.start_grid: float | None = config.spacing if self._align else None
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
        self.last_round = None
        result = await self._pinger.round(
            config.address,
            count=config.count,
            spacing=config.spacing,
            timeout=config.timeout,
            size=config.size,
            tos=config.tos,
            ttl=config.ttl,
            interface=config.interface,
            align=self._align,
        )
        self.last_round = result
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

    def verdict(self, run: Run) -> Verdict:
        """FAIL when nothing came back, WARN on loss or over a threshold, else OK."""
        if run.timed_out or self.last_round is None:
            return Verdict(
                Status.FAIL, f"the round did not finish within {run.duration_s:g}s", silent=True
            )
        return judge_round(self.config, self.last_round)


def judge_round(link: IcmpLinkConfig, result: RoundResult) -> Verdict:
    """One round judged against the link's thresholds; the baseline is the round's statistics."""
    stats = summarize(result.sent, result.rtts_ms)
    status, reason = _round_verdict(link, result, stats)
    return Verdict(status, reason, stats.as_fields(), silent=result.received == 0)


def _round_verdict(
    link: IcmpLinkConfig, result: RoundResult, stats: RoundStats
) -> tuple[Status, str]:
    sent, received = result.sent, result.received
    if received == 0 and result.errors:
        return Status.FAIL, _send_failure(link, result.errors)
    if received == 0:
        return (
            Status.FAIL,
            f"no reply to {sent} echoes from {link.address} - {SILENT_HINT[link.role]}",
        )
    warnings = []
    if received < sent:
        warnings.append(
            f"{sent - received} of {sent} echoes lost ({stats.loss_pct:.0f}%) - "
            "a loose cable, a saturated link or radio interference"
        )
    thresholds = link.thresholds
    rtt, jitter = stats.rtt_p50_ms, stats.jitter_ms
    if thresholds.rtt_ms is not None and rtt is not None and rtt > thresholds.rtt_ms:
        warnings.append(
            f"median RTT {rtt:.2f} ms is over this link's "
            f"{thresholds.rtt_ms:g} ms threshold - congested or on a slower path"
        )
    if thresholds.jitter_ms is not None and jitter is not None and jitter > thresholds.jitter_ms:
        warnings.append(
            f"jitter {jitter:.2f} ms is over this link's "
            f"{thresholds.jitter_ms:g} ms threshold - voice calls will break up"
        )
    if warnings:
        return Status.WARN, "; ".join(warnings)
    return Status.OK, f"{received} of {sent} echoes answered"


def _send_failure(link: IcmpLinkConfig, errors: dict[str, int]) -> str:
    name = max(errors, key=lambda key: errors[key])
    hint = SEND_ERROR_HINT.get(name)
    detail = ", ".join(f"{key} x{count}" for key, count in sorted(errors.items()))
    if hint is None:
        return f"echoes to {link.address} could not be sent ({detail})"
    return hint.format(address=link.address, interface=link.interface) + f" ({detail})"


def _build(link: IcmpLinkConfig, site: SiteConfig, resources: ProbeResources) -> IcmpProbe:
    return IcmpProbe(link, pinger=resources.pinger, site=site.site, agent=site.agent.id)


def _target(link: IcmpLinkConfig) -> str:
    return link.address if link.interface is None else f"{link.address} via {link.interface}"


KIND = ProbeKind(
    name="icmp",
    config_model=IcmpLinkConfig,
    site_section="links",
    probe=IcmpProbe,
    measurements=("link",),
    build=_build,
    label="link",
    target=_target,
    setup_errors=(),  # the shared pinger is opened by the runner, not per link
)
