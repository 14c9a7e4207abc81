"""AlertEngine: pages, history replays, outage reports, SiteUnreachable, restart via the store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fieldmon.collector.alerts import (
    AlertEngine,
    AlertName,
    AlertState,
    AlertStateError,
    AlertStateStore,
    Severity,
    Transition,
)
from fieldmon.collector.board import StatusBoard
from fieldmon.collector.config import AlertingConfig
from fieldmon.collector.inventory import Inventory
from fieldmon.core.mqtt.settings import BrokerConfig
from fieldmon.core.site.config import AgentSection, SiteConfig
from fieldmon.core.site.links import IcmpLinkConfig, LinkRole, LinkThresholds
from fieldmon.core.wire.models import Envelope, Sample

NS = 10**9
T0 = 1_800_000_000.0  # seconds; rounds every 10 s from here
SITE = "pavilion-2"
GOOD = {"loss": 0.0, "rtt": 20.0, "jitter": 2.0}
BAD = {"loss": 30.0, "rtt": 20.0, "jitter": 2.0}
HIGH_RTT = {"loss": 0.0, "rtt": 250.0, "jitter": 2.0}
LOST = {"loss": 100.0, "rtt": None, "jitter": None}
KINDS = {"G": GOOD, "B": BAD, "R": HIGH_RTT, "L": LOST}


class Clock:
    """The collector's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _site() -> SiteConfig:
    return SiteConfig(
        site=SITE,
        name="Field hospital - Pavilion 2",
        parent_hospital="hospital-central",
        agent=AgentSection(id="pavilion-2-pi1", broker=BrokerConfig(host="127.0.0.1")),
        links=[
            IcmpLinkConfig(
                name="parent-gw",
                address="127.0.0.1",
                role=LinkRole.PARENT,
                thresholds=LinkThresholds(loss_pct=5, rtt_ms=80),
            ),
            IcmpLinkConfig(name="internet", address="127.0.0.2", role=LinkRole.INTERNET),
        ],
    )


def _engine(clock: Clock) -> AlertEngine:
    config = AlertingConfig(silence_timeout=60, for_rounds=3, clear_rounds=5, offline_grace=15)
    return AlertEngine({SITE: _site()}, config, clock)


def _sample(index: int, kind: str, target: str = "parent-gw") -> Sample:
    values = KINDS[kind]
    received = round(10 * (100 - values["loss"]) / 100)
    fields: dict[str, float | int] = {"sent": 10, "received": received, "loss_pct": values["loss"]}
    if values["rtt"] is not None:
        fields |= {"rtt_p95_ms": values["rtt"], "jitter_ms": values["jitter"]}
    return Sample(
        measurement="link",
        tags={"site": SITE, "agent": "pavilion-2-pi1", "target": target, "role": "parent"},
        fields=fields,
        time=int((T0 + 10 * index) * NS),
    )


def _live(engine: AlertEngine, clock: Clock, pattern: str, start: int = 0, **kw) -> list:
    """Rounds arriving 1 s after they were measured."""
    out: list[Transition] = []
    for offset, kind in enumerate(pattern.replace(" ", "")):
        index = start + offset
        clock.now = T0 + 10 * index + 1
        out += engine.observe(_sample(index, kind, **kw))
    return out


def _pages(transitions: list[Transition]) -> list[tuple[str, str]]:
    return [(t.alertname.value, t.state.value) for t in transitions if t.page]


def test_for_rounds_bad_rounds_page_once_and_clear_rounds_resolve() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out = _live(engine, clock, "GG BBBBBB GGGG G")
    assert _pages(out) == [("LinkDegraded", "firing"), ("LinkDegraded", "resolved")]
    firing, resolved = out
    assert firing.labels == {
        "alertname": "LinkDegraded",
        "site": SITE,
        "target": "parent-gw",
        "severity": "warning",
    }
    assert firing.starts_at == int((T0 + 20) * NS)  # the first bad round, not the third
    assert firing.value == 30.0
    assert firing.annotations["loss_pct"] == "30.0"
    assert firing.annotations["parent_hospital"] == "hospital-central"
    assert resolved.ends_at == int((T0 + 80) * NS)  # first round of the clearing streak
    assert resolved.labels == firing.labels
    assert engine.active_alerts() == []


def test_a_sample_from_the_future_is_ignored_and_never_silences_the_link() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    assert _live(engine, clock, "GG") == []
    # An agent with its clock a day ahead sends one round, then its clock is put right.
    future = dataclasses.replace(_sample(2, "G"), time=int((T0 + 86_400) * NS))
    assert engine.observe(future) == []
    assert engine.ignored_ahead == 1
    # Judged, that round would have made every real round below "history" that never pages.
    out = _live(engine, clock, "BBBBBB GGGGG", start=2)
    assert _pages(out) == [("LinkDegraded", "firing"), ("LinkDegraded", "resolved")]
    # Within the allowance (10 min by default) a sample is judged as usual.
    slightly = dataclasses.replace(_sample(14, "G"), time=int((T0 + 10 * 13 + 1 + 300) * NS))
    engine.observe(slightly)
    assert engine.ignored_ahead == 1


def test_one_lost_round_never_alerts() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    assert _live(engine, clock, "GGLGGGLGGBBGG") == []


def test_site_thresholds_win_over_collector_defaults() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    # 100 ms is over parent-gw's own 80 ms but under the collector's default 150 ms, which
    # applies to `internet` (no thresholds in the site file).
    KINDS["M"] = {"loss": 0.0, "rtt": 100.0, "jitter": 2.0}
    try:
        parent = _live(engine, clock, "MMM")
        internet = _live(engine, clock, "MMMMM", start=3, target="internet")
    finally:
        del KINDS["M"]
    assert _pages(parent) == [("LinkDegraded", "firing")]
    assert parent[0].annotations["rtt_p95_ms"] == "100.0"
    assert internet == []


def test_parent_link_down_says_agent_alive_and_is_critical() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out = _live(engine, clock, "GLL")
    assert _pages(out) == [("LinkDown", "firing")]
    assert out[0].labels["severity"] == Severity.CRITICAL
    assert "agent alive, parent link down" in out[0].annotations["description"]
    assert out[0].starts_at == int((T0 + 10) * NS)
    assert [t.key for t in engine.active_alerts()] == [out[0].key]


def test_other_roles_are_one_level_lower() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    down = _live(engine, clock, "LL", target="internet")
    assert [t.labels["severity"] for t in down] == ["warning"]
    degraded = _live(engine, clock, "GGGGG BBB", start=2, target="internet")
    assert [(t.alertname, t.labels["severity"]) for t in degraded] == [
        (AlertName.LINK_DOWN, "warning"),
        (AlertName.LINK_DEGRADED, "info"),
    ]


def test_hovering_at_the_threshold_never_flaps_a_notification() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out: list[Transition] = []
    # Around the 5 % threshold: six rounds just under it, three just over, again and again.
    hovering = (4.5, 4.8, 4.1, 4.6, 4.9, 4.2, 5.5, 6.0, 5.2)
    for index in range(300):
        loss = hovering[index % len(hovering)]
        clock.now = T0 + 10 * index + 1
        sample = dataclasses.replace(
            _sample(index, "G"),
            fields={"sent": 100, "received": 100 - int(loss), "loss_pct": loss},
        )
        out += engine.observe(sample)
    assert [(t.alertname, t.state) for t in out] == [(AlertName.LINK_DEGRADED, AlertState.FIRING)]


def test_flapping_is_damped_to_one_notification() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out = _live(engine, clock, "BBBGGGGG" * 30)
    flapping = [t for t in out if t.alertname is AlertName.LINK_FLAPPING and t.page]
    assert [t.state for t in flapping] == [AlertState.FIRING]
    assert len([t for t in out if t.page]) <= 6  # four changes before detection, then one


def test_alert_rows_follow_the_contract() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out = _live(engine, clock, "BBB")
    row = out[0].to_sample()
    assert row.measurement == "alert"
    assert row.tags == {
        "site": SITE,
        "alertname": "LinkDegraded",
        "target": "parent-gw",
        "severity": "warning",
    }
    assert row.fields == {"state": "firing", "value": 30.0}
    assert row.time == out[0].starts_at


def test_replayed_history_never_pages_but_yields_rows_and_a_report() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "GG")
    # The site was cut off for 10 minutes; its outbox now replays what it measured meanwhile.
    clock.now = T0 + 700
    out: list[Transition] = []
    for index, kind in enumerate("GLLLLLBGGGGGG", start=2):
        out += engine.observe(_sample(index, kind))
    assert out and not any(t.page for t in out)
    assert [(t.alertname.value, t.state.value) for t in out] == [
        ("LinkDown", "firing"),
        ("LinkDown", "resolved"),
    ]
    assert [t.to_sample().time for t in out] == [int((T0 + 30) * NS), int((T0 + 90) * NS)]
    (report,) = engine.take_reports()
    assert (report.site, report.link) == (SITE, "parent-gw")
    assert report.start == int((T0 + 30) * NS)
    assert report.end == int((T0 + 90) * NS)
    assert report.worst_loss_pct == 100.0
    assert report.samples_backfilled == 11  # five lost, one bad, five clearing
    assert engine.take_reports() == []
    assert engine.active_alerts() == []


def test_out_of_order_rounds_are_history_with_their_own_report() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "GGGGGGGGGG", start=100)  # live rounds 100..109 already judged
    clock.now = T0 + 1200
    out: list[Transition] = []
    for index, kind in enumerate("BBBBGGGGG", start=50):
        out += engine.observe(_sample(index, kind))
    assert [(t.alertname.value, t.state.value, t.page) for t in out] == [
        ("LinkDegraded", "firing", False),
        ("LinkDegraded", "resolved", False),
    ]
    (report,) = engine.take_reports()
    assert (report.start, report.end) == (int((T0 + 500) * NS), int((T0 + 540) * NS))
    assert report.worst_loss_pct == 30.0
    # The live state is untouched: a live bad streak still needs its own for_rounds.
    assert _pages(_live(engine, clock, "BB", start=110)) == []


def test_a_live_episode_resolved_by_late_rounds_still_pages_the_resolve() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    assert _pages(_live(engine, clock, "GLL")) == [("LinkDown", "firing")]
    # The uplink to the collector was cut too; the recovery arrives only in the replay.
    clock.now = T0 + 900
    out = [t for i, kind in enumerate("LLGGGGG", start=3) for t in engine.observe(_sample(i, kind))]
    assert _pages(out) == [("LinkDown", "resolved")]
    assert out[0].ends_at == int((T0 + 50) * NS)
    assert engine.take_reports() == []
    assert engine.active_alerts() == []


def test_exact_resends_are_ignored() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    first = _live(engine, clock, "BBBB")
    assert _pages(first) == [("LinkDegraded", "firing")]
    clock.now = T0 + 100
    assert [engine.observe(_sample(index, "B")) for index in range(4)] == [[], [], [], []]
    assert engine.take_reports() == []


def test_episode_begun_in_history_and_still_on_pages_at_the_first_live_round() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    clock.now = T0 + 600
    late = [t for i in range(4) for t in engine.observe(_sample(i, "L"))]
    assert [(t.alertname.value, t.page) for t in late] == [("LinkDown", False)]
    now = _live(engine, clock, "L", start=60)
    assert _pages(now) == [("LinkDown", "firing")]
    assert now[0].starts_at == int((T0 + 0) * NS)
    resolved = _live(engine, clock, "GGGGG", start=61)
    assert _pages(resolved) == [("LinkDown", "resolved")]
    assert engine.take_reports() == []  # it was paged: no outage report


def test_envelopes_feed_every_sample() -> None:
    clock = Clock(T0 + 31)
    engine = _engine(clock)
    envelope = Envelope(
        site=SITE,
        agent="pavilion-2-pi1",
        seq=1,
        sent_at=int(clock.now * NS),
        samples=[_sample(index, "L") for index in range(3)],
    )
    assert _pages(engine.observe_envelope(envelope)) == [("LinkDown", "firing")]


def test_site_unreachable_from_silence_resolves_when_envelopes_return() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "G")  # heard at T0 + 1
    assert engine.tick(T0 + 60) == []
    (firing,) = engine.tick(T0 + 61)
    assert (firing.alertname, firing.state, firing.page) == (
        AlertName.SITE_UNREACHABLE,
        AlertState.FIRING,
        True,
    )
    assert firing.labels["severity"] == "critical"
    assert "site silent" in firing.annotations["summary"]
    assert firing.annotations["cause"] == "silent"
    assert firing.starts_at == int((T0 + 1) * NS)
    assert engine.tick(T0 + 120) == []  # one notification, not one per tick
    (resolved,) = _live(engine, clock, "G", start=20)
    assert (resolved.alertname, resolved.state) == (
        AlertName.SITE_UNREACHABLE,
        AlertState.RESOLVED,
    )
    assert engine.active_alerts() == []


def test_silence_counts_from_collector_start_for_a_site_never_heard() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    assert engine.tick(T0 + 59) == []
    assert [t.alertname for t in engine.tick(T0 + 60)] == [AlertName.SITE_UNREACHABLE]


def test_site_unreachable_from_last_will_tells_it_apart_from_silence() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "G")
    clock.now = T0 + 5
    engine.observe_status(SITE, "pavilion-2-pi1", "offline", reason="keepalive timeout")
    assert engine.tick(T0 + 19) == []
    (firing,) = engine.tick(T0 + 20)
    assert "offline (last will)" in firing.annotations["summary"]
    assert "keepalive timeout" in firing.annotations["description"]
    assert firing.annotations["cause"] == "offline"
    clock.now = T0 + 30
    (resolved,) = engine.observe_status(SITE, "pavilion-2-pi1", "online")
    assert resolved.state is AlertState.RESOLVED and resolved.page


def test_agent_restart_within_the_grace_never_pages() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "G")
    engine.observe_status(SITE, "pavilion-2-pi1", "offline")
    clock.now = T0 + 5
    assert engine.observe_status(SITE, "pavilion-2-pi1", "online") == []
    assert engine.tick(T0 + 30) == []


def test_statuses_of_unknown_agents_are_ignored() -> None:
    engine = _engine(Clock(T0))
    engine.observe_status(SITE, "someone-else", "offline")
    engine.observe_status("nowhere", "pavilion-2-pi1", "offline")
    assert engine.tick(T0 + 30) == []


def _restarted(engine: AlertEngine, clock: Clock, path: Path) -> AlertEngine:
    store = AlertStateStore(path)
    assert store.save_if_dirty(engine)
    assert not engine.dirty
    fresh = _engine(clock)
    assert store.restore_into(fresh)
    return fresh


def test_restart_mid_episode_neither_repages_nor_loses_the_resolve(tmp_path: Path) -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    assert _pages(_live(engine, clock, "BBB")) == [("LinkDegraded", "firing")]
    engine = _restarted(engine, clock, tmp_path / "alerts.json")
    assert [t.alertname for t in engine.active_alerts()] == [AlertName.LINK_DEGRADED]
    assert _live(engine, clock, "BBBB", start=3) == []
    # A replay of rounds judged before the restart pages nothing either.
    assert _pages([t for i in range(3) for t in engine.observe(_sample(i, "B"))]) == []
    resolved = _live(engine, clock, "GGGGG", start=7)
    assert _pages(resolved) == [("LinkDegraded", "resolved")]
    assert resolved[0].starts_at == int(T0 * NS)


def test_restart_keeps_site_unreachable_until_the_site_returns(tmp_path: Path) -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    assert [t.alertname for t in engine.tick(T0 + 60)] == [AlertName.SITE_UNREACHABLE]
    clock.now = T0 + 300
    engine = _restarted(engine, clock, tmp_path / "alerts.json")
    assert engine.tick(T0 + 400) == []  # still firing: not paged again
    (resolved,) = _live(engine, clock, "G", start=40)
    assert (resolved.state, resolved.page) == (AlertState.RESOLVED, True)


def test_store_without_a_file_restores_nothing(tmp_path: Path) -> None:
    assert AlertStateStore(tmp_path / "none.json").load() is None
    assert not AlertStateStore(tmp_path / "none.json").restore_into(_engine(Clock(T0)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"version": 99}), "version 99"),
        (json.dumps({"version": 1, "live": {}}), "cannot restore"),
    ],
)
def test_store_rejects_a_damaged_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "alerts.json"
    path.write_text(content)
    with pytest.raises(AlertStateError, match=message):
        AlertStateStore(path).restore_into(_engine(Clock(T0)))


def test_store_replaces_the_file_whole(tmp_path: Path) -> None:
    store = AlertStateStore(tmp_path / "state" / "alerts.json")
    store.save({"version": 1, "n": 1})
    store.save({"version": 1, "n": 2})
    assert store.load() == {"version": 1, "n": 2}
    assert [p.name for p in store.path.parent.iterdir()] == ["alerts.json"]


# --- the agent's path trace reaches the link's page as the annotation `path` ---

SUMMARY = "loss starts at hop 3, 10.20.0.1: 25 % there, 20 % at the far end; hops 1-2 clean"


def _path(at_s: float, summary: str = SUMMARY, target: str = "parent-gw") -> Sample:
    return Sample(
        measurement="event",
        tags={"site": SITE, "agent": "pavilion-2-pi1", "kind": "path"},
        fields={"message": f"path to {target}: {summary}", "summary": summary, "target": target},
        time=int(at_s * NS),
    )


def _firing(transitions: list[Transition], name: str = "LinkDegraded") -> list[Transition]:
    return [t for t in transitions if t.alertname.value == name and t.state.value == "firing"]


def test_a_trace_after_the_page_sends_it_again_naming_the_hop() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    [page] = _firing(_live(engine, clock, "GG BBB"))
    assert "path" not in page.annotations
    clock.now = T0 + 10 * 4 + 8  # the agent traced for a few seconds after the deciding round
    [again] = engine.observe(_path(clock.now))
    assert again.page and again.labels == page.labels and again.starts_at == page.starts_at
    assert again.annotations["path"] == SUMMARY
    assert again.annotations["summary"] == page.annotations["summary"]
    # What Alertmanager is re-sent from now on carries it too.
    [active] = engine.active_alerts()
    assert active.annotations["path"] == SUMMARY


def test_a_trace_before_the_page_rides_on_it_and_on_its_successor() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "GG B")
    clock.now = T0 + 10 * 2 + 5  # the agent (stricter thresholds) traced at the first bad round
    assert engine.observe(_path(clock.now)) == []  # nothing firing yet: kept
    out = _live(engine, clock, "BB LL", start=3)
    [degraded] = _firing(out)
    [down] = _firing(out, "LinkDown")
    assert degraded.annotations["path"] == SUMMARY
    assert down.annotations["path"] == SUMMARY  # the same episode, handed over


def test_a_trace_of_an_earlier_episode_is_not_attached() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "GG")
    engine.observe(_path(T0 + 15, "no loss on the path (10 cycles, 4 hops)"))
    out = _live(engine, clock, "GGG GGG BBB", start=2)
    [page] = _firing(out)
    assert "path" not in page.annotations


def test_the_path_survives_a_restart() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _live(engine, clock, "GG BBB")
    engine.observe(_path(T0 + 48))
    restored = AlertEngine({SITE: _site()}, engine._config, clock)
    restored.restore(engine.snapshot())
    out = _live(restored, clock, "LL", start=5)
    [down] = _firing(out, "LinkDown")
    assert down.annotations["path"] == SUMMARY


def test_the_status_board_shows_the_latest_path_of_each_link() -> None:
    board = StatusBoard(Inventory({SITE: _site()}))
    older, newer = _path(T0 + 10, "no loss on the path (10 cycles, 4 hops)"), _path(T0 + 20)
    envelope = Envelope(site=SITE, agent="pavilion-2-pi1", seq=1, sent_at=1, samples=[newer])
    board.observe(envelope)
    board.observe(envelope.model_copy(update={"seq": 2, "samples": [older]}))
    link = board.sites[SITE].links["parent-gw"]
    assert (link.path, link.path_at) == (SUMMARY, newer.time)
    assert board.sites[SITE].links["internet"].path is None
