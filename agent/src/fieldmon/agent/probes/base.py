"""The probe contract, its optional abilities, and what a probe kind tells the registry.

A probe is anything with a name and an interval that collects samples (`Probe`, three members).
What some probes can do besides is a separate one-method protocol, checked with isinstance():
`Judged` turns the probe's last run into a verdict for `fieldmon-agent check`. Whoever runs a
probe (the daemon's scheduler, `check`) times each run and applies its time budget; the probe
only measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import Sample

if TYPE_CHECKING:
    # Types only: the probe contract needs none of the probing code.
    from fieldmon.agent.probes.icmp_socket import IcmpPinger
    from fieldmon.agent.snmp.client import SnmpClient


class Probe(Protocol):
    """One target measured on its own interval; the runner times and judges each run."""

    name: str  # the target's name, used in logs and as the row name in `check`
    interval: float  # seconds between the starts of two runs; also one run's time budget

    async def collect(self) -> list[Sample]:
        """Measure once. A dead target yields samples that say so, not an exception."""
        ...


class Status(StrEnum):
    """How one check came out."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Run:
    """What the runner saw of one `collect()`: its samples, how long it took, if it was cut off."""

    samples: list[Sample]
    duration_s: float
    timed_out: bool = False  # the run overran its time budget and was cancelled: no samples


@dataclass(frozen=True)
class Verdict:
    """A run judged for the engineer on site: status, the reason in words, baseline figures."""

    status: Status
    reason: str
    baseline: dict[str, float | int] = field(default_factory=dict)  # e.g. loss_pct, rtt_p50_ms
    # Nothing came back from the target at all (no echo, no SNMP response): `check` reasons
    # over these together (fieldmon.agent.diagnose) before blaming each target on its own.
    silent: bool = False


@runtime_checkable
class Judged(Protocol):
    """Optional ability: judge this probe's last run (kept by the probe) for `check`."""

    def verdict(self, run: Run) -> Verdict:
        """OK, WARN or FAIL, with a reason that says what to look at."""
        ...


def plain_verdict(run: Run, budget_s: float) -> Verdict:
    """The verdict of a probe without the `Judged` ability: did it give samples in time?"""
    if run.timed_out:
        return Verdict(Status.FAIL, f"no result within {budget_s:g}s")
    if not run.samples:
        return Verdict(Status.WARN, "the probe ran but gave no samples")
    count = len(run.samples)
    return Verdict(Status.OK, f"{count} sample{'' if count == 1 else 's'}")


@dataclass(frozen=True)
class ProbeResources:
    """What the probes of one agent share: one ICMP pinger, one SNMP client, the outbox's figures.

    `check` has no outbox (the daemon may hold it); the host probe then leaves those fields out.
    """

    pinger: IcmpPinger
    snmp: SnmpClient
    outbox_depth: Callable[[], int] | None = None  # samples waiting for an ack
    outbox_dropped: Callable[[], int] | None = None  # samples dropped at the cap, cumulative
    outbox_age_s: Callable[[], float] | None = None  # age of the oldest waiting envelope


ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True)
class ProbeKind(Generic[ConfigT]):
    """Everything the agent, `check` and the meta-test need to know about one probe kind.

    Each probe module defines its `KIND`; `fieldmon.agent.probes.registry` lists them.
    """

    name: str  # the kind's name in logs and docs: icmp, snmp, host, dns, http, tcp
    config_model: type[ConfigT]  # one target's settings: a model in fieldmon.core.site
    # The SiteConfig field holding them: a list of models, or one model. Kinds may share a list
    # whose entries say their kind (`services`); each kind takes the entries of its model.
    site_section: str
    probe: type  # the probe class; its module's docstring ends with what it emits
    measurements: tuple[str, ...]  # what its samples are called (docs/contract.md, InfluxDB)
    build: Callable[[ConfigT, SiteConfig, ProbeResources], Probe]  # one probe for one target
    label: str  # the KIND column of `check` (link, snmp, host)
    target: Callable[[ConfigT], str]  # the TARGET column of `check`: where the probe looks
    # What `build` may raise for a valid site file: a missing profile, an unreadable secret.
    setup_errors: tuple[type[Exception], ...] = (OSError,)

    def configs(self, site: SiteConfig) -> list[ConfigT]:
        """This kind's targets in a site file (a single section counts as one target)."""
        section: Any = getattr(site, self.site_section)
        if section is None:
            return []
        items = list(section) if isinstance(section, list) else [section]
        # Kinds may share a section (dns, http and tcp under `services`): each takes its own.
        return [item for item in items if isinstance(item, self.config_model)]

    def target_name(self, config: ConfigT) -> str:
        """The name a target goes by before (or without) a probe: its `name`, else the kind's."""
        return str(getattr(config, "name", self.name))
