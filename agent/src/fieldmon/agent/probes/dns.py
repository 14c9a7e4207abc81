"""DNS services: does the resolver staff depend on answer, quickly and with the right records?

Asks `server` for one name and record type over UDP (EDNS, 1232 bytes) and again over TCP when
the answer comes back truncated (fieldmon.agent.probes.dnsclient). Up means: the answer came
within the timeout with NOERROR, holds at least one record of the type asked for, and holds
every `expect`ed answer.

Emits one `service` row per run, timestamped at the run's start (ns since the epoch):
- tags: site, agent, target (the service's name), kind (`dns`)
- fields: up (bool), duration_ms (float, from sending the question to the last answer, TCP
  retry included), rcode (string: NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...; left out when no
  answer came), answers (integer, records in the answer section, CNAMEs included; with rcode),
  tcp (bool, the UDP answer was truncated and the question asked again over TCP; with rcode),
  error (string, the failure class, only when up is false: timeout, refused, unreachable,
  interface, permission, source, network, protocol, rcode, nodata, answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldmon.agent.probes.base import ProbeKind, ProbeResources
from fieldmon.agent.probes.netconn import Failure, host_port
from fieldmon.agent.probes.service import ServiceProbe, Trace
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.dns import DnsServiceConfig

if TYPE_CHECKING:
    from fieldmon.agent.probes.dnsclient import DnsAnswer, DnsClient

# What a failing rcode most likely means.
RCODE_HINT = {
    "NXDOMAIN": "the name does not exist there: check the query, or the hospital's DNS zone",
    "SERVFAIL": "the resolver could not get an answer: its upstream or the zone is broken",
    "REFUSED": "the resolver does not serve this Pi: check its access list",
}
_SHOWN_ANSWERS = 3


class DnsProbe(ServiceProbe):
    """Asks one resolver one question each run and judges the answer."""

    kind = "dns"
    config: DnsServiceConfig

    def __init__(self, config: DnsServiceConfig, *, site: str, agent: str) -> None:
        super().__init__(config, site=site, agent=agent)
        # dnspython is loaded by the first DNS service, not by every agent.
        from fieldmon.agent.probes.dnsclient import DnsClient

        self._client: DnsClient = DnsClient(
            config.server, config.port, interface=config.interface, source=config.source
        )
        self.last_answer: DnsAnswer | None = None

    async def measure(self, trace: Trace) -> None:
        """One question; the answer judged against rcode, type and `expect`."""
        from fieldmon.agent.probes.dnsclient import DnsQueryError

        config = self.config
        self.last_answer = None
        trace.stage = "asking"
        try:
            answer = await self._client.ask(config.query, config.type.value)
        except DnsQueryError as exc:
            trace.fail(exc.failure)
            return
        self.last_answer = answer
        trace.fields.update(rcode=answer.rcode, answers=len(answer.records), tcp=answer.over_tcp)
        failure = judge_answer(config, answer)
        if failure is not None:
            trace.fail(failure)

    def timeout_reason(self, trace: Trace) -> str:
        """`no answer from 192.0.2.53 within 5s`."""
        server = self.config.server
        if self.config.port != 53:
            server = host_port(server, self.config.port)
        over = " over TCP (the UDP answer was truncated)" if self._client.stage == "tcp" else ""
        return f"no answer from {server}{over} within {self.config.timeout:g}s"

    def ok_reason(self, trace: Trace) -> str:
        """`NOERROR in 1.2 ms: 192.0.2.80`."""
        answer = self.last_answer
        shown = ""
        if answer is not None:
            records = answer.of_type(self.config.type.value)
            shown = ", ".join(record.text for record in records[:_SHOWN_ANSWERS])
            if len(records) > _SHOWN_ANSWERS:
                shown += f" (+{len(records) - _SHOWN_ANSWERS} more)"
        over = " over TCP" if answer is not None and answer.over_tcp else ""
        return f"NOERROR in {trace.duration_ms:.1f} ms{over}: {shown}"


def judge_answer(config: DnsServiceConfig, answer: DnsAnswer) -> Failure | None:
    """Why an answer does not do, or None when it does."""
    name, server, rdtype = config.query, config.server, config.type.value
    if answer.rcode != "NOERROR":
        hint = RCODE_HINT.get(answer.rcode)
        reason = f"DNS {answer.rcode} for {name} from {server}"
        return Failure("rcode", f"{reason} - {hint}" if hint else reason)
    records = answer.of_type(rdtype)
    if not records:
        return Failure(
            "nodata",
            f"no {rdtype} record for {name} at {server} (the name exists) - check the type, "
            "or the hospital's DNS zone",
        )
    if config.expect:
        found = set().union(*(record.forms for record in records))
        missing = [value for value in config.expect if value not in found]
        if missing:
            got = ", ".join(record.text for record in records[:_SHOWN_ANSWERS])
            return Failure(
                "answer",
                f"{rdtype} {name} from {server} is {got}, without {', '.join(missing)} - "
                "the records changed, or the resolver serves stale data",
            )
    return None


def _build(service: DnsServiceConfig, site: SiteConfig, _resources: ProbeResources) -> DnsProbe:
    return DnsProbe(service, site=site.site, agent=site.agent.id)


def _target(service: DnsServiceConfig) -> str:
    server = service.server if service.port == 53 else host_port(service.server, service.port)
    where = f"{service.type.value} {service.query} @{server}"
    return where if service.interface is None else f"{where} via {service.interface}"


KIND = ProbeKind(
    name="dns",
    config_model=DnsServiceConfig,
    site_section="services",
    probe=DnsProbe,
    measurements=("service",),
    build=_build,
    label="dns",
    target=_target,
    setup_errors=(),  # nothing to load: the first question opens the first socket
)
