"""Round statistics: hand-computed cases and properties that hold for any round."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldmon.agent.stats import RoundStats, jitter, mos_from, percentile, summarize

LINK_FIELDS = {
    "sent",
    "received",
    "loss_pct",
    "rtt_min_ms",
    "rtt_avg_ms",
    "rtt_p50_ms",
    "rtt_p95_ms",
    "rtt_max_ms",
    "jitter_ms",
    "mos",
}
RTT_FIELDS = {"rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms", "rtt_p95_ms", "rtt_max_ms", "jitter_ms"}


def _mos(r: float) -> float:
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


# Each case worked by hand; the MOS column repeats the E-model steps as arithmetic.
CASES = [
    pytest.param(
        4,
        [10.0, 20.0, 30.0, 40.0],
        # loss, min, avg, p50 (rank 1.5), p95 (rank 2.85), max, jitter (|10|,|10|,|10|)
        dict(received=4, loss_pct=0.0, rtt_min_ms=10.0, rtt_avg_ms=25.0, rtt_p50_ms=25.0,
             rtt_p95_ms=38.5, rtt_max_ms=40.0, jitter_ms=10.0,
             # effective latency 25 + 2*10 + 10 = 55 < 160: R = 93.2 - 55/40 = 91.825
             mos=4.381105370015625),
        id="four-replies",
    ),
    pytest.param(
        10,
        [100.0, 300.0],
        # 8 of 10 lost; p50 at rank 0.5, p95 at rank 0.95 between 100 and 300
        dict(received=2, loss_pct=80.0, rtt_min_ms=100.0, rtt_avg_ms=200.0, rtt_p50_ms=200.0,
             rtt_p95_ms=290.0, rtt_max_ms=300.0, jitter_ms=200.0,
             # effective 200 + 400 + 10 = 610: R = 93.2 - 49 - 200 < 0 -> 0 -> MOS 1
             mos=1.0),
        id="heavy-loss",
    ),
    pytest.param(
        1,
        [7.5],
        # one reply: every percentile is that reply, jitter is not measurable
        dict(received=1, loss_pct=0.0, rtt_min_ms=7.5, rtt_avg_ms=7.5, rtt_p50_ms=7.5,
             rtt_p95_ms=7.5, rtt_max_ms=7.5, jitter_ms=None,
             # jitter taken as 0: effective 17.5, R = 93.2 - 0.4375 = 92.7625
             mos=4.400657494869141),
        id="one-reply",
    ),
    pytest.param(
        2,
        [150.0, 150.0],
        # effective latency exactly at the 160 ms knee uses the steep branch: (160-120)/10 = 4
        dict(received=2, loss_pct=0.0, rtt_min_ms=150.0, rtt_avg_ms=150.0, rtt_p50_ms=150.0,
             rtt_p95_ms=150.0, rtt_max_ms=150.0, jitter_ms=0.0, mos=4.318910784),
        id="delay-knee",
    ),
    pytest.param(
        20,
        [1.0] * 19,
        # 5 % loss: R = 93.2 - 11/40 - 2.5*5 = 80.425
        dict(received=19, loss_pct=5.0, rtt_min_ms=1.0, rtt_avg_ms=1.0, rtt_p50_ms=1.0,
             rtt_p95_ms=1.0, rtt_max_ms=1.0, jitter_ms=0.0, mos=4.039963312640626),
        id="five-percent-loss",
    ),
    pytest.param(
        5,
        [],
        dict(received=0, loss_pct=100.0, rtt_min_ms=None, rtt_avg_ms=None, rtt_p50_ms=None,
             rtt_p95_ms=None, rtt_max_ms=None, jitter_ms=None, mos=1.0),
        id="dead",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("sent", "rtts", "expected"), CASES)
def test_summarize_hand_computed(sent: int, rtts: list[float], expected: dict) -> None:
    stats = summarize(sent, rtts)
    assert stats.sent == sent
    for key, value in expected.items():
        got = getattr(stats, key)
        if value is None:
            assert got is None, key
        else:
            assert got == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_mos_constant_matches_the_cubic() -> None:
    # The table's MOS numbers came from this cubic with R worked out by hand above.
    assert _mos(91.825) == pytest.approx(4.381105370015625)
    assert _mos(80.425) == pytest.approx(4.039963312640626)


def test_jitter_follows_send_order_not_sorted_order() -> None:
    # Sorted, these would differ by 1 each; in send order they swing by 2, 2, 2.
    assert jitter([1.0, 3.0, 1.0, 3.0]) == pytest.approx(2.0)
    assert summarize(4, [1.0, 3.0, 1.0, 3.0]).jitter_ms == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 95, 4.8),  # rank 3.8
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
        ([2.0, 4.0], 25, 2.5),
        ([9.0], 95, 9.0),
    ],
)
def test_percentile_linear_between_closest_ranks(
    values: list[float], pct: float, expected: float
) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


def test_mos_clamps_the_cubic_dip_below_one() -> None:
    # Loss 35.18 % on an ideal path gives R = 92.95 - 87.95 = 5, where the cubic is 0.992.
    assert _mos(5.0) < 1.0
    assert mos_from(0.0, 0.0, 35.18) == 1.0


def test_mos_is_best_on_a_perfect_path_and_falls_with_each_impairment() -> None:
    best = mos_from(0.0, 0.0, 0.0)
    assert best == pytest.approx(_mos(93.2 - 10 / 40))
    assert mos_from(100.0, 0.0, 0.0) < best
    assert mos_from(0.0, 30.0, 0.0) < best
    assert mos_from(0.0, 0.0, 2.0) < best


def test_dead_round_fields_carry_no_fake_zeros() -> None:
    fields = summarize(5, []).as_fields()
    assert fields == {"sent": 5, "received": 0, "loss_pct": 100.0, "mos": 1.0}


def test_one_reply_row_has_rtts_but_no_jitter() -> None:
    fields = summarize(3, [4.0]).as_fields()
    assert set(fields) == LINK_FIELDS - {"jitter_ms"}
    assert fields["loss_pct"] == pytest.approx(200 / 3)


def test_full_row_uses_exactly_the_design_field_names() -> None:
    fields = summarize(3, [1.0, 2.0, 3.0]).as_fields()
    assert set(fields) == LINK_FIELDS
    assert isinstance(fields["sent"], int)
    assert isinstance(fields["received"], int)
    assert all(isinstance(fields[key], float) for key in LINK_FIELDS - {"sent", "received"})


@pytest.mark.parametrize(("sent", "rtts"), [(0, []), (2, [1.0, 2.0, 3.0]), (-1, [])])
def test_impossible_rounds_are_refused(sent: int, rtts: list[float]) -> None:
    with pytest.raises(ValueError, match="at least one echo"):
        summarize(sent, rtts)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[int, list[float]]:
    sent = draw(st.integers(min_value=1, max_value=300))
    rtts = draw(
        st.lists(
            st.floats(min_value=0.0, max_value=60_000.0, allow_nan=False, allow_infinity=False),
            max_size=sent,
        )
    )
    return sent, rtts


@given(rounds())
def test_properties_of_any_round(round_: tuple[int, list[float]]) -> None:
    sent, rtts = round_
    stats = summarize(sent, rtts)
    assert stats.received == len(rtts)
    assert 0.0 <= stats.loss_pct <= 100.0
    assert 1.0 <= stats.mos <= 4.5
    fields = stats.as_fields()
    assert set(fields) <= LINK_FIELDS
    if not rtts:
        assert stats.loss_pct == 100.0
        assert stats.mos == 1.0
        assert not set(fields) & RTT_FIELDS
        return
    assert stats.rtt_min_ms is not None
    assert stats.rtt_max_ms is not None
    assert stats.rtt_avg_ms is not None
    assert stats.rtt_p50_ms is not None
    assert stats.rtt_p95_ms is not None
    assert stats.rtt_min_ms <= stats.rtt_p50_ms <= stats.rtt_p95_ms <= stats.rtt_max_ms
    # fsum's correctly rounded mean may sit an ulp outside [min, max] only by rounding
    assert stats.rtt_min_ms <= stats.rtt_avg_ms * (1 + 1e-12) + 1e-12
    assert stats.rtt_avg_ms <= stats.rtt_max_ms * (1 + 1e-12) + 1e-12
    if len(rtts) == 1:
        assert stats.jitter_ms is None
    else:
        assert stats.jitter_ms is not None
        assert 0.0 <= stats.jitter_ms <= stats.rtt_max_ms - stats.rtt_min_ms + 1e-9


_MS = st.floats(min_value=0.0, max_value=10_000.0, allow_nan=False)
_PCT = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(rtt=_MS, jit=_MS, loss=_PCT, more_rtt=_MS, more_jit=_MS, more_loss=_PCT)
def test_mos_never_improves_when_any_input_worsens(
    *, rtt: float, jit: float, loss: float, more_rtt: float, more_jit: float, more_loss: float
) -> None:
    base = mos_from(rtt, jit, loss)
    assert 1.0 <= base <= 4.5
    assert mos_from(rtt + more_rtt, jit, loss) <= base
    assert mos_from(rtt, jit + more_jit, loss) <= base
    assert mos_from(rtt, jit, min(100.0, loss + more_loss)) <= base


def test_round_stats_is_immutable() -> None:
    stats = summarize(1, [1.0])
    assert isinstance(stats, RoundStats)
    with pytest.raises(AttributeError):
        stats.sent = 2  # type: ignore[misc]
