"""The userspace echo responder: real pings (fping) see its delay, jitter and loss."""

from __future__ import annotations

import os
import statistics

import pytest

from fieldmon.lab.echo_responder import Impairment, v4_reply, v6_reply
from fieldmon.lab.impair import EchoResponder
from fieldmon.lab.netns import Namespace, run, unique_name, veth

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def fping_rtts(address: str, count: int, period_ms: int = 100) -> list[float | None]:
    """Round-trip times in ms of `count` echoes from the root namespace (None: no answer)."""
    completed = run(
        None, "fping", "-C", str(count), "-p", str(period_ms), "-t", "500", "-q", address,
        check=False,
    )  # fmt: skip
    values = completed.stderr.split(" : ", 1)[1].split()
    assert len(values) == count, completed.stderr
    return [None if value == "-" else float(value) for value in values]


def test_impairment_validates_its_values() -> None:
    with pytest.raises(ValueError, match="loss_pct must be between 0 and 100"):
        Impairment(loss_pct=101)
    with pytest.raises(ValueError, match="jitter_ms must be >= 0"):
        Impairment(jitter_ms=-1)


def test_delays_stay_within_delay_plus_minus_jitter() -> None:
    import random

    rng = random.Random(1)
    delays = [Impairment(40, 10).next_delay_s(rng) for _ in range(2000)]
    assert all(d is not None and 0.030 <= d <= 0.050 for d in delays)
    assert Impairment(5, 10).next_delay_s(rng) is not None  # clamped at zero, never negative
    assert min(Impairment(5, 10).next_delay_s(rng) or 0 for _ in range(200)) == 0
    dropped = [Impairment(loss_pct=30).next_delay_s(rng) for _ in range(2000)]
    assert 0.25 < dropped.count(None) / 2000 < 0.35


def test_replies_mirror_the_request() -> None:
    request = bytes.fromhex("4500001c000000004001000001020304050607080800f7fe00010000")
    reply = v4_reply(request)
    assert reply is not None
    assert reply[0] == 0 and reply[4:] == request[24:]
    assert (
        v4_reply(bytes.fromhex("4500001c000000004001000001020304050607080000fffe00010000")) is None
    )
    assert (
        v6_reply(bytes([128, 0, 0, 0, 0, 7, 0, 1]) + b"x")
        == bytes([129, 0, 0, 0, 0, 7, 0, 1]) + b"x"
    )
    assert v6_reply(bytes([129, 0, 0, 0, 0, 7, 0, 1])) is None


@needs_root
@pytest.mark.netns
def test_delay_and_jitter_seen_by_real_pings_on_both_families() -> None:
    with Namespace(unique_name("echo")) as far:
        link = veth(None, far)
        with EchoResponder(far, delay_ms=40, jitter_ms=10) as responder:
            assert far.run("sysctl", "-n", "net.ipv4.icmp_echo_ignore_all").stdout.strip() == "1"
            for address in (str(link.b_v4.ip), str(link.b_v6.ip)):
                rtts = [rtt for rtt in fping_rtts(address, 20) if rtt is not None]
                assert len(rtts) == 20, (address, rtts)
                # Never earlier than delay - jitter; later only by scheduling on a busy machine.
                assert min(rtts) >= 29.5, rtts
                assert 37 <= statistics.median(rtts) <= 50, rtts
                assert max(rtts) - min(rtts) >= 6, rtts  # the jitter is there
                assert statistics.pstdev(rtts) >= 2.5, rtts
            responder.update(delay_ms=0, jitter_ms=0)
            fast = [rtt for rtt in fping_rtts(str(link.b_v4.ip), 5) if rtt is not None]
            assert len(fast) == 5 and statistics.median(fast) < 15, fast
        assert responder.counts["requests"] == 45
        # Stopped: the kernel answers again, at once.
        assert far.run("sysctl", "-n", "net.ipv4.icmp_echo_ignore_all").stdout.strip() == "0"
        assert None not in fping_rtts(str(link.b_v4.ip), 3)


@needs_root
@pytest.mark.netns
def test_loss_drops_exactly_what_the_responder_counts() -> None:
    with Namespace(unique_name("echo")) as far:
        link = veth(None, far)
        with EchoResponder(far, loss_pct=40) as responder:
            rtts = fping_rtts(str(link.b_v4.ip), 50, period_ms=20)
        lost = rtts.count(None)
        assert responder.counts == {"requests": 50, "answered": 50 - lost, "dropped": lost}
        assert 8 <= lost <= 35  # 40 % of 50, loosely: binomial spread


@needs_root
@pytest.mark.netns
def test_a_dead_namespace_is_a_clear_error() -> None:
    far = Namespace(unique_name("echo"))
    with pytest.raises(Exception, match=far.name):
        EchoResponder(far, delay_ms=1).start()
