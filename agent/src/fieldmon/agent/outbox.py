"""The agent's on-disk outbox: every Envelope is committed here before it is published.

An envelope leaves the outbox only when a collector's `ack` names its seq (a broker PUBACK
only means "in flight"). `seq` is allocated in the same transaction that stores the envelope,
so it survives restarts and is never reused.

Priorities: each envelope has a class, `Priority.EVENT` (alerts, state changes) or
`Priority.BULK` (measurements). The sender takes the live envelopes (`select_live`: newest round
first) before the backlog (`take_backlog`: oldest first, a run of one class at a time, for one
coalesced message), events before bulk within each; when the outbox is full the
oldest bulk envelopes are dropped first and counted exactly (`dropped_envelopes`,
`dropped_samples`, persisted in the file); envelopes in flight (published, awaiting their ack)
are spared, so a drop is counted only for what never left on the current connection (the cap
may be exceeded by the sender's window: 32 messages, at most 4 MiB of stored backlog). A drop
episode starts at the first drop
and ends once acknowledgements bring the stored bytes under `RESUME_FRACTION` of the cap;
`take_drop_start()` tells the caller once per episode, so it can send one event rather than
one per envelope.

Size: `max_bytes` bounds the payload bytes stored (the file itself is larger by SQLite's page
and index overhead, about 3 % with 512-byte pages, plus a WAL of at most about 1 MB between
checkpoints). A
full disk (SQLITE_FULL) is met the same way: drop the oldest bulk, retry once, then raise so
the caller keeps the samples in memory.

Durability and the fsync policy (measured by `python -m bench.outbox`): WAL with
synchronous=NORMAL and SQLite's default autocheckpoint (1000 pages). A commit appends to the WAL
without fsync; fsync happens only at a checkpoint (the WAL, then the database), plus the `.seq`
side file once per `SEQ_BLOCK` seqs. Commits are batched: the batcher commits one envelope per
`linger` (1 s by default) however many probe rounds ended in it, and an ack deletes a range of
seqs in one commit.
- kill -9 of the agent at any moment: nothing committed is lost (the WAL is in the page
  cache, the kernel writes it) and the file is never corrupted (tests/faults: 20 kills).
- power cut: the commits since the last checkpoint may be rolled back, never corrupted (WAL
  frames are checksummed; recovery keeps the valid prefix). For a 100-link site at 10 s rounds
  (one 10-sample envelope of 3.2 kB committed and one ack-delete per second) the bench
  measures 162 fsyncs an hour, i.e. a checkpoint about every 44 s: that is the worst-case loss
  window. The kernel writes dirty pages back once they are 30 s old
  (vm.dirty_expire_centisecs, flusher every 5 s), so in practice the window is under ~35 s,
  even at smaller sites, whose checkpoints come less often.
- SD wear, same site: 27.4 MB handed to write() an hour (about 3.8 kB per commit), about 660 MB
  a day. A commit writes every B-tree page it touches whole, so the page size sets the cost:
  at SQLite's default 4096 bytes the same site wrote 164 MB an hour, at `PAGE_SIZE` (512, the
  minimum) six times less. secure_delete is off (Debian builds SQLite with it on), which would
  zero every page an ack frees. The price of small pages is read CPU: a payload spans several
  overflow pages, so draining a backlog costs about 40 % more CPU per envelope (2.4 ms instead
  of 1.7 ms here, acked one by one), about 5 % of a core at the default replay rate. A longer
  `linger` divides the write rate further (fewer, larger commits), at the cost of a later first
  delivery.

Crash safety at start: a file that SQLite cannot open or whose `PRAGMA quick_check` fails is
renamed to `<name>.corrupt-<UTC timestamp>` (with its -wal/-shm) and a fresh queue starts. The
next seq never goes backwards: it is the largest of what can still be read from the damaged
file and the reservation kept in `<name>.seq`, a tiny side file that always holds a bound above
every seq allocated (rewritten, with fsync, once per `SEQ_BLOCK` seqs). Only when both are lost
does the seq restart from a time-based base (milliseconds since the epoch), which cannot
collide with earlier seqs as long as the agent averaged under 1000 envelopes/s since the
previous base was taken (it commits about one per linger).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from fieldmon.core.wire.codec import encode
from fieldmon.core.wire.models import Envelope, Sample

logger = logging.getLogger(__name__)

# A commit appends every B-tree page it touches to the WAL whole: the table leaf and its parent,
# the index leaf, the meta row, the freelist (five to ten pages for one envelope and its later
# ack-delete, whatever the envelope's size). Small pages make each of those writes small; at 512
# bytes (SQLite's minimum) a 100-link site writes 6x less than at the default 4096 (bench/outbox).
PAGE_SIZE = 512
# A file from an earlier version with other pages is rebuilt (VACUUM) at start when it is at
# most this big, i.e. holds no real backlog; a bigger one keeps its pages until a later start.
_REPAGE_MAX_BYTES = 8 * 1024 * 1024
# Seqs reserved per write of the side file: one small fsynced write per this many envelopes.
SEQ_BLOCK = 1024
# On a full disk, free at least this much besides the new envelope before the one retry.
_FULL_DISK_SLACK = 256 * 1024
# A drop episode ends when acknowledgements bring the stored bytes under this share of the cap
# (hysteresis: an outbox draining near the cap, new rounds still arriving, is one episode).
RESUME_FRACTION = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY,
    created_ns INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 1
);
"""
_INDEX = "CREATE INDEX IF NOT EXISTS envelopes_by_priority ON envelopes (priority, seq)"


class Priority(IntEnum):
    """Lower goes first, and is dropped last."""

    EVENT = 0
    BULK = 1


# Measurements that record a change of state rather than a periodic reading.
EVENT_MEASUREMENTS = frozenset({"alert", "event"})


def priority_of(samples: list[Sample]) -> Priority:
    """EVENT if any sample is an event or state change, else BULK."""
    if any(sample.measurement in EVENT_MEASUREMENTS for sample in samples):
        return Priority.EVENT
    return Priority.BULK


@dataclass(frozen=True)
class StoredEnvelope:
    """An envelope as it waits in the outbox, already encoded for the wire."""

    seq: int
    payload: bytes
    priority: int = Priority.BULK
    samples: int = 0  # how many samples `payload` holds


def _is_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class Outbox:
    """SQLite-backed queue of encoded envelopes keyed by seq; not thread-safe, use one thread."""

    def __init__(self, path: Path, *, site: str, agent: str, max_bytes: int | None = None) -> None:
        self.path = path
        self._site = site
        self._agent = agent
        self.max_bytes = max_bytes
        self._seq_file = path.with_name(path.name + ".seq")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None  # where a corrupt file went, if one was found
        self._db = self._open_or_replace()
        self._reserved = self._read_reservation()
        self._reserve(self._next_seq())
        # Kept up to date by every write so that readers (the host probe's outbox_depth) never
        # touch the disk from the event loop.
        samples, stored = self._db.execute(
            "SELECT COALESCE(SUM(samples), 0), COALESCE(SUM(length(payload)), 0) FROM envelopes"
        ).fetchone()
        self.waiting_samples = int(samples)
        self.stored_bytes = int(stored)
        self.dropped_envelopes = self._meta("dropped_envelopes")
        self.dropped_samples = self._meta("dropped_samples")
        # When the oldest waiting envelope was made (the host probe's outbox_age_s); None: empty.
        self.oldest_created_ns: int | None = None
        self._refresh_oldest()
        # Seqs handed to the sender by select() and not yet acknowledged or released: dropped
        # only when nothing else is left, since they may already have arrived, and a drop is
        # then counted as lost though it was not. Kept here, in the one disk thread, so that
        # no append can drop an envelope between its selection and its publication.
        self.in_flight: set[int] = set()
        # Where the next backlog run starts: (live_from, priority, seq) of the last one taken.
        # Nothing can appear behind it but a released seq (the sender's ack timeout, a new
        # connection), which rewinds it; new envelopes are live.
        self._backlog_cursor: tuple[int, int, int] | None = None
        self.dropping = False  # in a drop episode: full, and not yet drained under the cap
        self._drop_started = False

    # -- opening, corruption, seq reservation -------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # applies when the file is created
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Debian's SQLite zeroes every freed page, one more WAL frame per ack-deleted page;
            # the envelopes are measurements, nothing that must be scrubbed from the card.
            db.execute("PRAGMA secure_delete=OFF")
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            self._repage(db)
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(envelopes)")}
            if "priority" not in columns:  # a file from before priorities
                db.execute("ALTER TABLE envelopes ADD COLUMN priority INTEGER NOT NULL DEFAULT 1")
            db.execute(_INDEX)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _repage(self, db: sqlite3.Connection) -> None:
        """Rebuild a small file made with other pages than PAGE_SIZE (WAL mode forbids it)."""
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        if page_size == PAGE_SIZE or self.path.stat().st_size > _REPAGE_MAX_BYTES:
            return
        # In rollback-journal mode VACUUM is atomic: a crash leaves the old file intact.
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("VACUUM")
        db.execute("PRAGMA journal_mode=WAL")
        logger.info("outbox rebuilt with smaller pages", extra={"from": page_size, "to": PAGE_SIZE})

    def _open_or_replace(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            salvaged = self._salvage_next_seq()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self.moved_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(f"{self.moved_aside}{suffix}")
            logger.error(
                "the outbox file is corrupt; moved it aside and started a fresh queue",
                extra={"error": str(exc), "moved_to": str(self.moved_aside)},
            )
        db = self._connect()
        start = max(salvaged or 0, self._read_reservation() or 0)
        if not start:
            # Nothing recoverable: a base no earlier seq can have reached (see the docstring).
            start = time.time_ns() // 1_000_000
            logger.error("the outbox's next seq was lost; restarting from a time-based base")
        self._set_meta(db, "next_seq", start)
        return db

    def _salvage_next_seq(self) -> int | None:
        """The next seq as far as a damaged file still tells, or None."""
        found: list[int] = []
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return None
        queries = (
            "SELECT value FROM meta WHERE key = 'next_seq'",
            "SELECT MAX(seq) + 1 FROM envelopes",
        )
        try:
            for query in queries:
                try:
                    row = db.execute(query).fetchone()
                except sqlite3.Error:
                    continue
                if row and row[0] is not None:
                    found.append(int(row[0]))
        finally:
            db.close()
        return max(found) if found else None

    def _read_reservation(self) -> int | None:
        try:
            return int(self._seq_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def _reserve(self, seq: int) -> None:
        """Make sure the side file holds a bound above `seq` before `seq` is committed."""
        if self._reserved is not None and seq < self._reserved:
            return
        bound = seq + SEQ_BLOCK
        temporary = self._seq_file.with_name(self._seq_file.name + ".tmp")
        with temporary.open("w", encoding="ascii") as handle:
            handle.write(f"{bound}\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self._seq_file)
        self._reserved = bound

    # -- meta -----------------------------------------------------------------------------

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Checkpoint and close the database."""
        self._db.close()

    def _next_seq(self) -> int:
        return self._meta("next_seq")

    # -- writing --------------------------------------------------------------------------

    def append(self, samples: list[Sample], priority: Priority | None = None) -> StoredEnvelope:
        """Number, encode and commit one envelope; returns it ready to publish.

        Over `max_bytes`, or on a full disk, the oldest envelopes are dropped (bulk first,
        never this one) and counted. Raises sqlite3.OperationalError if the disk is still
        full after one retry; nothing was committed then.
        """
        klass = priority_of(samples) if priority is None else priority
        try:
            return self._append(samples, klass)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            logger.error(
                "the disk is full; dropping the oldest envelopes", extra={"error": str(exc)}
            )
            self._free_space()
            return self._append(samples, klass)

    def _append(self, samples: list[Sample], priority: Priority) -> StoredEnvelope:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            seq = self._next_seq()
            self._reserve(seq)
            envelope = Envelope(
                site=self._site, agent=self._agent, seq=seq, sent_at=time.time_ns(), samples=samples
            )
            payload = encode(envelope)
            excess = 0
            if self.max_bytes is not None:
                excess = self.stored_bytes + len(payload) - self.max_bytes
            dropped = self._make_room(excess)
            self._db.execute(
                "INSERT INTO envelopes (seq, created_ns, samples, payload, priority) "
                "VALUES (?, ?, ?, ?, ?)",
                (seq, envelope.sent_at, len(samples), payload, int(priority)),
            )
            self._set_meta(self._db, "next_seq", seq + 1)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._account_drop(dropped)
        self.waiting_samples += len(samples)
        self.stored_bytes += len(payload)
        if dropped[0] or self.oldest_created_ns is None:
            self._refresh_oldest()
        return StoredEnvelope(seq, payload, int(priority), len(samples))

    def _refresh_oldest(self) -> None:
        # By seq, the primary key (one index step): creation times follow seqs. Runs in the disk
        # thread; the event loop only reads the attribute.
        row = self._db.execute("SELECT created_ns FROM envelopes ORDER BY seq LIMIT 1").fetchone()
        self.oldest_created_ns = int(row[0]) if row else None

    def _free_space(self) -> None:
        """Drop the oldest envelopes in a transaction of their own and shrink the WAL.

        On a full disk the WAL cannot grow, so the room must exist before the retry.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._make_room(_FULL_DISK_SLACK, spare_in_flight=False)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._account_drop(dropped)
        self._refresh_oldest()
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            logger.warning("cannot checkpoint the outbox", extra={"error": str(exc)})

    def _rollback(self) -> None:
        # A failed COMMIT on a full disk may already have ended the transaction.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _make_room(self, excess: int, *, spare_in_flight: bool = True) -> tuple[int, int, int]:
        """Delete the oldest envelopes (bulk before events) until `excess` bytes are freed.

        Envelopes in flight are spared for the cap and their bytes do not count against it:
        they leave at their ack within moments, so the cap may be exceeded by at most the
        sender's window. Every envelope counted as dropped is then one that was never published
        on the current connection, and a fresh envelope is never dropped just because all the
        older ones happen to be in flight. On a full disk they go last, but they go.

        Runs inside the caller's transaction, persists the drop counters there too, and
        returns (envelopes, samples, bytes) deleted.
        """
        if excess <= 0:
            return (0, 0, 0)
        victims: list[int] = []
        freed = samples = 0
        rows = self._db.execute(
            "SELECT priority, seq, samples, length(payload) FROM envelopes "
            "ORDER BY priority DESC, seq"
        ).fetchall()
        in_flight = self.in_flight
        if spare_in_flight:
            excess -= sum(row[3] for row in rows if row[1] in in_flight)
            if excess <= 0:
                return (0, 0, 0)
            rows = [row for row in rows if row[1] not in in_flight]
        else:
            rows.sort(key=lambda row: row[1] in in_flight)  # stable: oldest first within
        for _priority, seq, count, size in rows:
            if freed >= excess:
                break
            victims.append(seq)
            freed += size
            samples += count
        if victims:
            self._db.executemany("DELETE FROM envelopes WHERE seq = ?", [(s,) for s in victims])
            self._set_meta(self._db, "dropped_envelopes", self.dropped_envelopes + len(victims))
            self._set_meta(self._db, "dropped_samples", self.dropped_samples + samples)
        return (len(victims), samples, freed)

    def _account_drop(self, dropped: tuple[int, int, int]) -> None:
        envelopes, samples, freed = dropped
        if not envelopes:
            return
        self.dropped_envelopes += envelopes
        self.dropped_samples += samples
        self.waiting_samples -= samples
        self.stored_bytes -= freed
        details = {
            "envelopes": envelopes,
            "samples": samples,
            "dropped_samples_total": self.dropped_samples,
        }
        if self.dropping:
            # Once per append while the outage lasts: the episode's start was logged as an error.
            logger.debug("outbox full: dropped the oldest envelopes", extra=details)
            return
        self.dropping = self._drop_started = True
        logger.error("outbox full: dropping the oldest bulk samples", extra=details)

    def take_drop_start(self) -> bool:
        """True once after a drop episode began (the caller reports it); False otherwise."""
        started, self._drop_started = self._drop_started, False
        return started

    def _end_drop_episode(self) -> None:
        if not self.dropping:
            return
        if self.max_bytes is not None and self.stored_bytes >= self.max_bytes * RESUME_FRACTION:
            return
        self.dropping = False
        logger.info(
            "the outbox has room again",
            extra={
                "dropped_envelopes_total": self.dropped_envelopes,
                "dropped_samples_total": self.dropped_samples,
            },
        )

    def acknowledge(self, ranges: list[tuple[int, int]]) -> int:
        """Delete acknowledged seqs; returns how many envelopes were removed."""
        removed = removed_samples = removed_bytes = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for first, last in ranges:
                samples, size = self._db.execute(
                    "SELECT COALESCE(SUM(samples), 0), COALESCE(SUM(length(payload)), 0) "
                    "FROM envelopes WHERE seq BETWEEN ? AND ?",
                    (first, last),
                ).fetchone()
                cursor = self._db.execute(
                    "DELETE FROM envelopes WHERE seq BETWEEN ? AND ?", (first, last)
                )
                removed += cursor.rowcount
                removed_samples += int(samples)
                removed_bytes += int(size)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        for first, last in ranges:
            self.in_flight.difference_update([s for s in self.in_flight if first <= s <= last])
        self.waiting_samples -= removed_samples
        self.stored_bytes -= removed_bytes
        if removed:
            self._end_drop_episode()
            self._refresh_oldest()
        return removed

    # -- reading --------------------------------------------------------------------------

    def pending(self, limit: int, exclude: set[int] | None = None) -> list[StoredEnvelope]:
        """Up to `limit` unacknowledged envelopes, oldest first, skipping seqs in `exclude`."""
        exclude = exclude or set()
        rows = self._db.execute(
            "SELECT seq, payload, priority, samples FROM envelopes ORDER BY seq LIMIT ?",
            (limit + len(exclude),),
        ).fetchall()
        return [StoredEnvelope(*row) for row in rows if row[0] not in exclude][:limit]

    def fresh_from(self, since_ns: int) -> int:
        """The first seq of the live set: created at or after `since_ns`, and at least the newest.

        Everything below it is backlog. With an empty outbox this is the next seq, so all
        that is appended from now on counts as live.
        """
        boundary: int | None = None
        for seq, created_ns in self._db.execute(
            "SELECT seq, created_ns FROM envelopes ORDER BY seq DESC"
        ):
            if boundary is not None and created_ns < since_ns:
                break
            boundary = seq
        return self._next_seq() if boundary is None else boundary

    def select_live(self, limit: int, *, live_from: int) -> list[StoredEnvelope]:
        """Up to `limit` live envelopes (seq >= live_from) not in flight, events before bulk,
        newest first, so the present state of every link arrives at once; now in flight."""
        rows = self._db.execute(
            "SELECT seq, payload, priority, samples FROM envelopes WHERE seq >= ? "
            "ORDER BY priority, seq DESC LIMIT ?",
            (live_from, limit + len(self.in_flight)),
        ).fetchall()
        chosen = [StoredEnvelope(*row) for row in rows if row[0] not in self.in_flight][:limit]
        self.in_flight.update(envelope.seq for envelope in chosen)
        return chosen

    def take_backlog(
        self,
        *,
        live_from: int,
        max_envelopes: int,
        max_bytes: int,
        alone: frozenset[int] | set[int] = frozenset(),
    ) -> list[StoredEnvelope]:
        """The oldest backlog envelopes (seq < live_from) not in flight, for one message: events
        before bulk, oldest first, all of one class (one topic), at most `max_envelopes` and
        `max_bytes` of payload (but at least one). A seq in `alone` is taken only by itself.
        Empty when no backlog is left outside the flight. They are in flight from here on.
        """
        cursor = self._backlog_cursor
        if cursor is None or cursor[0] != live_from:
            cursor = (live_from, -1, -1)
        _, after_priority, after_seq = cursor
        # Seqs and sizes first (SQLite reads a blob's length from its record header), payloads
        # only for what is chosen: the envelopes in flight are skipped without being read.
        rows = self._db.execute(
            "SELECT priority, seq, length(payload) FROM envelopes "
            "WHERE seq < ? AND (priority > ? OR (priority = ? AND seq > ?)) "
            "ORDER BY priority, seq",
            (live_from, after_priority, after_priority, after_seq),
        )
        chosen: list[int] = []
        klass = size = 0
        for priority, seq, length in rows:
            if seq in self.in_flight:
                continue
            if chosen and (
                priority != klass or size + length > max_bytes or seq in alone or chosen[0] in alone
            ):
                break
            klass = priority
            chosen.append(seq)
            size += length
            if len(chosen) >= max_envelopes:
                break
        rows.close()
        if not chosen:
            return []
        self._backlog_cursor = (live_from, klass, chosen[-1])
        marks = ",".join("?" * len(chosen))
        taken = [
            StoredEnvelope(*row)
            for row in self._db.execute(
                "SELECT seq, payload, priority, samples FROM envelopes "
                f"WHERE seq IN ({marks}) ORDER BY seq",
                chosen,
            )
        ]
        self.in_flight.update(envelope.seq for envelope in taken)
        return taken

    def release(self, seqs: list[int] | None = None) -> None:
        """Selected seqs that were not published, or whose ack timed out (None: all of them)."""
        if seqs is None:
            self.in_flight.clear()
        else:
            self.in_flight.difference_update(seqs)
        self._backlog_cursor = None  # they may lie behind it: look from the start again

    def depth(self) -> int:
        """Envelopes waiting for a collector's ack."""
        return int(self._db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])
