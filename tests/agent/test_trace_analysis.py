"""Path-trace analysis: mtr's figures per hop, the one-line summary, route changes (pure)."""

from __future__ import annotations

import pytest

from fieldmon.agent.trace.analysis import (
    NO_ANSWER,
    Hop,
    Trace,
    build_hops,
    render_table,
    route_change,
    summarize,
)


def _hop(ttl: int, address: str, lost: int, sent: int = 100, rtt: float = 1.0) -> Hop:
    received = sent - lost
    return Hop(ttl, address if received else NO_ANSWER, sent, (rtt,) * received)


def _trace(*losses: int, reached: bool = True, sent: int = 100) -> Trace:
    hops = tuple(_hop(i + 1, f"10.0.{i + 1}.1", lost, sent) for i, lost in enumerate(losses))
    return Trace("10.0.9.9", "icmp", sent, hops, reached)


def test_figures_are_mtrs_columns_and_percentiles() -> None:
    hop = Hop(1, "10.0.0.1", 5, (3.0, 1.0, 2.0, 4.0))
    figures = hop.figures()
    assert hop.received == 4
    assert hop.loss_pct == pytest.approx(20.0)
    assert figures["rtt_last_ms"] == 4.0
    assert figures["rtt_best_ms"] == 1.0
    assert figures["rtt_worst_ms"] == 4.0
    assert figures["rtt_avg_ms"] == pytest.approx(2.5)
    assert figures["rtt_stdev_ms"] == pytest.approx(1.2910, abs=1e-4)  # sample stdev, as mtr
    assert figures["rtt_p50_ms"] == pytest.approx(2.5)
    assert figures["rtt_p95_ms"] == pytest.approx(3.85)
    assert Hop(2, NO_ANSWER, 5).figures() == {}


def test_build_hops_takes_the_most_frequent_responder() -> None:
    answers = {1: [("a", 1.0), ("b", 2.0), ("b", 3.0)], 3: [("c", 1.0)]}
    hops = build_hops({1: 3, 2: 3, 3: 3}, answers, 3)
    assert [(h.ttl, h.address, h.received, h.others) for h in hops] == [
        (1, "b", 3, ("a",)),
        (2, NO_ANSWER, 0, ()),
        (3, "c", 1, ()),
    ]


def test_json_round_trip() -> None:
    trace = Trace("192.0.2.1", "tcp", 3, (Hop(1, "10.0.0.1", 3, (1.5,), ("10.0.0.2",)),), False,
                  port=443, interface="eth0", started_ns=7, duration_s=1.5,
                  fallback_from="icmp", errors={"ENETUNREACH": 2})  # fmt: skip
    assert Trace.from_json(trace.to_json()) == trace


def test_clean_path() -> None:
    summary = summarize(_trace(0, 0, 0))
    assert summary.verdict == "clean"
    assert summary.text == "no loss on the path (100 cycles, 3 hops)"


def test_loss_from_a_hop_to_the_far_end_names_that_hop() -> None:
    summary = summarize(_trace(0, 0, 21, 19))
    assert (summary.verdict, summary.loss_hop, summary.loss_address) == ("loss_from", 3, "10.0.3.1")
    assert summary.text.startswith(
        "loss starts at hop 3, 10.0.3.1: 21 % there, 19 % at the far end"
    )
    assert "hops 1-2 clean" in summary.text


def test_loss_only_at_the_far_end() -> None:
    summary = summarize(_trace(0, 0, 30))
    assert summary.verdict == "far_end"
    assert summary.text.startswith("no loss on the path; the loss is at the far end (10.0.3.1")


def test_a_hop_dropping_only_its_own_answers_is_rate_limiting_not_loss() -> None:
    summary = summarize(_trace(0, 60, 0, 0))
    assert summary.verdict == "clean"
    assert summary.rate_limited == (2,)
    assert summary.text == (
        "hop 2 (10.0.2.1) drops only probes addressed to itself (rate limiting); "
        "the path beyond it is clean, no loss at the far end"
    )


def test_rate_limiting_before_real_loss_is_not_blamed() -> None:
    # Hop 2 answers 60 % less (rate limiting), real loss of about 20 % starts at hop 3.
    summary = summarize(_trace(0, 60, 20, 22, 19))
    assert summary.loss_hop == 3
    assert summary.rate_limited == (2,)
    assert "hop 2 (10.0.2.1) drops only probes addressed to itself" in summary.text


def test_a_rate_limiting_hop_inside_the_lossy_run_is_skipped() -> None:
    # Hop 3 loses 70 % of its own answers, the path from hop 4 on 20 %.
    summary = summarize(_trace(0, 0, 70, 20, 21))
    assert summary.loss_hop == 4
    assert summary.rate_limited == (3,)


def test_a_path_that_breaks_names_the_last_hop_that_answered() -> None:
    trace = Trace("10.0.9.9", "icmp", 10, (_hop(1, "a", 0, 10), _hop(2, "b", 0, 10),
                                            _hop(3, "c", 10, 10)), reached=False)  # fmt: skip
    summary = summarize(trace)
    assert summary.verdict == "no_answer_beyond"
    assert summary.loss_hop == 3
    assert summary.text.startswith("no answer beyond hop 2 (b): the path breaks after it")


def test_nothing_answered() -> None:
    trace = Trace("10.0.9.9", "udp", 10, (_hop(1, "a", 10, 10),), reached=False)
    assert summarize(trace).verdict == "silent"


def test_route_change_ignores_hops_that_did_not_answer() -> None:
    assert route_change(("a", "b", "c"), ("a", NO_ANSWER, "c")) is None
    assert route_change(("a", "b", "c"), ("a", "b", "c")) is None
    assert route_change(("a", "b", "c"), ("a", "x", "c")) == "was a > b > c, now a > x > c"
    assert route_change(("a", "c"), ("a", "b", "c")) == "was a > c, now a > b > c"


def test_table_has_a_line_per_hop() -> None:
    table = render_table(_trace(0, 5, sent=10))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["HOP", "ADDRESS", "LOSS%", "SNT"]
    assert lines[2].split()[:4] == ["2.", "10.0.2.1", "50.0%", "10"]
