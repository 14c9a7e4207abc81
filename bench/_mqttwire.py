"""A minimal MQTT v5 client over asyncio, for the fleet simulator's thousands of agents.

Thousands of simulated agents each hold their own connection (their own client id, their own
topics, their own `ack` subscription: what the broker sees from a real fleet), so a client must
cost next to nothing: no thread, no per-message objects beyond the bytes. This speaks only what
an agent needs: CONNECT (clean start, no keep-alive), SUBSCRIBE QoS 1, PUBLISH QoS 1 of bytes
already encoded, PUBACK both ways, and it reads the user properties of incoming PUBLISHes (the
collector's `accept` on its acks). It honours the broker's Receive Maximum by queueing.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable

# Property identifiers whose values have a fixed size, and the string-typed ones (MQTT v5, 2.2.2.2).
_FIXED = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x19: 1, 0x21: 2, 0x22: 2, 0x23: 2}
_FIXED |= {0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
_STRINGS = {0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F}
_USER_PROPERTY, _SUBSCRIPTION_ID, _RECEIVE_MAXIMUM = 0x26, 0x0B, 0x21

OnMessage = Callable[[str, bytes, dict[str, str]], None]


def varint(value: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _read_varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def parse_properties(data: bytes) -> tuple[dict[int, int], dict[str, str]]:
    """The integer properties by identifier and the user properties of one property block."""
    numbers: dict[int, int] = {}
    users: dict[str, str] = {}
    at = 0
    while at < len(data):
        identifier = data[at]
        at += 1
        if identifier in _FIXED:
            size = _FIXED[identifier]
            numbers[identifier] = int.from_bytes(data[at : at + size], "big")
            at += size
        elif identifier == _SUBSCRIPTION_ID:
            numbers[identifier], at = _read_varint(data, at)
        elif identifier in _STRINGS:
            (size,) = struct.unpack_from("!H", data, at)
            at += 2 + size
        elif identifier == _USER_PROPERTY:
            (size,) = struct.unpack_from("!H", data, at)
            key = data[at + 2 : at + 2 + size].decode()
            at += 2 + size
            (size,) = struct.unpack_from("!H", data, at)
            users[key] = data[at + 2 : at + 2 + size].decode()
            at += 2 + size
        else:
            raise ValueError(f"MQTT property 0x{identifier:02x} is not one this client reads")
    return numbers, users


class AgentConnection(asyncio.Protocol):
    """One simulated agent's MQTT v5 connection."""

    def __init__(self, client_id: str, on_message: OnMessage) -> None:
        self.client_id = client_id
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._next_id = 0
        self._unacked: set[int] = set()  # packet ids the broker has not PUBACKed
        self._receive_maximum = 65535
        self._queued: deque[tuple[bytes, bytes]] = deque()  # (topic, payload) over it
        self._subacks: dict[int, asyncio.Future[int]] = {}
        self.published = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        body = b"\x00\x04MQTT\x05\x02\x00\x00" + varint(0) + _string(self.client_id)
        transport.write(b"\x10" + varint(len(body)) + body)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"{self.client_id}: the broker closed the connection ({exc})")
        for future in (self.connected, *self._subacks.values()):
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at = 0
        while len(buffer) - at >= 2:
            try:
                length, start = _read_varint(buffer, at + 1)
            except IndexError:
                break
            end = start + length
            if end > len(buffer):
                break
            self._packet(buffer[at], bytes(buffer[start:end]))
            at = end
        del buffer[:at]

    # -- packets -------------------------------------------------------------------------------
    def _packet(self, header: int, body: bytes) -> None:
        kind = header >> 4
        if kind == 3:  # PUBLISH
            self._publish_in(header, body)
        elif kind == 4:  # PUBACK
            (packet_id,) = struct.unpack_from("!H", body)
            self._unacked.discard(packet_id)
            while self._queued and len(self._unacked) < self._receive_maximum:
                self._write(*self._queued.popleft())
        elif kind == 2:  # CONNACK
            reason = body[1]
            if reason:
                self.connected.set_exception(
                    ConnectionError(f"{self.client_id}: CONNACK reason 0x{reason:02x}")
                )
                return
            size, at = _read_varint(body, 2)
            numbers, _ = parse_properties(body[at : at + size])
            self._receive_maximum = numbers.get(_RECEIVE_MAXIMUM, 65535)
            self.connected.set_result(None)
        elif kind == 9:  # SUBACK
            (packet_id,) = struct.unpack_from("!H", body)
            size, at = _read_varint(body, 2)
            future = self._subacks.pop(packet_id, None)
            if future is not None and not future.done():
                future.set_result(body[at + size])

    def _publish_in(self, header: int, body: bytes) -> None:
        qos = (header >> 1) & 3
        (size,) = struct.unpack_from("!H", body)
        topic = body[2 : 2 + size].decode()
        at = 2 + size
        if qos:
            packet_id = body[at : at + 2]
            at += 2
        length, at = _read_varint(body, at)
        _, users = parse_properties(body[at : at + length])
        if qos and self.transport is not None:
            self.transport.write(b"\x40\x02" + packet_id)
        self.on_message(topic, body[at + length :], users)

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._unacked:
                return self._next_id

    # -- API -----------------------------------------------------------------------------------
    async def subscribe(self, topic: str) -> int:
        """SUBSCRIBE QoS 1; returns the SUBACK's reason code (1: granted QoS 1)."""
        assert self.transport is not None
        packet_id = self._packet_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = future
        body = struct.pack("!H", packet_id) + varint(0) + _string(topic) + b"\x01"
        self.transport.write(b"\x82" + varint(len(body)) + body)
        return await future

    def publish(self, topic: bytes, payload: bytes) -> None:
        """PUBLISH QoS 1 (`topic` already as MQTT's length-prefixed string); queued while the
        broker's Receive Maximum is reached."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError(f"{self.client_id}: not connected")
        self.published += 1
        if len(self._unacked) >= self._receive_maximum:
            self._queued.append((topic, payload))
            return
        self._write(topic, payload)

    def _write(self, topic: bytes, payload: bytes) -> None:
        assert self.transport is not None
        packet_id = self._packet_id()
        self._unacked.add(packet_id)
        length = len(topic) + 3 + len(payload)
        self.transport.writelines(
            (b"\x32" + varint(length) + topic + struct.pack("!HB", packet_id, 0), payload)
        )

    def close(self) -> None:
        """DISCONNECT (normal) and close."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\xe0\x00")
            self.transport.close()


def mqtt_string(text: str) -> bytes:
    """`text` as MQTT's length-prefixed UTF-8 string (how publish() takes its topic)."""
    return _string(text)
