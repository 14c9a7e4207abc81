"""TTL-limited probes in cycles, as mtr sends them: ICMP echo, UDP datagrams or TCP SYNs.

Standard library only: this runs in the short-lived trace subprocess, never in the daemon.

- `icmp`: echo requests over one raw socket (root or CAP_NET_RAW), the TTL set per probe. The
  same socket reads echo replies (the far end) and the time-exceeded and unreachable messages
  of the routers on the way, which quote our echo's identifier and sequence.
- `udp` and `tcp`: one socket per probe with IP_RECVERR, so no privilege is needed: the kernel
  matches each ICMP error to the probe's socket and queues it there with the router that sent
  it (`MSG_ERRQUEUE`). UDP reaches the far end when it answers, or says the port is closed;
  TCP when the SYN is answered (accepted or refused). Where ICMP echo is filtered, a SYN to a
  port the far end serves (443) still gets through.

Each cycle sends one probe per TTL, from 1 up to the far end's TTL once known (`max_hops`
until then); a cycle starts every `interval` seconds. An answer later than `timeout` after its
probe counts as lost, as in mtr.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import select
import socket
import struct
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from fieldmon.agent.trace.analysis import Trace, build_hops

UDP_BASE_PORT = 33434  # traceroute's: a port nothing listens on, so the far end says so
TCP_DEFAULT_PORT = 443

# Linux constants Python's socket module does not export.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP6_FILTER = 1
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, origin, type, code, pad, info, data
_ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_PAYLOAD = b"fieldmon-trace\x00\x00"  # 16 bytes: small, and ours in a capture

# ICMP types (v4, v6).
_ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
_ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
_TIME_EXCEEDED = {socket.AF_INET: 11, socket.AF_INET6: 3}
_UNREACHABLE = {socket.AF_INET: 3, socket.AF_INET6: 1}
_PORT_UNREACHABLE = {socket.AF_INET: 3, socket.AF_INET6: 4}  # the code within _UNREACHABLE

SEQ_PER_CYCLE = 64  # sequence = cycle * 64 + ttl (TTL 1-64): unique for up to 1000 cycles


class TraceError(Exception):
    """A trace cannot run at all (no permission for the socket, a bad address or interface)."""


@dataclass(slots=True)
class _Probe:
    ttl: int
    sent_ns: int
    sock: socket.socket | None = None  # udp / tcp: the probe's own socket


class _Answer:
    """Kinds of answer a probe gets."""

    HOP = "hop"  # a router on the way: TTL exceeded
    REACHED = "reached"  # the far end itself
    UNREACHABLE = "unreachable"  # a router says it cannot go on


def _family(address: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)


def _bind_device(sock: socket.socket, interface: str | None) -> None:
    if interface is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class _Tracer:
    """Sends probes and turns what comes back into answers; one subclass per protocol."""

    def __init__(self, destination: str, family: int, interface: str | None) -> None:
        self.destination = destination
        self.family = family
        self.interface = interface
        self.pending: dict[int, _Probe] = {}  # by key: sequence (icmp) or file descriptor
        self.poller = select.poll()

    def send(self, ttl: int, cycle: int) -> str | None:
        """Send one probe; the errno name when it could not leave this host."""
        raise NotImplementedError

    def readable(self, fd: int, events: int) -> list[tuple[_Probe, str, str]]:
        """(probe, responder, kind) for what `fd` has for us."""
        raise NotImplementedError

    def expire(self, probe_key: int) -> None:
        """Forget a probe whose time is up."""
        self.pending.pop(probe_key, None)

    def close(self) -> None:
        """Release every socket."""


class _IcmpTracer(_Tracer):
    """Echo requests over one raw socket (see the module docstring)."""

    def __init__(self, destination: str, family: int, interface: str | None) -> None:
        super().__init__(destination, family, interface)
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        try:
            self.sock = socket.socket(family, socket.SOCK_RAW, proto)
        except PermissionError as exc:
            raise TraceError("ICMP traces need root or CAP_NET_RAW (raw sockets)") from exc
        try:
            self.sock.setblocking(False)
            _bind_device(self.sock, interface)
            self._filter()
        except OSError as exc:
            self.sock.close()
            raise TraceError(f"cannot prepare the ICMP socket: {exc}") from exc
        self.identifier = secrets.randbelow(0xFFFF) + 1
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self._buffer = bytearray(2048)

    def _filter(self) -> None:
        """Only the ICMP types a trace reads, so other traffic on the host does not wake us."""
        wanted = (_ECHO_REPLY, _TIME_EXCEEDED, _UNREACHABLE)
        if self.family == socket.AF_INET:
            mask = 0xFFFFFFFF
            for types in wanted:
                mask &= ~(1 << types[socket.AF_INET])
            self.sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", mask))
        else:
            words = [0xFFFFFFFF] * 8
            for types in wanted:
                kind = types[socket.AF_INET6]
                words[kind >> 5] &= ~(1 << (kind & 31)) & 0xFFFFFFFF
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))

    def send(self, ttl: int, cycle: int) -> str | None:
        seq = (cycle * SEQ_PER_CYCLE + ttl) & 0xFFFF
        header = _ICMP_HEADER.pack(_ECHO_REQUEST[self.family], 0, 0, self.identifier, seq)
        packet = header + _PAYLOAD
        if self.family == socket.AF_INET:
            checksum = _checksum(packet)
            packet = _ICMP_HEADER.pack(8, 0, checksum, self.identifier, seq) + _PAYLOAD
        # The kernel fills in the ICMPv6 checksum (it covers a pseudo-header).
        try:
            _set_ttl(self.sock, self.family, ttl)
            self.pending[seq] = _Probe(ttl, time.perf_counter_ns())
            self.sock.sendto(packet, (self.destination, 0))
        except OSError as exc:
            self.pending.pop(seq, None)
            return _errno_name(exc)
        return None

    def readable(self, fd: int, events: int) -> list[tuple[_Probe, str, str]]:
        found = []
        for _ in range(256):
            try:
                size, source = self.sock.recvfrom_into(self._buffer)
            except BlockingIOError:
                break
            except OSError:
                continue
            answer = self._parse(memoryview(self._buffer)[:size], source[0].split("%", 1)[0])
            if answer is not None:
                found.append(answer)
        return found

    def _parse(self, data: memoryview, source: str) -> tuple[_Probe, str, str] | None:
        offset = (data[0] & 0x0F) * 4 if self.family == socket.AF_INET else 0
        if len(data) < offset + 8:
            return None
        kind, _, _, identifier, seq = _ICMP_HEADER.unpack_from(data, offset)
        if kind == _ECHO_REPLY[self.family]:
            ours = identifier == self.identifier and source == self.destination
            answer = _Answer.REACHED
        elif kind == _TIME_EXCEEDED[self.family]:
            ours, seq = self._quoted(data, offset + 8)
            answer = _Answer.HOP
        elif kind == _UNREACHABLE[self.family]:
            ours, seq = self._quoted(data, offset + 8)
            answer = _Answer.REACHED if source == self.destination else _Answer.UNREACHABLE
        else:
            return None
        probe = self.pending.pop(seq, None) if ours else None
        return None if probe is None else (probe, source, answer)

    def _quoted(self, data: memoryview, inner: int) -> tuple[bool, int]:
        """(is it our echo, its sequence) from the datagram an ICMP error quotes: its IP
        header, then our echo's first 8 bytes."""
        if self.family == socket.AF_INET:
            if len(data) < inner + 20:
                return False, 0
            inner += (data[inner] & 0x0F) * 4
        else:
            inner += 40
        if len(data) < inner + 8:
            return False, 0
        kind, _, _, identifier, seq = _ICMP_HEADER.unpack_from(data, inner)
        return kind == _ECHO_REQUEST[self.family] and identifier == self.identifier, seq

    def close(self) -> None:
        self.sock.close()


class _SocketTracer(_Tracer):
    """One UDP or TCP socket per probe, ICMP errors read from its error queue."""

    def __init__(
        self, destination: str, family: int, interface: str | None, *, tcp: bool, port: int
    ) -> None:
        super().__init__(destination, family, interface)
        self.tcp = tcp
        self.port = port

    def send(self, ttl: int, cycle: int) -> str | None:
        kind = socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM
        sock = socket.socket(self.family, kind)
        try:
            sock.setblocking(False)
            if self.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            _set_ttl(sock, self.family, ttl)
            _bind_device(sock, self.interface)
            if self.tcp:
                # Abort, never linger: closing a half-open probe sends a RST, not a FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sent_ns = time.perf_counter_ns()
                status = sock.connect_ex((self.destination, self.port))
                if status not in (0, errno.EINPROGRESS):
                    raise OSError(status, errno.errorcode.get(status, str(status)))
                events = select.POLLOUT | select.POLLERR
            else:
                sent_ns = time.perf_counter_ns()
                sock.sendto(_PAYLOAD, (self.destination, self.port))
                events = select.POLLIN | select.POLLERR
        except OSError as exc:
            sock.close()
            return _errno_name(exc)
        fd = sock.fileno()
        self.pending[fd] = _Probe(ttl, sent_ns, sock)
        self.poller.register(fd, events)
        return None

    def readable(self, fd: int, events: int) -> list[tuple[_Probe, str, str]]:
        probe = self.pending.get(fd)
        if probe is None or probe.sock is None:
            return []
        found = self._error_queue(probe.sock)
        if found is None and self.tcp:
            status = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if status in (0, errno.ECONNREFUSED) and events & (select.POLLOUT | select.POLLERR):
                found = (self.destination, _Answer.REACHED)  # accepted or refused: it is there
        elif found is None and events & select.POLLIN:
            with contextlib.suppress(OSError):
                probe.sock.recv(2048)
                found = (self.destination, _Answer.REACHED)  # something answers on that port
        if found is None:
            return []
        self.expire(fd)
        return [(probe, *found)]

    def _error_queue(self, sock: socket.socket) -> tuple[str, str] | None:
        try:
            _, ancillary, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except OSError:
            return None
        for level, _, data in ancillary:
            if level not in (socket.IPPROTO_IP, socket.IPPROTO_IPV6):
                continue
            if len(data) < _EXTENDED_ERR.size:
                continue
            _, origin, kind, code, _, _, _ = _EXTENDED_ERR.unpack_from(data)
            if origin not in (_ORIGIN_ICMP, _ORIGIN_ICMP6):
                continue
            responder = _offender(data[_EXTENDED_ERR.size :], self.family)
            if responder is None:
                continue
            if kind == _TIME_EXCEEDED[self.family]:
                return responder, _Answer.HOP
            if kind == _UNREACHABLE[self.family]:
                reached = responder == self.destination or code == _PORT_UNREACHABLE[self.family]
                return responder, _Answer.REACHED if reached else _Answer.UNREACHABLE
        return None

    def expire(self, probe_key: int) -> None:
        probe = self.pending.pop(probe_key, None)
        if probe is not None and probe.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.poller.unregister(probe_key)
            probe.sock.close()

    def close(self) -> None:
        for key in list(self.pending):
            self.expire(key)


def _offender(data: bytes, family: int) -> str | None:
    """The address of the router that sent the ICMP error (SO_EE_OFFENDER)."""
    if family == socket.AF_INET and len(data) >= 8:
        return socket.inet_ntop(socket.AF_INET, data[4:8])
    if family == socket.AF_INET6 and len(data) >= 24:
        return socket.inet_ntop(socket.AF_INET6, data[8:24])
    return None


def run_trace(
    destination: str,
    protocol: str = "icmp",
    *,
    port: int | None = None,
    cycles: int = 10,
    interval: float = 0.5,
    timeout: float = 1.0,
    max_hops: int = 30,
    interface: str | None = None,
) -> Trace:
    """Trace the path to `destination` (an IP literal) by `protocol` (icmp, udp, tcp)."""
    try:
        destination = str(ipaddress.ip_address(destination.split("%", 1)[0]))
    except ValueError as exc:
        raise TraceError(f"{destination!r} is not an IP address") from exc
    if not 1 <= cycles <= 1000 or not 1 <= max_hops <= SEQ_PER_CYCLE:
        raise TraceError("cycles must be 1 to 1000 and max_hops 1 to 64")
    family = _family(destination)
    if protocol == "icmp":
        tracer: _Tracer = _IcmpTracer(destination, family, interface)
        port = None
    elif protocol in ("udp", "tcp"):
        port = port or (UDP_BASE_PORT if protocol == "udp" else TCP_DEFAULT_PORT)
        tracer = _SocketTracer(destination, family, interface, tcp=protocol == "tcp", port=port)
    else:
        raise TraceError(f"unknown protocol {protocol!r}: icmp, udp or tcp")
    started_ns = time.time_ns()
    clock = time.perf_counter()
    run = _Cycles(tracer, timeout=timeout, max_hops=max_hops)
    start = time.perf_counter_ns()
    try:
        for cycle in range(cycles):
            run.wait(start + int(cycle * interval * 1e9))
            run.send_cycle(cycle)
        run.wait(None)
    finally:
        tracer.close()
    run.settle()
    if run.far_ttl is not None:
        last = run.far_ttl
    else:
        answered = [ttl for ttl, got in run.answers.items() if got]
        last = min(run.stop_ttl, max(answered, default=0) + 1)
    return Trace(
        destination=destination,
        protocol=protocol,
        cycles=cycles,
        hops=build_hops(run.sent, run.answers, last),
        reached=run.far_ttl is not None,
        port=port,
        interface=interface,
        started_ns=started_ns,
        duration_s=round(time.perf_counter() - clock, 3),
        errors=dict(run.errors),
    )


class _Cycles:
    """The send schedule and what came back (see `run_trace`)."""

    def __init__(self, tracer: _Tracer, *, timeout: float, max_hops: int) -> None:
        self.tracer = tracer
        self.timeout_ns = int(timeout * 1e9)
        self.sent: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.answers: dict[int, list[tuple[str, float]]] = defaultdict(list)
        self.far_ttl: int | None = None  # the far end's TTL, once it answered
        self.stop_ttl = max_hops  # no probe beyond this TTL: the far end, or a router gave up

    def send_cycle(self, cycle: int) -> None:
        """One probe per TTL up to the far end (as far as it is known)."""
        for ttl in range(1, self.stop_ttl + 1):
            self.sent[ttl] += 1
            failure = self.tracer.send(ttl, cycle)
            if failure is not None:
                self.errors[failure] += 1

    def wait(self, until_ns: int | None) -> None:
        """Read answers until `until_ns` (perf counter), or with None until nothing is pending."""
        tracer = self.tracer
        while True:
            now = time.perf_counter_ns()
            for key, probe in list(tracer.pending.items()):
                if now - probe.sent_ns > self.timeout_ns:
                    tracer.expire(key)
            if until_ns is not None and now >= until_ns:
                return
            oldest = min((p.sent_ns for p in tracer.pending.values()), default=None)
            if until_ns is None and oldest is None:
                return
            wake = [t for t in (until_ns, oldest and oldest + self.timeout_ns) if t is not None]
            wait_ms = max(0, (min(wake) - now) // 1_000_000 + 1)
            for fd, events in tracer.poller.poll(wait_ms):
                for probe, responder, kind in tracer.readable(fd, events):
                    self._answer(probe, responder, kind)

    def _answer(self, probe: _Probe, responder: str, kind: str) -> None:
        rtt_ns = time.perf_counter_ns() - probe.sent_ns
        if rtt_ns > self.timeout_ns:
            return  # late: lost, as in mtr
        self.answers[probe.ttl].append((responder, rtt_ns / 1e6))
        if kind == _Answer.REACHED:
            self.far_ttl = probe.ttl if self.far_ttl is None else min(self.far_ttl, probe.ttl)
            self.stop_ttl = min(self.stop_ttl, self.far_ttl)
        elif kind == _Answer.UNREACHABLE:
            self.stop_ttl = min(self.stop_ttl, probe.ttl)

    def settle(self) -> None:
        """Drop answers from beyond the far end (early cycles, before its TTL was known)."""
        for ttl in [ttl for ttl in self.answers if ttl > self.stop_ttl]:
            del self.answers[ttl]
