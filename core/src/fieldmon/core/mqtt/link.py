"""The paho-mqtt 2 client factory and the asyncio bridge shared by agent and collector."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldmon.core.config.types import read_secret
from fieldmon.core.mqtt.failures import (
    COLLECTOR,
    Phrasing,
    closed_reason,
    connect_failure_reason,
    peer_alert_reason,
)
from fieldmon.core.mqtt.settings import BrokerConfig

logger = logging.getLogger(__name__)

# Messages handled per turn of the event loop before other tasks (writes, HTTP) get a turn.
INBOX_CHUNK = 64
# SUBACK reason codes below this grant a QoS (0, 1 or 2); from it on they refuse (MQTT v5 3.9.3).
_REFUSED_FROM = 0x80
# How long `stop` waits for paho's network thread. It normally ends within milliseconds of the
# DISCONNECT; see `stop` for what can hold it far longer.
STOP_TIMEOUT_S = 3.0


class SubscriptionState(StrEnum):
    """Where one subscription stands on the current connection."""

    PENDING = "pending"  # not answered yet on this connection (or no connection)
    GRANTED = "granted"
    REFUSED = "refused"


@dataclass(frozen=True)
class SubscriptionStatus:
    """One topic filter and the broker's latest answer to it."""

    topic: str
    state: SubscriptionState = SubscriptionState.PENDING
    qos: int | None = None  # the QoS the broker granted
    reason: str | None = None  # why it refused: the reason code's name, e.g. "Not authorized"
    reason_code: int | None = None  # the SUBACK reason code, e.g. 0x87

    def as_json(self) -> dict[str, object]:
        """For /healthz and status pages: topic, state, granted QoS, refusal reason."""
        return {
            "topic": self.topic,
            "state": str(self.state),
            "qos": self.qos,
            "reason": self.reason,
        }


def judge_suback(
    topics: Sequence[str], reason_codes: Sequence[ReasonCode], reason_string: str | None = None
) -> list[SubscriptionStatus]:
    """The broker's answer per topic filter of one SUBSCRIBE: its SUBACK holds one reason code
    per filter, in the same order. A code below 0x80 grants that QoS; 0x80 and above refuse
    (0x80 unspecified, 0x87 not authorized, 0x8F topic filter invalid, 0x97 quota exceeded,
    0x9E shared subscriptions and 0xA1 subscription identifiers not supported, ...).

    A SUBACK whose count of codes does not match is a broker bug; nothing in it can be trusted,
    so every filter counts as refused rather than silently granted.
    """
    if len(reason_codes) != len(topics):
        reason = f"the SUBACK carried {len(reason_codes)} reason codes for {len(topics)} filters"
        return [SubscriptionStatus(t, SubscriptionState.REFUSED, reason=reason) for t in topics]
    answers = []
    for topic, code in zip(topics, reason_codes, strict=True):
        if code.value < _REFUSED_FROM:
            answers.append(SubscriptionStatus(topic, SubscriptionState.GRANTED, qos=code.value))
            continue
        reason = code.getName() + (f" ({reason_string})" if reason_string else "")
        answers.append(
            SubscriptionStatus(
                topic, SubscriptionState.REFUSED, reason=reason, reason_code=code.value
            )
        )
    return answers


@dataclass(frozen=True)
class _Wanted:
    """A subscription the link keeps: sent at every connect."""

    topic: str
    qos: int
    identifier: int | None
    consequence: str


def new_client(config: BrokerConfig, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """A paho MQTT v5 client with credentials and TLS applied, not yet connected."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if config.username is not None:
        password = read_secret(config.password_file) if config.password_file else None
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        context = ssl.create_default_context(
            cafile=str(config.tls.ca_file) if config.tls.ca_file else None
        )
        if config.tls.cert_file:
            context.load_cert_chain(
                str(config.tls.cert_file), str(config.tls.key_file) if config.tls.key_file else None
            )
        if config.tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client.tls_set_context(context)
    return client


class _LastError(logging.Handler):
    """Keeps the text of the last error paho logged (a socket error in its network loop)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()


class MqttLink:
    """A paho client on its own network thread whose events arrive on an asyncio loop.

    paho's network loop blocks on its socket, so it runs in paho's thread (`loop_start`);
    every callback hops to the event loop with `call_soon_threadsafe`, so the rest of the
    program stays single-threaded.

    Subscriptions are the link's too (`subscribe`): sent at every connect, each SUBACK matched
    to its SUBSCRIBE by packet id and judged per reason code, so a subscription the broker
    refuses (an ACL) is an error in the log and a state callers report, never silence.
    """

    def __init__(
        self,
        client: mqtt.Client,
        config: BrokerConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        clean_start: bool = True,
        session_expiry: float = 0.0,
        receive_maximum: int | None = None,
        phrasing: Phrasing = COLLECTOR,
    ) -> None:
        self.client = client
        # How failures are worded: the settings' path in this daemon's file, whose clock. Never
        # the address: last_error is shown by /healthz, the log line carries the address apart.
        self._phrasing = Phrasing(phrasing.section, phrasing.machine, name_address=False)
        self._receive_maximum = receive_maximum
        self._config = config
        self._loop = loop
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self.connected = asyncio.Event()
        self.on_connected: list[Callable[[bool], None]] = []  # argument: session_present
        self.on_message: Callable[[mqtt.MQTTMessage], None] | None = None
        self.on_published: Callable[[int], None] | None = None
        # Called on the loop with each answer to a subscription (granted or refused).
        self.on_subscription: list[Callable[[SubscriptionStatus], None]] = []
        # Why the broker is not connected, in words (expired certificate, nothing listening...).
        self.last_error: str | None = None
        # paho's last socket error from its loop (it only logs them): a broker's TLS alert
        # refusing our client certificate shows there, and nowhere else, with TLS 1.3. A logger
        # of its own at ERROR, not on_log: with on_log set paho formats a line for every packet.
        self._socket_errors = _LastError()
        paho_logger = logging.Logger(f"{__name__}.paho", logging.ERROR)
        paho_logger.propagate = False
        paho_logger.addHandler(self._socket_errors)
        client.enable_logger(paho_logger)
        # Bumped on every connect: an earlier connection's packet ids must not be acked on this one.
        self.generation = 0
        self._inbox: deque[mqtt.MQTTMessage] = deque()
        self._wanted: dict[str, _Wanted] = {}
        self._status: dict[str, SubscriptionStatus] = {}
        self._awaiting: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its topic filters
        self._settled = asyncio.Event()  # connected, and every subscription answered
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_connect_fail = self._handle_connect_fail
        client.on_subscribe = self._handle_subscribe
        # Reconnect backoff doubles from 1 s to 30 s; a site uplink may flap for an hour.
        client.reconnect_delay_set(min_delay=1, max_delay=30)

    def start(self) -> None:
        """Begin connecting in the background; `connected` is set once the broker accepts."""
        properties = Properties(PacketTypes.CONNECT)
        if self._session_expiry:
            properties.SessionExpiryInterval = int(self._session_expiry)
        if self._receive_maximum:
            properties.ReceiveMaximum = self._receive_maximum
        self.client.connect_async(
            self._config.host,
            self._config.port,
            keepalive=max(5, int(self._config.keepalive)),
            clean_start=self._clean_start,
            properties=properties,
        )
        self.client.loop_start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Disconnect cleanly (the broker then discards the last will) and stop the thread.

        Waits at most `timeout` seconds; False when paho's thread was still running then. paho's
        `loop_stop()` joins its thread without a bound, and the thread ends only once its queue
        is written or the socket fails: a DISCONNECT queued behind publishes on a stalled
        connection waits for the keepalive to declare it dead (up to 1.5 keepalives, 45 s by
        default), and a reconnect in progress waits for the resolver (getaddrinfo has no
        timeout of ours) and the TCP and TLS connect. Both calls run in a helper thread; one
        that outlives the bound is left behind (paho's thread is a daemon thread, so it does not
        keep the process from exiting) and the stop carries on.
        """
        stopper = threading.Thread(target=self._disconnect_and_join, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            logger.warning(
                "the MQTT network thread did not stop in time; leaving it behind",
                extra={"timeout_s": timeout, "broker": f"{self._config.host}:{self._config.port}"},
            )
            return False
        return True

    def _disconnect_and_join(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(
        self,
        topic: str,
        *,
        qos: int = 1,
        identifier: int | None = None,
        consequence: str = "",
    ) -> None:
        """Keep `topic` subscribed: sent now if connected and again at every connect.

        `identifier` is attached as the MQTT v5 subscription identifier (messages then say
        which subscription matched). `consequence` says in words what a refusal means for this
        program; it ends the error logged when the broker refuses.
        """
        wanted = _Wanted(topic, qos, identifier, consequence)
        self._wanted[topic] = wanted
        self._status[topic] = SubscriptionStatus(topic)
        self._settled.clear()
        if self.connected.is_set():
            self._send_subscribe(wanted)

    @property
    def subscriptions(self) -> list[SubscriptionStatus]:
        """Every subscription with the broker's latest answer, in the order they were made."""
        return list(self._status.values())

    async def wait_subscribed(self) -> list[SubscriptionStatus]:
        """Return once the broker has answered every subscription on this connection (granted
        or refused); callers bound it with `asyncio.timeout`."""
        await self._settled.wait()
        return self.subscriptions

    def _send_subscribe(self, wanted: _Wanted) -> None:
        properties = None
        if wanted.identifier is not None:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = wanted.identifier
        result, mid = self.client.subscribe(wanted.topic, qos=wanted.qos, properties=properties)
        if result != mqtt.MQTT_ERR_SUCCESS:
            # The connection went away under us; the next connect sends it again.
            logger.debug("subscribe not sent", extra={"topic": wanted.topic, "rc": str(result)})
            return
        # Registered before paho's thread can answer: its SUBACK hops to this loop, which runs
        # the hop only after this call returns.
        self._awaiting[mid] = [wanted.topic]

    def _forget_answers(self) -> None:
        """Answers belong to a connection: a new one answers every subscription afresh."""
        self._awaiting.clear()
        self._settled.clear()
        for topic in self._status:
            self._status[topic] = SubscriptionStatus(topic)

    def _resubscribe(self) -> None:
        self._forget_answers()
        if not self._wanted:
            self._settled.set()
            return
        for wanted in self._wanted.values():
            self._send_subscribe(wanted)

    def _handle_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        reason_string = getattr(properties, "ReasonString", None) if properties else None
        self._call(self._answered, mid, list(reason_codes), reason_string)

    def _answered(
        self, mid: int, reason_codes: list[ReasonCode], reason_string: str | None
    ) -> None:
        topics = self._awaiting.pop(mid, None)
        if topics is None:
            return  # a SUBACK from before the last (re)connect
        for status in judge_suback(topics, reason_codes, reason_string):
            wanted = self._wanted[status.topic]
            self._status[status.topic] = status
            self._report(status, wanted)
            for callback in self.on_subscription:
                callback(status)
        if all(s.state is not SubscriptionState.PENDING for s in self._status.values()):
            self._settled.set()

    def _report(self, status: SubscriptionStatus, wanted: _Wanted) -> None:
        if status.state is SubscriptionState.REFUSED:
            consequence = f": {wanted.consequence}" if wanted.consequence else ""
            logger.error(
                f"broker refused the subscription to {status.topic} ({status.reason}){consequence}",
                extra={
                    "topic": status.topic,
                    "reason": status.reason,
                    "reason_code": None if status.reason_code is None else hex(status.reason_code),
                },
            )
        elif status.qos is not None and status.qos < wanted.qos:
            logger.warning(
                f"broker granted QoS {status.qos} for {status.topic}, not {wanted.qos}: "
                "its messages may be lost on the way",
                extra={"topic": status.topic, "qos": status.qos},
            )
        else:
            logger.info(
                f"subscribed to {status.topic} (QoS {status.qos})",
                extra={"topic": status.topic, "qos": status.qos},
            )

    def _call(self, function: Callable[..., None], *args: object) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(function, *args)

    def _handle_connect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._call(self._set_error, f"broker refused the connection: {reason_code}")
            return
        self._call(self._set_connected, flags.session_present)

    def _set_connected(self, session_present: bool) -> None:
        self.generation += 1
        self.last_error = None
        self.connected.set()
        logger.info(
            "connected to broker",
            extra={
                "broker": f"{self._config.host}:{self._config.port}",
                "session_present": session_present,
            },
        )
        # Before the callbacks: a subscription goes out ahead of anything they publish.
        self._resubscribe()
        for callback in self.on_connected:
            callback(session_present)

    def _set_error(self, message: str) -> None:
        if message != self.last_error:
            logger.warning(message, extra={"broker": f"{self._config.host}:{self._config.port}"})
        self.last_error = message

    def _handle_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        # paho calls this inside its `except OSError:` around connecting (TCP, then the TLS
        # handshake), so the exception in flight is the reason: an expired certificate is not
        # "cannot reach the broker".
        exc = sys.exception()
        if exc is not None:
            reason = connect_failure_reason(exc, self._config, self._phrasing)
        else:
            reason = "cannot reach the broker"
        self._call(self._set_error, f"cannot connect to the broker: {reason}; retrying")

    def _handle_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._call(self._lost, str(reason_code))

    def _lost(self, reason: str) -> None:
        socket_error, self._socket_errors.text = self._socket_errors.text, None
        alert = peer_alert_reason(socket_error, self._phrasing) if socket_error else None
        if alert is not None:
            # The TLS handshake "succeeded" (TLS 1.3), then the broker refused our certificate.
            self._set_error(f"cannot connect to the broker: {alert}; retrying")
        elif socket_error and not self.connected.is_set():
            # Closed before its CONNACK: a TLS-only port, or a refused client certificate whose
            # alert was lost.
            closed = closed_reason(self._config, self._phrasing)
            self._set_error(f"cannot connect to the broker: {closed}; retrying")
        elif self.connected.is_set():
            logger.warning("disconnected from broker", extra={"reason": reason})
        self.connected.clear()
        # Unanswered SUBSCRIBEs died with the connection; the next connect sends them all again.
        self._forget_answers()

    def _handle_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        # One wake-up of the event loop per burst, not per message: each call_soon_threadsafe
        # writes a byte to the loop's self-pipe, and a flood of them fills the pipe so that a
        # SIGTERM arriving under load is lost ("signal wakeup fd: Resource temporarily
        # unavailable"). deque append/popleft are thread-safe.
        self._inbox.append(message)
        if len(self._inbox) == 1:
            self._call(self._drain_inbox)

    def _drain_inbox(self) -> None:
        """Hand queued messages to `on_message`, yielding to the loop between chunks."""
        for _ in range(INBOX_CHUNK):
            if not self._inbox:
                return
            message = self._inbox.popleft()
            if self.on_message is not None:
                self.on_message(message)
        if self._inbox:
            self._loop.call_soon(self._drain_inbox)

    def _handle_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self.on_published is not None:
            self._call(self.on_published, mid)
