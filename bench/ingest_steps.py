"""bench/ingest_steps: the collector's CPU per sample, step by step, on bench/ingest's envelopes.

In one process, no broker and no database: the same realistic envelopes bench/ingest sends are
replayed through each step the collector takes for a samples message, each timed alone (best of
`--repeat` passes, CPU time), then through `IngestPipeline.handle` and `flush` whole (with the
status board, and with the alert engine too, as `roles: [ingest, alerts]` runs them) against a
writer that only builds the request body. What bench/ingest adds on top is the MQTT client
(paho's packet parsing, acks) and the HTTP write to influxd.

Run: .venv/bin/python -m bench.ingest_steps [--envelopes N] [--samples-per-envelope K]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench._report import print_result
from bench.ingest import SITE, TOPIC, realistic_envelopes, site_file_text
from fieldmon.collector.alerting import AlertRole
from fieldmon.collector.board import StatusBoard
from fieldmon.collector.config import AlertingConfig
from fieldmon.collector.deadletter import DeadLetterFile
from fieldmon.collector.fastdecode import decode_envelope
from fieldmon.collector.ingest import IngestPipeline, check_identity, split_by_clock
from fieldmon.collector.inventory import Inventory, load_inventory
from fieldmon.collector.metrics import CollectorMetrics
from fieldmon.collector.pointwriter import DurableStore, PointWriter
from fieldmon.collector.seqtrack import SeqTracker
from fieldmon.collector.storage.lineprotocol import LineEncoder
from fieldmon.collector.trust import screen
from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope


@dataclass
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int = 1


@dataclass
class _Client:
    """What ingest calls on paho's client: counted, not sent."""

    acks: int = 0
    published: int = 0

    def ack(self, _mid: int, _qos: int) -> None:
        self.acks += 1

    def publish(self, *_args: object, **_kwargs: object) -> None:
        self.published += 1


@dataclass
class _Link:
    client: _Client = field(default_factory=_Client)
    generation: int = 1


class _BodyWriter:
    """Takes every write: the request body is built by PointWriter, then dropped."""

    async def write(self, body: bytes, points: int) -> None:
        if not body or points <= 0:
            raise RuntimeError("an empty write")


def _best(passes: int, run: Callable[[], object]) -> float:
    """The least CPU seconds of `passes` runs of `run` (the noise of a shared host only adds)."""
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def _pipeline(inventory: Inventory, tmp: Path, alerts: bool) -> tuple[IngestPipeline, _Link]:
    metrics = CollectorMetrics()
    points = PointWriter(_BodyWriter(), metrics, DeadLetterFile(tmp / "dead.jsonl"))  # type: ignore[arg-type]
    store = DurableStore(points, metrics)
    link = _Link()
    pipeline = IngestPipeline(
        inventory=inventory,
        points=points,
        metrics=metrics,
        link=link,  # type: ignore[arg-type]
        batch_size=5000,
        flush_interval=1.0,
        max_payload_bytes=4 * 1024 * 1024,
        max_deliveries=1000,
        seqs=SeqTracker(3600.0),
        store=store,
    )
    board = StatusBoard(inventory)
    pipeline.on_accepted.append(board.observe)
    if alerts:
        role = AlertRole(
            inventory,
            AlertingConfig(),
            store,
            tmp / "alert-state.json",
            max_payload_bytes=4 * 1024 * 1024,
            page=lambda _transitions: None,
        )
        pipeline.on_accepted.append(role.observe_envelope)
    return pipeline, link


def _drain(pipeline: IngestPipeline, messages: list[_Message]) -> None:
    """Every message through `handle`, flushing whenever the batch would be (batch_size)."""

    async def run() -> None:
        for message in messages:
            pipeline.handle(message)
            if pipeline.pending_points >= 5000:
                await pipeline.flush()
        await pipeline.flush()

    asyncio.run(run())


def main() -> None:
    """Time each step and the whole handler; print µs per sample."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envelopes", type=int, default=300)
    parser.add_argument("--samples-per-envelope", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="passes per step; the best counts")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the alert engine pages on the synthetic links' RTTs
    envelopes = realistic_envelopes(args.envelopes, args.samples_per_envelope)
    payloads = [encode(envelope) for envelope in envelopes]
    samples = args.envelopes * args.samples_per_envelope
    per_sample = 1e6 / samples

    with tempfile.TemporaryDirectory(prefix="fieldmon-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "sites").mkdir()
        (workdir / "sites" / f"{SITE}.yaml").write_text(site_file_text(broker_port=1883))
        inventory = load_inventory(workdir / "sites")
        trust = inventory.trust[SITE]
        decoded: list[Envelope] = [decode_envelope(p) for p in payloads]  # type: ignore[misc]
        encoder = LineEncoder()
        board = StatusBoard(inventory)
        now_ns = time.time_ns()
        lines = [encoder.encode(s) for envelope in decoded for s in envelope.samples]
        steps = {
            "decode_envelope": lambda: [decode_envelope(p) for p in payloads],
            "check_identity_and_screen": lambda: [
                (check_identity(e, TOPIC, inventory), screen(e, trust)) for e in decoded
            ],
            "split_by_clock": lambda: [split_by_clock(e, now_ns, 600 * 10**9) for e in decoded],
            "line_encode": lambda: [encoder.encode(s) for e in decoded for s in e.samples],
            "status_board_observe": lambda: [board.observe(e) for e in decoded],
            "request_body": lambda: [
                "\n".join(lines[i : i + 5000]).encode() for i in range(0, len(lines), 5000)
            ],
        }
        result: dict[str, object] = {
            "envelopes": args.envelopes,
            "samples_per_envelope": args.samples_per_envelope,
        }
        for name, run in steps.items():
            result[f"{name}_us"] = round(_best(args.repeat, run) * per_sample, 2)

        for alerts in (False, True):
            label = "handle_and_flush_with_alerts_us" if alerts else "handle_and_flush_ingest_us"
            best = float("inf")
            for attempt in range(args.repeat):
                pipeline, link = _pipeline(inventory, workdir, alerts)
                # Fresh seqs per pass: each pass is a first delivery, as in bench/ingest.
                messages = [
                    _Message(TOPIC, payload, mid=attempt * len(payloads) + index + 1)
                    for index, payload in enumerate(payloads)
                ]
                started = time.process_time()
                _drain(pipeline, messages)
                best = min(best, time.process_time() - started)
                if link.client.acks != len(messages):
                    raise RuntimeError(f"acknowledged {link.client.acks} of {len(messages)}")
            result[label] = round(best * per_sample, 2)
    print_result(result)


if __name__ == "__main__":
    main()
