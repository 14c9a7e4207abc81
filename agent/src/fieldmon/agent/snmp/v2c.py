"""SNMPv2c GET and GETBULK walks over one shared asyncio UDP socket per address family.

Answers are matched to requests by request-id, source address and community; a request is
sent again after its timeout, `retries` times, with the same request-id (any copy's answer
counts). One timer per attempt, no task per request: this path runs 100 times a second on a Pi.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldmon.agent.snmp import ber
from fieldmon.agent.snmp.errors import SnmpError, SnmpTimeoutError
from fieldmon.agent.snmp.values import Column, Value

if TYPE_CHECKING:
    from fieldmon.agent.snmp.client import SnmpClient

logger = logging.getLogger(__name__)

_REQUEST_ID_LIMIT = 2**31
_OID_CACHE_LIMIT = 20_000  # encoded OIDs kept per target; a device's polled set is far smaller


@dataclass(slots=True, eq=False)
class _Pending:
    address: tuple[str, int]
    community: bytes
    message: bytes
    future: asyncio.Future[ber.Response]
    tries_left: int
    timeout: float
    timer: asyncio.TimerHandle | None = None


@dataclass
class V2cTransport(asyncio.DatagramProtocol):
    """The UDP sockets (IPv4 and IPv6, opened on first use) every v2c device shares."""

    malformed: int = 0  # datagrams that were not an SNMPv2c Response
    unmatched: int = 0  # responses to no request in flight (late after a retry, or foreign)
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _sockets: dict[int, asyncio.DatagramTransport] = field(default_factory=dict)
    _next_id: int = field(default_factory=lambda: secrets.randbelow(_REQUEST_ID_LIMIT))

    async def _socket(self, family: int) -> asyncio.DatagramTransport:
        transport = self._sockets.get(family)
        if transport is None:
            loop = asyncio.get_running_loop()
            local = ("0.0.0.0", 0) if family == socket.AF_INET else ("::", 0)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=local, family=family
            )
            self._sockets[family] = transport
        return transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:  # type: ignore[override]
        try:
            response = ber.decode_response(data)
        except ber.BerError as exc:
            self.malformed += 1
            logger.debug("not an SNMPv2c response from %s: %s", addr[0], exc)
            return
        pending = self._pending.get(response.request_id)
        if (
            pending is None
            or pending.address != (addr[0], addr[1])
            or pending.community != response.community
        ):
            self.unmatched += 1
            return
        self._finish(response.request_id, pending)
        pending.future.set_result(response)

    def error_received(self, exc: Exception) -> None:
        # Unconnected UDP sockets rarely see ICMP errors; a dead device is a timeout anyway.
        logger.debug("SNMP socket error: %s", exc)

    def _finish(self, request_id: int, pending: _Pending) -> None:
        del self._pending[request_id]
        if pending.timer is not None:
            pending.timer.cancel()

    def _allocate_id(self) -> int:
        request_id = self._next_id
        while request_id in self._pending:
            request_id = (request_id + 1) % _REQUEST_ID_LIMIT
        self._next_id = (request_id + 1) % _REQUEST_ID_LIMIT
        return request_id

    async def exchange(
        self,
        family: int,
        address: tuple[str, int],
        community: bytes,
        pdu: ber.Pdu,
        *,
        timeout: float,  # noqa: ASYNC109 - per try, the whole exchange may take (retries + 1) x
        retries: int,
    ) -> ber.Response | None:
        """Send one request and wait for its answer; None after every try timed out."""
        transport = await self._socket(family)
        loop = asyncio.get_running_loop()
        request_id = self._allocate_id()
        message = ber.encode_request(community, request_id, pdu)
        pending = _Pending(address, community, message, loop.create_future(), retries, timeout)
        self._pending[request_id] = pending
        self._send(transport, request_id, pending)
        try:
            return await pending.future
        finally:
            if self._pending.get(request_id) is pending:
                self._finish(request_id, pending)

    def _send(
        self, transport: asyncio.DatagramTransport, request_id: int, pending: _Pending
    ) -> None:
        if pending.future.done():
            return
        transport.sendto(pending.message, pending.address)
        loop = pending.future.get_loop()
        pending.timer = loop.call_later(pending.timeout, self._expire, transport, request_id)

    def _expire(self, transport: asyncio.DatagramTransport, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is None or pending.future.done():
            return
        if pending.tries_left > 0:
            pending.tries_left -= 1
            self._send(transport, request_id, pending)
        else:
            self._finish(request_id, pending)
            pending.future.set_result(None)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the sockets; requests still waiting end as timeouts."""
        for request_id, pending in list(self._pending.items()):
            self._finish(request_id, pending)
            if not pending.future.done():
                pending.future.set_result(None)  # type: ignore[arg-type]
        for transport in self._sockets.values():
            transport.close()
        self._sockets.clear()


class V2cTarget:
    """GET and walk against one SNMPv2c device; errors name the device and what was asked."""

    def __init__(  # noqa: PLR0917 - the device's settings, all needed
        self,
        client: SnmpClient,
        device: str,
        transport: V2cTransport,
        family: int,
        address: tuple[str, int],
        community: bytes,
        timeout: float,
        retries: int,
    ) -> None:
        self.client = client
        self.device = device
        self._transport = transport
        self._family = family
        self._address = address
        self._community = community
        self._timeout = timeout
        self._retries = retries
        self._oids: dict[str, bytes] = {}

    def _encoded(self, oid: str) -> bytes:
        encoded = self._oids.get(oid)
        if encoded is None:
            if len(self._oids) >= _OID_CACHE_LIMIT:
                self._oids.clear()
            encoded = self._oids[oid] = ber.encode_oid(oid)
        return encoded

    async def _request(self, what: str, pdu: ber.Pdu) -> list[tuple[bytes, int, Value | None]]:
        async with self.client.semaphore:
            response = await self._transport.exchange(
                self._family,
                self._address,
                self._community,
                pdu,
                timeout=self._timeout,
                retries=self._retries,
            )
        self.client.requests += 1
        if response is None:
            raise SnmpTimeoutError(
                f"{self.device}: {what}: no answer within "
                f"{self._timeout:g}s x {self._retries + 1} tries"
            )
        if response.error_status:
            name = ber.error_status_name(response.error_status)
            raise SnmpError(f"{self.device}: {what}: error-status {name} at {response.error_index}")
        self.client.varbinds += len(response.varbinds)
        return response.varbinds

    async def get(self, oids: Sequence[str]) -> dict[str, Value]:
        """GET scalars by numeric OID; objects the device lacks are left out of the result."""
        encoded = [self._encoded(oid) for oid in oids]
        answer = await self._request(
            f"GET {len(oids)} OIDs", ber.Pdu(ber.GET_REQUEST, 0, 0, encoded)
        )
        result: dict[str, Value] = {}
        for position, (name, _tag, value) in enumerate(answer):
            if value is None:
                continue
            # A conforming agent answers in request order with the same names.
            if position < len(oids) and name == encoded[position]:
                result[oids[position]] = value
            else:
                result[ber.decode_oid(name)] = value
        self.client.values += len(result)
        return result

    async def walk(
        self, columns: Sequence[str], *, max_repetitions: int | None = None
    ) -> dict[str, Column]:
        """Walk table columns together with GETBULK; {column OID: {index: value}}.

        Each column leaves the request once the agent answers past its subtree, so a short
        column does not drag the others' rows back with it.
        """
        repetitions = max_repetitions or self.client.max_repetitions
        roots = {column: self._encoded(column) for column in columns}
        result: dict[str, Column] = {column: {} for column in columns}
        cursor = dict(roots)  # column -> last OID seen (BER content bytes)
        last: dict[str, tuple[int, ...]] = {column: () for column in columns}  # its index arcs
        while cursor:
            active = list(cursor)
            answer = await self._request(
                f"GETBULK {len(active)} columns from {active[0]}",
                ber.Pdu(
                    ber.GET_BULK_REQUEST, 0, repetitions, [cursor[column] for column in active]
                ),
            )
            _absorb(answer, active, roots, _Walk(cursor, last, result))
        self.client.values += sum(len(column) for column in result.values())
        return result


@dataclass(slots=True)
class _Walk:
    cursor: dict[str, bytes]  # column -> the OID to continue from
    last: dict[str, tuple[int, ...]]  # column -> the index arcs of that OID
    result: dict[str, Column]


def _absorb(
    answer: list[tuple[bytes, int, Value | None]],
    active: list[str],
    roots: dict[str, bytes],
    walk: _Walk,
) -> None:
    cursor = walk.cursor
    width = len(active)
    finished: set[str] = set()
    progressed: set[str] = set()
    # GETBULK answers row-major: repetition r carries one var-bind per requested column.
    for position, (name, tag, value) in enumerate(answer):
        column = active[position % width]
        if column in finished:
            continue
        root = roots[column]
        # An OID prefix is exactly a byte prefix of the encoding.
        if tag == ber.END_OF_MIB_VIEW or not name.startswith(root):
            finished.add(column)  # past the column
            continue
        index = tuple(ber.decode_arcs(name[len(root) :]))
        if index <= walk.last[column]:
            finished.add(column)  # not increasing: a broken agent; stop, do not loop
            continue
        cursor[column] = name
        walk.last[column] = index
        progressed.add(column)
        if value is not None:
            walk.result[column][".".join(map(str, index))] = value
    # A response cut short (message size) may carry nothing for some columns: they ask again.
    chance = len(answer) >= width or not answer
    for column in active:
        if column in finished or (chance and column not in progressed):
            cursor.pop(column, None)
