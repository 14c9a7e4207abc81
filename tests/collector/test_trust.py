"""The collector trusts the topic, not the payload: what an agent's samples may store, what is
refused and counted, and that nothing refused reaches the status board or the alert engine."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fieldmon.collector.alerting import AlertRole
from fieldmon.collector.alerts import AlertEngine
from fieldmon.collector.board import StatusBoard
from fieldmon.collector.config import AlertingConfig
from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.ingest import IngestPipeline
from fieldmon.collector.inventory import Inventory, load_inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.collector.trust import EpisodeLog, Refusal, SiteTrust, screen
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.targets import target_rules
from fieldmon.core.wire import AGENT_MEASUREMENTS
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample
from fieldmon.core.wire.topics import samples_topic, status_topic

SITE, AGENT = "pavilion-2", "pavilion-2-pi1"
OTHER_SITE, OTHER_AGENT = "school-gym", "school-gym-pi1"
NOW = (time.time_ns() // 10**9 - 3600) * 10**9  # an hour ago: history, but not from the future


def _site(site: str = SITE, agent: str = AGENT, **extra: Any) -> SiteConfig:
    snmp = {"version": "2c", "community_file": "/nonexistent/community"}
    data: dict[str, Any] = {
        "site": site,
        "name": f"Hall {site}",
        "parent_hospital": "central",
        "agent": {"id": agent, "broker": {"host": "127.0.0.1"}},
        "links": [
            {"name": "parent-gw", "address": "127.0.0.1", "role": "parent"},
            {"name": "internet", "address": "127.0.0.2", "role": "internet"},
        ],
        "snmp_devices": [
            {"name": "ap-hall-a", "address": "127.0.0.1", "profile": "generic-ap", "snmp": snmp},
        ],
    }
    data.update(extra)
    return SiteConfig.model_validate(data, context={"check_files": False})


def _inventory() -> Inventory:
    return Inventory(
        sites={SITE: _site(), OTHER_SITE: _site(OTHER_SITE, OTHER_AGENT)},
    )


def _sample(measurement: str = "link", time: int = NOW, **tags: str) -> Sample:
    base = {"site": SITE, "agent": AGENT, "target": "parent-gw", "role": "parent"}
    merged = {key: value for key, value in {**base, **tags}.items() if value != "-"}
    fields: dict[str, Any] = {"sent": 10, "received": 10, "loss_pct": 0.0, "rtt_p95_ms": 5.0}
    if measurement == "ap":
        fields = {"up": 1, "clients": 3}
    return Sample(measurement=measurement, tags=merged, fields=fields, time=time)


def _envelope(samples: list[Sample], seq: int = 1) -> Envelope:
    return Envelope(site=SITE, agent=AGENT, seq=seq, sent_at=NOW, samples=samples)


TRUST = SiteTrust.build(_site())


# --- the rules --------------------------------------------------------------------------------


def test_every_agent_measurement_has_a_rule_and_no_other() -> None:
    assert target_rules(_site()).keys() == AGENT_MEASUREMENTS
    assert {"alert", "outage", "agent"}.isdisjoint(AGENT_MEASUREMENTS)


def test_a_valid_envelope_passes_whole_and_unchanged() -> None:
    samples = [
        _sample(),
        _sample(target="internet"),
        _sample("ap", target="-", role="-", device="ap-hall-a", radio="wlan0"),
        _sample("snmp_if", target="-", role="-", device="ap-hall-a", ifname="eth0"),
        _sample("host", target="-", role="-"),
        _sample("event", target="-", role="-", kind="outbox_dropping"),
        _sample("path", target="parent-gw", role="-", hop="3"),
    ]
    envelope = _envelope(samples)
    screened = screen(envelope, TRUST)
    assert screened.envelope is envelope
    assert screened.refused == {}


def test_missing_site_and_agent_tags_are_set_from_the_envelope() -> None:
    screened = screen(_envelope([_sample(site="-", agent="-")]), TRUST)
    assert screened.refused == {}
    [sample] = screened.envelope.samples
    assert sample.tags["site"] == SITE
    assert sample.tags["agent"] == AGENT


@pytest.mark.parametrize(
    ("sample", "reason", "detail"),
    [
        (_sample(site=OTHER_SITE), Refusal.TAG_MISMATCH, "tag site='school-gym'"),
        (_sample(agent=OTHER_AGENT), Refusal.TAG_MISMATCH, "tag agent='school-gym-pi1'"),
        (_sample(site=OTHER_SITE, agent="-"), Refusal.TAG_MISMATCH, "in an envelope from"),
        (_sample("alert"), Refusal.MEASUREMENT_NOT_ALLOWED, "measurement 'alert'"),
        (_sample("outage"), Refusal.MEASUREMENT_NOT_ALLOWED, "measurement 'outage'"),
        (_sample("agent"), Refusal.MEASUREMENT_NOT_ALLOWED, "measurement 'agent'"),
        (_sample("invented"), Refusal.MEASUREMENT_NOT_ALLOWED, "measurement 'invented'"),
        (_sample(target="fake-link"), Refusal.UNKNOWN_TARGET, "target='fake-link'"),
        (_sample(target="-"), Refusal.UNKNOWN_TARGET, "no target tag"),
        (_sample("ap", target="-", device="fake-ap", radio="x"), Refusal.UNKNOWN_TARGET,
         "device='fake-ap'"),
        (_sample("snmp_if", device="parent-gw", ifname="x"), Refusal.UNKNOWN_TARGET,
         "device='parent-gw'"),
        # This site has no `services:` section: no service row is its own.
        (_sample("service", target="his"), Refusal.UNKNOWN_TARGET, "target='his'"),
        (_sample("path", target="fake"), Refusal.UNKNOWN_TARGET, "target='fake'"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)  # fmt: skip
def test_a_sample_the_agent_may_not_store_is_refused_and_the_rest_kept(
    sample: Sample, reason: Refusal, detail: str
) -> None:
    good = _sample(time=NOW + 1)
    screened = screen(_envelope([_sample(time=NOW - 1), sample, good]), TRUST)
    assert screened.refused == {reason: 1}
    assert detail in screened.detail[reason]
    assert [s.time for s in screened.envelope.samples] == [NOW - 1, NOW + 1]


def test_service_targets_come_from_the_services_section() -> None:
    services = [
        {"name": "his", "kind": "http", "url": "https://his.example/health"},
        {"name": "dns", "kind": "dns", "server": "192.0.2.53", "query": "his.example"},
    ]
    trust = SiteTrust.build(_site(services=services))
    samples = [
        _sample("service", target="his", role="-", kind="http"),
        _sample("service", target="dns", role="-", kind="dns"),
        _sample("path", target="his", role="-", hop="1"),
        _sample("service", target="pacs", role="-", kind="tcp"),
    ]
    screened = screen(_envelope(samples), trust)
    assert screened.refused == {Refusal.UNKNOWN_TARGET: 1}
    assert [s.tags["target"] for s in screened.envelope.samples] == ["his", "dns", "his"]


# --- the log: once per episode ----------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_episode_is_logged_when_it_starts_and_when_it_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    log = EpisodeLog(logging.getLogger("test.episodes"), quiet=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.episodes"):
        started = [log.note(("k",), "forged rows", count=10, site=SITE) for _ in range(1000)]
        clock.now += 59
        log.sweep()
        assert log.note(("k",), "forged rows") is False
        clock.now += 61
        log.sweep()
        clock.now += 1
        assert log.note(("k",), "forged rows") is True  # a new episode
    assert started.count(True) == 1
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "forged rows (logged once until it stops for 60 s)",
        "forged rows: stopped; 10001 in 59 s",
        "forged rows (logged once until it stops for 60 s)",
    ]
    assert caplog.records[0].site == SITE  # type: ignore[attr-defined]


def test_the_episode_log_is_bounded() -> None:
    log = EpisodeLog(logging.getLogger("test.episodes"), quiet=60, max_open=3, clock=_Clock())
    for key in range(100):
        log.note(key, "problem")
    assert log.open_episodes == 4  # three keys and the catch-all


# --- ingest: refused samples are counted, never stored, never shown ---------------------------


@dataclass
class _Client:
    acked: list[int] = field(default_factory=list)
    published: list[tuple[str, bytes]] = field(default_factory=list)

    def ack(self, mid: int, _qos: int) -> None:
        self.acked.append(mid)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: object = None,
    ) -> None:
        self.published.append((topic, payload))


@dataclass
class _Link:
    client: _Client = field(default_factory=_Client)
    generation: int = 1


class _Writer:
    def __init__(self) -> None:
        self.stored: list[str] = []

    async def write(self, body: bytes, points: int) -> None:
        self.stored.extend(body.decode().split("\n"))


@dataclass
class _Message:
    topic: str
    payload: bytes
    mid: int = 1
    qos: int = 1


def _pipeline(tmp_path: Path) -> tuple[IngestPipeline, _Writer, CollectorMetrics, _Link]:
    writer, metrics, link = _Writer(), CollectorMetrics(), _Link()
    points = PointWriter(writer, metrics, DeadLetterFile(tmp_path / "dead.jsonl"))  # type: ignore[arg-type]
    pipeline = IngestPipeline(
        inventory=_inventory(),
        points=points,
        metrics=metrics,
        link=link,  # type: ignore[arg-type]
        batch_size=10_000,
        flush_interval=1.0,
        max_payload_bytes=1024 * 1024,
        max_deliveries=1000,
    )
    return pipeline, writer, metrics, link


def _refused(metrics: CollectorMetrics, reason: str) -> float:
    labels = {"site": SITE, "agent": AGENT, "reason": reason}
    return metrics.registry.get_sample_value("fieldmon_samples_refused_total", labels) or 0.0


FORGED = [
    _sample(site=OTHER_SITE, agent=OTHER_AGENT),  # a LinkDown row for another site
    _sample("alert", alertname="LinkDown", severity="critical"),
    _sample(target="invented-link"),
    _sample("ap", target="-", device="invented-ap", radio="wlan0"),
]


def test_ingest_stores_only_what_the_agent_may_store_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, writer, metrics, link = _pipeline(tmp_path)
    board = StatusBoard(pipeline.inventory)
    seen: list[Envelope] = []
    pipeline.on_accepted += [board.observe, seen.append]
    with caplog.at_level(logging.INFO, logger="fieldmon.collector.ingest"):
        for seq in range(50):
            samples = [*FORGED, _sample(time=NOW + seq)]
            pipeline.handle(_Message(samples_topic(SITE, AGENT), encode(_envelope(samples, seq))))
        asyncio.run(pipeline.flush())

    assert len(writer.stored) == 50
    assert all(line.startswith("link,agent=pavilion-2-pi1,") for line in writer.stored)
    assert all("site=pavilion-2," in line and "target=parent-gw" in line for line in writer.stored)
    assert _refused(metrics, "tag_mismatch") == 50
    assert _refused(metrics, "measurement_not_allowed") == 50
    assert _refused(metrics, "unknown_target") == 100
    assert metrics.registry.get_sample_value("fieldmon_samples_accepted_total") == 50
    # Acknowledged all the same: the agent must not re-send what can never be stored.
    assert len(link.client.acked) == 50
    # Only what is stored reaches the board and the alert engine.
    assert {len(envelope.samples) for envelope in seen} == {1}
    assert set(board.sites[SITE].links) == {"parent-gw", "internet"}
    assert board.sites[OTHER_SITE].last_seen is None
    # Logged once per (agent, reason), not once per sample.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert any("tag_mismatch" in message for message in warnings)


def test_a_reloaded_inventory_brings_its_own_allowed_targets(tmp_path: Path) -> None:
    pipeline, writer, metrics, _link = _pipeline(tmp_path)
    new_link = _sample(target="satellite", time=NOW)
    pipeline.handle(_Message(samples_topic(SITE, AGENT), encode(_envelope([new_link], 1))))
    assert _refused(metrics, "unknown_target") == 1
    # SIGHUP: the daemon loads site_configs again and hands ingest the new inventory.
    links = [{"name": "satellite", "address": "192.0.2.9", "role": "internet"}]
    pipeline.inventory = Inventory(sites={SITE: _site(links=links)})
    pipeline.handle(_Message(samples_topic(SITE, AGENT), encode(_envelope([new_link], 2))))
    asyncio.run(pipeline.flush())
    assert _refused(metrics, "unknown_target") == 1
    assert [line.split(" ")[0] for line in writer.stored] == [
        "link,agent=pavilion-2-pi1,role=parent,site=pavilion-2,target=satellite"
    ]


def test_rejected_envelopes_are_logged_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, _writer, metrics, _link = _pipeline(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fieldmon.collector.ingest"):
        for _ in range(200):
            pipeline.handle(_Message(samples_topic(SITE, AGENT), b"not json"))
            pipeline.handle(_Message(samples_topic("invented", AGENT), b"{}"))
    rejected = metrics.registry.get_sample_value(
        "fieldmon_envelopes_rejected_total", {"reason": "not_json"}
    )
    assert rejected == 200
    assert len(caplog.records) == 2


# --- the board and the engine create nothing for unknown targets -------------------------------


def test_the_engine_keeps_no_state_for_what_the_site_file_does_not_name() -> None:
    now = [NOW / 1e9]
    engine = AlertEngine({SITE: _site()}, AlertingConfig(), clock=lambda: now[0])
    # Nothing here passed ingest's screen: the engine holds the line on its own.
    for index in range(20):
        now[0] += 10
        at = int(now[0] * 1e9)
        lost = {"sent": 10, "received": 0, "loss_pct": 100.0}
        invented = [
            Sample(measurement="link", tags={"target": f"fake-{index}"}, fields=lost, time=at),
            Sample(
                measurement="ap",
                tags={"device": "fake-ap", "radio": "wlan0"},
                fields={"up": index % 2},
                time=at,
            ),
            Sample(
                measurement="event",
                tags={"kind": "path"},
                fields={"target": f"fake-{index}", "summary": "hop 3 loses 30 %"},
                time=at,
            ),
            Sample(
                measurement="host",
                tags={"agent": f"fake-agent-{index}"},
                fields={"undervoltage": True, "outbox_depth": 10**6, "outbox_dropped": index},
                time=at,
            ),
        ]
        envelope = Envelope(site=SITE, agent=AGENT, seq=index, sent_at=at, samples=invented)
        assert engine.observe_envelope(envelope) == []
    snapshot = engine.snapshot()
    assert snapshot["live"] == {}
    assert snapshot["conditions"] == {}
    assert engine.active_alerts() == []


def test_the_alert_role_on_its_own_subscription_sees_only_what_ingest_stores(
    tmp_path: Path,
) -> None:
    metrics = CollectorMetrics()
    store = DurableStore(
        PointWriter(_Writer(), metrics, DeadLetterFile(tmp_path / "dead.jsonl")),  # type: ignore[arg-type]
        metrics,
    )
    pages: list[Any] = []
    role = AlertRole(
        _inventory(),
        AlertingConfig(),
        store,
        tmp_path / "alert-state.json",
        max_payload_bytes=1024 * 1024,
        page=pages.append,
        max_time_ahead=10**9,
    )
    seen: list[Envelope] = []
    role.observers.append(seen.append)
    payload = encode(_envelope([*FORGED, _sample()]))
    role.handle_samples(_Message(samples_topic(SITE, AGENT), payload))  # type: ignore[arg-type]
    assert [[s.tags.get("target") for s in e.samples] for e in seen] == [["parent-gw"]]


def test_a_status_naming_another_agent_than_its_topic_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = CollectorMetrics()
    store = DurableStore(
        PointWriter(_Writer(), metrics, DeadLetterFile(tmp_path / "dead.jsonl")),  # type: ignore[arg-type]
        metrics,
    )
    role = AlertRole(
        _inventory(),
        AlertingConfig(offline_grace=0),
        store,
        tmp_path / "alert-state.json",
        max_payload_bytes=1024 * 1024,
        page=lambda _pages: None,
    )
    forged = b'{"state": "offline", "site": "school-gym", "agent": "school-gym-pi1"}'
    with caplog.at_level(logging.WARNING, logger="fieldmon.collector.alerting"):
        for _ in range(20):
            role.handle_status(_Message(status_topic(SITE, AGENT), forged))  # type: ignore[arg-type]
    assert role.engine.dirty is False  # no last will recorded for either site
    assert [r.getMessage() for r in caplog.records] == [
        "ignored status messages on fieldmon/v1/pavilion-2/pavilion-2-pi1/status: the payload "
        "names school-gym/school-gym-pi1 (logged once until it stops for 300 s)"
    ]


def test_two_sites_claiming_one_agent_id_keep_only_the_first(tmp_path: Path) -> None:
    def write(name: str, site: str) -> None:
        (tmp_path / f"{name}.yaml").write_text(
            f"site: {site}\nname: X\nparent_hospital: central\n"
            f"agent: {{id: shared-pi, broker: {{host: 127.0.0.1}}}}\n",
            encoding="utf-8",
        )

    write("a", "site-a")
    write("b", "site-b")
    inventory = load_inventory(tmp_path)
    assert list(inventory.sites) == ["site-a"]
    assert inventory.problems == [
        f"{tmp_path / 'b.yaml'}: agent id 'shared-pi' is already the agent of "
        f"{tmp_path / 'a.yaml'}; skipped (one login per site)"
    ]
