"""Seq accounting: duplicates, fresh-first gaps that fill, and gaps given up as lost."""

from __future__ import annotations

import random
import time

from hypothesis import given
from hypothesis import strategies as st

from fieldmon.collector.seqtrack import AgentSeqs, SeqTracker, SeqVerdict


def _feed(tracker: SeqTracker, seqs: list[int], now: float = 0.0) -> None:
    for seq in seqs:
        tracker.observe("s", "a", seq, now)


def test_in_order_stream_has_no_gaps_or_duplicates() -> None:
    tracker = SeqTracker(loss_grace=60)
    _feed(tracker, list(range(10, 20)))
    state = tracker.agents[("s", "a")]
    assert (state.received, state.duplicates, state.missing, state.lost) == (10, 0, 0, 0)
    assert state.contiguous == 19


def test_resent_seqs_are_duplicates() -> None:
    tracker = SeqTracker(loss_grace=60)
    _feed(tracker, [0, 1, 2, 1, 2, 5, 5])
    state = tracker.agents[("s", "a")]
    assert state.duplicates == 3
    assert state.missing == 2  # 3 and 4 not yet arrived


def test_fresh_first_replay_fills_the_gap_without_loss() -> None:
    tracker = SeqTracker(loss_grace=60)
    _feed(tracker, [0, 1, 2, 50], now=0)  # the newest round arrives first after an outage
    assert tracker.agents[("s", "a")].missing == 47
    _feed(tracker, list(range(3, 50)), now=30)
    state = tracker.agents[("s", "a")]
    assert (state.missing, state.lost, state.contiguous) == (0, 0, 50)


def test_a_gap_older_than_the_grace_is_lost_and_a_late_fill_is_recovered() -> None:
    tracker = SeqTracker(loss_grace=60)
    _feed(tracker, [0, 1, 4], now=0)
    assert tracker.expire(now=59) == 0
    assert tracker.expire(now=60) == 2
    state = tracker.agents[("s", "a")]
    assert (state.lost, state.missing, state.contiguous) == (2, 0, 4)
    verdict = tracker.observe("s", "a", 2, now=100)
    assert not verdict.duplicate
    assert state.recovered == 1
    assert tracker.observe("s", "a", 2, now=101).duplicate


@given(st.permutations(list(range(40))), st.integers(min_value=0, max_value=39))
def test_any_order_with_resends_counts_each_seq_once(order: list[int], resends: int) -> None:
    tracker = SeqTracker(loss_grace=1e9)
    rng = random.Random(resends)
    stream = order + [rng.choice(order) for _ in range(resends)]
    # The tracker starts at the first seq it sees; anything below it is history it never knew.
    first = stream[0]
    _feed(tracker, stream)
    state = tracker.agents[("s", "a")]
    below_first = sum(1 for seq in order if seq < first)
    assert state.received == 40 - below_first
    assert state.duplicates == resends + below_first
    assert state.missing == 0


def test_a_restarted_count_is_not_a_giant_gap() -> None:
    tracker = SeqTracker(loss_grace=60)
    _feed(tracker, [0, 1, 2, 1_800_000_000_000, 1_800_000_000_001])
    state = tracker.agents[("s", "a")]
    assert (state.received, state.missing, state.contiguous) == (5, 0, 1_800_000_000_001)


def test_a_coalesced_envelope_counts_like_its_parts_sent_alone() -> None:
    alone, joined = SeqTracker(loss_grace=60), SeqTracker(loss_grace=60)
    stream = [[0], [1], [2], [40], [3, 4, 5, 9], [6, 7, 8], [5, 10], list(range(11, 40))]
    for seqs in stream:
        for seq in seqs:
            alone.observe("s", "a", seq, now=1)
    verdicts = [joined.observe_seqs("s", "a", seqs, now=1) for seqs in stream]
    assert [v.duplicates for v in verdicts] == [0, 0, 0, 0, 0, 0, 1, 0]
    assert verdicts[6].duplicate and not verdicts[5].duplicate
    assert joined.agents == alone.agents
    state = joined.agents[("s", "a")]
    assert (state.received, state.duplicates, state.missing, state.lost) == (41, 1, 0, 0)


def test_a_day_long_outage_drains_without_scanning_every_gap_per_envelope() -> None:
    # 86,400 envelopes (a day of one-second commits) arrive newest first, then coalesced.
    tracker = SeqTracker(loss_grace=3600)
    tracker.observe("s", "a", 0, now=0)
    tracker.observe("s", "a", 86_401, now=0)
    assert tracker.agents[("s", "a")].missing == 86_400
    started = time.perf_counter()
    for first in range(1, 86_401, 80):
        seqs = list(range(first, min(first + 80, 86_401)))
        verdict = tracker.observe_seqs("s", "a", seqs, now=1 + first / 1000)
        assert verdict == SeqVerdict()
    elapsed = time.perf_counter() - started
    state = tracker.agents[("s", "a")]
    assert (state.received, state.missing, state.lost, state.contiguous) == (86_402, 0, 0, 86_401)
    # Scanning the open gaps for every envelope took minutes here; bounded, it takes well under 1 s.
    assert elapsed < 2.0, f"{elapsed:.1f} s"


def test_gaps_opened_later_are_given_up_at_their_own_time() -> None:
    tracker = SeqTracker(loss_grace=60)
    tracker.observe("s", "a", 0, now=0)
    tracker.observe("s", "a", 3, now=0)  # 1, 2 open at 0
    tracker.observe("s", "a", 6, now=30)  # 4, 5 open at 30
    assert tracker.expire(now=59) == 0
    assert tracker.expire(now=60) == 2
    assert tracker.expire(now=89) == 0
    assert tracker.expire(now=90) == 2
    state = tracker.agents[("s", "a")]
    assert (state.lost, state.missing, state.contiguous) == (4, 0, 6)
    tracker.observe("s", "a", 9, now=100)  # 7, 8: the tracker looks again after giving all up
    assert tracker.expire(now=159) == 0
    assert tracker.expire(now=160) == 2


def test_gaps_restored_from_a_snapshot_are_given_up_on_time() -> None:
    tracker = SeqTracker(loss_grace=60)
    tracker.agents[("s", "a")] = AgentSeqs(contiguous=0, above={3}, gap_since={1: 0.0, 2: 0.0})
    tracker.observe("s", "a", 6, now=50)  # 4, 5 open at 50; 1, 2 were open since 0
    assert tracker.expire(now=60) == 2
    assert tracker.expire(now=110) == 2
