"""MQTT samples -> decode -> trust -> line protocol -> batched writes -> acks (broker, agents).

The topic is trusted, never the payload: an envelope must match its topic and its registered
agent (`check_identity`), and only the samples that agent may store are kept (trust.screen).

A message is acknowledged to the broker (MQTT manual ack) and its seq to the agent (the
`ack` topic) only after its points are stored, in the database or in the disk spool, so a
collector or database that fails mid-way loses nothing: the broker re-delivers, the agent
re-sends. When neither takes a batch (database down, spool full), its acks are held: the broker
stops sending at our Receive Maximum and keeps the rest, the agents keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldmon.collector.config import DEFAULT_MAX_TIME_AHEAD_S
from fieldmon.collector.fastdecode import decode_envelope
from fieldmon.collector.inventory import Inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.collector.seqtrack import SeqTracker
from fieldmon.collector.storage.lineprotocol import LineEncoder
from fieldmon.collector.trust import EpisodeLog, Screened, screen
from fieldmon.core.mqtt.link import MqttLink
from fieldmon.core.wire import topics
from fieldmon.core.wire.codec import (
    ACCEPT_PARTS,
    ACCEPT_PROPERTY,
    ACCEPT_ZLIB,
    MAX_PAYLOAD_PROPERTY,
    Rejection,
    RejectReason,
    encode,
)
from fieldmon.core.wire.models import AckMessage, Envelope, Sample

logger = logging.getLogger(__name__)

# How often each agent's envelope accounting is written as an `agent` row.
ACCOUNT_INTERVAL_S = 60.0


@dataclass
class Batch:
    """Points waiting for one write, and whom to acknowledge once they are stored."""

    lines: list[str] = field(default_factory=list)
    # (connection generation, mid, qos) of each message to acknowledge to the broker
    deliveries: list[tuple[int, int, int]] = field(default_factory=list)
    seqs: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    # Points never to be stored, by reason: dead-lettered before the batch is acknowledged.
    refused: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    opened: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.lines)


def check_identity(envelope: Envelope, topic: str, inventory: Inventory) -> Rejection | None:
    """The envelope must match its topic and come from the agent registered for its site."""
    parsed = topics.parse_topic(topic)
    if parsed is None or (parsed.site, parsed.agent) != (envelope.site, envelope.agent):
        return Rejection(
            RejectReason.TOPIC_MISMATCH,
            f"envelope says {envelope.site}/{envelope.agent}, topic is {topic}",
        )
    if inventory.is_closed(envelope.site, envelope.agent):
        return Rejection(
            RejectReason.UNKNOWN_AGENT,
            f"site {envelope.site!r} is closed (site_configs/closed/): its agent "
            f"{envelope.agent!r} was decommissioned",
        )
    if not inventory.is_registered(envelope.site, envelope.agent):
        return Rejection(
            RejectReason.UNKNOWN_AGENT,
            f"agent {envelope.agent!r} is not registered for site {envelope.site!r} "
            "in site_configs",
        )
    return None


def split_by_clock(
    envelope: Envelope, now_ns: int, max_ahead_ns: int
) -> tuple[Envelope, list[Sample]]:
    """The envelope keeping only samples dated at most `max_ahead_ns` after `now_ns`; the rest.

    A sample from the future means the agent's clock is wrong. Stored, it would sit at the right
    edge of every dashboard's "last value"; judged, it would make every real round after it look
    like replayed history, so that link could not page until real time caught up with it.
    """
    limit = now_ns + max_ahead_ns
    for sample in envelope.samples:  # a plain loop: this runs for every envelope ingested
        if sample.time > limit:
            break
    else:
        return envelope, []
    kept = [sample for sample in envelope.samples if sample.time <= limit]
    ahead = [sample for sample in envelope.samples if sample.time > limit]
    return envelope.model_copy(update={"samples": kept}), ahead


def clock_ahead_reason(envelope: Envelope, ahead: list[Sample], now_ns: int) -> str:
    """Words for the dead-letter file and the log: whose clock, how far ahead."""
    lead_s = (max(sample.time for sample in ahead) - now_ns) / 1e9
    return (
        f"sample time up to {lead_s:.0f} s ahead of the collector's clock: is the clock of "
        f"agent {envelope.agent!r} (site {envelope.site!r}) set?"
    )


class IngestPipeline:
    """Turns sample messages into stored points; one instance per collector process."""

    def __init__(
        self,
        *,
        inventory: Inventory,
        points: PointWriter,
        metrics: CollectorMetrics,
        link: MqttLink,
        batch_size: int,
        flush_interval: float,
        max_payload_bytes: int,
        max_deliveries: int,
        seqs: SeqTracker | None = None,
        store: DurableStore | None = None,
        max_time_ahead: float = DEFAULT_MAX_TIME_AHEAD_S,
    ) -> None:
        self.inventory = inventory
        # Without a spool: retry until the database takes each batch.
        self._store = store if store is not None else DurableStore(points, metrics)
        self._metrics = metrics
        self._link = link
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_payload = max_payload_bytes
        # The broker stops sending at its Receive Maximum while we hold acks; flush before that.
        self._max_deliveries = max_deliveries
        self._max_ahead_ns = int(max_time_ahead * 1e9)
        self._encoder = LineEncoder()
        self._batch = Batch()
        # None when this collector sees only a share of the stream: gaps would be meaningless.
        self._seqs = seqs
        # Rejections and refusals, logged once per episode: a flooding Pi must not flood the log.
        self.episodes = EpisodeLog(logger)
        self._ready = asyncio.Event()
        # When the flush under way began (time.monotonic), None between flushes: the watchdog
        # tells a flush that waits for the database from one that is stuck (collector.health).
        self.flushing_since: float | None = None
        # Called with every accepted envelope: the status board, and the alert role when it
        # shares this subscription.
        self.on_accepted: list[Callable[[Envelope], None]] = []

    def handle(self, message: mqtt.MQTTMessage) -> None:
        """Decode one samples message into the current batch (runs on the event loop)."""
        self._metrics.received.inc()
        result = decode_envelope(message.payload, max_bytes=self._max_payload)
        if isinstance(result, Envelope):
            rejection = check_identity(result, message.topic, self.inventory)
            if rejection is None:
                self._accept(result, message)
                return
            result = rejection
        self._reject(result, message)

    def _reject(self, rejection: Rejection, message: mqtt.MQTTMessage) -> None:
        reason = rejection.reason.value
        self._metrics.rejected.labels(reason=reason).inc()
        # One episode per registered agent and reason; anything else shares one per reason, so
        # invented topics cannot grow the set of episodes.
        parsed = topics.parse_topic(message.topic)
        who: tuple[str, str] = ("", "")
        if parsed is not None and self.inventory.is_registered(parsed.site, parsed.agent or ""):
            who = (parsed.site, parsed.agent or "")
        self.episodes.note(
            ("rejected", reason, *who),
            f"rejected messages on {message.topic[:200]}: {reason}",
            topic=message.topic[:200],
            reason=reason,
            detail=rejection.detail,
        )
        # Nothing in it can ever be stored; holding the ack would only stall the session.
        if message.qos:
            self._link.client.ack(message.mid, message.qos)

    def _accept(self, envelope: Envelope, message: mqtt.MQTTMessage) -> None:
        self._account(envelope)
        screened = screen(envelope, self.inventory.trust[envelope.site])
        if screened.refused:
            self._refuse(screened)
        envelope = screened.envelope
        batch = self._batch
        now_ns = time.time_ns()
        envelope, ahead = split_by_clock(envelope, now_ns, self._max_ahead_ns)
        if ahead:
            self._refuse_ahead(envelope, ahead, now_ns)
        encode = self._encoder.encode
        batch.lines.extend(encode(sample) for sample in envelope.samples)
        if message.qos:
            batch.deliveries.append((self._link.generation, message.mid, message.qos))
        batch.seqs[(envelope.site, envelope.agent)].extend(envelope.carried_seqs())
        self._metrics.samples_accepted.inc(len(envelope.samples))
        self._metrics.pending_points.set(len(batch))
        for callback in self.on_accepted:
            callback(envelope)
        if len(batch) >= self._batch_size or len(batch.deliveries) >= self._max_deliveries:
            self._ready.set()

    def _refuse(self, screened: Screened) -> None:
        """Count and log (once per episode) the samples an agent may not store."""
        site, agent = screened.envelope.site, screened.envelope.agent
        for reason, count in screened.refused.items():
            self._metrics.samples_refused.labels(site=site, agent=agent, reason=reason).inc(count)
            self.episodes.note(
                ("refused", reason, site, agent),
                f"refused samples from agent {agent!r} of site {site!r}: {reason}",
                count=count,
                site=site,
                agent=agent,
                reason=str(reason),
                detail=screened.detail[reason],
            )

    def _refuse_ahead(self, envelope: Envelope, ahead: list[Sample], now_ns: int) -> None:
        reason = clock_ahead_reason(envelope, ahead, now_ns)
        self._batch.refused[reason].extend(self._encoder.encode(sample) for sample in ahead)
        self._metrics.samples_time_ahead.labels(site=envelope.site, agent=envelope.agent).inc(
            len(ahead)
        )  # logged with the reason when the flush dead-letters them

    def _account(self, envelope: Envelope) -> None:
        if self._seqs is None:
            return
        verdict = self._seqs.observe_seqs(
            envelope.site, envelope.agent, envelope.carried_seqs(), time.monotonic()
        )
        labels = {"site": envelope.site, "agent": envelope.agent}
        if verdict.duplicates:
            self._metrics.envelopes_duplicate.labels(**labels).inc(verdict.duplicates)
        if verdict.newly_lost:
            self._data_loss(envelope.site, envelope.agent, verdict.newly_lost)
        state = self._seqs.agents[(envelope.site, envelope.agent)]
        self._metrics.envelopes_missing.labels(**labels).set(state.missing)

    def _data_loss(self, site: str, agent: str, lost: int) -> None:
        self._metrics.envelopes_lost.labels(site=site, agent=agent).inc(lost)
        logger.error(
            "AgentDataLoss: envelopes never arrived",
            extra={"site": site, "agent": agent, "lost": lost},
        )

    def account_rows(self, now_ns: int) -> None:
        """Queue one `agent` row per agent with its envelope accounting (for the dashboards)."""
        if self._seqs is None:
            return
        now = time.monotonic()
        for (site, agent), state in self._seqs.agents.items():
            before = state.lost
            self._seqs.expire_agent(state, now)
            if state.lost > before:
                self._data_loss(site, agent, state.lost - before)
            row = Sample(
                measurement="agent",
                tags={"site": site, "agent": agent},
                fields={
                    "envelopes_received": state.received,
                    "envelopes_duplicate": state.duplicates,
                    "envelopes_lost": state.lost,
                    "envelopes_missing": state.missing,
                },
                time=now_ns,
            )
            self._batch.lines.append(self._encoder.encode(row))

    async def run(self) -> None:
        """Write a batch when it is full or `flush_interval` after it opened; until cancelled."""
        next_account = time.monotonic() + ACCOUNT_INTERVAL_S
        while True:
            timeout = max(0.0, self._batch.opened + self._flush_interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout=timeout)
            self._ready.clear()
            self.episodes.sweep()
            if time.monotonic() >= next_account:
                self.account_rows(time.time_ns())
                next_account += ACCOUNT_INTERVAL_S
            await self.flush()

    async def flush(self) -> None:
        """Store the current batch (database or spool, waiting until one takes it), then ack."""
        batch, self._batch = self._batch, Batch()
        if not batch.lines and not batch.deliveries and not batch.refused:
            return
        self.flushing_since = time.monotonic()
        try:
            for reason, lines in batch.refused.items():
                await self._store.refuse(lines, reason)
            if batch.lines:
                await self._store.keep(batch.lines)
        finally:
            self.flushing_since = None
        self._acknowledge(batch)
        self._metrics.pending_points.set(len(self._batch))

    @property
    def pending_points(self) -> int:
        """Points in the batch waiting for the next flush."""
        return len(self._batch)

    def waiting_since(self) -> float | None:
        """When the batch that waits for the next flush was opened (time.monotonic); None
        when nothing waits. The run loop flushes it within `flush_interval` of that."""
        batch = self._batch
        if not batch.lines and not batch.deliveries and not batch.refused:
            return None
        return batch.opened

    def _acknowledge(self, batch: Batch) -> None:
        client = self._link.client
        for generation, mid, qos in batch.deliveries:
            # After a reconnect the broker re-delivers these itself; an old mid could name another.
            if generation == self._link.generation:
                client.ack(mid, qos)
        properties = self._ack_properties()
        for (site, agent), seqs in batch.seqs.items():
            client.publish(
                topics.ack_topic(site, agent),
                encode(AckMessage.from_seqs(seqs)),
                qos=1,
                properties=properties,
            )
            self._metrics.acks_published.inc()

    def _ack_properties(self) -> Properties:
        """What this collector reads beyond plain envelopes: agents coalesce and compress their
        backlog only once an ack says so (fieldmon.core.wire.codec)."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [
            (ACCEPT_PROPERTY, f"{ACCEPT_PARTS},{ACCEPT_ZLIB}"),
            (MAX_PAYLOAD_PROPERTY, str(self._max_payload)),
        ]
        return properties
