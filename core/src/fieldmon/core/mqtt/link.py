"""The paho-mqtt 2 client factory and the asyncio bridge shared by agent and collector."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldmon.core.config.types import read_secret
from fieldmon.core.mqtt.settings import BrokerConfig

logger = logging.getLogger(__name__)

# Messages handled per turn of the event loop before other tasks (writes, HTTP) get a turn.
INBOX_CHUNK = 64


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


class MqttLink:
    """A paho client on its own network thread whose events arrive on an asyncio loop.

    paho's network loop blocks on its socket, so it runs in paho's thread (`loop_start`);
    every callback hops to the event loop with `call_soon_threadsafe`, so the rest of the
    program stays single-threaded.
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
    ) -> None:
        self.client = client
        self._receive_maximum = receive_maximum
        self._config = config
        self._loop = loop
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self.connected = asyncio.Event()
        self.on_connected: list[Callable[[bool], None]] = []  # argument: session_present
        self.on_message: Callable[[mqtt.MQTTMessage], None] | None = None
        self.on_published: Callable[[int], None] | None = None
        self.last_error: str | None = None
        # Bumped on every connect: an earlier connection's packet ids must not be acked on this one.
        self.generation = 0
        self._inbox: deque[mqtt.MQTTMessage] = deque()
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_connect_fail = self._handle_connect_fail
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

    def stop(self) -> None:
        """Disconnect cleanly (the broker then discards the last will) and stop the thread."""
        self.client.disconnect()
        self.client.loop_stop()

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
        for callback in self.on_connected:
            callback(session_present)

    def _set_error(self, message: str) -> None:
        if message != self.last_error:
            logger.warning(message, extra={"broker": f"{self._config.host}:{self._config.port}"})
        self.last_error = message

    def _handle_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        self._call(self._set_error, "cannot reach the broker; retrying")

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
        if self.connected.is_set():
            logger.warning("disconnected from broker", extra={"reason": reason})
        self.connected.clear()

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
