"""ICMP probe and pinger: real raw and datagram sockets on loopback and in test namespaces."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.packet import Raw

from fieldmon.agent.probes.icmp import IcmpProbe
from fieldmon.agent.probes.icmp_socket import (
    IcmpPinger,
    RoundResult,
    _Channel,
    _EchoTemplate,
    _Round,
    _Target,
)
from fieldmon.core.site.links import IcmpLinkConfig
from fieldmon.lab.netns import Namespace, unique_name, veth

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="raw ICMP sockets, SO_BINDTODEVICE on raw sockets and sysctls need root",
)
RTT_FIELDS = {"rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms", "rtt_p95_ms", "rtt_max_ms", "jitter_ms"}


def _link(address: str, **overrides: object) -> IcmpLinkConfig:
    values: dict[str, object] = {
        "name": "uplink",
        "address": address,
        "role": "parent",
        "interval": 5,
        "count": 5,
        "spacing": 0.01,
        "timeout": 0.5,
    }
    values.update(overrides)
    return IcmpLinkConfig.model_validate(values)


async def _collect(config: IcmpLinkConfig, **pinger_args: bool) -> list:
    async with IcmpPinger(**pinger_args) as pinger:
        probe = IcmpProbe(config, pinger=pinger, site="pavilion-2", agent="pavilion-2-pi1")
        return await probe.collect()


# -- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 7, 56, 1400])
@pytest.mark.parametrize("seq", [0, 1, 0x00FF, 0x1234, 0xFF00, 0xFFFF])
def test_echo_template_equals_scapys_own_packet(size: int, seq: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    template = _EchoTemplate(socket.AF_INET, 0xBEEF, payload)
    assert template.build(seq) == bytes(ICMP(type=8, id=0xBEEF, seq=seq) / Raw(payload))


# The agent builds its echoes with struct (scapy's import would cost it about 25 MB); these say
# the bytes are scapy's, whatever the identifier, sequence and payload.
@given(
    identifier=st.integers(0, 0xFFFF),
    seqs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
    payload=st.binary(max_size=1500),
)
def test_ipv4_echoes_are_scapys_bytes(identifier: int, seqs: list[int], payload: bytes) -> None:
    template = _EchoTemplate(socket.AF_INET, identifier, payload)
    for seq in seqs:  # one template serves every sequence number in turn
        expected = bytes(ICMP(type=8, code=0, id=identifier, seq=seq) / Raw(payload))
        assert template.build(seq) == expected


@given(
    identifier=st.integers(0, 0xFFFF),
    seqs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
    payload=st.binary(max_size=1500),
)
def test_ipv6_echoes_are_scapys_bytes(identifier: int, seqs: list[int], payload: bytes) -> None:
    template = _EchoTemplate(socket.AF_INET6, identifier, payload)
    for seq in seqs:  # the checksum stays 0: the kernel fills it in over the pseudo-header
        expected = bytes(ICMPv6EchoRequest(id=identifier, seq=seq, cksum=0, data=payload))
        assert template.build(seq) == expected


class _AddressFree(socket.socket):
    """One end of an AF_UNIX datagram pair that ignores sendto's address (the pair has none)."""

    def sendto(self, data: Any, address: Any) -> int:  # type: ignore[override]
        return self.send(data)


def _full_pair() -> tuple[socket.socket, socket.socket, int]:
    """A connected datagram pair whose first end's send buffer is full; how many are queued."""
    first, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    full = _AddressFree(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=first.detach())
    full.setblocking(False)
    queued = 0
    while True:
        try:
            full.send(b"x" * 1000)
        except BlockingIOError:
            return full, peer, queued
        queued += 1


def _one_echo_round(pinger: IcmpPinger, sock: socket.socket, timeout: float) -> _Round:
    template = _EchoTemplate(socket.AF_INET, pinger.identifier, b"payload!")
    target = _Target(_Channel(socket.AF_UNIX, sock), ("127.0.0.1", 0), template)
    loop = asyncio.get_running_loop()
    return _Round(
        target,
        count=1,
        spacing=0.01,
        timeout=timeout,
        finished=loop.create_future(),
    )


def test_a_full_send_buffer_is_waited_out_not_failed() -> None:
    async def scenario() -> None:
        full, peer, queued = _full_pair()
        with full, peer:
            loop = asyncio.get_running_loop()
            pinger = IcmpPinger()
            pinger._loop = loop
            rnd = _one_echo_round(pinger, full, timeout=0.2)
            drained = asyncio.Event()

            def drain() -> None:
                for _ in range(queued):
                    peer.recv(2000)
                drained.set()

            loop.call_later(0.05, drain)
            started = loop.time()
            pinger._send_echo(rnd, started)
            assert (rnd.blocked, rnd.errors) == (1, {})  # waiting for room, not lost
            await drained.wait()
            peer.setblocking(False)
            echo = await asyncio.wait_for(loop.sock_recv(peer, 2000), 1.0)
            sent_after = loop.time() - started
            await asyncio.wait_for(rnd.finished, 1.0)  # unanswered: its window closes
            assert echo == rnd.template.build(rnd.echoes[0].seq)
            assert sent_after < 1.0  # woken by the room, not by its 1 s cap
            assert (rnd.blocked, rnd.errors, rnd.outstanding) == (0, {}, 1)

    asyncio.run(scenario())


def test_a_send_buffer_that_stays_full_loses_the_echo_after_a_second() -> None:
    async def scenario() -> None:
        full, peer, _queued = _full_pair()
        with full, peer:
            loop = asyncio.get_running_loop()
            pinger = IcmpPinger()
            pinger._loop = loop
            rnd = _one_echo_round(pinger, full, timeout=0.2)
            started = loop.time()
            pinger._send_echo(rnd, started)
            await asyncio.wait_for(rnd.finished, 3.0)
            assert loop.time() - started >= 0.99  # one more try after the 1 s cap
            assert (rnd.errors, rnd.outstanding) == ({"EAGAIN": 1}, 0)

    asyncio.run(scenario())


class _FakePinger:
    """Stands in for IcmpPinger: returns a prepared result and records the call."""

    def __init__(self, result: RoundResult) -> None:
        self.result = result
        self.calls: list[tuple[str, dict]] = []

    async def round(self, address: str, **options: object) -> RoundResult:
        self.calls.append((address, options))
        return self.result


def test_probe_turns_a_round_into_one_link_row() -> None:
    config = _link("192.0.2.1", tos=184, ttl=9, size=100, interface="eth0", count=3)
    pinger = _FakePinger(RoundResult("192.0.2.1", sent=3, rtts_ms=[1.0, 2.0, 3.0]))
    probe = IcmpProbe(config, pinger=pinger, site="pavilion-2", agent="pavilion-2-pi1")  # type: ignore[arg-type]
    before = time.time_ns()
    [sample] = asyncio.run(probe.collect())
    assert before <= sample.time <= time.time_ns()
    assert probe.name == "uplink"
    assert probe.interval == 5
    assert sample.measurement == "link"
    assert sample.tags == {
        "site": "pavilion-2",
        "agent": "pavilion-2-pi1",
        "target": "uplink",
        "role": "parent",
    }
    assert sample.fields["sent"] == 3
    assert sample.fields["received"] == 3
    assert sample.fields["rtt_p50_ms"] == pytest.approx(2.0)
    assert pinger.calls == [
        (
            "192.0.2.1",
            {
                "count": 3,
                "spacing": 0.01,
                "timeout": 0.5,
                "size": 100,
                "tos": 184,
                "ttl": 9,
                "interface": "eth0",
                "align": True,  # 3 x 10 ms + 0.5 s leaves the 5 s interval room for the tick
            },
        )
    ]


def test_probe_reports_send_errors_once_and_a_dead_row(caplog: pytest.LogCaptureFixture) -> None:
    result = RoundResult("192.0.2.1", sent=4, errors={"EHOSTUNREACH": 4})
    probe = IcmpProbe(_link("192.0.2.1"), pinger=_FakePinger(result), site="s", agent="a")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="fieldmon.agent.probes.icmp"):
        [sample] = asyncio.run(probe.collect())
    assert sample.fields == {"sent": 4, "received": 0, "loss_pct": 100.0, "mos": 1.0}
    [record] = caplog.records
    assert "uplink" in record.getMessage()
    assert record.errors == {"EHOSTUNREACH": 4}  # type: ignore[attr-defined]


# -- raw sockets on loopback ---------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_loopback_answers_every_echo(address: str) -> None:
    [sample] = asyncio.run(_collect(_link(address, count=5)))
    fields = sample.fields
    assert fields["sent"] == 5
    assert fields["received"] == 5
    assert fields["loss_pct"] == 0.0
    assert set(fields) >= RTT_FIELDS | {"mos"}
    # Loopback: positive, and far below the 500 ms timeout.
    assert 0 < fields["rtt_min_ms"] <= fields["rtt_p50_ms"] <= fields["rtt_max_ms"] < 500
    assert fields["mos"] > 4.0


@needs_root
def test_raw_mode_is_used_with_root() -> None:
    async def main() -> str:
        async with IcmpPinger() as pinger:
            return pinger.mode

    assert asyncio.run(main()) == "raw"


async def _fifty_rounds(pinger: IcmpPinger, count: int) -> list[RoundResult]:
    return await asyncio.gather(
        *[
            pinger.round(f"127.0.0.{n}", count=count, spacing=0.005, timeout=1.0)
            for n in range(1, 51)
        ]
    )


@needs_root
def test_fifty_concurrent_rounds_never_mix() -> None:
    async def main() -> tuple[list[RoundResult], int]:
        async with IcmpPinger() as pinger:
            results = await _fifty_rounds(pinger, count=20)
            return results, pinger.unmatched

    results, unmatched = asyncio.run(main())
    for n, result in enumerate(results, start=1):
        assert result.address == f"127.0.0.{n}"
        assert (result.sent, result.received) == (20, 20), result
        assert (result.duplicates, result.late, result.errors) == (0, 0, {})
    assert unmatched == 0


@needs_root
def test_two_pingers_on_one_host_keep_apart() -> None:
    # Each raw receive socket sees the other pinger's replies too; the identifier keeps them apart.
    async def main() -> list[RoundResult]:
        async with IcmpPinger() as first, IcmpPinger() as second:
            if first.identifier == second.identifier:
                pytest.skip("the two random identifiers collided (1 in 65535)")
            return await asyncio.gather(
                first.round("127.0.0.1", count=30, spacing=0.002, timeout=1.0),
                second.round("127.0.0.1", count=30, spacing=0.002, timeout=1.0),
            )

    for result in asyncio.run(main()):
        assert (result.received, result.duplicates) == (30, 0)


@needs_root
def test_late_replies_are_counted_not_answered() -> None:
    # A 1 µs window is shorter than any real round trip (two syscalls at least).
    async def main() -> RoundResult:
        async with IcmpPinger() as pinger:
            return await pinger.round("127.0.0.1", count=5, spacing=0.02, timeout=1e-6)

    result = asyncio.run(main())
    assert result.received == 0
    assert 4 <= result.late <= 5
    assert result.duplicates == 0


async def _round_with_an_extra_reply(count: int) -> RoundResult:
    """Answer each echo twice: the kernel replies, and so does this raw socket."""
    loop = asyncio.get_running_loop()
    helper = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    helper.setblocking(False)
    async with IcmpPinger() as pinger:

        def answer_again() -> None:
            while True:
                try:
                    packet = helper.recv(65535)
                except BlockingIOError:
                    return
                request = ICMP(packet[(packet[0] & 0x0F) * 4 :])
                if request.type == 8 and request.id == pinger.identifier:
                    reply = ICMP(type=0, id=request.id, seq=request.seq) / Raw(
                        bytes(request.payload)
                    )
                    helper.sendto(bytes(reply), ("127.0.0.1", 0))

        loop.add_reader(helper.fileno(), answer_again)
        try:
            return await pinger.round("127.0.0.1", count=count, spacing=0.02, timeout=0.5)
        finally:
            loop.remove_reader(helper.fileno())
            helper.close()


@needs_root
def test_duplicate_replies_are_counted_not_answers() -> None:
    result = asyncio.run(_round_with_an_extra_reply(count=5))
    assert result.received == 5
    assert result.duplicates == 5
    assert len(result.rtts_ms) == 5


def _sniff_request(sniffer: socket.socket, identifier: int) -> bytes:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            packet = sniffer.recv(65535)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        icmp = ICMP(packet[(packet[0] & 0x0F) * 4 :])
        if icmp.type == 8 and icmp.id == identifier:
            return packet
    raise AssertionError("our echo request never showed up on lo")


@needs_root
def test_tos_and_ttl_reach_the_socket_and_the_wire() -> None:
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sniffer.setblocking(False)

    async def main() -> tuple[socket.socket, RoundResult, int]:
        async with IcmpPinger() as pinger:
            sock = pinger.socket_for("127.0.0.1", tos=184, ttl=17)
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 184
            assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 17
            result = await pinger.round(
                "127.0.0.1", count=1, spacing=0.01, timeout=0.5, tos=184, ttl=17
            )
            return sock, result, pinger.identifier

    with sniffer:
        _sock, result, identifier = asyncio.run(main())
        packet = _sniff_request(sniffer, identifier)
    assert result.received == 1
    assert packet[1] == 184  # IPv4 TOS byte
    assert packet[8] == 17  # IPv4 TTL


@needs_root
def test_traffic_class_and_hop_limit_for_ipv6() -> None:
    async def main() -> tuple[int, int, RoundResult]:
        async with IcmpPinger() as pinger:
            sock = pinger.socket_for("::1", tos=184, ttl=3)
            result = await pinger.round("::1", count=2, spacing=0.01, timeout=0.5, tos=184, ttl=3)
            return (
                sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS),
                sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
                result,
            )

    tclass, hops, result = asyncio.run(main())
    assert (tclass, hops) == (184, 3)
    assert result.received == 2


@needs_root
def test_bound_to_lo_loopback_answers() -> None:
    async def main() -> tuple[bytes, RoundResult]:
        async with IcmpPinger() as pinger:
            sock = pinger.socket_for("127.0.0.1", interface="lo")
            result = await pinger.round(
                "127.0.0.1", count=3, spacing=0.01, timeout=0.5, interface="lo"
            )
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16), result

    bound, result = asyncio.run(main())
    assert bound.rstrip(b"\0") == b"lo"
    assert (result.received, result.errors) == (3, {})


@needs_root
def test_missing_interface_is_a_lost_round_not_an_exception() -> None:
    [sample] = asyncio.run(_collect(_link("127.0.0.1", count=3, interface="fm-nosuchif0")))
    assert sample.fields == {"sent": 3, "received": 0, "loss_pct": 100.0, "mos": 1.0}


# -- datagram (unprivileged) sockets -------------------------------------------------------

_PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")


@pytest.fixture
def ping_sockets_allowed() -> Iterator[None]:
    """Let our group open ICMP datagram sockets for the test; restore the sysctl afterwards."""
    old = _PING_GROUP_RANGE.read_text().split()
    low, high = int(old[0]), int(old[1])
    if low <= os.getgid() <= high:
        yield
        return
    _set_ping_group_range("0 2147483647")
    try:
        yield
    finally:
        _set_ping_group_range(f"{low} {high}")


def _set_ping_group_range(value: str) -> None:
    subprocess.run(["sysctl", "-q", "-w", f"net.ipv4.ping_group_range={value}"], check=True)


@needs_root
@pytest.mark.usefixtures("ping_sockets_allowed")
def test_datagram_mode_answers_on_both_families() -> None:
    async def main() -> tuple[str, list[RoundResult]]:
        async with IcmpPinger(force_datagram=True) as pinger:
            results = await asyncio.gather(
                pinger.round("127.0.0.1", count=5, spacing=0.01, timeout=0.5),
                pinger.round("127.0.0.2", count=5, spacing=0.01, timeout=0.5, tos=184),
                pinger.round("::1", count=5, spacing=0.01, timeout=0.5),
            )
            kind = pinger.socket_for("127.0.0.1").type
            assert kind == socket.SOCK_DGRAM
            return pinger.mode, results

    mode, results = asyncio.run(main())
    assert mode == "datagram"
    for result in results:
        assert (result.received, result.duplicates, result.errors) == (5, 0, {}), result


@needs_root
@pytest.mark.usefixtures("ping_sockets_allowed")
def test_datagram_mode_fifty_concurrent_rounds() -> None:
    async def main() -> list[RoundResult]:
        async with IcmpPinger(force_datagram=True) as pinger:
            return await _fifty_rounds(pinger, count=10)

    for result in asyncio.run(main()):
        assert (result.received, result.duplicates, result.late) == (10, 0, 0), result


# -- namespaces ----------------------------------------------------------------------------


@pytest.fixture
def far_host() -> Iterator[tuple[Namespace, str, str]]:
    """A namespace joined to the root namespace by veth: (namespace, its IPv4, its IPv6)."""
    with Namespace(unique_name("icmp")) as far:
        link = veth(None, far)
        yield far, str(link.b_v4.ip), str(link.b_v6.ip)


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize(
    ("family", "sysctl"),
    [(4, "net.ipv4.icmp_echo_ignore_all"), (6, "net.ipv6.icmp.echo_ignore_all")],
)
def test_silent_host_gives_total_loss_and_no_rtt_fields(
    far_host: tuple[Namespace, str, str], family: int, sysctl: str
) -> None:
    far, v4, v6 = far_host
    config = _link(v4 if family == 4 else v6, count=3, spacing=0.05, timeout=0.3)
    [alive] = asyncio.run(_collect(config))
    assert alive.fields["received"] == 3  # the same host answers until told not to
    far.sysctl(sysctl, "1")
    [silent] = asyncio.run(_collect(config))
    assert silent.fields == {"sent": 3, "received": 0, "loss_pct": 100.0, "mos": 1.0}
    assert silent.tags["target"] == "uplink"


_IN_NAMESPACE = """
import asyncio, json, sys
from fieldmon.agent.probes.icmp_socket import IcmpPinger

async def main():
    async with IcmpPinger() as pinger:
        out = {}
        for address in sys.argv[1:]:
            r = await pinger.round(address, count=3, spacing=0.01, timeout=0.2)
            out[address] = {"sent": r.sent, "received": r.received, "errors": r.errors}
        print(json.dumps(out))

asyncio.run(main())
"""


@needs_root
@pytest.mark.netns
def test_send_errors_are_lost_echoes_with_a_reason() -> None:
    # Inside an isolated namespace no packet can leave; the kernel refuses the sends instead.
    with Namespace(unique_name("noroute")) as ns:
        ns.ip("route", "add", "unreachable", "198.18.1.0/24")
        ns.ip("route", "add", "prohibit", "198.18.2.0/24")
        out = ns.run(
            sys.executable, "-c", _IN_NAMESPACE, "198.18.0.1", "198.18.1.1", "198.18.2.1", "fd00::1"
        )
    results = json.loads(out.stdout)
    assert results["198.18.0.1"] == {"sent": 3, "received": 0, "errors": {"ENETUNREACH": 3}}
    assert results["198.18.1.1"] == {"sent": 3, "received": 0, "errors": {"EHOSTUNREACH": 3}}
    assert results["198.18.2.1"] == {"sent": 3, "received": 0, "errors": {"EACCES": 3}}
    assert results["fd00::1"] == {"sent": 3, "received": 0, "errors": {"ENETUNREACH": 3}}


def _drop_counter(far: Namespace) -> int:
    listing = far.run("iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
    [rule] = [line for line in listing.splitlines() if "DROP" in line and "statistic" in line]
    return int(rule.split()[0])


def _fping_median(address: str) -> float:
    out = subprocess.run(
        ["fping", "-C", "200", "-q", "-p", "5", "-t", "500", address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # `-C` prints "ADDR : 0.05 0.04 - 0.06 ..." on stderr, "-" for each lost echo.
    [line] = [line for line in out.stderr.splitlines() if line.startswith(address)]
    times = [float(value) for value in line.split(":", 1)[1].split() if value != "-"]
    return statistics.median(times)


@needs_root
@pytest.mark.netns
@pytest.mark.skipif(
    not shutil.which("fping") or not shutil.which("iptables"),
    reason="needs fping (the reference) and iptables (the known loss)",
)
def test_loss_and_median_rtt_match_the_kernels_count_and_fping(
    far_host: tuple[Namespace, str, str],
) -> None:
    far, address, _v6 = far_host
    far.run(
        *("iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request"),
        *("-m", "statistic", "--mode", "nth", "--every", "10", "--packet", "0", "-j", "DROP"),
    )

    async def main() -> list[RoundResult]:
        async with IcmpPinger() as pinger:
            return [
                await pinger.round(address, count=100, spacing=0.002, timeout=0.2)
                for _ in range(10)
            ]

    results = asyncio.run(main())
    dropped = _drop_counter(far)
    sent = sum(r.sent for r in results)
    received = sum(r.received for r in results)
    assert sent == 1000
    assert dropped > 0
    agent_loss = 100.0 * (sent - received) / sent
    assert abs(agent_loss - 100.0 * dropped / sent) <= 1.0
    agent_median = statistics.median(rtt for r in results for rtt in r.rtts_ms)
    assert abs(agent_median - _fping_median(address)) <= 0.3
