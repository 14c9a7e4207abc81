"""The agent's events: what its watches find, the broker link, boot and the outbox -> hooks + rows.

`AgentEvents` sits beside the batcher: every probe run's samples pass through `observe` (links,
services, power are judged as the rounds complete), and the daemon reports the broker link
(`broker`), a boot (`boot`) and the outbox's drop episodes (`outbox_dropping`). Each event is
handed to the hook runner (fieldmon.firmware_hooks.hooks) when the site file has `hooks`.

Rows, all `event` (tags site, agent, kind), few by design, sent on the events topic through the
outbox so they survive an outage:
- kind `hook`: one per hook run (fields event, target, hook, exit_status, duration_ms, output,
  timed_out, and stderr, refused, queue_dropped, output_dropped where they apply);
- kind `link_state`: a link's judged state changed (not the first judgement after a start);
- kind `broker_state`: broker_down / broker_up, written when it happens and sent once the
  broker is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fieldmon.agent.watch import LinkWatch, PowerWatch, Seen, ServiceWatch
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import FieldValue, Sample
from fieldmon.firmware_hooks.hooks import EventName, HookEvent, HookRun, HookRunner

logger = logging.getLogger(__name__)

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_LINK_EVENTS = frozenset({EventName.LINK_DOWN, EventName.LINK_DEGRADED, EventName.LINK_UP})
_BROKER_EVENTS = frozenset({EventName.BROKER_DOWN, EventName.BROKER_UP})

RowSink = Callable[[list[Sample]], None]


def _clock_text(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%H:%M:%S UTC")


def _fields(values: dict[str, FieldValue | None]) -> dict[str, FieldValue]:
    return {key: value for key, value in values.items() if value is not None}


def hook_row(site: str, agent: str, run: HookRun) -> Sample:
    """The `event` row (kind `hook`) of one hook run, at the run's start."""
    target = f" {run.event.target}" if run.event.target else ""
    fields: dict[str, FieldValue | None] = {
        "message": f"hook {run.hook} for {run.event.event.value}{target}: {run.outcome()}",
        "event": run.event.event.value,
        "target": run.event.target,
        "hook": run.hook,
        "exit_status": run.exit_status,
        "duration_ms": round(run.duration_s * 1000, 1),
        "output": run.excerpt(),
        "timed_out": run.timed_out,
        "stderr": run.stderr_excerpt() or None,
        "refused": True if run.refused is not None else None,
        "queue_dropped": run.queue_dropped or None,
        "output_dropped": run.output_dropped or None,
    }
    return Sample(
        measurement="event",
        tags={"site": site, "agent": agent, "kind": "hook"},
        fields=_fields(fields),
        time=run.started_ns,
    )


def read_boot_id(path: Path = BOOT_ID_FILE) -> str | None:
    """This boot's id (the kernel's random UUID), or None where there is none."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def note_boot(seen_file: Path, boot_id: str | None) -> bool:
    """True when `boot_id` differs from the one recorded in `seen_file` (then it is recorded):
    the agent's first start since the machine booted. A missing record counts as a boot."""
    if boot_id is None:
        return False
    try:
        if seen_file.read_text(encoding="ascii").strip() == boot_id:
            return False
    except OSError:
        pass
    temporary = seen_file.with_name(seen_file.name + ".tmp")
    temporary.write_text(boot_id + "\n", encoding="ascii")
    temporary.replace(seen_file)
    return True


class AgentEvents:
    """Turns what the agent notices into hook events and `event` rows (see the module docstring)."""

    def __init__(
        self,
        config: SiteConfig,
        rows: RowSink,
        runner: HookRunner | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._site, self._agent = config.site, config.agent.id
        self._rows = rows
        self.runner = runner
        self._clock = clock
        self.links = LinkWatch(config.links)
        self.services = ServiceWatch()
        self.power = PowerWatch()
        self.emitted: list[HookEvent] = []  # the latest events, newest last (for `check`, tests)
        # Also told of every event, after its row and hooks (the path tracer).
        self.listeners: list[Callable[[HookEvent], None]] = []

    def reconfigure(self, config: SiteConfig) -> None:
        """A reloaded site file: links judged afresh where they changed (same name: kept)."""
        fresh = LinkWatch(config.links)
        fresh.adopt(self.links)
        self.links = fresh

    def sink(self, samples: list[Sample]) -> None:
        """Where the probes' samples go: to the batcher (the outbox), then through the watches."""
        self._rows(samples)
        self.observe(samples)

    def observe(self, samples: list[Sample]) -> None:
        """One probe run's samples, judged as they complete."""
        for sample in samples:
            found = self.links.observe(sample)
            found += self.services.observe(sample)
            found += self.power.observe(sample)
            for seen in found:
                self.emit(seen)

    def emit(self, seen: Seen) -> HookEvent:
        """Run the hooks for `seen`; write its row where it is a state change worth one."""
        event = HookEvent(
            event=seen.event,
            site=self._site,
            agent=self._agent,
            at=self._clock(),
            target=seen.target,
            details=dict(seen.details),
        )
        self.emitted = [*self.emitted[-99:], event]
        logger.info(
            "event %s%s",
            event.event.value,
            f" {event.target}" if event.target else "",
            extra={"event": event.event.value, "target": event.target, **_fields(seen.details)},
        )
        row = self._state_row(event)
        if row is not None:
            self._rows([row])
        if self.runner is not None:
            self.runner.dispatch(event)
        for listener in self.listeners:
            listener(event)
        return event

    def hook_ran(self, run: HookRun) -> None:
        """A hook run ended: its row."""
        self._rows([hook_row(self._site, self._agent, run)])

    def _state_row(self, event: HookEvent) -> Sample | None:
        details = event.details
        if event.event in _LINK_EVENTS and details.get("previous") is not None:
            since = details.get("since")
            when = f" since {_clock_text(since)}" if isinstance(since, int) else ""
            loss = details.get("loss_pct")
            measured = f" (loss {loss:.0f} %)" if isinstance(loss, float) else ""
            return self._row(
                "link_state",
                event,
                f"link {event.target} {details['state']}{when}{measured}, seen by the agent",
                target=event.target,
                state=details.get("state"),
                previous=details.get("previous"),
                loss_pct=loss,
                rtt_p95_ms=details.get("rtt_p95_ms"),
            )
        if event.event in _BROKER_EVENTS:
            words = {
                EventName.BROKER_DOWN: "the broker has been unreachable",
                EventName.BROKER_UP: "the broker is reachable again",
            }[event.event]
            return self._row("broker_state", event, words, down_s=details.get("down_s"))
        return None

    def _row(self, kind: str, event: HookEvent, message: str, **values: object) -> Sample:
        fields = _fields({"message": message, "event": event.event.value, **values})  # type: ignore[dict-item]
        return Sample(
            measurement="event",
            tags={"site": self._site, "agent": self._agent, "kind": kind},
            fields=fields,
            time=event.at,
        )
