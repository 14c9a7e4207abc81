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
import contextlib
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

    __slots__ = ("buffer", "family", "sock", "view")

    def __init__(self, family: int, sock: socket.socket) -> None:
        self.family = family
        self.sock = sock
        self.buffer = bytearray(_MAX_PACKET)
        self.view = memoryview(self.buffer)


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
    channel: _Channel
    sent_perf_ns: int = 0
    sent_wall_ns: int = 0
    rtt_ns: int | None = None
    replies: int = 0


class _Round:
    """The echoes of one round in flight, and what came back for them."""

    __slots__ = (
        "done",
        "duplicates",
        "echoes",
        "late",
        "outstanding",
        "source",
        "template",
        "timeout_ns",
    )

    def __init__(self, source: bytes, template: _EchoTemplate, timeout_ns: int) -> None:
        self.source = source  # the target's packed address: replies must come from it
        self.template = template
        self.timeout_ns = timeout_ns
        self.echoes: list[_Echo] = []
        self.outstanding = 0
        self.duplicates = 0
        self.late = 0
        self.done = asyncio.Event()

    def reply(self, echo: _Echo, rtt_ns: int) -> None:
        echo.replies += 1
        if echo.replies > 1:
            self.duplicates += 1
        elif rtt_ns > self.timeout_ns:
            self.late += 1
        else:
            echo.rtt_ns = rtt_ns
            self.outstanding -= 1
            if self.outstanding == 0:
                self.done.set()


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
            channel.sock.close()
        self._senders.clear()
        self._receivers.clear()

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
        `spacing`), so concurrent rounds send together and one wakeup of the event loop sends
        several echoes: a spread-out site costs a third of the CPU. The first echo then waits
        up to one spacing for its tick; only ask for it when the interval has that slack.

        Never raises for network trouble: an address, interface or socket that cannot be used
        makes every echo lost, with the reason in `RoundResult.errors`.
        """
        result = RoundResult(address=address, sent=count)
        family = _family(address)
        try:
            sockaddr = _sockaddr(family, address)
            channel = self._sender(family, interface, tos, ttl)
            if self.mode == "raw":
                self._receiver(family)
        except OSError as exc:
            result.errors[_errno_name(exc)] = count
            return result
        rnd = _Round(
            socket.inet_pton(family, address.split("%", 1)[0]),
            self._template(family, size),
            int(timeout * 1e9),
        )
        try:
            await self._send_all(
                rnd,
                channel=channel,
                sockaddr=sockaddr,
                count=count,
                spacing=spacing,
                result=result,
                align=align,
            )
            if rnd.outstanding:
                # A reply that came back before the next echo left emptied the round for a
                # moment and set `done`; the echoes still out must get their full window.
                rnd.done.clear()
                # The last echo's window closes `timeout` after it left; earlier ones before.
                since_last = (time.perf_counter_ns() - rnd.echoes[-1].sent_perf_ns) / 1e9
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rnd.done.wait(), max(0.0, timeout - since_last))
        finally:
            for echo in rnd.echoes:
                self._pending.pop(echo.seq, None)
        result.rtts_ms = [e.rtt_ns / 1e6 for e in rnd.echoes if e.rtt_ns is not None]
        result.duplicates = rnd.duplicates
        result.late = rnd.late
        return result

    async def _send_all(
        self,
        rnd: _Round,
        *,
        channel: _Channel,
        sockaddr: tuple[str, int] | tuple[str, int, int, int],
        count: int,
        spacing: float,
        result: RoundResult,
        align: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        # Absolute send times: a slow wakeup does not push every later echo back. Aligned
        # rounds count whole ticks, so equal ticks of different rounds are equal floats.
        tick = math.ceil(loop.time() / spacing) if align else 0
        start = 0.0 if align else loop.time()
        for index in range(count):
            if index or align:
                due = (tick + index) * spacing if align else start + index * spacing
                await asyncio.sleep(max(0.0, due - loop.time()))
            failure = await self._send_one(rnd, channel, sockaddr)
            if failure is not None:
                result.errors[failure] = result.errors.get(failure, 0) + 1

    async def _send_one(
        self,
        rnd: _Round,
        channel: _Channel,
        sockaddr: tuple[str, int] | tuple[str, int, int, int],
    ) -> str | None:
        """Send one echo; returns the errno name if it could not be sent."""
        try:
            seq = self._allocate_seq()
        except _SequencesExhaustedError:
            return "65536 echoes already in flight"
        echo = _Echo(seq, rnd, channel)
        packet = rnd.template.build(seq)
        self._pending[seq] = echo
        rnd.echoes.append(echo)
        rnd.outstanding += 1
        for attempt in range(2):
            echo.sent_perf_ns = time.perf_counter_ns()
            echo.sent_wall_ns = time.time_ns()
            try:
                channel.sock.sendto(packet, sockaddr)
            except BlockingIOError:
                if attempt:
                    return self._unsent(echo, "EAGAIN")
                await self._writable(channel)
            except OSError as exc:
                return self._unsent(echo, _errno_name(exc))
            else:
                return None
        return None  # unreachable: the loop returns on its last attempt

    def _unsent(self, echo: _Echo, reason: str) -> str:
        self._pending.pop(echo.seq, None)
        echo.round.outstanding -= 1
        return reason

    async def _writable(self, channel: _Channel) -> None:
        """Wait until the socket's send buffer has room (a burst filled it)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = channel.sock.fileno()

        def wake() -> None:
            # The loop may poll again before we resume; a future is set only once.
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready, 1.0)
        finally:
            loop.remove_writer(fd)

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
        echo.round.reply(echo, _rtt_ns(echo, ancdata, read_perf_ns))

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
        if echo.channel.family != channel.family:
            return False
        if self.mode == "datagram" and echo.channel is not channel:
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
