"""The alerts a link's state machine makes visible: paging, hand-overs, flapping, severity."""

from __future__ import annotations

import random

import pytest

from fieldmon.collector.alerts.linktrack import LinkContext, LinkTrack, link_severity
from fieldmon.collector.alerts.model import AlertName, AlertState, Severity
from fieldmon.collector.config import AlertingConfig
from fieldmon.core.linkstate import DEFAULT_RULES, DEFAULT_THRESHOLDS, Round, Rules, Thresholds
from fieldmon.core.site.links import LinkRole

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


def _round(index: int, kind: str) -> Round:
    return Round(time=T0 + index * 10 * NS, **KINDS[kind])


def _track(pattern: str, role: LinkRole = LinkRole.PARENT, late: bool = False) -> list:
    ctx = LinkContext("pavilion-2", "parent-gw", role, "pi1", "central", "P2", THRESHOLDS, RULES)
    track = LinkTrack()
    out = []
    for index, kind in enumerate(pattern.replace(" ", "")):
        transitions, _ = track.judge(_round(index, kind), ctx, late=late)
        out += transitions
    return out


def test_hovering_at_the_threshold_never_flaps_a_notification() -> None:
    ctx = LinkContext(
        "pavilion-2", "parent-gw", LinkRole.PARENT, "pi1", "central", "P2", THRESHOLDS, RULES
    )
    track = LinkTrack()
    rng = random.Random(7)
    out = []
    for index in range(500):
        loss = rng.uniform(4.2, 6.0)  # always within 20 % of the 5 % threshold
        round_ = Round(time=T0 + index * 10 * NS, loss_pct=loss, lost=False, rtt_p95_ms=20.0)
        out += track.judge(round_, ctx, late=False)[0]
    assert [t.state for t in out] == [AlertState.FIRING]
    assert out[0].alertname is AlertName.LINK_DEGRADED


def test_flapping_is_damped_to_one_notification() -> None:
    one_cycle = "BBB GGGGG "
    short = _track(one_cycle * 10 + "G" * 70)
    long = _track(one_cycle * 40 + "G" * 70)
    pages = [(t.alertname, t.state) for t in short if t.page]
    # Four changes page normally; the fifth starts flapping: one LinkFlapping, then silence
    # until the link has been stable for the flap window.
    assert pages == [
        (AlertName.LINK_DEGRADED, AlertState.FIRING),
        (AlertName.LINK_DEGRADED, AlertState.RESOLVED),
        (AlertName.LINK_DEGRADED, AlertState.FIRING),
        (AlertName.LINK_DEGRADED, AlertState.RESOLVED),
        (AlertName.LINK_FLAPPING, AlertState.FIRING),
        (AlertName.LINK_FLAPPING, AlertState.RESOLVED),
    ]
    assert [(t.alertname, t.state) for t in long if t.page] == pages


def test_flapping_ends_into_the_current_state() -> None:
    out = _track("BBB GGGGG " * 3 + "BBB" + "B" * 70)
    names = [(t.alertname, t.state) for t in out]
    assert names[-2:] == [
        (AlertName.LINK_FLAPPING, AlertState.RESOLVED),
        (AlertName.LINK_DEGRADED, AlertState.FIRING),
    ]


def test_a_handover_between_link_alerts_never_reads_as_a_recovery() -> None:
    out = _track("BBB LLL BBBBB GGGGG")
    steps = [(t.alertname, t.state, t.annotations.get("superseded_by")) for t in out]
    assert steps == [
        (AlertName.LINK_DEGRADED, AlertState.FIRING, None),
        (AlertName.LINK_DEGRADED, AlertState.RESOLVED, "LinkDown"),
        (AlertName.LINK_DOWN, AlertState.FIRING, None),
        (AlertName.LINK_DOWN, AlertState.RESOLVED, "LinkDegraded"),
        (AlertName.LINK_DEGRADED, AlertState.FIRING, None),
        (AlertName.LINK_DEGRADED, AlertState.RESOLVED, None),
    ]
    summaries = [t.annotations["summary"] for t in out if t.state is AlertState.RESOLVED]
    assert summaries == [
        "pavilion-2: parent link parent-gw now down: degraded from 08:00:00 UTC "
        "to 08:00:30 UTC (loss 100 %)",
        "pavilion-2: parent link parent-gw now degraded: down from 08:00:30 UTC "
        "to 08:01:00 UTC (loss 30 %, rtt p95 20 ms)",
        "pavilion-2: parent link parent-gw recovered at 08:01:50 UTC "
        "(degraded from 08:01:00 UTC; loss 0 %, rtt p95 20 ms)",
    ]
    assert "recovered" not in out[1].annotations["summary"] + out[1].annotations["description"]
    assert out[1].annotations["description"].startswith("not a recovery")


@pytest.mark.parametrize(
    ("role", "alertname", "severity"),
    [
        (LinkRole.PARENT, AlertName.LINK_DOWN, Severity.CRITICAL),
        (LinkRole.PARENT, AlertName.LINK_DEGRADED, Severity.WARNING),
        (LinkRole.PARENT, AlertName.LINK_FLAPPING, Severity.WARNING),
        (LinkRole.INTERNET, AlertName.LINK_DOWN, Severity.WARNING),
        (LinkRole.GATEWAY, AlertName.LINK_DEGRADED, Severity.INFO),
        (LinkRole.AP, AlertName.LINK_FLAPPING, Severity.INFO),
    ],
)
def test_severity_by_role(role: LinkRole, alertname: AlertName, severity: Severity) -> None:
    assert link_severity(alertname, role) is severity


def test_late_rounds_never_page_but_the_episode_reports() -> None:
    ctx = LinkContext(
        "pavilion-2", "parent-gw", LinkRole.PARENT, "pi1", "central", "P2", THRESHOLDS, RULES
    )
    track = LinkTrack()
    transitions, reports = [], []
    for index, kind in enumerate("GLLLBGGGGGG"):
        out, report = track.judge(_round(index, kind), ctx, late=True)
        transitions += out
        reports += [report] if report else []
    assert transitions
    assert not any(t.page for t in transitions)
    assert [r.samples_backfilled for r in reports] == [9]
    assert reports[0].start == T0 + 10 * NS
    assert reports[0].end == T0 + 50 * NS
    assert reports[0].worst_loss_pct == 100.0


def test_the_collector_starts_from_the_core_defaults_the_agent_judges_with() -> None:
    config = AlertingConfig()
    assert (config.loss_pct, config.rtt_ms, config.jitter_ms) == (
        DEFAULT_THRESHOLDS.loss_pct,
        DEFAULT_THRESHOLDS.rtt_ms,
        DEFAULT_THRESHOLDS.jitter_ms,
    )
    assert (config.for_rounds, config.clear_rounds, config.flap_changes) == (
        DEFAULT_RULES.for_rounds,
        DEFAULT_RULES.clear_rounds,
        DEFAULT_RULES.flap_changes,
    )
    assert config.flap_window * NS == DEFAULT_RULES.flap_window_ns
