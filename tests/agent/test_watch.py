"""The agent's own judgement: links by the collector's rules, services, power, the broker link."""

from __future__ import annotations

from fieldmon.agent.watch import BrokerWatch, LinkWatch, PowerWatch, ServiceWatch
from fieldmon.core.linkstate import DEFAULT_THRESHOLDS, LinkState, Thresholds
from fieldmon.core.site.links import IcmpLinkConfig, LinkThresholds
from fieldmon.core.wire.models import Sample
from fieldmon.firmware_hooks.hooks import EventName

NS = 10**9
T0 = 1_800_000_000 * NS
WIRED = IcmpLinkConfig(
    name="parent-gw",
    address="192.0.2.1",
    role="parent",
    interval=10,
    interface="eth0",
    thresholds=LinkThresholds(loss_pct=10),
)
INTERNET = IcmpLinkConfig(name="internet", address="192.0.2.53", role="internet")
# One letter per round, as tests/core/test_linkstate.py: Good, Bad (answered), Lost.
FIELDS = {
    "G": {"sent": 10, "received": 10, "loss_pct": 0.0, "rtt_p95_ms": 20.0, "jitter_ms": 1.0},
    "B": {"sent": 10, "received": 7, "loss_pct": 30.0, "rtt_p95_ms": 20.0, "jitter_ms": 1.0},
    "L": {"sent": 10, "received": 0, "loss_pct": 100.0},
}


def _round(index: int, kind: str, target: str = "parent-gw") -> Sample:
    return Sample(
        measurement="link",
        tags={"site": "s", "agent": "a", "target": target, "role": "parent"},
        fields=FIELDS[kind],
        time=T0 + index * 10 * NS,
    )


def _feed(watch: LinkWatch, pattern: str, target: str = "parent-gw") -> list[tuple[int, str]]:
    """(round index, event) for each event the rounds of `pattern` give."""
    out = []
    for index, kind in enumerate(pattern.replace(" ", "")):
        out += [(index, seen.event.value) for seen in watch.observe(_round(index, kind, target))]
    return out


def test_link_events_follow_the_collector_s_state_machine() -> None:
    watch = LinkWatch([WIRED, INTERNET])
    # Announced once established (5 good rounds), then every change of state.
    assert _feed(watch, "GGGGG BBB LL GGGGG") == [
        (4, "link_up"),
        (7, "link_degraded"),
        (9, "link_down"),
        (14, "link_up"),
    ]
    assert watch.state("parent-gw") is LinkState.OK


def test_a_link_down_from_the_start_is_announced_as_down() -> None:
    watch = LinkWatch([WIRED])
    events = [seen for index in range(3) for seen in watch.observe(_round(index, "L"))]
    [down] = events
    assert down.event is EventName.LINK_DOWN
    assert down.target == "parent-gw"
    assert down.details["previous"] is None  # the first judgement since the agent started
    assert down.details["since"] == T0  # dated at the first lost round, as the collector does
    assert down.details["interface"] == "eth0"
    assert down.details["loss_pct"] == 100.0


def test_a_link_s_own_thresholds_win_over_the_defaults() -> None:
    watch = LinkWatch([WIRED, INTERNET])
    assert watch.thresholds("parent-gw") == Thresholds(10.0, 150.0, 30.0)
    assert watch.thresholds("internet") == DEFAULT_THRESHOLDS
    # 7 % loss: bad against the default 5 %, fine against the wired link's own 10 %.
    seven = {"sent": 100, "received": 93, "loss_pct": 7.0, "rtt_p95_ms": 5.0}
    for target in ("parent-gw", "internet"):
        for index in range(3):
            sample = _round(index, "G", target)
            watch.observe(Sample(**{**_as_dict(sample), "fields": seven}))
    assert watch.state("parent-gw") is LinkState.OK
    assert watch.state("internet") is LinkState.DEGRADED


def _as_dict(sample: Sample) -> dict:
    return {
        "measurement": sample.measurement,
        "tags": sample.tags,
        "fields": sample.fields,
        "time": sample.time,
    }


def test_other_rows_unknown_links_and_old_rounds_are_ignored() -> None:
    watch = LinkWatch([WIRED])
    assert watch.observe(_round(0, "L", target="not-in-the-site-file")) == []
    host = Sample(measurement="host", tags={}, fields={"cpu_pct": 1.0}, time=T0)
    assert watch.observe(host) == []
    watch.observe(_round(5, "L"))
    assert watch.observe(_round(4, "L")) == []  # older than the newest judged: no news
    assert watch.state("parent-gw") is LinkState.OK


def test_a_reload_keeps_the_judgement_of_unchanged_links() -> None:
    watch = LinkWatch([WIRED, INTERNET])
    _feed(watch, "LL")
    _feed(watch, "LL", target="internet")
    moved = INTERNET.model_copy(update={"address": "192.0.2.99"})
    fresh = LinkWatch([WIRED, moved])
    fresh.adopt(watch)
    assert fresh.state("parent-gw") is LinkState.DOWN
    assert fresh.state("internet") is LinkState.OK  # a new far end is judged afresh


def test_service_events_are_debounced_like_links() -> None:
    watch = ServiceWatch()

    def run(index: int, up: bool) -> list[str]:
        sample = Sample(
            measurement="service",
            tags={"target": "his", "kind": "http"},
            fields={"up": up, "duration_ms": 12.0},
            time=T0 + index * NS,
        )
        return [seen.event.value for seen in watch.observe(sample)]

    pattern = [False, False, True, False, False, False, False, True, True, True, True, True]
    events = [(index, run(index, up)) for index, up in enumerate(pattern)]
    assert [(index, found) for index, found in events if found] == [
        (5, ["service_down"]),  # three failed runs in a row
        (11, ["service_up"]),  # five good ones
    ]
    # The seam for a probe that judges for itself.
    [seen] = (
        watch.result("pacs", False, T0)
        + watch.result("pacs", False, T0)
        + watch.result("pacs", False, T0)
    )
    assert (seen.event, seen.target) == (EventName.SERVICE_DOWN, "pacs")


def test_power_fires_when_under_voltage_or_throttling_starts() -> None:
    watch = PowerWatch()

    def host(undervoltage: bool, throttled: bool) -> list[dict]:
        sample = Sample(
            measurement="host",
            tags={},
            fields={"undervoltage": undervoltage, "throttled": throttled},
            time=T0,
        )
        return [seen.details for seen in watch.observe(sample)]

    assert host(False, False) == []
    assert host(True, False) == [{"undervoltage": True, "throttled": False}]
    assert host(True, True) == []  # the same episode
    assert host(False, False) == []
    assert host(False, True) == [{"undervoltage": False, "throttled": True}]


def test_the_broker_link_is_debounced() -> None:
    watch = BrokerWatch(0.0, down_after=30, up_after=10)
    timeline = [(0, False), (5, True), (20, False), (25, True), (40, False), (69, False)]
    timeline += [(70, False), (75, True), (80, False), (100, False), (101, True), (111, True)]
    events = [(now, watch.observe(up, now)) for now, up in timeline]
    assert [(now, event) for now, event in events if event] == [
        (70, EventName.BROKER_DOWN),  # down since 40
        (111, EventName.BROKER_UP),  # back since 101; the 75-80 blip said nothing
    ]
    assert watch.held(120) == 19


def test_never_connected_since_the_start_is_broker_down() -> None:
    watch = BrokerWatch(100.0, down_after=30, up_after=10)
    assert watch.observe(False, 129) is None
    assert watch.observe(False, 130) is EventName.BROKER_DOWN
    assert watch.observe(False, 200) is None  # once per outage
