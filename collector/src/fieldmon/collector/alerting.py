"""The collector's `alerts` role: samples and status messages -> alert engine -> rows + notifiers.

It reads the whole sample stream (never through the ingest shared group) so two collectors
with this role judge every round and send identical alerts, which Alertmanager deduplicates.
Every transition becomes an `alert` row; outage reports found in replayed history become
`outage` rows; only transitions with `page=True` go to the notifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from fieldmon.collector.alerts import AlertEngine, AlertStateError, AlertStateStore, Transition
from fieldmon.collector.alerts.model import AlertState, OutageReport
from fieldmon.collector.config import DEFAULT_MAX_TIME_AHEAD_S, AlertingConfig
from fieldmon.collector.fastdecode import decode_envelope
from fieldmon.collector.ingest import check_identity, split_by_clock
from fieldmon.collector.inventory import Inventory
from fieldmon.collector.pointwriter import DurableStore
from fieldmon.collector.storage.lineprotocol import LineEncoder
from fieldmon.collector.trust import EpisodeLog, screen
from fieldmon.core.wire import topics
from fieldmon.core.wire.models import Envelope, Sample, StatusMessage

logger = logging.getLogger(__name__)
NS_PER_S = 10**9

TICK_S = 1.0

PageSink = Callable[[list[Transition]], None]


def outage_sample(report: OutageReport) -> Sample:
    """An `outage` row at the episode's start: what the NOC's outage panel lists."""
    fields: dict[str, float | int] = {
        "duration_s": round((report.end - report.start) / 1e9, 3),
        "worst_loss_pct": float(report.worst_loss_pct),
        "samples_backfilled": report.samples_backfilled,
    }
    if report.worst_rtt_ms is not None:
        fields["worst_rtt_ms"] = float(report.worst_rtt_ms)
    return Sample(
        measurement="outage",
        tags={"site": report.site, "link": report.link},
        fields=fields,  # type: ignore[arg-type]
        time=report.start,
    )


def closed_site_resolution(alert: Transition, now_ns: int) -> Transition:
    """`alert`, resolved because its site was closed (`fieldmon-collector decommission`)."""
    site = alert.labels.get("site", "")
    annotations = {
        **alert.annotations,
        "summary": f"{site}: site closed (decommissioned); {alert.alertname} silenced",
        "description": "the site was decommissioned: its alerts are resolved and no new one "
        "is raised; its data stays readable",
    }
    return dataclasses.replace(
        alert, state=AlertState.RESOLVED, ends_at=now_ns, annotations=annotations, page=True
    )


class AlertRole:
    """Feeds the engine, writes its rows, persists its state and hands pages to notifiers."""

    def __init__(
        self,
        inventory: Inventory,
        config: AlertingConfig,
        points: DurableStore,
        state_path: Path,
        *,
        max_payload_bytes: int,
        page: PageSink,
        max_time_ahead: float = DEFAULT_MAX_TIME_AHEAD_S,
    ) -> None:
        self.engine = AlertEngine(inventory.sites, config, max_time_ahead=max_time_ahead)
        self._config = config
        self._inventory = inventory
        self._points = points
        self._store = AlertStateStore(state_path)
        self._max_payload = max_payload_bytes
        self._max_time_ahead = max_time_ahead
        self._page = page
        self._rows: list[str] = []
        self._encoder = LineEncoder()
        self._rows_ready = asyncio.Event()
        self._episodes = EpisodeLog(logger)
        # Also given each envelope from our own subscription (the status board).
        self.observers: list[Callable[[Envelope], None]] = []

    def restore(self) -> None:
        """Resume from the saved state, so a restart neither re-pages nor loses a resolve."""
        try:
            if self._store.restore_into(self.engine):
                logger.info(
                    "alert state restored", extra={"active": len(self.engine.active_alerts())}
                )
        except AlertStateError as exc:
            logger.error("alert state file unusable; starting fresh", extra={"error": str(exc)})

    def replace_inventory(self, inventory: Inventory) -> None:
        """New site files (SIGHUP): a new engine that carries the old one's state over.

        A site that was closed (its file moved to site_configs/closed/) loses its alert state:
        nothing about it pages any more, whatever its agent does as it goes away. Its alerts
        still firing are resolved, saying why, so a receiver that never sees them end (a
        webhook, e-mail) is not left with an open alert.
        """
        snapshot = self.engine.snapshot()
        closing = [
            alert
            for alert in self.engine.active_alerts()
            if alert.labels.get("site") in inventory.closed
        ]
        self.engine = AlertEngine(
            inventory.sites, self._config, max_time_ahead=self._max_time_ahead
        )
        self.engine.restore(snapshot)
        self._inventory = inventory
        if closing:
            self.engine.dirty = True  # the saved state still holds them
            self._emit([closed_site_resolution(alert, time.time_ns()) for alert in closing])

    def active_alerts(self) -> list[Transition]:
        """Alerts firing now (the engine is replaced on reload, so ask through us)."""
        return self.engine.active_alerts()

    def observe_envelope(self, envelope: Envelope) -> None:
        """An accepted envelope (from ingest when it shares our subscription)."""
        self._emit(self.engine.observe_envelope(envelope))

    def handle_samples(self, message: mqtt.MQTTMessage) -> None:
        """A samples message on our own subscription (ingest runs elsewhere or shared)."""
        result = decode_envelope(message.payload, max_bytes=self._max_payload)
        if (
            isinstance(result, Envelope)
            and check_identity(result, message.topic, self._inventory) is None
        ):
            # What ingest refuses (samples the agent may not send) or dead-letters (dated in the
            # future) the board and the engine must not see either. Ingest counts and logs it.
            trusted = screen(result, self._inventory.trust[result.site]).envelope
            envelope, _ahead = split_by_clock(
                trusted, time.time_ns(), int(self._max_time_ahead * NS_PER_S)
            )
            for observer in self.observers:
                observer(envelope)
            self.observe_envelope(envelope)

    def handle_status(self, message: mqtt.MQTTMessage) -> None:
        """A birth or last will."""
        parsed = topics.parse_topic(message.topic)
        if parsed is None or parsed.agent is None or not message.payload:
            return
        try:
            status = StatusMessage.model_validate_json(message.payload)
        except ValidationError as exc:
            problem = f"invalid: {exc.errors(include_url=False)[0]['msg']}"[:300]
            self._ignored_status(parsed.site, parsed.agent, message.topic, problem)
            return
        if (status.site, status.agent) != (parsed.site, parsed.agent):
            # The topic is trusted, not the payload: a will naming another agent is forged.
            problem = f"the payload names {status.site}/{status.agent}"
            self._ignored_status(parsed.site, parsed.agent, message.topic, problem)
            return
        self._emit(
            self.engine.observe_status(
                parsed.site, parsed.agent, status.state, status.at, status.reason
            )
        )

    def _ignored_status(self, site: str, agent: str, topic: str, problem: str) -> None:
        registered = self._inventory.is_registered(site, agent)
        self._episodes.note(
            ("status", site, agent) if registered else ("status",),
            f"ignored status messages on {topic[:200]}: {problem}",
            topic=topic[:200],
            detail=problem,
        )

    def _emit(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        for transition in transitions:
            self._rows.append(self._encoder.encode(transition.to_sample()))
            logger.info(
                "alert %s %s",
                transition.alertname,
                transition.state,
                extra={"labels": transition.labels, "page": transition.page},
            )
        pages = [transition for transition in transitions if transition.page]
        if pages:
            self._page(pages)
        self._rows_ready.set()

    def _collect_reports(self) -> None:
        for report in self.engine.take_reports():
            logger.info("outage report: %s", report.summary())
            self._rows.append(self._encoder.encode(outage_sample(report)))
            self._rows_ready.set()

    async def run(self) -> None:
        """Tick the engine, write its rows and save its state, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rows_ready.wait(), timeout=TICK_S)
            self._rows_ready.clear()
            self._episodes.sweep()
            self._emit(self.engine.tick())
            self._collect_reports()
            await self.flush()

    async def flush(self) -> None:
        """Save the state (before the rows: a restart must know what was paged) and write rows."""
        if self.engine.dirty:
            # Taken here, on the loop that feeds the engine: a snapshot read in a thread could
            # meet a set being changed under it. Encoding and the disk write go to the thread.
            await asyncio.to_thread(self._store.save, self.engine.snapshot())
        rows, self._rows = self._rows, []
        if rows:
            # Through the spool when the database is down, like samples: a restart of the
            # collector then loses no alert or outage row either.
            await self._points.keep(rows)
