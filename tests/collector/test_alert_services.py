"""Service alerts (ServiceDown, ServiceSlow, CertificateExpiring) through the AlertEngine: runs in
a row, hysteresis, failed runs and speed, severity per service, replay, restart, unknown targets,
and what a notification of one carries."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from fieldmon.collector.alerts import AlertEngine, AlertState, AlertStateStore, Transition
from fieldmon.collector.config import AlertingConfig, AlertmanagerConfig
from fieldmon.collector.notify.alertmanager import AlertmanagerNotifier
from fieldmon.collector.notify.base import describe, headline
from fieldmon.collector.notify.email import body_text
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.models import FieldValue, Sample

NS = 10**9
T0 = 1_800_000_000.0  # seconds; every service runs every 10 s from here
SITE, AGENT = "pavilion-2", "pavilion-2-pi1"
FAILED = "F"  # a run that failed (up=false) in a list of durations


class Clock:
    """The collector's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _site(severity: dict[str, str] | None = None) -> SiteConfig:
    severity = severity or {"his": "critical", "hospital-dns": "info"}
    services: list[dict[str, Any]] = [
        {"name": "his", "kind": "http", "url": "https://his.hospital.example/health",
         "interval": "10s", "slow_ms": 500, "cert_warn_days": 14},
        {"name": "pacs", "kind": "tcp", "address": "192.0.2.80", "port": 104, "interval": "10s"},
        {"name": "hospital-dns", "kind": "dns", "server": "192.0.2.53",
         "query": "his.hospital.example", "interval": "10s", "slow_ms": 200},
    ]  # fmt: skip
    for service in services:
        if service["name"] in severity:
            service["severity"] = severity[service["name"]]
    data: dict[str, Any] = {
        "site": SITE,
        "name": "Field hospital - Pavilion 2",
        "parent_hospital": "hospital-central",
        "agent": {"id": AGENT, "broker": {"host": "127.0.0.1"}},
        "services": services,
    }
    return SiteConfig.model_validate(data, context={"check_files": False})


# The contract's defaults: fire after 3 runs in a row, clear after 5.
CONFIG = AlertingConfig(silence_timeout=3600, for_rounds=3, clear_rounds=5)
KINDS = {"his": "http", "pacs": "tcp", "hospital-dns": "dns"}


def _engine(clock: Clock, site: SiteConfig | None = None) -> AlertEngine:
    return AlertEngine({SITE: site or _site()}, CONFIG, clock)


def _at(index: int) -> int:
    return int((T0 + 10 * index) * NS)


def run(index: int, target: str, fields: dict[str, FieldValue]) -> Sample:
    """One `service` row as the agent sends it."""
    return Sample(
        measurement="service",
        tags={"site": SITE, "agent": AGENT, "target": target, "kind": KINDS.get(target, "http")},
        fields={"up": True, "duration_ms": 42.0, **fields},
        time=_at(index),
    )


def up_down(target: str) -> Any:
    """U: a good run; D: a run that answered 503."""

    def build(index: int, value: str) -> Sample:
        if value == "U":
            return run(index, target, {"status_code": 200})
        return run(index, target, {"up": False, "error": "status", "status_code": 503})

    return build


def timed(target: str) -> Any:
    """A good run that took `value` ms, or a failed one (FAILED, a timeout at 5 s)."""

    def build(index: int, value: float | str) -> Sample:
        if value == FAILED:
            return run(index, target, {"up": False, "error": "timeout", "duration_ms": 5000.0})
        return run(index, target, {"duration_ms": float(value)})

    return build


def cert(target: str) -> Any:
    """A good run whose certificate has `value` days left."""
    return lambda index, value: run(index, target, {"cert_days_left": float(value)})


# Each row: the alert, a sample builder, the runs' values, the transitions expected as
# (run index, state), the severity label and the index of the run the firing is dated at.
CASES: list[tuple[str, str, Any, list[Any], list[tuple[int, str]], str]] = [
    ("down for three runs, up for five", "ServiceDown", up_down("his"), list("UDDDUUUUU"),
     [(3, "firing"), (8, "resolved")], "critical"),
    ("two failed runs never page", "ServiceDown", up_down("pacs"), list("UDDUDDUDDU"), [],
     "warning"),
    ("one failed run breaks the clearing streak", "ServiceDown", up_down("pacs"),
     list("UDDDUUUDUUUUU"), [(3, "firing"), (12, "resolved")], "warning"),
    ("never up since the start is down", "ServiceDown", up_down("pacs"), list("DDDD"),
     [(2, "firing")], "warning"),
    ("an info service is down at info", "ServiceDown", up_down("hospital-dns"), list("DDDUUUUU"),
     [(2, "firing"), (7, "resolved")], "info"),
    ("slow for three runs, clears under 80 % for five", "ServiceSlow", timed("his"),
     [100, 600, 700, 800, 450, 300, 300, 300, 300, 300], [(3, "firing"), (9, "resolved")],
     "warning"),
    ("slow hovering at slow_ms never fires", "ServiceSlow", timed("his"),
     [450, 510, 450, 520, 499, 600, 480, 700, 410], [], "warning"),
    ("slow hovering after firing never clears", "ServiceSlow", timed("his"),
     [600, 600, 600, 300, 300, 450, 300, 300, 300, 300], [(2, "firing")], "warning"),
    ("a failed run neither counts as slow nor as fast", "ServiceSlow", timed("his"),
     [600, 600, FAILED, 600, 600, 600, FAILED, 100, 100, 100, 100, FAILED, 100, 100, 100, 100,
      100], [(5, "firing"), (16, "resolved")], "warning"),
    ("a service without slow_ms is never slow", "ServiceSlow", timed("pacs"),
     [9000, 9000, 9000, 9000], [], "warning"),
    ("slow on an info service is info", "ServiceSlow", timed("hospital-dns"),
     [250, 250, 250, 10, 10, 10, 10, 10], [(2, "firing"), (7, "resolved")], "info"),
    ("certificate under 14 days, clears at 17.5 or more", "CertificateExpiring", cert("his"),
     [30, 13.9, 13.8, 13.7, 16, 20, 20, 20, 20, 20], [(3, "firing"), (9, "resolved")],
     "warning"),
    ("certificate hovering at cert_warn_days never fires", "CertificateExpiring", cert("his"),
     [14.1, 13.9, 15, 13.8, 17, 13.7, 14], [], "warning"),
    ("certificate expired", "CertificateExpiring", cert("his"), [-2, -2, -2],
     [(2, "firing")], "warning"),
]  # fmt: skip


def _feed(engine: AlertEngine, clock: Clock, samples: list[Sample], *, live: bool = True):
    out: list[tuple[int, Transition]] = []
    for index, sample in enumerate(samples):
        if live:
            clock.now = sample.time / NS + 1.0
        out.extend((index, t) for t in engine.observe(sample))
    return out


def _bad(alertname: str, value: Any) -> bool:
    if alertname == "ServiceDown":
        return value == "D"
    if alertname == "ServiceSlow":
        # his: 500 ms, hospital-dns: 200 ms; no case has a his run between the two.
        return value != FAILED and value >= 200
    return float(value) < 14


@dataclass(frozen=True)
class Case:
    """One row of CASES."""

    name: str
    alertname: str
    build: Any
    values: list[Any]
    expected: list[tuple[int, str]]
    severity: str

    def samples(self) -> list[Sample]:
        return [self.build(index, value) for index, value in enumerate(self.values)]


def _params(select: Any = lambda case: True) -> Any:
    cases = [Case(*case) for case in CASES if select(case)]
    return pytest.mark.parametrize("case", cases, ids=[case.name for case in cases])


@_params()
def test_live_episodes(case: Case) -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    samples = case.samples()
    seen = [(i, t) for i, t in _feed(engine, clock, samples) if t.alertname == case.alertname]
    assert [(i, t.state.value) for i, t in seen] == case.expected
    assert all(t.page for _, t in seen), "live transitions page"
    for index, transition in seen:
        target = samples[index].tags["target"]
        # Identity: the fixed labels and the service's kind, never a measured value.
        assert transition.labels == {
            "alertname": case.alertname, "site": SITE, "target": target,
            "severity": case.severity, "kind": KINDS[target],
        }  # fmt: skip
        notes = transition.annotations
        assert notes["parent_hospital"] == "hospital-central"
        assert notes["history"] == "false"
        if transition.state is AlertState.FIRING:
            # Dated at the first run of the streak that fired it, in sample time.
            first_bad = index
            while first_bad > 0 and _bad(case.alertname, case.values[first_bad - 1]):
                first_bad -= 1
            assert transition.starts_at == _at(first_bad)
            assert f"service {target} ({KINDS[target]})" in notes["summary"]


def test_a_failed_run_breaks_the_slow_streak_and_dates_the_next_one() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    samples = [timed("his")(i, v) for i, v in enumerate([600, 600, FAILED, 600, 600, 600])]
    fired = [t for _, t in _feed(engine, clock, samples) if t.alertname == "ServiceSlow"]
    assert [t.starts_at for t in fired] == [_at(3)]


@_params(lambda case: case[4])
def test_late_runs_update_history_but_never_page(case: Case) -> None:
    clock = Clock(T0 + 3600)  # everything arrives an hour after it was measured
    engine = _engine(clock)
    seen = [
        (i, t)
        for i, t in _feed(engine, clock, case.samples(), live=False)
        if t.alertname == case.alertname
    ]
    assert [(i, t.state.value) for i, t in seen] == case.expected
    assert not any(t.page for _, t in seen)
    assert engine.active_alerts() == []
    rows = [t.to_sample() for _, t in seen]
    assert rows[0].tags["alertname"] == case.alertname
    assert rows[0].time == seen[0][1].starts_at < _at(len(case.values))


@_params(lambda case: len(case[4]) == 2)
def test_backfilled_episode_behind_a_live_run_never_pages(case: Case) -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    _feed(engine, clock, [case.build(100, case.values[0])])  # fresh-first: the newest run first
    seen = [
        (i, t)
        for i, t in _feed(engine, clock, case.samples(), live=False)
        if t.alertname == case.alertname
    ]
    assert [(i, t.state.value) for i, t in seen] == case.expected
    assert not any(t.page for _, t in seen)
    assert all(t.annotations["history"] == "true" for _, t in seen)


@_params(lambda case: len(case[4]) == 2)
def test_restart_mid_episode_neither_repages_nor_loses_the_resolve(
    tmp_path: Path, case: Case
) -> None:
    (fired_at, _), (resolved_at, _) = case.expected
    samples = case.samples()
    store = AlertStateStore(tmp_path / "state.json")
    clock = Clock(T0)
    first = _engine(clock)
    before = [
        t for _, t in _feed(first, clock, samples[: fired_at + 1]) if t.alertname == case.alertname
    ]
    assert [t.state for t in before] == [AlertState.FIRING]
    assert store.save_if_dirty(first)

    second = _engine(clock)
    store.restore_into(second)
    assert [t.alertname for t in second.active_alerts()] == [case.alertname]
    rest = samples[fired_at + 1 :]
    after = [
        (i + fired_at + 1, t)
        for i, t in _feed(second, clock, rest)
        if t.alertname == case.alertname
    ]
    assert [(i, t.state.value, t.page) for i, t in after] == [(resolved_at, "resolved", True)]
    assert after[0][1].starts_at == before[0].starts_at
    assert after[0][1].labels == before[0].labels
    assert second.active_alerts() == []


def test_unknown_target_creates_no_state() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    empty = engine.snapshot()
    ghost = [
        Sample(
            measurement="service",
            tags={"site": SITE, "agent": AGENT, "target": "ghost", "kind": "http"},
            fields={"up": False, "duration_ms": 9000.0, "cert_days_left": -5.0, "error": "tls"},
            time=_at(index),
        )
        for index in range(8)
    ]
    elsewhere = {"site": "elsewhere", "agent": "x", "target": "his", "kind": "http"}
    other_site = [
        replace(run(index, "his", {"up": False, "error": "refused"}), tags=elsewhere)
        for index in range(8)
    ]
    assert _feed(engine, clock, ghost + other_site) == []
    assert engine.snapshot()["conditions"] == empty["conditions"] == {}


def test_a_row_without_up_is_not_judged() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    rows = [
        Sample(
            measurement="service",
            tags={"site": SITE, "agent": AGENT, "target": "his", "kind": "http"},
            fields={"duration_ms": 900.0},
            time=_at(index),
        )
        for index in range(5)
    ]
    assert _feed(engine, clock, rows) == []
    assert engine.snapshot()["conditions"] == {}


def test_measured_values_are_annotations_and_the_texts_say_what_failed() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    fields: dict[str, FieldValue] = {
        "up": False, "error": "status", "status_code": 503, "duration_ms": 23.456,
        "dns_ms": 0.5, "connect_ms": 1.25, "tls_ms": 9.0, "ttfb_ms": 20.0, "cert_days_left": 41.2,
    }  # fmt: skip
    samples = [run(index, "his", fields) for index in range(3)]
    fired = [t for _, t in _feed(engine, clock, samples) if t.alertname == "ServiceDown"]
    assert len(fired) == 1
    notes = fired[0].annotations
    assert {name: notes[name] for name in ("duration_ms", "status_code", "error", "tls_ms")} == {
        "duration_ms": "23.5",
        "status_code": "503",
        "error": "status",
        "tls_ms": "9.0",
    }
    assert notes["cert_days_left"] == "41.2"
    assert notes["summary"] == f"{SITE}: service his (http) down since 08:00:00 UTC (status 503)"
    assert notes["thresholds"] == "failed for 3 runs, clears after 5 up"
    assert "peak" not in notes  # `up` has no peak worth telling
    assert "503" not in "".join(fired[0].labels.values())
    assert fired[0].value == 0.0


def test_slow_and_expiring_texts() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    fields: dict[str, FieldValue] = {"duration_ms": 812.0, "cert_days_left": 9.54}
    out = _feed(engine, clock, [run(index, "his", fields) for index in range(3)])
    fired = {t.alertname: t for _, t in out}
    slow = fired["ServiceSlow"].annotations
    assert slow["summary"] == f"{SITE}: service his (http) slow since 08:00:00 UTC (812.0 ms)"
    assert (
        slow["thresholds"] == "duration >= 500 ms (slow_ms) for 3 runs, clears after 5 under 80 %"
    )
    assert slow["peak"] == "812"
    expiring = fired["CertificateExpiring"]
    assert expiring.annotations["summary"] == (
        f"{SITE}: service his (http) certificate expires in 9.5 days (since 08:00:00 UTC)"
    )
    assert expiring.value == pytest.approx(9.54)
    assert "peak" not in expiring.annotations
    expired = _feed(_engine(clock), clock, [cert("his")(i, -3.25) for i in range(3)])
    assert expired[0][1].annotations["summary"] == (
        f"{SITE}: service his (http) certificate expired 3.2 days ago"
    )


def test_severity_follows_the_site_file_between_episodes_never_within_one() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    down = up_down("his")
    fired = [t for _, t in _feed(engine, clock, [down(i, "D") for i in range(3)])]
    assert [(t.state.value, t.labels["severity"]) for t in fired] == [("firing", "critical")]
    snapshot = engine.snapshot()
    # The site file is reloaded with `his` no longer critical: a new engine, the state restored.
    reloaded = _engine(clock, _site({"his": "warning"}))
    reloaded.restore(snapshot)
    resolved = [t for _, t in _feed(reloaded, clock, [down(i, "U") for i in range(3, 8)])]
    # The open alert resolves with the labels it fired with, so Alertmanager matches it...
    assert [(t.state.value, t.labels["severity"]) for t in resolved] == [("resolved", "critical")]
    # ...and the next episode carries the new severity.
    again = [t for _, t in _feed(reloaded, clock, [down(i, "D") for i in range(8, 11)])]
    assert [(t.state.value, t.labels["severity"]) for t in again] == [("firing", "warning")]


def test_a_notification_carries_service_site_hospital_severity_values_since_and_dashboard() -> None:
    clock = Clock(T0)
    engine = _engine(clock)
    samples = [up_down("his")(i, "D") for i in range(3)]
    transition = next(t for _, t in _feed(engine, clock, samples) if t.alertname == "ServiceDown")
    dashboard = "https://grafana.example/d/fieldmon-site"
    body = describe(transition, dashboard)
    assert (body["site"], body["parent_hospital"], body["severity"]) == (
        SITE,
        "hospital-central",
        "critical",
    )
    assert body["labels"]["target"] == "his" and body["labels"]["kind"] == "http"
    assert body["measured"]["status_code"] == "503"
    assert body["since"] == "2027-01-15T08:00:00Z"
    assert body["dashboard"] == f"{dashboard}?site={SITE}&service=his"
    alert = AlertmanagerNotifier(
        AlertmanagerConfig(url="http://127.0.0.1:9093"), dashboard_url=dashboard
    ).payload(transition)
    assert alert["labels"] == {
        "alertname": "ServiceDown", "site": SITE, "target": "his", "severity": "critical",
        "kind": "http", "parent_hospital": "hospital-central",
    }  # fmt: skip
    assert alert["annotations"]["error"] == "status"  # type: ignore[index]
    mail = body_text(transition, body["dashboard"])
    assert "Link / target:   his" in mail and "status_code: 503" in mail
    assert headline(transition).startswith("[CRITICAL] pavilion-2: service his (http) down since")
