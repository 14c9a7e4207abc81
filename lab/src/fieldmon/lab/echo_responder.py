"""Userspace ICMP echo responder: answers echo requests after delay ± jitter, or drops them.

This kernel has no netem, so the lab adds latency at the far end instead: run inside a network
namespace whose kernel no longer answers echoes (`net.ipv4.icmp_echo_ignore_all=1`,
`net.ipv6.icmp.echo_ignore_all=1`), this process receives every echo request on raw ICMP and
ICMPv6 sockets and sends the reply itself, `delay_ms + uniform(-jitter_ms, +jitter_ms)` later
(never below zero), or not at all with probability `loss_pct` %. Replies leave from the address
the request was sent to (IP_PKTINFO / IPV6_PKTINFO on send), so pingers match them.

Started by `EchoResponder` (fieldmon/lab/impair.py) as
`ip netns exec NS python -m fieldmon.lab.echo_responder --settings FILE`. It prints `ready` once
its sockets are open; a replaced FILE (JSON: delay_ms, jitter_ms, loss_pct) applies from the next
request on, so whoever replaced it knows the new values hold once the rename is done; on SIGTERM
it prints one JSON line of counts (requests, answered, dropped) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the constant
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY = 128, 129
_BUFFER = 65535
_ANCILLARY = 256


@dataclass
class Impairment:
    """What happens to each echo request: added delay, its spread and the share dropped."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss_pct must be between 0 and 100, got {self.loss_pct}")

    @classmethod
    def from_file(cls, path: Path) -> Impairment:
        """The settings file's values (JSON object with the three fields)."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def write(self, path: Path) -> None:
        """Store the settings for `from_file`, atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        tmp.replace(path)

    def next_delay_s(self, rng: random.Random) -> float | None:
        """Seconds to wait before answering, or None to drop this request."""
        if self.loss_pct and rng.random() * 100 < self.loss_pct:
            return None
        spread = rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.delay_ms + spread) / 1000


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def v4_reply(packet: bytes) -> bytes | None:
    """The ICMP echo reply to an IPv4 packet (IP header included), or None if not a request."""
    header_len = (packet[0] & 0x0F) * 4
    icmp = packet[header_len:]
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REQUEST or icmp[1] != 0:
        return None
    reply = bytes([ICMP_ECHO_REPLY, 0, 0, 0]) + icmp[4:]
    return reply[:2] + struct.pack("!H", _checksum(reply)) + reply[4:]


def v6_reply(icmp: bytes) -> bytes | None:
    """The ICMPv6 echo reply (checksum left to the kernel) to a request, or None."""
    if len(icmp) < 8 or icmp[0] != ICMPV6_ECHO_REQUEST or icmp[1] != 0:
        return None
    return bytes([ICMPV6_ECHO_REPLY, 0, 0, 0]) + icmp[4:]


class Responder:
    """Both raw sockets, the current impairment and the counts, on one asyncio loop."""

    def __init__(self, impairment: Impairment, settings: Path | None) -> None:
        self.impairment = impairment
        self.settings = settings
        self.settings_stamp: tuple[int, int] = (0, 0)
        self.counts = {"requests": 0, "answered": 0, "dropped": 0}
        self.rng = random.Random()
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        # Only echo requests reach this socket: ICMP6_FILTER blocks all types but 128.
        blocked = [0xFFFFFFFF] * 8
        blocked[ICMPV6_ECHO_REQUEST >> 5] &= ~(1 << (ICMPV6_ECHO_REQUEST & 31))
        self.v6.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("8I", *blocked))
        for sock in (self.v4, self.v6):
            sock.setblocking(False)

    def reload(self) -> None:
        """Take the settings file's values if it changed; keep the old ones if it is bad."""
        if self.settings is None:
            return
        try:
            stat = self.settings.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns)  # each write is a new file (rename)
            if stamp != self.settings_stamp:
                self.settings_stamp = stamp
                self.impairment = Impairment.from_file(self.settings)
        except (OSError, ValueError, TypeError) as exc:
            print(f"echo responder: keeping old settings, {self.settings}: {exc}", file=sys.stderr)

    def _schedule(self, send: Callable[[], object]) -> None:
        self.counts["requests"] += 1
        self.reload()
        delay = self.impairment.next_delay_s(self.rng)
        if delay is None:
            self.counts["dropped"] += 1
            return
        asyncio.get_running_loop().call_later(delay, self._send, send)

    def _send(self, send: Callable[[], object]) -> None:
        try:
            send()
            self.counts["answered"] += 1
        except OSError:  # the link went down meanwhile: that reply is lost, like on the wire
            self.counts["dropped"] += 1

    def on_v4(self) -> None:
        """Read every waiting IPv4 packet; schedule a reply to each echo request."""
        while True:
            try:
                packet, _, _, (source, _) = self.v4.recvmsg(_BUFFER)
            except BlockingIOError:
                return
            reply = v4_reply(packet)
            if reply is None:
                continue
            # Answer from the address that was pinged (in_pktinfo: ifindex, spec_dst, addr).
            local = packet[16:20]
            ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("i4s4s", 0, local, local))]
            self._schedule(partial(self.v4.sendmsg, [reply], ancillary, 0, (source, 0)))

    def on_v6(self) -> None:
        """Read every waiting ICMPv6 echo request; schedule its reply."""
        while True:
            try:
                icmp, ancdata, _, address = self.v6.recvmsg(_BUFFER, _ANCILLARY)
            except BlockingIOError:
                return
            reply = v6_reply(icmp)
            if reply is None:
                continue
            pktinfo = next(data for level, kind, data in ancdata if kind == socket.IPV6_PKTINFO)
            ancillary = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)]
            self._schedule(partial(self.v6.sendmsg, [reply], ancillary, 0, address))


async def serve(responder: Responder) -> None:
    """Answer until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_reader(responder.v4.fileno(), responder.on_v4)
    loop.add_reader(responder.v6.fileno(), responder.on_v6)
    print("ready", flush=True)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point when run as `python -m fieldmon.lab.echo_responder`."""
    parser = argparse.ArgumentParser(prog="echo_responder", description=__doc__)
    parser.add_argument("--settings", type=Path, help="JSON file, re-read when replaced")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.settings is not None:
        impairment = Impairment.from_file(args.settings)
    else:
        impairment = Impairment(args.delay_ms, args.jitter_ms, args.loss_pct)
    responder = Responder(impairment, args.settings)
    asyncio.run(serve(responder))
    print(json.dumps(responder.counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
