"""Publishes the outbox over MQTT through a bounded in-flight window; deletes on collector ack.

paho keeps unacknowledged QoS 1 messages in RAM and its 16-bit message ids wrap past 65,535,
and Mosquitto drops past its per-client queue limit, so the backlog is never handed to paho
whole: at most `window` envelopes are in flight, and each stays on disk until the collector's
`ack` names it. Envelopes not acknowledged within `ack_timeout` are sent again.

Replay is fresh-first: at each (re)connect the envelopes created within `fresh_window` (and at
least the newest one) become "live" together with everything appended afterwards; live ones
go out first, newest first, so the NOC sees the site's present state at once. The older
backlog drains behind them, oldest first, at most `replay_rate` envelopes per second (a token
bucket holding one second's worth) so it never swamps a thin uplink.

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

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from fieldmon.agent.outbox import Outbox, Priority, Selection, StoredEnvelope
from fieldmon.core.mqtt.link import MqttLink
from fieldmon.core.wire import topics
from fieldmon.core.wire.models import AckMessage

logger = logging.getLogger(__name__)
# Ends the error the link logs when the broker refuses the ack subscription.
ACK_REFUSED = (
    "the broker ACL does not let this agent read its ack topic, so nothing it sends will ever "
    "be deleted from the outbox: it fills up to outbox.max_mb and then drops the oldest samples"
)


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
        replay_rate: float = 20.0,
        fresh_window: float = 60.0,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._disk = disk
        self._window = window
        self._ack_timeout = ack_timeout
        self._samples_topic = topics.samples_topic(site, agent)
        self._events_topic = topics.events_topic(site, agent)
        self._ack_topic = topics.ack_topic(site, agent)
        self._in_flight: dict[int, float] = {}  # seq -> monotonic time sent
        self._replay_rate = replay_rate
        self._fresh_window = fresh_window
        self._tokens = max(1.0, replay_rate)
        self._tokens_at = time.monotonic()
        self._live_from: int | None = None  # first live seq; None: work it out on connect
        self._wake = asyncio.Event()
        self.acknowledged = 0
        link.subscribe(self._ack_topic, qos=1, consequence=ACK_REFUSED)
        link.on_connected.append(self._connected)
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
        self._in_flight.clear()
        self._disk.submit(self._outbox.release)
        self._live_from = None
        self.notify()

    async def _disk_call(self, function, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._disk, function, *args)

    async def handle_ack(self, payload: bytes) -> None:
        """Delete the seqs a collector has durably written."""
        try:
            ack = AckMessage.model_validate_json(payload)
        except ValidationError as exc:
            logger.warning("ignored malformed ack", extra={"error": str(exc).splitlines()[0]})
            return
        removed = await self._disk_call(self._outbox.acknowledge, ack.ranges)
        for first, last in ack.ranges:
            for seq in [s for s in self._in_flight if first <= s <= last]:
                del self._in_flight[seq]
        self.acknowledged += removed
        self.notify()

    def _expire_in_flight(self) -> None:
        deadline = time.monotonic() - self._ack_timeout
        expired = [seq for seq, sent in self._in_flight.items() if sent < deadline]
        for seq in expired:
            del self._in_flight[seq]
        if expired:
            self._disk.submit(self._outbox.release, expired)
            logger.info("no ack in time; sending again", extra={"seqs": len(expired)})

    def _publish(self, envelope: StoredEnvelope) -> bool:
        topic = self._events_topic if envelope.priority == Priority.EVENT else self._samples_topic
        info = self._link.client.publish(topic, envelope.payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._in_flight[envelope.seq] = time.monotonic()
        return True

    def _refill(self) -> None:
        now = time.monotonic()
        burst = max(1.0, self._replay_rate)
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * self._replay_rate)
        self._tokens_at = now

    async def _select(self, room: int) -> Selection:
        if self._live_from is None:
            since = time.time_ns() - int(self._fresh_window * 1e9)
            self._live_from = await self._disk_call(self._outbox.fresh_from, since)
            logger.info("replaying fresh-first", extra={"live_from_seq": self._live_from})
        self._refill()
        return await self._disk_call(
            lambda: self._outbox.select(
                room,
                set(self._in_flight),
                live_from=self._live_from,
                backlog_limit=int(self._tokens),
            )
        )

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            await self._link.connected.wait()
            # Cleared before reading the outbox, so a change during the read is never missed.
            self._wake.clear()
            self._expire_in_flight()
            room = self._window - len(self._in_flight)
            timeout = min(5.0, self._ack_timeout)
            if room > 0:
                selection = await self._select(room)
                live = len(selection.envelopes) - selection.backlog
                for index, envelope in enumerate(selection.envelopes):
                    if not self._link.connected.is_set() or not self._publish(envelope):
                        unsent = [e.seq for e in selection.envelopes[index:]]
                        self._disk.submit(self._outbox.release, unsent)
                        break
                    if index >= live:
                        self._tokens -= 1
                if selection.backlog_left:
                    # Come back when the bucket holds the next backlog token.
                    timeout = min(timeout, max(0.01, (1 - self._tokens) / self._replay_rate))
            # Wake on the next change, or in time to re-send what was never acknowledged.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def in_flight(self) -> int:
        """Envelopes published and not yet acknowledged by a collector."""
        return len(self._in_flight)


def _set_linger(client: mqtt.Client, *, abort: bool) -> None:
    """SO_LINGER 0 (close discards unsent data and resets) or the default graceful close."""
    sock = client.socket()
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the socket may be closing under us
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", int(abort), 0))
