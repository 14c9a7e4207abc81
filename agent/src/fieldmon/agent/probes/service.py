"""What the service probes (dns, http, tcp) share: the run's trace, its `service` row, the verdict.

A run keeps a `Trace`: the end of each phase it got through (milliseconds since the request
started, as curl's `-w time_*` gives them), the kind's own fields, and, if it failed, why. A
failed run still reports the phases it completed, as blackbox_exporter does. The probe applies
the service's `timeout` itself, so a service that hangs is a row with `up=false` and
`error="timeout"`, naming the phase it hung in, not a run the scheduler had to cut off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import ClassVar

from fieldmon.agent.probes.base import Run, Status, Verdict
from fieldmon.agent.probes.netconn import CertInfo, Failure, expiring_reason
from fieldmon.core.site.dns import DnsServiceConfig
from fieldmon.core.site.http import HttpServiceConfig
from fieldmon.core.site.tcp import TcpServiceConfig
from fieldmon.core.wire.models import FieldValue, Sample

AnyServiceConfig = DnsServiceConfig | HttpServiceConfig | TcpServiceConfig
# Failures where nothing answered at all (`check` reasons over these: fieldmon.agent.diagnose).
SILENT_FAILURES = frozenset({"timeout", "unreachable"})


@dataclass
class Trace:
    """One run of a service probe as it happened; `sample()` makes its `service` row."""

    started_ns: int = field(default_factory=time.time_ns)  # the row's timestamp
    start: float = field(default_factory=time.perf_counter)  # the run's start (perf_counter)
    request_start: float = 0.0  # the start of the (final) request: the phases count from here
    stage: str = ""  # what the run is doing now, in words, for a timeout's reason
    phases: dict[str, float] = field(default_factory=dict)  # e.g. connect_ms -> 0.42
    fields: dict[str, FieldValue] = field(default_factory=dict)  # the kind's own fields
    cert: CertInfo | None = None  # the certificate with the fewest days left, if TLS was spoken
    failure: Failure | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        self.request_start = self.start

    def now_ms(self) -> float:
        """Milliseconds since the request started."""
        return (time.perf_counter() - self.request_start) * 1000.0

    def elapsed_ms(self) -> float:
        """Milliseconds since the run started."""
        return (time.perf_counter() - self.start) * 1000.0

    def mark(self, phase: str) -> None:
        """`phase` (e.g. `connect_ms`) ended now."""
        self.phases[phase] = self.now_ms()

    def restart_request(self) -> None:
        """A new request (a redirect): its phases replace the previous request's."""
        self.request_start = time.perf_counter()
        self.phases.clear()

    def saw(self, cert: CertInfo | None) -> None:
        """Keep the certificate that expires first of those this run saw."""
        if cert is not None and (self.cert is None or cert.not_after < self.cert.not_after):
            self.cert = cert

    def done(self) -> None:
        """The measurement ended now (closing the connection afterwards does not count)."""
        self.end = time.perf_counter()

    def fail(self, failure: Failure) -> None:
        """The run failed; the first failure is the one reported, at the moment it happened."""
        if self.failure is None:
            self.failure = failure
            self.end = time.perf_counter()

    @property
    def up(self) -> bool:
        """True when nothing failed."""
        return self.failure is None

    @property
    def duration_ms(self) -> float:
        """The whole run (redirects included), up to its end or its failure."""
        end = self.end if self.end is not None else time.perf_counter()
        return (end - self.start) * 1000.0

    def sample(self, tags: dict[str, str]) -> Sample:
        """The run's `service` row."""
        fields: dict[str, FieldValue] = {"up": self.up, "duration_ms": round(self.duration_ms, 3)}
        fields.update({name: round(value, 3) for name, value in self.phases.items()})
        fields.update(self.fields)
        if self.cert is not None:
            fields["cert_days_left"] = round(self.cert.days_left(), 3)
        if self.failure is not None:
            fields["error"] = self.failure.error
        return Sample(measurement="service", tags=dict(tags), fields=fields, time=self.started_ns)


class ServiceProbe:
    """The common half of the dns, http and tcp probes: timing, timeout, row and verdict.

    A kind implements `measure(trace)` (record phases and fields, `trace.fail()` on a failure
    it understands), `timeout_reason(trace)` and `ok_reason(trace)`.
    """

    kind: ClassVar[str]

    def __init__(self, config: AnyServiceConfig, *, site: str, agent: str) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval
        self.last: Trace | None = None  # the last run, for its verdict
        self._tags = {"site": site, "agent": agent, "target": config.name, "kind": self.kind}

    async def collect(self) -> list[Sample]:
        """One run within the service's timeout; a failure is a row with up=false."""
        self.last = None
        trace = Trace()
        try:
            async with asyncio.timeout(self.config.timeout):
                await self.measure(trace)
        except TimeoutError:
            trace.fail(Failure("timeout", self.timeout_reason(trace)))
            # It failed at the deadline: the clean-up after it is not the service's time.
            if trace.end is not None:
                trace.end = min(trace.end, trace.start + self.config.timeout)
        if trace.end is None:
            trace.done()
        self.last = trace
        return [trace.sample(self._tags)]

    async def measure(self, trace: Trace) -> None:
        """Run the check once, recording into `trace`."""
        raise NotImplementedError

    def timeout_reason(self, trace: Trace) -> str:
        """Why the run timed out, from `trace.stage`."""
        raise NotImplementedError

    def ok_reason(self, trace: Trace) -> str:
        """What a good run found, in a few words."""
        raise NotImplementedError

    def verdict(self, run: Run) -> Verdict:
        """FAIL when the service failed, WARN when slow or its certificate expires soon."""
        trace = self.last
        if run.timed_out or trace is None:
            reason = f"the probe did not finish within {run.duration_s:g}s"
            return Verdict(Status.FAIL, reason, silent=True)
        baseline = {
            name: value
            for name, value in trace.sample(self._tags).fields.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if trace.failure is not None:
            silent = trace.failure.error in SILENT_FAILURES
            return Verdict(Status.FAIL, trace.failure.reason, baseline, silent=silent)
        warnings = []
        slow_ms = self.config.slow_ms
        if slow_ms is not None and trace.duration_ms > slow_ms:
            warnings.append(
                f"slow: {trace.duration_ms:.0f} ms, over this service's {slow_ms:g} ms "
                "(slow_ms) - staff will notice; is the link or the server busy?"
            )
        warn_days = getattr(self.config, "cert_warn_days", None)
        cert = trace.cert
        if cert is not None and warn_days is not None and cert.days_left() < warn_days:
            warnings.append(expiring_reason(cert, warn_days))
        if warnings:
            return Verdict(Status.WARN, "; ".join(warnings), baseline)
        return Verdict(Status.OK, self.ok_reason(trace), baseline)


def cert_words(cert: CertInfo | None) -> str:
    """`, certificate valid 41 more days` for an OK reason; empty without TLS."""
    if cert is None:
        return ""
    return f", certificate valid {cert.days_left():.0f} more days"
