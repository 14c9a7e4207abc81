"""The outbox numbers envelopes durably and forgets them only on a collector's ack."""

from __future__ import annotations

from pathlib import Path

from fieldmon.agent.outbox import Outbox
from fieldmon.wire.codec import decode_envelope
from fieldmon.wire.models import Envelope, Sample


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
