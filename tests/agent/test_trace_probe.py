"""Trace probes on real sockets: loopback for each protocol and family, a namespace whose far
end filters ICMP echo (the automatic fallback to TCP), and the subprocess's JSON."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from fieldmon.agent.trace.analysis import Trace
from fieldmon.agent.trace.probe import TraceError, run_trace
from fieldmon.lab.netns import Namespace, unique_name, veth

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")


@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_loopback_is_one_hop_answering_every_probe(protocol: str, address: str) -> None:
    trace = run_trace(address, protocol, cycles=4, interval=0.02, timeout=0.5)
    assert trace.reached
    assert trace.protocol == protocol
    assert [(hop.ttl, hop.address, hop.sent, hop.received) for hop in trace.hops] == [
        (1, address, 4, 4)
    ]
    assert trace.port == {"icmp": None, "udp": 33434, "tcp": 443}[protocol]
    assert trace.errors == {}


@pytest.mark.parametrize("protocol", ["icmp", "udp", "tcp"])
def test_probes_leave_from_the_links_interface(protocol: str) -> None:
    bound = run_trace("127.0.0.1", protocol, cycles=2, interval=0.02, interface="lo")
    assert bound.reached and bound.interface == "lo"
    with pytest.raises(TraceError) if protocol == "icmp" else _no_error():
        elsewhere = run_trace("127.0.0.1", protocol, cycles=2, interval=0.02, timeout=0.3,
                              max_hops=2, interface="fm-no-such0")  # fmt: skip
        assert not elsewhere.reached and sum(elsewhere.errors.values()) == 4


def test_a_bad_address_or_protocol_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="not an IP address"):
        run_trace("parent.example", "icmp")
    with pytest.raises(TraceError, match="unknown protocol"):
        run_trace("127.0.0.1", "sctp")


def _cli(*args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "fieldmon.agent.trace", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def test_the_subprocess_prints_the_trace_as_json() -> None:
    status, data = _cli("127.0.0.1", "--protocol", "icmp", "--cycles", "3", "--interval", "0.02")
    assert status == 0
    trace = Trace.from_json(data)
    assert trace.reached and trace.cycles == 3 and trace.started_ns > 0


def test_the_subprocess_says_why_no_trace_ran() -> None:
    status, data = _cli("127.0.0.1", "--protocol", "icmp", "--interface", "fm-no-such0")
    assert status == 2
    assert "cannot prepare the ICMP socket" in str(data["error"])


@pytest.fixture
def echo_filtered() -> Iterator[str]:
    """A far end in a namespace of our own that drops ICMP echo requests (TCP still answers:
    a SYN to a closed port gets a reset)."""
    with Namespace(unique_name("trace")) as far:
        link = veth(None, far)
        far.run(
            "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"
        )
        yield str(link.b_v4.ip)


@pytest.mark.netns
def test_auto_falls_back_to_tcp_where_icmp_echo_is_filtered(echo_filtered: str) -> None:
    status, data = _cli(
        echo_filtered, "--cycles", "3", "--interval", "0.02", "--timeout", "0.3", "--max-hops", "4"
    )
    trace = Trace.from_json(data)
    assert status == 0
    assert (trace.protocol, trace.fallback_from, trace.port) == ("tcp", "icmp", 443)
    assert trace.reached
    assert [hop.address for hop in trace.hops] == [echo_filtered]
    icmp = run_trace(echo_filtered, "icmp", cycles=2, interval=0.02, timeout=0.3, max_hops=4)
    assert not icmp.reached and all(not hop.answered for hop in icmp.hops)


@contextlib.contextmanager
def _no_error() -> Iterator[None]:
    yield
