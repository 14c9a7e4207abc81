"""Device and agent alerts (ApDown, InterfaceDown, UplinkSaturated, AgentPower, AgentBacklog,
AgentDataLoss) through the AlertEngine: thresholds, hover, durations, clear, replay, restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fieldmon.collector.alerts import AlertEngine, AlertState, AlertStateStore, Transition
from fieldmon.collector.config import AlertingConfig
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import Envelope, Sample

NS = 10**9
T0 = 1_800_000_000.0  # seconds; every device and the host report every 10 s from here
SITE, AGENT = "pavilion-2", "pavilion-2-pi1"


class Clock:
    """The collector's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _site(alerting: dict[str, Any] | None = None) -> SiteConfig:
    snmp = {"version": "2c", "community_file": "/nonexistent/community"}
    data: dict[str, Any] = {
        "site": SITE,
        "name": "Field hospital - Pavilion 2",
        "parent_hospital": "hospital-central",
        "agent": {"id": AGENT, "broker": {"host": "127.0.0.1"}},
        "snmp_devices": [
            {"name": "ap-hall-a", "address": "127.0.0.1", "profile": "generic-ap",
             "interval": "10s", "snmp": snmp},
            {"name": "router", "address": "127.0.0.1", "profile": "if-mib", "interval": "10s",
             "interfaces": ["wan0"], "snmp": snmp},
            {"name": "switch", "address": "127.0.0.1", "profile": "if-mib", "interval": "10s",
             "snmp": snmp},
        ],
        "host": {"interval": "10s"},
    }  # fmt: skip
    if alerting is not None:
        data["alerting"] = alerting
    return SiteConfig.model_validate(data, context={"check_files": False})


CONFIG = AlertingConfig(
    silence_timeout=3600,
    ap_down_polls=3,
    interface_down_polls=3,
    device_clear_polls=2,
    uplink_util_pct=90,
    uplink_saturated_for=30,
    backlog_depth=100,
    backlog_age=100,
    backlog_for=30,
    power_for=20,
    condition_clear_for=20,
    data_loss_grace=60,
    data_loss_clear=300,
)


def _engine(clock: Clock, site: SiteConfig | None = None) -> AlertEngine:
    return AlertEngine({SITE: site or _site()}, CONFIG, clock)


def _at(index: int) -> int:
    return int((T0 + 10 * index) * NS)


def ap(index: int, up: int, radio: str = "wlan0") -> Sample:
    return Sample(
        measurement="ap",
        tags={"site": SITE, "agent": AGENT, "device": "ap-hall-a", "radio": radio},
        fields={"up": up, "channel": 6},
        time=_at(index),
    )


def iface(index: int, fields: dict[str, float | int], device: str = "router") -> Sample:
    ifname = "wan0" if device == "router" else "port7"
    return Sample(
        measurement="snmp_if",
        tags={"site": SITE, "agent": AGENT, "device": device, "ifname": ifname},
        fields=fields,  # type: ignore[arg-type]
        time=_at(index),
    )


def host(index: int, fields: dict[str, float | int | bool]) -> Sample:
    return Sample(
        measurement="host",
        tags={"site": SITE, "agent": AGENT},
        fields=fields,  # type: ignore[arg-type]
        time=_at(index),
    )


def _up(value: str) -> int:
    return 1 if value == "U" else 0


# Each row: the alert, a sample builder, the samples' values, and the transitions expected
# as (sample index, state); every one of them live, so each pages.
CASES: list[tuple[str, str, Any, list[Any], list[tuple[int, str]]]] = [
    ("ap down, back", "ApDown", lambda i, v: ap(i, _up(v)), list("UDDDUU"),
     [(3, "firing"), (5, "resolved")]),
    ("ap one good poll breaks the streak", "ApDown", lambda i, v: ap(i, _up(v)),
     list("UDDUDDUDDU"), []),
    ("ap one lost poll never alerts", "ApDown", lambda i, v: ap(i, _up(v)), list("UDUUUDU"), []),
    ("ap clear needs two polls", "ApDown", lambda i, v: ap(i, _up(v)), list("UDDDUDUU"),
     [(3, "firing"), (7, "resolved")]),
    ("ap radio never up is disabled, not down", "ApDown", lambda i, v: ap(i, _up(v)),
     list("DDDDDD"), []),
    ("interface down, back", "InterfaceDown", lambda i, v: iface(i, {"oper_up": _up(v)}),
     list("UUDDDUU"), [(4, "firing"), (6, "resolved")]),
    ("listed interface never up (a standby modem) stays quiet", "InterfaceDown",
     lambda i, v: iface(i, {"oper_up": _up(v)}), list("DDDDD"), []),
    ("interface up late, then down", "InterfaceDown",
     lambda i, v: iface(i, {"oper_up": _up(v)}), list("DDDUDDD"), [(6, "firing")]),
    ("unlisted port never up stays quiet", "InterfaceDown",
     lambda i, v: iface(i, {"oper_up": _up(v)}, device="switch"), list("DDDDDD"), []),
    ("unlisted port that was up alerts", "InterfaceDown",
     lambda i, v: iface(i, {"oper_up": _up(v)}, device="switch"), list("UDDD"), [(3, "firing")]),
    ("uplink saturated for 30 s, clears under 72 % for 20 s", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": v}),
     [50, 95, 95, 95, 95, 80, 80, 60, 60, 60], [(4, "firing"), (9, "resolved")]),
    ("uplink hovering at the threshold never fires", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": v}),
     [89, 91, 89, 91, 89, 92, 88, 95, 89, 90, 89], []),
    ("uplink hovering after firing never clears", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": v}),
     [95, 95, 95, 95, 85, 95, 74, 90, 73, 95], [(3, "firing")]),
    ("uplink short burst under the duration", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": v}), [95, 95, 95, 50, 95, 95, 95], []),
    # A device's counter cache: polled faster than it, a steady 95 % reads 0, 0, 285 per poll.
    ("uplink judged across the window, not on the cached per-poll saw-tooth", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": (0, 0, 285)[i % 3],
                            "util_pct_window": v, "window_s": 120.0}),
     [50, 95, 94, 96, 95, 93, 95, 96, 94], [(4, "firing")]),
    ("the same saw-tooth judged per poll (no window fields) never fires", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": v}), [0, 0, 285] * 4, []),
    ("a window wavering around the threshold fires once and never flaps", "UplinkSaturated",
     lambda i, v: iface(i, {"oper_up": 1, "util_pct": (0, 0, 270)[i % 3],
                            "util_pct_window": v, "window_s": 120.0}),
     [91, 92, 90, 93, 88, 91, 86, 92, 89, 90, 85, 91, 87], [(3, "firing")]),
    ("power under-voltage for 20 s", "AgentPower", lambda i, v: host(i, {"undervoltage": v}),
     [False, True, True, True, False, False, False], [(3, "firing"), (6, "resolved")]),
    ("power flags flickering never fire", "AgentPower",
     lambda i, v: host(i, {"undervoltage": v, "throttled": False}),
     [True, False, True, True, False, True, False, True], []),
    ("throttling alone is a power alert", "AgentPower",
     lambda i, v: host(i, {"undervoltage": False, "throttled": v}), [True, True, True],
     [(2, "firing")]),
    ("backlog over 100 samples for 30 s", "AgentBacklog",
     lambda i, v: host(i, {"outbox_depth": v}), [0, 150, 150, 150, 150, 90, 90, 50, 50, 50],
     [(4, "firing"), (9, "resolved")]),
    ("backlog by the oldest sample's age", "AgentBacklog",
     lambda i, v: host(i, {"outbox_depth": 5, "outbox_age_s": v}),
     [0, 150, 150, 150, 150, 90, 50, 50, 50], [(4, "firing"), (8, "resolved")]),
    ("backlog clears only when depth and age are both low", "AgentBacklog",
     lambda i, v: host(i, {"outbox_depth": v, "outbox_age_s": 150 if v >= 100 or i < 8 else 0}),
     [150, 150, 150, 150, 10, 10, 10, 10, 10, 10, 10], [(3, "firing"), (10, "resolved")]),
    ("backlog hovering never flaps", "AgentBacklog", lambda i, v: host(i, {"outbox_depth": v}),
     [99, 101, 99, 100, 80, 120, 79, 130, 99], []),
]  # fmt: skip


def _feed(engine: AlertEngine, clock: Clock, samples: list[Sample], *, live: bool = True):
    out: list[tuple[int, Transition]] = []
    for index, sample in enumerate(samples):
        if live:
            clock.now = sample.time / NS + 1.0
        out.extend((index, t) for t in engine.observe(sample))
    return out


@pytest.mark.parametrize(
    ("alertname", "build", "values", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_live_episodes(alertname: str, build: Any, values: list[Any], expected: Any) -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    samples = [build(index, value) for index, value in enumerate(values)]
    seen = [(i, t) for i, t in _feed(engine, clock, samples) if t.alertname == alertname]
    assert [(i, t.state.value) for i, t in seen] == expected
    assert all(t.page for _, t in seen), "live transitions page"
    for index, transition in seen:
        # Identity never carries a measured value; the values are annotations.
        assert set(transition.labels) <= {
            "alertname", "site", "target", "severity", "device", "radio", "ifname", "agent",
        }  # fmt: skip
        assert transition.labels["severity"] == "warning"
        if transition.state is AlertState.FIRING:
            # Dated at the first sample of the streak that fired it, in sample time.
            first_bad = index
            while first_bad > 0 and _bad(alertname, values[first_bad - 1]):
                first_bad -= 1
            assert transition.starts_at == _at(first_bad)
            assert transition.annotations["history"] == "false"
            assert transition.annotations["parent_hospital"] == "hospital-central"


def _bad(alertname: str, value: Any) -> bool:
    if alertname in ("ApDown", "InterfaceDown"):
        return value == "D"
    if alertname == "UplinkSaturated":
        return value >= 90
    if alertname == "AgentBacklog":
        return value >= 100
    return bool(value)


@pytest.mark.parametrize(
    ("alertname", "build", "values", "expected"),
    [case[1:] for case in CASES if case[4]],
    ids=[case[0] for case in CASES if case[4]],
)
def test_late_samples_update_history_but_never_page(
    alertname: str, build: Any, values: list[Any], expected: Any
) -> None:
    clock = Clock(T0 + 3600)  # everything arrives an hour after it was measured
    engine = _engine(clock)
    samples = [build(index, value) for index, value in enumerate(values)]
    seen = [
        (i, t) for i, t in _feed(engine, clock, samples, live=False) if t.alertname == alertname
    ]
    assert [(i, t.state.value) for i, t in seen] == expected
    assert not any(t.page for _, t in seen)
    assert engine.active_alerts() == []
    # The `alert` rows carry the samples' own times.
    rows = [t.to_sample() for _, t in seen]
    assert rows[0].time == seen[0][1].starts_at < _at(len(values))


@pytest.mark.parametrize(
    ("alertname", "build", "values", "expected"),
    [case[1:] for case in CASES if len(case[4]) == 2],
    ids=[case[0] for case in CASES if len(case[4]) == 2],
)
def test_backfilled_episode_behind_a_live_sample_never_pages(
    alertname: str, build: Any, values: list[Any], expected: Any
) -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    # Fresh-first replay: the newest (healthy) sample arrives first, live...
    healthy = build(100, values[0])
    _feed(engine, clock, [healthy])
    # ...then the backlog, which holds a whole episode.
    samples = [build(index, value) for index, value in enumerate(values)]
    seen = [
        (i, t) for i, t in _feed(engine, clock, samples, live=False) if t.alertname == alertname
    ]
    assert [(i, t.state.value) for i, t in seen] == expected
    assert not any(t.page for _, t in seen)
    assert all(t.annotations["history"] == "true" for _, t in seen)


@pytest.mark.parametrize(
    ("alertname", "build", "values", "expected"),
    [case[1:] for case in CASES if len(case[4]) == 2],
    ids=[case[0] for case in CASES if len(case[4]) == 2],
)
def test_restart_mid_episode_neither_repages_nor_loses_the_resolve(
    tmp_path: Path, alertname: str, build: Any, values: list[Any], expected: Any
) -> None:
    fired_at, resolved_at = expected[0][0], expected[1][0]
    samples = [build(index, value) for index, value in enumerate(values)]
    store = AlertStateStore(tmp_path / "state.json")
    clock = Clock(T0)
    first = _engine(clock)
    before = [
        t for _, t in _feed(first, clock, samples[: fired_at + 1]) if t.alertname == alertname
    ]
    assert [t.state for t in before] == [AlertState.FIRING]
    assert store.save_if_dirty(first)

    second = _engine(clock)
    store.restore_into(second)
    assert [t.alertname for t in second.active_alerts()] == [alertname]
    rest = samples[fired_at + 1 :]
    after = [
        (i + fired_at + 1, t) for i, t in _feed(second, clock, rest) if t.alertname == alertname
    ]
    assert [(i, t.state.value, t.page) for i, t in after] == [(resolved_at, "resolved", True)]
    assert after[0][1].starts_at == before[0].starts_at
    assert second.active_alerts() == []


def test_history_firing_pages_once_the_condition_is_seen_live() -> None:
    clock = Clock(T0 + 3600)
    engine = _engine(clock)
    late = _feed(engine, clock, [ap(i, _up(v)) for i, v in enumerate("UDDD")], live=False)
    assert [(t.state.value, t.page) for _, t in late] == [("firing", False)]
    clock.now = T0 + 41
    now = engine.observe(ap(4, 0))
    assert [(t.state.value, t.page) for t in now] == [("firing", True)]
    assert now[0].starts_at == _at(1)
    # A live sample that already shows recovery would not have paged (checked by the next case).


def test_history_firing_already_recovering_live_stays_quiet() -> None:
    clock = Clock(T0 + 3600)
    engine = _engine(clock)
    _feed(engine, clock, [ap(i, _up(v)) for i, v in enumerate("UDDD")], live=False)
    clock.now = T0 + 41
    assert engine.observe(ap(4, 1)) == []
    clock.now = T0 + 51
    resolved = engine.observe(ap(5, 1))
    assert [(t.state.value, t.page) for t in resolved] == [("resolved", False)]


def test_site_overrides_win_over_collector_defaults() -> None:
    clock = Clock(T0)
    site = _site({"uplink_util_pct": 50, "uplink_saturated_for": "10s", "ap_down_polls": 1})
    engine = _engine(clock, site)
    util = [iface(i, {"oper_up": 1, "util_pct": v}) for i, v in enumerate([10, 60, 60])]
    fired = [t for _, t in _feed(engine, clock, util) if t.alertname == "UplinkSaturated"]
    assert [t.state.value for t in fired] == ["firing"]
    assert "util >= 50 %" in fired[0].annotations["thresholds"]
    downs = [t for _, t in _feed(engine, clock, [ap(3, 1), ap(4, 0)]) if t.alertname == "ApDown"]
    assert [t.state.value for t in downs] == ["firing"]


def test_labels_are_fixed_and_values_are_annotations() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    first = [iface(i, {"oper_up": 1, "util_pct": 97.3}) for i in range(4)]
    second = [iface(i, {"oper_up": 1, "util_pct": 99.9}, device="switch") for i in range(4)]
    fired = [t for _, t in _feed(engine, clock, first + second) if t.alertname == "UplinkSaturated"]
    assert fired[0].labels == {
        "alertname": "UplinkSaturated", "site": SITE, "target": "router/wan0",
        "severity": "warning", "device": "router", "ifname": "wan0",
    }  # fmt: skip
    assert fired[0].annotations["util_pct"] == "97.3"
    assert "97.3" not in "".join(fired[0].labels.values())
    assert "interface wan0 on router saturated" in fired[0].annotations["summary"]


def test_windowed_rows_report_the_window_in_the_alert() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    fields = {"oper_up": 1, "util_pct": 0.0, "in_bps": 0.0, "out_bps": 0.0,
              "util_pct_window": 96.04, "in_bps_window": 96.04e6, "out_bps_window": 2e6,
              "window_s": 120.4}  # fmt: skip
    rows = [iface(i, fields) for i in range(4)]
    fired = [t for _, t in _feed(engine, clock, rows) if t.alertname == "UplinkSaturated"]
    assert len(fired) == 1
    annotations = fired[0].annotations
    assert (annotations["util_pct"], annotations["in_bps"], annotations["window_s"]) == (
        "96.0",
        "96040000",
        "120",
    )
    assert annotations["summary"].endswith("(util 96.0 % over 120 s)")


# --- ApDown for a radio that stops reporting ---------------------------------------------------


def _envelope(seq: int, samples: list[Sample]) -> Envelope:
    return Envelope(site=SITE, agent=AGENT, seq=seq, sent_at=samples[-1].time, samples=samples)


def test_radio_missing_while_the_site_reports_is_down() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    seq = 0
    for index in range(3):
        clock.now = T0 + 10 * index + 1
        seq += 1
        engine.observe_envelope(_envelope(seq, [ap(index, 1), host(index, {"cpu_pct": 5.0})]))
    fired: list[Transition] = []
    for index in range(3, 8):  # the AP stops answering; the host rows keep coming
        clock.now = T0 + 10 * index + 1
        seq += 1
        fired += engine.observe_envelope(_envelope(seq, [host(index, {"cpu_pct": 5.0})]))
        fired += engine.tick()
    ap_down = [t for t in fired if t.alertname == "ApDown"]
    assert [(t.state.value, t.page) for t in ap_down] == [("firing", True)]
    assert ap_down[0].annotations["cause"] == "missing"
    assert ap_down[0].starts_at == _at(3)  # the first poll that did not come
    assert "not reporting since" in ap_down[0].annotations["summary"]
    clock.now = T0 + 81
    assert engine.observe(ap(8, 1)) == []
    clock.now = T0 + 91
    back = engine.observe(ap(9, 1))
    assert [(t.alertname, t.state.value, t.page) for t in back] == [("ApDown", "resolved", True)]


def test_fresh_first_replay_after_a_break_is_not_a_missing_radio() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    for index in range(3):
        clock.now = T0 + 10 * index + 1
        engine.observe_envelope(_envelope(index + 1, [ap(index, 1)]))
    # Ten minutes without a word, then the newest host row arrives before the AP's rows.
    clock.now = T0 + 620
    engine.observe_envelope(_envelope(70, [host(61, {"cpu_pct": 5.0})]))
    assert [t for t in engine.tick() if t.alertname == "ApDown"] == []
    clock.now = T0 + 621
    engine.observe_envelope(_envelope(69, [ap(60, 1)]))
    clock.now = T0 + 700
    assert [t for t in engine.tick() if t.alertname == "ApDown"] == []


def test_silent_site_does_not_call_its_radios_missing() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    for index in range(3):
        clock.now = T0 + 10 * index + 1
        engine.observe_envelope(_envelope(index + 1, [ap(index, 1)]))
    clock.now = T0 + 600
    assert [t for t in engine.tick() if t.alertname == "ApDown"] == []


# --- AgentDataLoss -----------------------------------------------------------------------------


def _seq(engine: AlertEngine, clock: Clock, seq: int, at: float) -> list[Transition]:
    clock.now = at
    return engine.observe_envelope(_envelope(seq, [host(seq, {"cpu_pct": 1.0})]))


def _losses(transitions: list[Transition]) -> list[tuple[str, str]]:
    return [
        (t.state.value, t.annotations["envelopes_lost"])
        for t in transitions
        if t.alertname == "AgentDataLoss"
    ]


def test_gap_never_filled_is_data_loss_once_then_resolves() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out = (
        _seq(engine, clock, 1, T0) + _seq(engine, clock, 2, T0 + 1) + _seq(engine, clock, 5, T0 + 2)
    )
    clock.now = T0 + 61
    out += engine.tick()
    assert _losses(out) == []  # 3 and 4 may still be a backlog draining
    clock.now = T0 + 62
    out += engine.tick()
    assert _losses(out) == [("firing", "2")]
    fired = next(t for t in out if t.alertname == "AgentDataLoss")
    assert fired.page and fired.labels["target"] == AGENT
    # A second gap inside the episode: no second notification; the resolve tells the total.
    out += _seq(engine, clock, 7, T0 + 100)
    clock.now = T0 + 161
    out += engine.tick()
    assert _losses(out) == [("firing", "2")]
    clock.now = T0 + 161 + 300
    out += engine.tick()
    assert _losses(out) == [("firing", "2"), ("resolved", "3")]


def test_gap_filled_within_the_grace_is_no_loss() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out = _seq(engine, clock, 1, T0) + _seq(engine, clock, 4, T0 + 1)
    out += _seq(engine, clock, 3, T0 + 30) + _seq(engine, clock, 2, T0 + 50)
    clock.now = T0 + 500
    out += engine.tick()
    assert _losses(out) == []


def test_outbox_drops_are_data_loss_at_the_source() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    out: list[Transition] = []
    for index, dropped in enumerate([40, 40, 40, 90, 90]):
        clock.now = T0 + 10 * index + 1
        out += engine.observe(host(index, {"outbox_dropped": dropped}))
    losses = [t for t in out if t.alertname == "AgentDataLoss"]
    assert [(t.state.value, t.annotations["samples_dropped"]) for t in losses] == [("firing", "50")]


def test_data_loss_survives_a_restart_and_unheard_seqs_are_not_loss(tmp_path: Path) -> None:
    store = AlertStateStore(tmp_path / "state.json")
    clock = Clock(T0)
    first = _engine(clock)
    _seq(first, clock, 1, T0)
    _seq(first, clock, 4, T0 + 1)  # 2 and 3 missing
    _seq(first, clock, 5, T0 + 2)
    assert store.save_if_dirty(first)
    # While we are down, ingest stores 6..19; we hear 20 next. Only 2 and 3 are ever lost.
    second = _engine(clock)
    store.restore_into(second)
    out = _seq(second, clock, 20, T0 + 30)
    clock.now = T0 + 62
    out += second.tick()
    assert _losses(out) == [("firing", "2")]
    assert store.save_if_dirty(second)
    third = _engine(clock)
    store.restore_into(third)
    clock.now = T0 + 62 + 300
    assert _losses(third.tick()) == [("resolved", "2")]


def test_state_file_from_before_these_alerts_still_loads() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    polls = [ap(index, _up(value)) for index, value in enumerate("UDDD")]
    fired = [t.alertname for _, t in _feed(engine, clock, polls)]
    assert fired == ["ApDown"]
    snapshot = engine.snapshot()
    fresh = _engine(clock).snapshot()
    old_file = {
        key: value for key, value in snapshot.items() if key not in ("conditions", "data_loss")
    }
    restored = _engine(clock)
    restored.restore(old_file)
    # What the old file held comes back (the firing alert among it); the newer alerts' state
    # starts empty, as on a first start.
    assert restored.snapshot() == snapshot | {
        "conditions": fresh["conditions"],
        "data_loss": fresh["data_loss"],
    }
    assert [t.alertname for t in restored.active_alerts()] == ["ApDown"]


def test_power_and_backlog_texts_name_what_is_wrong() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    rows = [
        host(i, {"undervoltage": True, "throttled": True, "outbox_depth": 400, "outbox_age_s": 30})
        for i in range(4)
    ]
    fired = {t.alertname: t for _, t in _feed(engine, clock, rows)}
    power = fired["AgentPower"].annotations
    assert "power problem since" in power["summary"]
    assert power["cause"] == "under-voltage and throttled"
    assert (power["undervoltage"], power["throttled"]) == ("true", "true")
    backlog = fired["AgentBacklog"].annotations
    assert "outbox backlog since" in backlog["summary"]
    assert "(400 samples, oldest 30 s)" in backlog["summary"]
    assert backlog["cause"] == "depth"
    assert fired["AgentBacklog"].labels["target"] == AGENT
