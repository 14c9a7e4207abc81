"""Asynchronous ICMP echo over non-blocking raw or datagram sockets, many rounds at once.

One `IcmpPinger` serves every link of an agent. It owns a few sockets registered with the event
loop's reader (never a blocking receive, never scapy's `sr()`), sends echoes built with `struct`
from a template (byte for byte scapy's own packet, which the tests check; importing scapy would
cost the agent about 25 MB) and matches each reply to the echo that caused it, so hundreds of
concurrent rounds share the sockets without mixing their answers.

Two socket modes, chosen once when the pinger starts:

- "raw" (root or CAP_NET_RAW): SOCK_RAW sockets. Every raw ICMP socket on the host receives a
  copy of every ICMP packet, so one receive socket per address family, filtered in the kernel to
  echo replies carrying our identifier (ICMP_FILTER plus a BPF program), reads our replies.
  The sockets that send (one per family, interface, TOS and TTL) block every ICMP type on
  receive, or each reply would be read once per socket and look duplicated.
- "datagram" (unprivileged, needs net.ipv4.ping_group_range to include our group): SOCK_DGRAM
  ICMP sockets. The kernel rewrites the identifier to one of its own per socket and gives each
  socket only its own replies, so each socket reads for itself and replies match on sequence.

Sequence numbers are unique across the whole pinger while an echo is outstanding, so a reply's
sequence (plus identifier in raw mode, plus source address and payload) names exactly one echo.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import logging
import math
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

logger = logging.getLogger(__name__)

Mode = Literal["raw", "datagram"]

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
_PROTO: dict[int, int] = {
    socket.AF_INET: socket.IPPROTO_ICMP,
    socket.AF_INET6: socket.IPPROTO_ICMPV6,
}

# Linux constants Python's socket module does not export.
_SOL_RAW = 255
_ICMP_FILTER = 1  # SOL_RAW option: bit n set = drop ICMPv4 type n
_ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option: 256-bit mask, bit n set = drop ICMPv6 type n
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_BPF_INSTRUCTION = struct.Struct("HBBI")  # struct sock_filter: code, jt, jf, k
_BPF_PROGRAM = struct.Struct("@HP")  # struct sock_fprog: length, pointer to the instructions
_SCM_TIMESTAMPNS = _SO_TIMESTAMPNS
# The kernel's (old) struct timespec is two native longs on both 32- and 64-bit Pis.
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_MAX_PACKET = 65535 + 60  # largest IP datagram plus header room: a reply is never truncated
_RECEIVE_BUFFER = 1 << 20  # a burst of replies from hundreds of rounds must not overflow
_READS_PER_WAKEUP = 64  # drain in batches, but let other callbacks run between them
# An aligned round that starts this soon after a tick sends its first echo at once, as part of
# that tick: rounds the scheduler starts on the ticks (`start_grid`) then wait for none.
_TICK_SLACK = 0.002


@dataclass(slots=True)
class RoundResult:
    """The outcome of one round of echoes to one address.

    `sent` counts every echo the round tried to send, including those whose send failed; each
    failure is lost and counted in `errors` (errno name -> count). `rtts_ms` holds the answered
    echoes' round-trip times in send order. Duplicates (a second reply to one echo) and late
    replies (after the echo's timeout) are counted, never answers. A reply that arrives after its
    round has returned is counted only in `IcmpPinger.unmatched`.
    """

    address: str
    sent: int
    rtts_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def received(self) -> int:
        """Echoes answered in time."""
        return len(self.rtts_ms)


class _SequencesExhaustedError(Exception):
    """Every 16-bit sequence number belongs to an echo still in flight."""


class _Channel:
    """One socket: the sender for a (family, interface, tos, ttl) key, a receiver, or both."""

    __slots__ = ("blocked", "buffer", "family", "give_up", "sock", "view")

    def __init__(self, family: int, sock: socket.socket) -> None:
        self.family = family
        self.sock = sock
        self.buffer = bytearray(_MAX_PACKET)
        self.view = memoryview(self.buffer)
        # Echoes that met a full send buffer, waiting for room (at most a second).
        self.blocked: list[tuple[_Echo, bytes]] = []
        self.give_up: asyncio.TimerHandle | None = None


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's-complement sum of the 16-bit words."""
    if len(data) % 2:
        data = bytes(data) + b"\0"  # a new object: never pad the caller's buffer
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class _EchoTemplate:
    """An echo request built once; each echo patches in its sequence number (and checksum)."""

    __slots__ = ("_base_sum", "_packet", "_v4", "payload")

    def __init__(self, family: int, identifier: int, payload: bytes) -> None:
        self._v4 = family == socket.AF_INET
        self.payload = payload
        request = ECHO_REQUEST[family]
        packet = bytearray(_ICMP_HEADER.pack(request, 0, 0, identifier, 0) + payload)
        if self._v4:
            _ICMP_HEADER.pack_into(packet, 0, request, 0, internet_checksum(packet), identifier, 0)
            # One's-complement sum of the packet with seq 0; a new seq just adds to it (RFC 1624).
            self._base_sum = ~_ICMP_HEADER.unpack_from(packet)[2] & 0xFFFF
        else:
            # The kernel fills in the ICMPv6 checksum: it covers an IPv6 pseudo-header.
            self._base_sum = 0
        self._packet = packet

    def build(self, seq: int) -> bytes:
        """The request bytes for sequence `seq`."""
        struct.pack_into("!H", self._packet, 6, seq)
        if self._v4:
            total = self._base_sum + seq
            total = (total & 0xFFFF) + (total >> 16)
            struct.pack_into("!H", self._packet, 2, ~total & 0xFFFF)
        return bytes(self._packet)


@dataclass(slots=True, eq=False)
class _Echo:
    seq: int
    round: _Round
    sent_perf_ns: int = 0
    sent_wall_ns: int = 0
    rtt_ns: int | None = None
    replies: int = 0
    retried: bool = False  # its send met a full buffer once already


class _Target:
    """Where a round's echoes go and what they look like: worked out once per address and
    options, not for every round."""

    __slots__ = ("channel", "sockaddr", "source", "source_text", "template")

    def __init__(
        self,
        channel: _Channel,
        sockaddr: tuple[str, int] | tuple[str, int, int, int],
        template: _EchoTemplate,
    ) -> None:
        address = sockaddr[0]
        self.channel = channel
        self.sockaddr = sockaddr
        self.template = template
        # Replies must come from the target: as recvmsg spells its address, or packed, this.
        self.source_text = address
        self.source = socket.inet_pton(_family(address), address.split("%", 1)[0])


class _Round:
    """One round in flight: where its echoes go and when, what came back, and its end.

    The pinger's callbacks send its echoes and read its replies; the caller of `round()` only
    awaits `finished`, set once every echo is sent and answered, or its window is over.
    """

    __slots__ = (
        "aligned",
        "blocked",
        "channel",
        "closed",
        "count",
        "deadline",
        "duplicates",
        "echoes",
        "errors",
        "finished",
        "first",
        "issued",
        "late",
        "outstanding",
        "sockaddr",
        "source",
        "source_text",
        "spacing",
        "template",
        "timeout",
        "timeout_ns",
    )

    def __init__(
        self,
        target: _Target,
        *,
        count: int,
        spacing: float,
        timeout: float,
        finished: asyncio.Future[None],
    ) -> None:
        self.source_text = target.source_text
        self.source = target.source
        self.channel = target.channel
        self.sockaddr = target.sockaddr
        self.template = target.template
        self.count = count
        self.spacing = spacing
        self.timeout = timeout
        self.timeout_ns = int(timeout * 1e9)
        self.finished = finished
        self.aligned = False
        self.first = 0.0  # aligned: the first echo's tick number; else: its loop time
        self.issued = 0  # echoes whose turn has come: sent, failed or waiting for buffer room
        self.blocked = 0  # of those, waiting for room in the socket's send buffer
        self.echoes: list[_Echo] = []
        self.outstanding = 0  # sent (or waiting to be), neither answered nor failed
        self.duplicates = 0
        self.late = 0
        self.errors: dict[str, int] = {}
        self.deadline: asyncio.TimerHandle | None = None
        self.closed = False

    def due(self, index: int) -> float:
        """When echo `index` is due (event loop time). Aligned rounds count whole ticks of the
        shared clock, so equal ticks of different rounds are equal floats: one timer sends all."""
        if self.aligned:
            return (self.first + index) * self.spacing
        return self.first + index * self.spacing

    def fail(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class IcmpPinger:
    """Sends rounds of ICMP echoes and measures their round-trip times; an async context manager.

    `force_datagram` skips raw sockets (tests of the unprivileged path). `mode` says which
    sockets are in use once the pinger has started. `unmatched` counts replies carrying our
    identifier that matched no echo in flight (a round already over, or a foreign packet).
    """

    def __init__(self, *, force_datagram: bool = False) -> None:
        self._force_datagram = force_datagram
        self.mode: Mode = "datagram" if force_datagram else "raw"
        # Random identifier and first sequence, so restarted agents never answer each other's
        # echoes and two pingers on one host keep apart.
        self.identifier = secrets.randbelow(0xFFFF) + 1
        self._next_seq = secrets.randbelow(0x10000)
        self._token = secrets.token_bytes(16)
        self._pending: dict[int, _Echo] = {}
        self._senders: dict[tuple[int, str | None, int, int], _Channel] = {}
        self._receivers: dict[int, _Channel] = {}
        self._templates: dict[tuple[int, int], _EchoTemplate] = {}
        # (address, size, tos, ttl, interface) -> its target, once its sockets could be opened
        self._targets: dict[tuple[str, int, int, int, str | None], _Target] = {}
        self._due: dict[float, list[_Round]] = {}  # loop time -> rounds with an echo due then
        self._loop: asyncio.AbstractEventLoop | None = None
        self.unmatched = 0

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        if not self._force_datagram:
            try:
                self._receiver(socket.AF_INET)
            except PermissionError:
                self.mode = "datagram"
        logger.info("ICMP sockets ready", extra={"mode": self.mode})
        if self.mode == "datagram":
            self._check_datagram_allowed()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and close every socket."""
        channels = {id(c): c for c in [*self._senders.values(), *self._receivers.values()]}
        for channel in channels.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(channel.sock.fileno())
                self._loop.remove_writer(channel.sock.fileno())
            if channel.give_up is not None:
                channel.give_up.cancel()
            channel.sock.close()
        self._senders.clear()
        self._receivers.clear()
        self._targets.clear()

    def _check_datagram_allowed(self) -> None:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
        except PermissionError:
            logger.error(
                "no ICMP socket is permitted: every echo will fail. Run as root (or with "
                "CAP_NET_RAW), or let our group use ping sockets with net.ipv4.ping_group_range",
                extra={"mode": self.mode},
            )

    # -- sockets -------------------------------------------------------------------------

    def socket_for(
        self, address: str, *, tos: int = 0, ttl: int = 64, interface: str | None = None
    ) -> socket.socket:
        """The socket echoes to `address` with these options are sent from (created if needed)."""
        family = _family(address)
        return self._sender(family, interface, tos, ttl).sock

    def _sender(self, family: int, interface: str | None, tos: int, ttl: int) -> _Channel:
        key = (family, interface, tos, ttl)
        channel = self._senders.get(key)
        if channel is None:
            channel = self._open_sender(family, interface, tos, ttl)
            self._senders[key] = channel
        return channel

    def _open_sender(self, family: int, interface: str | None, tos: int, ttl: int) -> _Channel:
        kind = socket.SOCK_RAW if self.mode == "raw" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind, _PROTO[family])
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            if interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            if self.mode == "raw":
                _block_all_icmp(sock, family)
            else:
                _prepare_receive(sock)
        except OSError:
            sock.close()
            raise
        channel = _Channel(family, sock)
        if self.mode == "datagram":
            self._watch(channel)
        return channel

    def _receiver(self, family: int) -> _Channel:
        channel = self._receivers.get(family)
        if channel is None:
            sock = socket.socket(family, socket.SOCK_RAW, _PROTO[family])
            try:
                sock.setblocking(False)
                _only_echo_replies(sock, family)
                _only_identifier(sock, family, self.identifier)
                _prepare_receive(sock)
            except OSError:
                sock.close()
                raise
            channel = _Channel(family, sock)
            self._watch(channel)
            self._receivers[family] = channel
        return channel

    def _watch(self, channel: _Channel) -> None:
        assert self._loop is not None, "use IcmpPinger as `async with`"
        self._loop.add_reader(channel.sock.fileno(), self._on_readable, channel)

    # -- rounds --------------------------------------------------------------------------

    async def round(
        self,
        address: str,
        *,
        count: int,
        spacing: float,
        timeout: float,  # noqa: ASYNC109 - per echo, not a deadline for the whole call
        size: int = 56,
        tos: int = 0,
        ttl: int = 64,
        interface: str | None = None,
        align: bool = False,
    ) -> RoundResult:
        """Send `count` echoes `spacing` seconds apart; each may be answered within `timeout`.

        `align` puts the echoes on a clock shared by every round of the pinger (multiples of
        `spacing`), so concurrent rounds send together: one timer callback sends every echo due
        at a tick, whatever round it belongs to. The first echo then waits up to one spacing
        for its tick (none when a tick began within the last 2 ms); only ask for it when the
        interval has that slack.

        Never raises for network trouble: an address, interface or socket that cannot be used
        makes every echo lost, with the reason in `RoundResult.errors`.
        """
        result = RoundResult(address=address, sent=count)
        key = (address, size, tos, ttl, interface)
        target = self._targets.get(key)
        if target is None:
            try:
                target = self._target(address, size, tos, ttl, interface)
            except OSError as exc:
                result.errors[_errno_name(exc)] = count
                return result
            self._targets[key] = target
        loop = asyncio.get_running_loop()
        rnd = _Round(
            target,
            count=count,
            spacing=spacing,
            timeout=timeout,
            finished=loop.create_future(),
        )
        # Absolute send times: a slow wakeup does not push every later echo back.
        if align:
            now = loop.time()
            rnd.aligned, rnd.first = True, math.ceil((now - _TICK_SLACK) / spacing)
            if rnd.due(0) <= now:
                self._send_echo(rnd, rnd.due(0))  # its tick has just begun
                self._next(rnd)
            else:
                self._plan(rnd)
        else:
            rnd.first = loop.time()
            self._send_echo(rnd, rnd.first)  # the first echo leaves at once
            self._next(rnd)
        try:
            await rnd.finished
        finally:
            rnd.closed = True
            if rnd.deadline is not None:
                rnd.deadline.cancel()
            for echo in rnd.echoes:
                if self._pending.get(echo.seq) is echo:
                    del self._pending[echo.seq]
        result.rtts_ms = [e.rtt_ns / 1e6 for e in rnd.echoes if e.rtt_ns is not None]
        result.duplicates = rnd.duplicates
        result.late = rnd.late
        result.errors = rnd.errors
        return result

    def _target(
        self, address: str, size: int, tos: int, ttl: int, interface: str | None
    ) -> _Target:
        family = _family(address)
        sockaddr = _sockaddr(family, address)
        channel = self._sender(family, interface, tos, ttl)
        if self.mode == "raw":
            self._receiver(family)
        return _Target(channel, sockaddr, self._template(family, size))

    def _plan(self, rnd: _Round) -> None:
        """Put the round's next echo on the timer of its due time (one timer per due time)."""
        when = rnd.due(rnd.issued)
        rounds = self._due.get(when)
        if rounds is None:
            self._due[when] = [rnd]
            assert self._loop is not None, "use IcmpPinger as `async with`"
            self._loop.call_at(when, self._send_due, when)
        else:
            rounds.append(rnd)

    def _send_due(self, when: float) -> None:
        """The timer of one due time: the next echo of every round planned for it."""
        for rnd in self._due.pop(when, ()):
            if not rnd.closed:
                self._send_echo(rnd, when)
                self._next(rnd)

    def _next(self, rnd: _Round) -> None:
        if rnd.issued < rnd.count:
            self._plan(rnd)
        else:
            self._settle(rnd)

    def _settle(self, rnd: _Round) -> None:
        """End the round once every echo is out and answered, or start its last window."""
        if rnd.closed or rnd.issued < rnd.count or rnd.blocked:
            return
        if rnd.outstanding == 0:
            self._finish(rnd)
        elif rnd.deadline is None:
            # The last echo's window closes `timeout` after it left; earlier ones before.
            assert self._loop is not None
            rnd.deadline = self._loop.call_later(rnd.timeout, self._finish, rnd)

    def _finish(self, rnd: _Round) -> None:
        if not rnd.finished.done():
            rnd.finished.set_result(None)

    def _send_echo(self, rnd: _Round, when: float) -> None:
        """Send the round's next echo now; a failure is a lost echo. `when` is the loop time it
        was due, which this ignores: bench/agent and the tests measure lateness against it."""
        rnd.issued += 1
        try:
            seq = self._allocate_seq()
        except _SequencesExhaustedError:
            rnd.fail("65536 echoes already in flight")
            return
        echo = _Echo(seq, rnd)
        self._pending[seq] = echo
        rnd.echoes.append(echo)
        rnd.outstanding += 1
        self._transmit(echo, rnd.template.build(seq))

    def _transmit(self, echo: _Echo, packet: bytes) -> None:
        rnd = echo.round
        echo.sent_perf_ns = time.perf_counter_ns()
        echo.sent_wall_ns = time.time_ns()
        try:
            rnd.channel.sock.sendto(packet, rnd.sockaddr)
        except BlockingIOError:
            if echo.retried:
                self._unsent(echo, "EAGAIN")
            else:
                self._wait_for_room(echo, packet)
        except OSError as exc:
            self._unsent(echo, _errno_name(exc))

    def _unsent(self, echo: _Echo, reason: str) -> None:
        rnd = echo.round
        if self._pending.get(echo.seq) is echo:
            del self._pending[echo.seq]
        rnd.outstanding -= 1
        rnd.fail(reason)

    def _wait_for_room(self, echo: _Echo, packet: bytes) -> None:
        """A burst filled the socket's send buffer: send again once it has room, or after 1 s."""
        echo.retried = True
        echo.round.blocked += 1
        channel = echo.round.channel
        channel.blocked.append((echo, packet))
        if len(channel.blocked) == 1:
            assert self._loop is not None
            self._loop.add_writer(channel.sock.fileno(), self._room, channel)
            channel.give_up = self._loop.call_later(1.0, self._room, channel)

    def _room(self, channel: _Channel) -> None:
        """Room in the send buffer (or a second passed): each waiting echo tries once more."""
        assert self._loop is not None
        self._loop.remove_writer(channel.sock.fileno())
        if channel.give_up is not None:
            channel.give_up.cancel()
            channel.give_up = None
        blocked, channel.blocked = channel.blocked, []
        for echo, packet in blocked:
            rnd = echo.round
            rnd.blocked -= 1
            if not rnd.closed:
                self._transmit(echo, packet)
                self._settle(rnd)

    def _allocate_seq(self) -> int:
        if len(self._pending) > 0xFFFF:
            raise _SequencesExhaustedError
        seq = self._next_seq
        while seq in self._pending:
            seq = (seq + 1) & 0xFFFF
        self._next_seq = (seq + 1) & 0xFFFF
        return seq

    def _template(self, family: int, size: int) -> _EchoTemplate:
        template = self._templates.get((family, size))
        if template is None:
            payload = (self._token * (size // len(self._token) + 1))[:size]
            template = _EchoTemplate(family, self.identifier, payload)
            self._templates[(family, size)] = template
        return template

    # -- replies -------------------------------------------------------------------------

    def _on_readable(self, channel: _Channel) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                nbytes, ancdata, _flags, source = channel.sock.recvmsg_into(
                    [channel.buffer], _ANCILLARY_SIZE
                )
            except BlockingIOError:
                return
            except OSError as exc:
                # A queued ICMP error surfaces here once; the next read goes on normally.
                logger.debug("ICMP receive error", extra={"error": _errno_name(exc)})
                continue
            self._dispatch(channel, nbytes, ancdata, source[0], time.perf_counter_ns())

    def _dispatch(
        self,
        channel: _Channel,
        nbytes: int,
        ancdata: list[tuple[int, int, bytes]],
        source: str,
        read_perf_ns: int,
    ) -> None:
        view = channel.view
        offset = 0
        raw = self.mode == "raw"
        if raw and channel.family == socket.AF_INET:
            offset = (view[0] & 0x0F) * 4  # raw IPv4 sockets deliver the IP header too
        if nbytes - offset < _ICMP_HEADER.size:
            return
        icmp_type, code, _checksum, identifier, seq = _ICMP_HEADER.unpack_from(view, offset)
        if icmp_type != ECHO_REPLY[channel.family] or code != 0:
            return
        if raw and identifier != self.identifier:
            return  # another process's echo: a raw socket sees them all
        echo = self._pending.get(seq)
        if echo is None or not self._belongs(
            echo, channel, view=view, offset=offset, nbytes=nbytes, source=source
        ):
            self.unmatched += 1
            return
        rnd = echo.round
        echo.replies += 1
        if echo.replies > 1:
            rnd.duplicates += 1
            return
        rtt_ns = _rtt_ns(echo, ancdata, read_perf_ns)
        if rtt_ns > rnd.timeout_ns:
            rnd.late += 1
            return
        echo.rtt_ns = rtt_ns
        rnd.outstanding -= 1
        if rnd.outstanding == 0:
            self._settle(rnd)

    def _belongs(
        self,
        echo: _Echo,
        channel: _Channel,
        *,
        view: memoryview,
        offset: int,
        nbytes: int,
        source: str,
    ) -> bool:
        sender = echo.round.channel
        if sender.family != channel.family:
            return False
        if self.mode == "datagram" and sender is not channel:
            return False
        payload = echo.round.template.payload
        start = offset + _ICMP_HEADER.size
        if nbytes - start != len(payload) or view[start:nbytes] != payload:
            return False
        return socket.inet_pton(channel.family, source.split("%", 1)[0]) == echo.round.source


def _rtt_ns(echo: _Echo, ancdata: list[tuple[int, int, bytes]], read_perf_ns: int) -> int:
    """Round-trip time, from the kernel's receive timestamp when it is trustworthy.

    The kernel stamps a reply when it arrives (CLOCK_REALTIME); our own reading after the event
    loop woke up is later by the scheduling delay. The monotonic reading bounds the kernel's from
    above, so a kernel RTT outside [0, monotonic RTT] means the wall clock stepped in between,
    and the monotonic one is used.
    """
    monotonic_rtt = read_perf_ns - echo.sent_perf_ns
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            kernel_rtt: int = seconds * 1_000_000_000 + nanoseconds - echo.sent_wall_ns
            if 0 <= kernel_rtt <= monotonic_rtt:
                return kernel_rtt
    return monotonic_rtt


def _family(address: str) -> int:
    version = ipaddress.ip_address(address).version
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _sockaddr(family: int, address: str) -> tuple[str, int] | tuple[str, int, int, int]:
    if family == socket.AF_INET:
        return (address, 0)
    # Numeric only (no DNS): resolves a link-local address's %scope to its interface index.
    info = socket.getaddrinfo(address, 0, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    return info[0][4]  # type: ignore[return-value]


def _prepare_receive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    try:
        # FORCE passes net.core.rmem_max when we may (CAP_NET_ADMIN); otherwise best effort.
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECEIVE_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)


def _only_echo_replies(sock: socket.socket, family: int) -> None:
    reply = ECHO_REPLY[family]
    if family == socket.AF_INET:
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << reply) & 0xFFFFFFFF))
    else:
        mask = [0xFFFFFFFF] * 8
        mask[reply >> 5] &= ~(1 << (reply & 31)) & 0xFFFFFFFF
        sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *mask))


def _only_identifier(sock: socket.socket, family: int, identifier: int) -> None:
    """Drop, in the kernel, echo replies that carry another pinger's identifier.

    A raw socket gets a copy of every ICMP packet on the host: other pingers' replies (fping,
    a modem watchdog, a second agent) would each wake us for nothing. A classic BPF program
    keeps only ours. IPv4 raw sockets see the IP header first, ICMPv6 ones the ICMP header.
    """
    # IPv4: x = 4 * IHL, a = the halfword at x + 4. ICMPv6: a = the halfword at 4.
    v4 = family == socket.AF_INET
    load = [(0xB1, 0, 0, 0), (0x48, 0, 0, 4)] if v4 else [(0x28, 0, 0, 4)]
    program = [
        *load,
        (0x15, 0, 1, identifier),  # a == identifier ? next : skip one
        (0x06, 0, 0, 0xFFFFFFFF),  # keep the whole packet
        (0x06, 0, 0, 0),  # drop
    ]
    code = ctypes.create_string_buffer(b"".join(_BPF_INSTRUCTION.pack(*i) for i in program))
    sock.setsockopt(
        socket.SOL_SOCKET,
        _SO_ATTACH_FILTER,
        _BPF_PROGRAM.pack(len(program), ctypes.addressof(code)),
    )


def _block_all_icmp(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))
    else:
        sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *[0xFFFFFFFF] * 8))
    # Nothing is read from a send-only socket; keep what the filter lets through small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)


def _errno_name(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"address lookup failed: {exc.strerror}"
    if exc.errno is None:
        return type(exc).__name__
    return errno.errorcode.get(exc.errno, str(exc.errno))
