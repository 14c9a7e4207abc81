"""The outbox numbers envelopes durably and forgets them only on a collector's ack."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fieldmon.agent.outbox as outbox_module
from fieldmon.agent.daemon import build_pipeline
from fieldmon.agent.outbox import PAGE_SIZE, Outbox, Priority
from fieldmon.agent.probes.host import outbox_age_s
from fieldmon.core.mqtt.link import MqttLink, new_client
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.wire.codec import decode_envelope
from fieldmon.core.wire.models import Envelope, Sample


def _sample(n: int) -> Sample:
    return Sample(
        measurement="link",
        tags={"target": f"t{n}"},
        fields={"loss_pct": float(n)},
        time=1_700_000_000_000_000_000 + n,
    )


def test_seq_increases_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, site="s", agent="a")
    seqs = [outbox.append([_sample(i)]).seq for i in range(3)]
    outbox.close()
    reopened = Outbox(path, site="s", agent="a")
    assert seqs == [0, 1, 2]
    assert reopened.append([_sample(9)]).seq == 3
    assert reopened.depth() == 4


def test_seq_is_not_reused_after_everything_was_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    for i in range(5):
        outbox.append([_sample(i)])
    assert outbox.acknowledge([(0, 4)]) == 5
    assert outbox.depth() == 0
    assert outbox.append([_sample(5)]).seq == 5


def _pragma(path: Path, name: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


def test_a_new_file_uses_small_pages_in_wal_mode_without_secure_delete(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    outbox.append([_sample(1)])
    assert outbox._db.execute("PRAGMA secure_delete").fetchone()[0] == 0
    outbox.close()
    assert _pragma(tmp_path / "o.db", "page_size") == PAGE_SIZE == 512
    assert _pragma(tmp_path / "o.db", "journal_mode") == "wal"


def test_a_small_file_with_other_pages_is_rebuilt_keeping_rows_and_seq(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "o.db"
    monkeypatch.setattr(outbox_module, "PAGE_SIZE", 4096)  # as an earlier version made them
    old = Outbox(path, site="s", agent="a")
    for i in range(20):
        old.append([_sample(i)])
    old.acknowledge([(0, 4)])
    old.close()
    assert _pragma(path, "page_size") == 4096
    monkeypatch.undo()

    reopened = Outbox(path, site="s", agent="a")
    assert reopened.depth() == 15
    assert reopened.append([_sample(99)]).seq == 20
    assert [s.seq for s in reopened.pending(100)] == list(range(5, 21))
    reopened.close()
    assert _pragma(path, "page_size") == 512
    assert _pragma(path, "journal_mode") == "wal"


def test_a_big_file_with_other_pages_keeps_them(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "o.db"
    monkeypatch.setattr(outbox_module, "PAGE_SIZE", 4096)
    old = Outbox(path, site="s", agent="a")
    old.append([_sample(1)])
    old.close()
    monkeypatch.setattr(outbox_module, "PAGE_SIZE", 512)
    monkeypatch.setattr(outbox_module, "_REPAGE_MAX_BYTES", 0)  # "big": a real backlog
    reopened = Outbox(path, site="s", agent="a")
    assert reopened.depth() == 1
    reopened.close()
    assert _pragma(path, "page_size") == 4096


def test_payload_is_a_valid_envelope_carrying_its_seq(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="pavilion-2", agent="pi1")
    stored = outbox.append([_sample(1), _sample(2)])
    envelope = decode_envelope(stored.payload)
    assert isinstance(envelope, Envelope)
    assert (envelope.site, envelope.agent, envelope.seq) == ("pavilion-2", "pi1", stored.seq)
    assert [s.tags["target"] for s in envelope.samples] == ["t1", "t2"]


def test_pending_is_oldest_first_and_skips_in_flight(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    for i in range(10):
        outbox.append([_sample(i)])
    outbox.acknowledge([(2, 3), (7, 7)])
    assert [e.seq for e in outbox.pending(4)] == [0, 1, 4, 5]
    assert [e.seq for e in outbox.pending(4, exclude={0, 4})] == [1, 5, 6, 8]


def test_acknowledging_unknown_seqs_is_harmless(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    outbox.append([_sample(0)])
    assert outbox.acknowledge([(5, 100)]) == 0
    assert outbox.depth() == 1


def test_waiting_samples_follow_appends_acks_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    outbox = Outbox(path, site="s", agent="a")
    outbox.append([_sample(1), _sample(2), _sample(3)])
    outbox.append([_sample(4)])
    assert outbox.waiting_samples == 4
    outbox.acknowledge([(0, 0)])
    assert outbox.waiting_samples == 1
    outbox.close()
    assert Outbox(path, site="s", agent="a").waiting_samples == 1


def test_oldest_waiting_envelope_age_follows_appends_acks_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    outbox = Outbox(path, site="s", agent="a")
    assert outbox.oldest_created_ns is None
    assert outbox_age_s(outbox.oldest_created_ns, time.time_ns()) == 0.0
    first = outbox.append([_sample(1)])
    created = [outbox.oldest_created_ns]
    second = outbox.append([_sample(2)])
    assert outbox.oldest_created_ns == created[0]  # the newer one does not move it
    outbox.acknowledge([(first.seq, first.seq)])
    assert outbox.oldest_created_ns is not None and outbox.oldest_created_ns > created[0]
    later = outbox.oldest_created_ns
    outbox.close()
    reopened = Outbox(path, site="s", agent="a")
    assert reopened.oldest_created_ns == later
    assert outbox_age_s(later, later + 90 * 10**9) == 90.0
    reopened.acknowledge([(second.seq, second.seq)])
    assert reopened.oldest_created_ns is None


def _link(n: int) -> Sample:
    return _sample(n)


def _event(n: int) -> Sample:
    return Sample(
        measurement="alert",
        tags={"alertname": "LinkDown", "target": f"t{n}"},
        fields={"state": "firing"},
        time=1_700_000_000_000_000_000 + n,
    )


def test_events_are_classed_and_selected_before_bulk(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    for i in range(4):
        outbox.append([_link(i)])
    event = outbox.append([_event(4)])
    assert event.priority == Priority.EVENT
    outbox.append([_link(5)])
    # Everything is backlog (live_from beyond the end): events first, then bulk oldest first,
    # one class per run (one topic per message).
    take = {"live_from": 100, "max_envelopes": 3, "max_bytes": 10**6}
    assert [e.seq for e in outbox.take_backlog(**take)] == [4]
    assert [e.seq for e in outbox.take_backlog(**take)] == [0, 1, 2]
    assert [e.seq for e in outbox.take_backlog(**take)] == [3, 5]
    assert outbox.take_backlog(**take) == []
    assert outbox.in_flight == set(range(6))


def test_live_envelopes_go_newest_first_skipping_those_in_flight(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    for i in range(10):
        outbox.append([_link(i)])
    outbox.in_flight.add(9)
    assert [e.seq for e in outbox.select_live(5, live_from=7)] == [8, 7]
    assert outbox.select_live(5, live_from=7) == []
    outbox.append([_event(10)])
    assert [e.seq for e in outbox.select_live(5, live_from=7)] == [10]
    # The backlog is what lies below the live set, whatever is in flight up there.
    assert [e.seq for e in outbox.take_backlog(live_from=7, max_envelopes=10, max_bytes=10**6)] == [
        0, 1, 2, 3, 4, 5, 6
    ]  # fmt: skip


def test_a_backlog_run_is_bounded_by_count_and_bytes_but_takes_at_least_one(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    stored = [outbox.append([_link(i)] * (1 + i % 3)) for i in range(10)]
    size = [len(e.payload) for e in stored]
    run = outbox.take_backlog(live_from=10, max_envelopes=100, max_bytes=size[0] + size[1])
    assert [e.seq for e in run] == [0, 1]
    assert [(e.payload, e.samples) for e in run] == [(e.payload, e.samples) for e in stored[:2]]
    assert [e.seq for e in outbox.take_backlog(live_from=10, max_envelopes=100, max_bytes=1)] == [2]
    assert [e.seq for e in outbox.take_backlog(live_from=10, max_envelopes=3, max_bytes=10**6)] == [
        3, 4, 5
    ]  # fmt: skip


def test_a_released_backlog_envelope_is_taken_again_and_one_marked_alone_by_itself(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    for i in range(8):
        outbox.append([_link(i)])
    take = {"live_from": 8, "max_envelopes": 4, "max_bytes": 10**6}
    assert [e.seq for e in outbox.take_backlog(**take)] == [0, 1, 2, 3]
    outbox.acknowledge([(0, 0), (2, 2)])
    outbox.release([1, 3])  # the ack timed out for those
    # 3 went unacknowledged in a joined message: it goes alone; the others join around it.
    alone = {3}
    assert [e.seq for e in outbox.take_backlog(**take, alone=alone)] == [1]
    assert [e.seq for e in outbox.take_backlog(**take, alone=alone)] == [3]
    assert [e.seq for e in outbox.take_backlog(**take, alone=alone)] == [4, 5, 6, 7]


def test_fresh_from_takes_recent_envelopes_and_at_least_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    outbox = Outbox(path, site="s", agent="a")
    assert outbox.fresh_from(0) == 0  # empty: whatever comes next is live
    for i in range(6):
        outbox.append([_link(i)])
    # Back-date the first four, as if they had waited through an outage.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE envelopes SET created_ns = created_ns - 3600000000000 WHERE seq < 4")
    since = time.time_ns() - 60_000_000_000
    assert outbox.fresh_from(since) == 4
    outbox.acknowledge([(4, 5)])
    assert outbox.fresh_from(since) == 3  # nothing recent: the newest alone is live


def _simulate_cap(sizes: list[int], cap: int) -> list[int]:
    """Indices that survive when the oldest is dropped until each new one fits."""
    kept: list[int] = []
    for index, size in enumerate(sizes):
        while kept and sum(sizes[i] for i in kept) + size > cap:
            kept.pop(0)
        kept.append(index)
    return kept


def test_cap_drops_the_oldest_bulk_counts_exactly_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    probe = Outbox(tmp_path / "size.db", site="s", agent="a")
    size = len(probe.append([_link(1), _link(2), _link(3)]).payload)
    cap = size * 5 + size // 2
    outbox = Outbox(path, site="s", agent="a", max_bytes=cap)
    stored = [outbox.append([_link(i), _link(i + 1), _link(i + 2)]) for i in range(20)]
    kept = _simulate_cap([len(e.payload) for e in stored], cap)
    dropped = 20 - len(kept)
    assert dropped == 15
    assert (outbox.dropped_envelopes, outbox.dropped_samples) == (dropped, dropped * 3)
    assert [e.seq for e in outbox.pending(100)] == [stored[i].seq for i in kept]
    assert outbox.pending(100)[-1].seq == stored[-1].seq
    assert outbox.stored_bytes <= cap
    assert outbox.waiting_samples == len(kept) * 3
    outbox.close()
    reopened = Outbox(path, site="s", agent="a", max_bytes=cap)
    assert (reopened.dropped_envelopes, reopened.dropped_samples) == (15, 45)


def test_cap_keeps_events_while_bulk_remains(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "size.db", site="s", agent="a")
    size = len(probe.append([_link(1)]).payload)
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a", max_bytes=size * 4)
    event = outbox.append([_event(0)])
    for i in range(1, 10):
        outbox.append([_link(i)])
    seqs = [e.seq for e in outbox.pending(100)]
    assert seqs[0] == event.seq
    assert seqs[-1] == 9
    assert outbox.dropped_envelopes == 10 - len(seqs)


def test_full_disk_drops_the_oldest_and_retries(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a")
    big = [_link(i) for i in range(200)]
    # SQLite's own page limit gives the real SQLITE_FULL "database or disk is full" error.
    (pages,) = outbox._db.execute("PRAGMA page_count").fetchone()
    outbox._db.execute(f"PRAGMA max_page_count = {pages + 40}")
    appended = [outbox.append(big) for _ in range(60)]
    assert outbox.dropped_envelopes > 0
    assert outbox.depth() + outbox.dropped_envelopes == len(appended)
    assert outbox.dropped_samples == outbox.dropped_envelopes * 200
    assert outbox.pending(1000)[-1].seq == appended[-1].seq


def test_corrupt_file_is_moved_aside_and_seq_does_not_go_backwards(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    outbox = Outbox(path, site="s", agent="a")
    last = [outbox.append([_link(i)]) for i in range(5)][-1]
    outbox.close()
    for leftover in tmp_path.glob("o.db-*"):
        leftover.unlink()
    path.write_bytes(b"this is not an SQLite database, just garbage " * 200)
    fresh = Outbox(path, site="s", agent="a")
    assert fresh.moved_aside is not None
    assert fresh.moved_aside.read_bytes().startswith(b"this is not")
    assert fresh.depth() == 0
    assert fresh.append([_link(9)]).seq > last.seq


def test_corrupt_file_without_seq_reservation_restarts_from_a_time_base(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"\x00garbage" * 512)
    before_ms = time.time_ns() // 1_000_000
    outbox = Outbox(path, site="s", agent="a")
    assert outbox.moved_aside is not None and outbox.moved_aside.exists()
    assert outbox.append([_link(1)]).seq >= before_ms


def test_a_drop_episode_is_reported_once_and_ends_when_acks_make_room(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "size.db", site="s", agent="a")
    size = len(probe.append([_link(1)]).payload)
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a", max_bytes=size * 4)
    stored = [outbox.append([_link(i)]) for i in range(4)]
    assert not outbox.take_drop_start()
    stored += [outbox.append([_link(i)]) for i in range(4, 12)]
    assert outbox.dropping
    assert outbox.take_drop_start()
    assert not outbox.take_drop_start()  # still the same episode, however many drops follow
    assert outbox.dropped_envelopes == 12 - outbox.depth()
    # Acks that leave the outbox at half the cap end the episode; the next drop is news.
    before = outbox.dropped_envelopes
    kept = [e.seq for e in outbox.pending(100)]
    outbox.acknowledge([(kept[0], kept[0])])
    assert outbox.dropping  # 3/4 of the cap: still draining
    outbox.acknowledge([(kept[1], kept[1])])
    assert not outbox.dropping
    while outbox.dropped_envelopes == before:
        outbox.append([_link(20)])
    assert outbox.take_drop_start()


def test_an_ack_that_leaves_the_outbox_near_the_cap_keeps_the_episode(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "size.db", site="s", agent="a")
    size = len(probe.append([_link(1)]).payload)
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a", max_bytes=size * 20)
    stored = [outbox.append([_link(i)]) for i in range(25)]
    assert outbox.take_drop_start()
    outbox.acknowledge([(stored[-1].seq, stored[-1].seq)])  # 19 of 20 left: still full
    assert outbox.dropping
    outbox.append([_link(30)])
    outbox.append([_link(31)])
    assert not outbox.take_drop_start()


def test_envelopes_in_flight_are_spared_by_the_cap(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "size.db", site="s", agent="a")
    size = len(probe.append([_link(1)]).payload)
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a", max_bytes=size * 5)
    stored = [outbox.append([_link(i)]) for i in range(5)]
    # The sender takes the two oldest (published, awaiting acks).
    chosen = outbox.take_backlog(live_from=100, max_envelopes=2, max_bytes=10**6)
    assert [e.seq for e in chosen] == [stored[0].seq, stored[1].seq]
    # Their bytes do not count against the cap: two more fit without a drop.
    outbox.append([_link(5)])
    outbox.append([_link(6)])
    assert outbox.dropped_envelopes == 0
    # Past that, the oldest envelope not in flight goes.
    outbox.append([_link(7)])
    kept = [e.seq for e in outbox.pending(100)]
    assert stored[0].seq in kept and stored[1].seq in kept
    assert stored[2].seq not in kept
    assert outbox.dropped_envelopes == 1
    # Once acknowledged or released they are ordinary again.
    outbox.acknowledge([(stored[0].seq, stored[0].seq)])
    outbox.release([stored[1].seq])
    assert outbox.in_flight == set()


def test_a_fresh_envelope_is_not_dropped_because_every_older_one_is_in_flight(
    tmp_path: Path,
) -> None:
    # After a reconnect the sender's window can hold the whole (capped) outbox; the round measured
    # next must wait for acks, not be dropped as "the oldest envelope not in flight".
    probe = Outbox(tmp_path / "size.db", site="s", agent="a")
    size = len(probe.append([_link(1)]).payload)
    outbox = Outbox(tmp_path / "o.db", site="s", agent="a", max_bytes=size * 4)
    stored = [outbox.append([_link(i)]) for i in range(4)]
    outbox.select_live(32, live_from=stored[-1].seq)
    outbox.take_backlog(live_from=stored[-1].seq, max_envelopes=32, max_bytes=10**6)
    assert outbox.in_flight == {e.seq for e in stored}
    fresh = [outbox.append([_link(i)]) for i in range(4, 7)]
    assert outbox.dropped_envelopes == 0
    assert [e.seq for e in outbox.pending(100)] == [e.seq for e in stored + fresh]
    # The acks free the room; the cap holds again for what is not in flight.
    outbox.acknowledge([(stored[0].seq, stored[-1].seq)])
    outbox.append([_link(8)])
    outbox.append([_link(9)])
    assert outbox.dropped_envelopes == 1
    assert fresh[0].seq not in [e.seq for e in outbox.pending(100)]


def _site(path: Path) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "site": "s",
            "name": "S",
            "parent_hospital": "h",
            "agent": {"id": "a", "broker": {"host": "127.0.0.1"}, "outbox": {"path": str(path)}},
        }
    )


def test_a_corrupt_file_and_a_drop_episode_each_become_one_event_row(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"\x00garbage" * 512)
    config = _site(path)

    async def wire() -> list[Sample]:
        disk = ThreadPoolExecutor(max_workers=1)
        outbox = Outbox(path, site="s", agent="a", max_bytes=2000)
        link = MqttLink(new_client(config.agent.broker, client_id="a"), config.agent.broker,
                        asyncio.get_running_loop())  # fmt: skip
        _sender, batcher = build_pipeline(config, outbox, link, disk)
        for i in range(30):
            batcher.add([_link(i)])
            await batcher.flush()
        disk.shutdown()
        return [
            sample
            for envelope in outbox.pending(1000)
            for sample in decode_envelope(envelope.payload).samples  # type: ignore[union-attr]
            if sample.measurement == "event"
        ]

    events = asyncio.run(wire())
    assert [event.tags["kind"] for event in events] == ["outbox_corrupt", "outbox_dropping"]
    assert "moved it to" in str(events[0].fields["message"])
    assert events[1].fields["dropped_samples"] == 1
