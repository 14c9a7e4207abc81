"""The agent's on-disk outbox: every Envelope is committed here before it is published.

An envelope leaves the outbox only when a collector's `ack` names its seq (a broker PUBACK
only means "in flight"). `seq` is allocated in the same transaction that stores the envelope,
so it survives restarts and is never reused.

Durability: SQLite in WAL mode with synchronous=NORMAL. A committed envelope survives the
agent being killed at any moment (the WAL is on disk); on a power cut the transactions since
the last WAL checkpoint's fsync may be rolled back, never corrupted.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from fieldmon.wire.codec import encode
from fieldmon.wire.models import Envelope, Sample

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class StoredEnvelope:
    """An envelope as it waits in the outbox, already encoded for the wire."""

    seq: int
    payload: bytes


class Outbox:
    """SQLite-backed queue of encoded envelopes keyed by seq; not thread-safe, use one thread."""

    def __init__(self, path: Path, *, site: str, agent: str) -> None:
        self.path = path
        self._site = site
        self._agent = agent
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Samples waiting for an ack, kept up to date by append/acknowledge so that readers
        # (the host probe's outbox_depth) never touch the disk from the event loop.
        self.waiting_samples = int(
            self._db.execute("SELECT COALESCE(SUM(samples), 0) FROM envelopes").fetchone()[0]
        )

    def close(self) -> None:
        """Checkpoint and close the database."""
        self._db.close()

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(row[0]) if row else 0

    def append(self, samples: list[Sample]) -> StoredEnvelope:
        """Number, encode and commit one envelope; returns it ready to publish."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._next_seq()
            envelope = Envelope(
                site=self._site,
                agent=self._agent,
                seq=seq,
                sent_at=time.time_ns(),
                samples=samples,
            )
            payload = encode(envelope)
            self._db.execute(
                "INSERT INTO envelopes (seq, created_ns, samples, payload) VALUES (?, ?, ?, ?)",
                (seq, envelope.sent_at, len(samples), payload),
            )
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (seq + 1,),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.waiting_samples += len(samples)
        return StoredEnvelope(seq, payload)

    def pending(self, limit: int, exclude: set[int] | None = None) -> list[StoredEnvelope]:
        """Up to `limit` unacknowledged envelopes, oldest first, skipping seqs in `exclude`."""
        exclude = exclude or set()
        rows = self._db.execute(
            "SELECT seq, payload FROM envelopes ORDER BY seq LIMIT ?", (limit + len(exclude),)
        ).fetchall()
        return [StoredEnvelope(seq, payload) for seq, payload in rows if seq not in exclude][:limit]

    def acknowledge(self, ranges: list[tuple[int, int]]) -> int:
        """Delete acknowledged seqs; returns how many envelopes were removed."""
        removed = removed_samples = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for first, last in ranges:
                (samples,) = self._db.execute(
                    "SELECT COALESCE(SUM(samples), 0) FROM envelopes WHERE seq BETWEEN ? AND ?",
                    (first, last),
                ).fetchone()
                cursor = self._db.execute(
                    "DELETE FROM envelopes WHERE seq BETWEEN ? AND ?", (first, last)
                )
                removed += cursor.rowcount
                removed_samples += int(samples)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.waiting_samples -= removed_samples
        return removed

    def depth(self) -> int:
        """Envelopes waiting for a collector's ack."""
        return int(self._db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])
