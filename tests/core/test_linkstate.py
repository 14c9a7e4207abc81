"""Table-driven tests of the per-link state machine shared by the collector and the agent."""

from __future__ import annotations

import pytest

from fieldmon.core.linkstate import (
    DEFAULT_RULES,
    DEFAULT_THRESHOLDS,
    ChangeKind,
    LinkMachine,
    LinkState,
    Round,
    Rules,
    Thresholds,
    Verdict,
    classify,
    link_thresholds,
)
from fieldmon.core.site.links import LinkThresholds
from fieldmon.core.wire.models import Sample

NS = 10**9
T0 = 1_800_000_000 * NS
THRESHOLDS = Thresholds(loss_pct=5.0, rtt_ms=100.0, jitter_ms=20.0)
RULES = Rules(for_rounds=3, clear_rounds=5, flap_changes=4, flap_window_ns=600 * NS)
# One letter per round: Good, Hover (between 80 % and 100 %), Bad (answered), Lost (all lost).
KINDS = {
    "G": {"loss_pct": 0.0, "rtt_p95_ms": 20.0, "jitter_ms": 2.0, "lost": False},
    "H": {"loss_pct": 4.5, "rtt_p95_ms": 20.0, "jitter_ms": 2.0, "lost": False},
    "B": {"loss_pct": 30.0, "rtt_p95_ms": 20.0, "jitter_ms": 2.0, "lost": False},
    "L": {"loss_pct": 100.0, "rtt_p95_ms": None, "jitter_ms": None, "lost": True},
}
STATE_LETTER = {LinkState.OK: "o", LinkState.DEGRADED: "d", LinkState.DOWN: "D"}


def _round(index: int, kind: str) -> Round:
    return Round(time=T0 + index * 10 * NS, **KINDS[kind])


def _states(pattern: str, rules: Rules = RULES) -> str:
    machine = LinkMachine()
    letters = []
    for index, kind in enumerate(pattern.replace(" ", "")):
        machine.judge(_round(index, kind), THRESHOLDS, rules)
        letters.append(STATE_LETTER[machine.state])
    return "".join(letters)


@pytest.mark.parametrize(
    ("loss", "rtt", "jitter", "lost", "verdict"),
    [
        (0.0, 10.0, 1.0, False, Verdict.GOOD),
        (3.99, 79.9, 15.9, False, Verdict.GOOD),
        (4.0, 10.0, 1.0, False, Verdict.HOVER),  # exactly 80 % of loss_pct
        (4.99, 10.0, 1.0, False, Verdict.HOVER),
        (5.0, 10.0, 1.0, False, Verdict.BAD),  # at the threshold counts as bad
        (0.0, 80.0, 1.0, False, Verdict.HOVER),
        (0.0, 100.0, 1.0, False, Verdict.BAD),
        (0.0, 10.0, 16.0, False, Verdict.HOVER),
        (0.0, 10.0, 20.0, False, Verdict.BAD),
        (0.0, None, None, False, Verdict.GOOD),  # absent rtt / jitter are not judged
        (100.0, None, None, True, Verdict.LOST),
        (90.0, 300.0, None, False, Verdict.BAD),
    ],
)
def test_classify(
    loss: float, rtt: float | None, jitter: float | None, lost: bool, verdict: Verdict
) -> None:
    round_ = Round(time=T0, loss_pct=loss, lost=lost, rtt_p95_ms=rtt, jitter_ms=jitter)
    assert classify(round_, THRESHOLDS) is verdict


@pytest.mark.parametrize(
    ("case", "pattern", "expected"),
    [
        ("healthy", "GGGGG", "ooooo"),
        ("one lost round never alerts", "GGLGGG", "oooooo"),
        ("two bad rounds are not enough", "BBGBBG", "oooooo"),
        ("for_rounds bad rounds alert", "BBB", "ood"),
        ("a lost round is also bad", "BLB", "ood"),
        ("hover breaks the bad streak", "BBHBBHBB", "oooooooo"),
        ("down after two all-lost rounds", "LL", "oD"),
        ("degraded then down", "BBBLL", "ooddD"),
        ("recovery needs clear_rounds", "BBB GGGG G", "ood dddd o"),
        ("hover is not clearing", "BBB GGGGH GGGG G", "ood ddddd dddd o"),
        ("one bad round restarts clearing", "BBB GGGGB GGGGG", "ood ddddd ddddo"),
        ("down clears to ok", "LL GGGGG", "oD DDDDo"),
        ("down answering but bad is degraded", "LL BBB", "oD DDd"),
        ("down stays down while lost", "LLLLLL", "oDDDDD"),
    ],
)
def test_state_sequence(case: str, pattern: str, expected: str) -> None:
    assert _states(pattern) == expected.replace(" ", ""), case


def test_state_change_is_dated_at_the_streak_start() -> None:
    machine = LinkMachine()
    changes = []
    for index, kind in enumerate("GBBBGGGGG"):
        changes += machine.judge(_round(index, kind), THRESHOLDS, RULES)
    assert [(c.new, c.time) for c in changes] == [
        (LinkState.DEGRADED, T0 + 10 * NS),
        (LinkState.OK, T0 + 40 * NS),
    ]


def test_machine_flap_edges() -> None:
    machine = LinkMachine()
    kinds = []
    for index, kind in enumerate(("BBBGGGGG" * 3 + "G" * 70).replace(" ", "")):
        kinds += [c.kind for c in machine.judge(_round(index, kind), THRESHOLDS, RULES)]
    assert kinds.count(ChangeKind.FLAP_START) == 1
    assert kinds.count(ChangeKind.FLAP_END) == 1
    assert not machine.flapping


@pytest.mark.parametrize(
    ("fields", "loss", "lost"),
    [
        ({"sent": 10, "received": 0, "loss_pct": 100.0}, 100.0, True),
        ({"sent": 10, "received": 9, "loss_pct": 10.0}, 10.0, False),
        ({"sent": 10, "received": 5}, 50.0, False),
        ({"loss_pct": 100.0}, 100.0, True),
    ],
)
def test_round_from_sample(fields: dict, loss: float, lost: bool) -> None:
    sample = Sample(measurement="link", tags={"target": "x"}, fields=fields, time=T0)
    round_ = Round.from_sample(sample)
    assert round_ is not None
    assert (round_.loss_pct, round_.lost) == (loss, lost)


def test_round_without_loss_is_not_judged() -> None:
    sample = Sample(measurement="link", tags={}, fields={"mos": 4.2}, time=T0)
    assert Round.from_sample(sample) is None


def test_machine_round_trips_through_a_dict() -> None:
    machine = LinkMachine()
    for index, kind in enumerate("BBBGGLL"):
        machine.judge(_round(index, kind), THRESHOLDS, RULES)
    assert LinkMachine.from_dict(machine.to_dict()) == machine


def test_contract_defaults() -> None:
    # docs/contract.md, Alerts and Collector config: the numbers both daemons start from.
    assert Thresholds(loss_pct=5.0, rtt_ms=150.0, jitter_ms=30.0) == DEFAULT_THRESHOLDS
    assert (
        Rules(for_rounds=3, clear_rounds=5, flap_changes=4, flap_window_ns=600 * NS)
        == DEFAULT_RULES
    )


def test_a_link_s_own_thresholds_win_key_by_key() -> None:
    assert link_thresholds(None) == DEFAULT_THRESHOLDS
    assert link_thresholds(LinkThresholds()) == DEFAULT_THRESHOLDS
    own = LinkThresholds(loss_pct=2, jitter_ms=10)
    assert link_thresholds(own) == Thresholds(loss_pct=2.0, rtt_ms=150.0, jitter_ms=10.0)
    assert link_thresholds(own, THRESHOLDS) == Thresholds(
        loss_pct=2.0, rtt_ms=100.0, jitter_ms=10.0
    )
