"""Publishes the outbox over MQTT through bounded windows; deletes on the collector's ack.

paho keeps unacknowledged QoS 1 messages in RAM and its 16-bit message ids wrap past 65,535,
and Mosquitto drops past its per-client queue limit, so the backlog is never handed to paho
whole: at most `window` messages are in flight (published, awaiting the collector's ack), and
each envelope stays on disk until the collector's `ack` names its seq. Messages not
acknowledged within `ack_timeout` are sent again.

Replay is fresh-first: at each (re)connect the envelopes created within `fresh_window` (and at
least the newest one) become "live" together with everything appended afterwards; live ones
go out first, one per message, newest first, so the NOC sees the site's present state at once,
and `LIVE_RESERVE` message slots are always theirs. The older backlog drains behind them,
oldest first, held back three ways:
- the uplink: the backlog's bytes on their way to the broker (published, no PUBACK yet) stay
  within a window learnt from PUBACK delays (fieldmon.agent.pacing), so a live envelope never
  queues behind more than about `pacing.TARGET_S` of backlog, whatever the link's rate;
- the collector: at most `backlog_bytes` of stored backlog awaits its ack (the outbox cap spares
  what is in flight, so this also bounds how far the outbox may exceed its cap);
- `replay_rate`, a ceiling in envelopes per second (a token bucket holding one second's worth),
  so that a fast link does not turn a drain into a CPU burst that delays the probes.
Once an ack on the current connection says the collector reads them (`accept: parts,zlib`),
backlog envelopes travel joined, up to `coalesce_bytes` of JSON per message, and compressed
(fieldmon.agent.coalesce); until then, and for collectors that never say so, one per message. A
joined message that goes unacknowledged is sent again as single envelopes, so that one the
collector refuses cannot hold back the others it was joined with.

paho keeps its own RAM copy of every unacknowledged publish and re-sends those first when it
reconnects: after an uplink cut, the envelopes published into the dead connection (the oldest
backlog) would overtake the fresh-first replay and then arrive twice. The outbox holds them all,
so the sender drops paho's copies at each connect, before paho re-sends them. For the same
reason the connection's socket lingers 0 s on close: when paho gives up on a dead uplink, the
kernel discards what it still held unsent instead of retransmitting it over the old connection
the moment the link returns (ahead of the replay, and twice). `before_clean_disconnect()`
restores the normal close so that a clean shutdown's last packets are still delivered.

Envelopes of `event` rows (hook runs, state changes; `Priority.EVENT` in the outbox) go to the
agent's `events` topic, the rest to `samples`: one seq counter, one outbox, one ack topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from fieldmon.agent import coalesce
from fieldmon.agent.outbox import Outbox, Priority, StoredEnvelope
from fieldmon.agent.pacing import DelayWindow
from fieldmon.core.mqtt.link import MqttLink
from fieldmon.core.wire import topics
from fieldmon.core.wire.codec import (
    ACCEPT_PARTS,
    ACCEPT_PROPERTY,
    ACCEPT_ZLIB,
    MAX_PAYLOAD_PROPERTY,
)
from fieldmon.core.wire.models import AckMessage

logger = logging.getLogger(__name__)
# Ends the error the link logs when the broker refuses the ack subscription.
ACK_REFUSED = (
    "the broker ACL does not let this agent read its ack topic, so nothing it sends will ever "
    "be deleted from the outbox: it fills up to outbox.max_mb and then drops the oldest samples"
)
# Message slots the backlog leaves to live envelopes: a round measured now never waits for a
# slot behind a drain.
LIVE_RESERVE = 8
# Stored backlog awaiting the collector's ack. With acks about 1 s apart (the collector's
# flush_interval) this carries ~4 MB/s of JSON, more than the default replay_rate needs.
BACKLOG_IN_FLIGHT_BYTES = 4 * 1024 * 1024
# JSON per joined message: ~80 one-second envelopes of a 100-link site; under 1/16 of the
# collector's default max_payload_bytes, and further limited by the link's window (below).
COALESCE_BYTES = 256 * 1024
MIN_COALESCE_BYTES = 16 * 1024
# Most envelopes per joined message (the wire allows MAX_PARTS; tiny envelopes stop here).
MAX_JOINED = 1024
# MQTT fixed header, topic length and packet id around a payload, roughly.
_PUBLISH_OVERHEAD = 8


@dataclass
class _Flight:
    """One published message awaiting the collector's ack."""

    seqs: set[int]  # the envelopes it carries that are not acknowledged yet
    sent: float  # time.monotonic() of the publish
    stored: int  # their payload bytes in the outbox
    backlog: bool
    joined: bool  # several envelopes in one message


class Sender:
    """Moves envelopes from the outbox to the broker and retires them on the collector's ack."""

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        *,
        site: str,
        agent: str,
        disk: ThreadPoolExecutor,
        window: int = 32,
        ack_timeout: float = 30.0,
        replay_rate: float | None = 300.0,
        fresh_window: float = 60.0,
        coalesce_bytes: int = COALESCE_BYTES,
        backlog_bytes: int = BACKLOG_IN_FLIGHT_BYTES,
        pacer: DelayWindow | None = None,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._site, self._agent = site, agent
        self._disk = disk
        self._window = window
        self._ack_timeout = ack_timeout
        self._samples_topic = topics.samples_topic(site, agent)
        self._events_topic = topics.events_topic(site, agent)
        self._ack_topic = topics.ack_topic(site, agent)
        self._flights: dict[int, _Flight] = {}  # by the first seq each carries
        self._replay_rate = replay_rate
        self._fresh_window = fresh_window
        self._coalesce_bytes = coalesce_bytes
        self._backlog_bytes = backlog_bytes
        self.pacer = pacer if pacer is not None else DelayWindow()
        self._burst = max(1.0, replay_rate) if replay_rate else 0.0
        self._tokens = self._burst
        self._tokens_at = time.monotonic()
        self._live_from: int | None = None  # first live seq; None: work it out on connect
        self._generation = 0  # connections so far: a message built for an earlier one is not sent
        # What the collector said it reads on this connection (its acks' `accept` property).
        self._accepts: frozenset[str] = frozenset()
        self._max_payload: int | None = None
        # Seqs whose joined message went unacknowledged: sent again one per message.
        self._alone: set[int] = set()
        self._backlog_idle = False  # no backlog outside the flight at the last look
        # Running estimates for sizing joined messages: JSON / wire bytes when compressed, and
        # one stored envelope's bytes.
        self._ratio = 1.0
        self._envelope_bytes = 0.0
        self._wake = asyncio.Event()
        self.acknowledged = 0
        self.replayed = _ReplayCount()
        link.subscribe(self._ack_topic, qos=1, consequence=ACK_REFUSED)
        link.on_connected.append(self._connected)
        link.on_published = self._published
        self._forward_connect = link.client.on_connect
        link.client.on_connect = self._drop_paho_copies

    def _drop_paho_copies(self, client: mqtt.Client, *args: object) -> None:
        # Runs in paho's thread, in CONNACK handling before paho re-sends its queue.
        _set_linger(client, abort=True)
        dropped = client.drop_out_messages()
        if dropped:
            logger.debug("dropped paho's own copies", extra={"messages": len(dropped)})
        if self._forward_connect is not None:
            self._forward_connect(client, *args)

    def before_clean_disconnect(self) -> None:
        """Let the socket close gracefully: the last status and DISCONNECT must get out."""
        _set_linger(self._link.client, abort=False)

    def notify(self) -> None:
        """Something changed (new envelope, ack, reconnect): look at the outbox again."""
        self._wake.set()

    def _connected(self, _session_present: bool) -> None:
        # The link has subscribed to the ack topic already (at every connect).
        # A new connection may have lost whatever paho had in flight; send it all again.
        self._generation += 1
        self._flights.clear()
        self._disk.submit(self._outbox.release)
        self._live_from = None
        self._accepts = frozenset()  # this connection's collector says again what it reads
        self._max_payload = None
        self._backlog_idle = False
        self.pacer.reset()
        self.replayed = _ReplayCount()
        self.notify()

    def _published(self, mid: int) -> None:
        # The broker's PUBACK: the uplink took the message.
        self.pacer.acked(mid)
        self.notify()

    async def _disk_call(self, function, *args, **kwargs):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._disk, lambda: function(*args, **kwargs))

    async def handle_ack(self, payload: bytes, properties: Properties | None = None) -> None:
        """Delete the seqs a collector has durably written."""
        try:
            ack = AckMessage.model_validate_json(payload)
        except ValidationError as exc:
            logger.warning("ignored malformed ack", extra={"error": str(exc).splitlines()[0]})
            return
        self._learn_accepts(properties)
        removed = await self._disk_call(self._outbox.acknowledge, ack.ranges)
        for first, flight in list(self._flights.items()):
            flight.seqs = {seq for seq in flight.seqs if not ack.covers(seq)}
            if not flight.seqs:
                del self._flights[first]
        if self._alone:
            self._alone = {seq for seq in self._alone if not ack.covers(seq)}
        self.acknowledged += removed
        self.notify()

    def _learn_accepts(self, properties: Properties | None) -> None:
        said = dict(getattr(properties, "UserProperty", None) or [])
        accepts = frozenset(
            token.strip() for token in said.get(ACCEPT_PROPERTY, "").split(",") if token.strip()
        )
        if accepts and accepts != self._accepts:
            logger.info(
                "the collector reads joined and compressed backlog",
                extra={"accepts": sorted(accepts)},
            )
        if accepts:
            self._accepts = accepts
        with contextlib.suppress(KeyError, ValueError):
            self._max_payload = int(said[MAX_PAYLOAD_PROPERTY])

    def _expire_in_flight(self) -> None:
        deadline = time.monotonic() - self._ack_timeout
        expired = [first for first, flight in self._flights.items() if flight.sent < deadline]
        seqs: list[int] = []
        for first in expired:
            flight = self._flights.pop(first)
            seqs.extend(flight.seqs)
            if flight.joined:
                # Perhaps refused for one of them: alone, the others need not wait with it.
                self._alone.update(flight.seqs)
        if expired:
            self._backlog_idle = False
            self._disk.submit(self._outbox.release, seqs)
            logger.info(
                "no ack in time; sending again",
                extra={"messages": len(expired), "seqs": len(seqs)},
            )

    def _publish(self, payload: bytes, priority: int) -> bool:
        topic = self._events_topic if priority == Priority.EVENT else self._samples_topic
        info = self._link.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self.pacer.sent(info.mid, len(payload) + len(topic) + _PUBLISH_OVERHEAD)
        return True

    def _refill(self) -> None:
        now = time.monotonic()
        if self._replay_rate:
            elapsed = now - self._tokens_at
            self._tokens = min(self._burst, self._tokens + elapsed * self._replay_rate)
        self._tokens_at = now

    async def _send_live(self) -> None:
        room = self._window - len(self._flights)
        if room <= 0:
            return
        if self._live_from is None:
            since = time.time_ns() - int(self._fresh_window * 1e9)
            self._live_from = await self._disk_call(self._outbox.fresh_from, since)
            logger.info("replaying fresh-first", extra={"live_from_seq": self._live_from})
        live = await self._disk_call(self._outbox.select_live, room, live_from=self._live_from)
        for index, envelope in enumerate(live):
            if not self._link.connected.is_set() or not self._publish(
                envelope.payload, envelope.priority
            ):
                self._disk.submit(self._outbox.release, [e.seq for e in live[index:]])
                return
            self._flights[envelope.seq] = _Flight(
                {envelope.seq}, time.monotonic(), len(envelope.payload), False, False
            )

    def _backlog_blocked(self) -> bool:
        """A window is full: the next PUBACK or ack (each wakes the loop) may open it."""
        backlog = [flight for flight in self._flights.values() if flight.backlog]
        return (
            len(backlog) >= self._window - LIVE_RESERVE
            or len(self._flights) >= self._window
            or sum(flight.stored for flight in backlog) >= self._backlog_bytes
            or self.pacer.room() <= 0
        )

    def _message_bytes(self, joined: bool, compressed: bool) -> int:
        """JSON to join into the next message: what the collector decodes, and at most half
        the uplink's window once compressed, so one message never queues long on its own."""
        if not joined:
            return 0  # one envelope, whatever its size
        limit = self._coalesce_bytes
        if self._max_payload:
            limit = min(limit, self._max_payload)
        by_link = self.pacer.window / 2 * (self._ratio if compressed else 1.0)
        return int(min(limit, max(MIN_COALESCE_BYTES, by_link)))

    async def _send_backlog(self) -> float | None:
        """Publish backlog while every window has room; returns when to look again for
        tokens (None: when something wakes the loop)."""
        while not self._backlog_idle and self._live_from is not None:
            if self._backlog_blocked():
                return None
            joined = ACCEPT_PARTS in self._accepts
            compressed = ACCEPT_ZLIB in self._accepts
            budget = self._message_bytes(joined, compressed)
            most = MAX_JOINED if joined else 1
            if self._replay_rate:
                self._refill()
                full = budget / self._envelope_bytes if self._envelope_bytes else 1
                need = min(self._burst, max(1.0, min(float(most), full)))
                if self._tokens < need:
                    return (need - self._tokens) / self._replay_rate
                most = min(most, int(self._tokens))
            generation = self._generation
            envelopes: list[StoredEnvelope] = await self._disk_call(
                self._outbox.take_backlog,
                live_from=self._live_from,
                max_envelopes=most,
                max_bytes=budget,
                alone=self._alone,
            )
            if not envelopes:
                self._backlog_idle = True
                self._log_replayed()
                return None
            message = await self._build(envelopes, joined=joined, compressed=compressed)
            seqs = message.seqs
            if (
                generation != self._generation
                or not self._link.connected.is_set()
                or not self._publish(message.payload, envelopes[0].priority)
            ):
                self._disk.submit(self._outbox.release, seqs)
                return None
            self._flights[seqs[0]] = _Flight(
                set(seqs), time.monotonic(), message.stored_bytes, True, len(seqs) > 1
            )
            self._tokens -= len(seqs)
            self._learn_sizes(message)
        return None

    async def _build(
        self, envelopes: list[StoredEnvelope], *, joined: bool, compressed: bool
    ) -> coalesce.Message:
        def build() -> coalesce.Message:
            return coalesce.build(
                envelopes, site=self._site, agent=self._agent, parts=joined, compress=compressed
            )

        if len(envelopes) == 1 and not compressed:
            return build()  # the stored payload as it is: nothing to do off the loop
        return await asyncio.to_thread(build)

    def _learn_sizes(self, message: coalesce.Message) -> None:
        share = message.stored_bytes / len(message.seqs)
        self._envelope_bytes = (
            share if not self._envelope_bytes else (0.8 * self._envelope_bytes + 0.2 * share)
        )
        if message.raw_bytes != len(message.payload):
            self._ratio = 0.8 * self._ratio + 0.2 * message.raw_bytes / len(message.payload)
        self.replayed.add(message)

    def _log_replayed(self) -> None:
        count = self.replayed
        if count.envelopes and not count.logged:
            count.logged = True
            logger.info(
                "backlog handed over; acks follow",
                extra={
                    "envelopes": count.envelopes,
                    "messages": count.messages,
                    "stored_mb": round(count.stored / 1e6, 1),
                    "sent_mb": round(count.sent / 1e6, 1),
                    "seconds": round(time.monotonic() - count.started, 1),
                },
            )

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            await self._link.connected.wait()
            # Cleared before reading the outbox, so a change during the read is never missed.
            self._wake.clear()
            self._expire_in_flight()
            timeout = min(5.0, self._ack_timeout)
            await self._send_live()
            again = await self._send_backlog()
            if again is not None:
                timeout = min(timeout, max(0.01, again))
            # Wake on the next change, or in time to re-send what was never acknowledged.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def in_flight(self) -> int:
        """Envelopes published and not yet acknowledged by a collector."""
        return sum(len(flight.seqs) for flight in self._flights.values())


@dataclass
class _ReplayCount:
    """What the backlog replay of one connection has handed over, for its log line."""

    envelopes: int = 0
    messages: int = 0
    stored: int = 0
    sent: int = 0
    started: float = 0.0
    logged: bool = False

    def add(self, message: coalesce.Message) -> None:
        if not self.messages:
            self.started = time.monotonic()
        self.envelopes += len(message.seqs)
        self.messages += 1
        self.stored += message.stored_bytes
        self.sent += len(message.payload)


def _set_linger(client: mqtt.Client, *, abort: bool) -> None:
    """SO_LINGER 0 (close discards unsent data and resets) or the default graceful close."""
    sock = client.socket()
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the socket may be closing under us
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", int(abort), 0))
